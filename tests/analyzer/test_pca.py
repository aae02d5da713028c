"""PCA colours: the basis file format, pixels against a hand projection, reuse across steps and stores."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_stores import make_store
from PIL import Image

import dumpunet
from values import split
from dumpunet.analyzer.pca import Basis, BlockBasis, fit_basis
from dumpunet.errors import OptionError


def render(store, **kw):
    """Render bare tiles (plain) unless ``plain=False``: these tests check the grid's pixels."""
    pick, color, style, rest = split({"plain": True, **kw})
    return dumpunet.render(store, pick, color, style, progress=False, **rest)


def pixels(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im)


def test_fit_finds_the_principal_directions_with_deterministic_signs():
    rng = np.random.default_rng(0)
    axes = np.linalg.qr(rng.standard_normal((6, 6)))[0]
    data = (rng.standard_normal((4000, 6)) * [9.0, 4.0, 2.0, 0.1, 0.1, 0.1]) @ axes.T + 5.0
    b = fit_basis(data)
    for k in range(3):
        assert abs(abs(b.components[k] @ axes[:, k]) - 1) < 1e-3
        assert b.components[k][np.abs(b.components[k]).argmax()] > 0
    np.testing.assert_allclose(b.mean, data.mean(axis=0), rtol=1e-5)
    proj = (data - data.mean(axis=0)) @ b.components.T.astype(np.float64)
    np.testing.assert_allclose(b.range, np.percentile(proj, [1, 99], axis=0).T, rtol=1e-3, atol=1e-3)


def test_pixels_are_the_hand_projection(girl, tmp_path):
    basis_file = tmp_path / "basis.npz"
    (f,) = render(girl, out=tmp_path, blocks="OUT08", steps="10", method="pca", pca_basis=basis_file)
    with np.load(basis_file, allow_pickle=False) as z:
        assert str(z["format"]) == "dumpunet-pca-basis/1"
        assert sorted(z.files) == ["OUT08.components", "OUT08.mean", "OUT08.meta", "OUT08.range", "format"]
        mean, comp, rng = z["OUT08.mean"], z["OUT08.components"], z["OUT08.range"]
    assert f.path.name == f"OUT08-step010-img0-cond-pca-{Basis.load(basis_file)['OUT08'].digest}.png"
    x = dumpunet.open(girl).features("OUT08", 10).astype(np.float64)  # [6, 8, 8]
    proj = np.einsum("kc,chw->hwk", comp.astype(np.float64), x - mean.astype(np.float64)[:, None, None])
    t = (proj - rng[:, 0]) / (rng[:, 1] - rng[:, 0])
    expected = np.clip(t * 256, 0, 255).astype(np.uint8)
    got = pixels(f)
    assert got.shape == (8, 8, 3)
    assert np.abs(got.astype(int) - expected).max() <= 1
    assert f.params["pca"] == {"key": "OUT08", "digest": Basis.load(basis_file)["OUT08"].digest, "basis": str(basis_file.resolve())}


def test_one_basis_gives_identical_colours_for_identical_data_across_stores(tmp_path):
    a = make_store(tmp_path / "a.zarr")
    b = make_store(tmp_path / "b.zarr", other_seed_steps=(1, 5, 10))  # agrees with a at step 20 only
    basis_file = tmp_path / "shared.npz"
    fa = render(a, out=tmp_path / "ra", blocks="OUT09-OUT11", method="PCA", pca_basis=basis_file)
    saved = basis_file.read_bytes()
    fb = render(b, out=tmp_path / "rb", blocks="OUT09-OUT11", method="pca", pca_basis=basis_file)
    assert basis_file.read_bytes() == saved  # reused, not refitted
    at20 = lambda files: {f.path.name: f.path.read_bytes() for f in files if f.params["step"] == 20}  # noqa: E731
    assert at20(fa) == at20(fb) and len(at20(fa)) == 3
    # without the shared basis, b's own fit colours the same data differently
    own = render(b, out=tmp_path / "own", blocks="OUT09-OUT11", method="pca")
    assert set(at20(own)).isdisjoint(at20(fa))


def test_blocks_missing_from_a_basis_are_fitted_and_added(girl, tmp_path):
    basis_file = tmp_path / "basis.npz"
    render(girl, out=tmp_path, blocks="OUT11", method="pca", pca_basis=basis_file)
    first = Basis.load(basis_file)["OUT11"]
    render(girl, out=tmp_path, blocks="M00,OUT11", which="output", method="pca", pca_basis=basis_file)
    both = Basis.load(basis_file)
    assert sorted(both) == ["M00", "OUT11"] and both["OUT11"].digest == first.digest
    assert both["M00"].meta == {"samples": 16, "stores": [str(girl.resolve())], "steps": "1,5,10,20"}


def test_basis_mismatch_and_foreign_files_are_refused(girl, tmp_path):
    basis_file = tmp_path / "basis.npz"
    Basis({"OUT11": BlockBasis(np.zeros(5, np.float32), np.zeros((3, 5), np.float32), np.zeros((3, 2)), {})}).save(basis_file)
    with pytest.raises(OptionError) as err:
        render(girl, out=tmp_path / "o", blocks="OUT11", method="pca", pca_basis=basis_file)
    assert str(err.value) == f"PCA basis {basis_file} was fitted on 5 channels for OUT11, but {girl} has 4"
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(OptionError) as err:
        render(girl, out=tmp_path / "o", blocks="OUT11", method="pca", pca_basis=junk)
    assert str(err.value) == f"{junk} is not a dumpunet PCA basis file (expected dumpunet-pca-basis/1 .npz)"
    with pytest.raises(OptionError) as err:
        render(girl, out=tmp_path / "o", blocks="OUT11", method="pca", channels="0-1")
    assert str(err.value) == "method pca uses every channel (the basis spans them all); leave channels empty"
    assert not (tmp_path / "o").exists()


def test_a_structured_text_or_npy_basis_file_is_refused_with_one_line(girl, tmp_path):
    good = {"format": np.array("dumpunet-pca-basis/1"), "OUT11.components": np.zeros((3, 4), np.float32),
            "OUT11.range": np.zeros((3, 2)), "OUT11.meta": np.array("{}")}
    structured = np.zeros(4, dtype=[("a", "<f4"), ("b", "<i4")])
    cases = {
        "structured.npz": ({**good, "OUT11.mean": structured}, "the arrays of 'OUT11' are not numbers"),
        "text.npz": ({**good, "OUT11.mean": np.array(["a", "b", "c", "d"])}, "the arrays of 'OUT11' are not numbers"),
        "meta.npz": ({**good, "OUT11.mean": np.zeros(4, np.float32), "OUT11.meta": np.array("[1]")},
                     "(expected dumpunet-pca-basis/1 .npz)"),
    }
    for name, (arrays, tail) in cases.items():
        path = tmp_path / name
        np.savez(path, **arrays)
        with pytest.raises(OptionError) as err:
            Basis.load(path)
        assert str(err.value).startswith(f"{path} is not a dumpunet PCA basis file") and str(err.value).endswith(tail)
    npy = tmp_path / "plain.npz"
    with open(npy, "wb") as fh:
        np.save(fh, np.zeros(3))
    with pytest.raises(OptionError, match="is not a dumpunet PCA basis file"):
        render(girl, out=tmp_path / "o", blocks="OUT11", method="pca", pca_basis=npy)
    assert not (tmp_path / "o").exists()
