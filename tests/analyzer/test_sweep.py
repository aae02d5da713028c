"""Contact sheets of sweep stores: layout, exact tiles and captions, unfinished runs, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from synthetic_stores import final_image, make_paired_store
from test_render import pixels

from dumpunet.analyzer.labels import paste, text_image
from dumpunet import Pick
from dumpunet.analyzer.sweep import GAP, contact_sheet, sheet_shape
from dumpunet.errors import SelectionError, SpecError

H, W = 12, 16  # the synthetic final images


def caption(text: str, band: int) -> np.ndarray:
    """The caption band of one cell, drawn by hand: the label's glyphs at its top left, on black."""
    out = np.zeros((band, W, 3), np.uint8)
    paste(out, text_image(text), 0, 0)
    return out


def test_base_first_then_each_pair_in_order_labelled(tmp_path):
    store = make_paired_store(tmp_path / "sweep.zarr", labels=("IN04", "M00", "OUT11"), n_images=2)
    files = contact_sheet(store, out=tmp_path / "sheet")
    assert [f.path.name for f in files] == ["sweep-img0.png", "sweep-img1.png"]
    band = max(text_image(t).shape[0] for t in ("base", "IN04", "M00", "OUT11"))
    cell_h = band + H
    assert files[0].params["grid"] == {"cols": 2, "rows": 2, "cell": [H, W], "caption": band, "gap": GAP}
    for i, f in enumerate(files):
        img = pixels(f)
        assert img.shape == (2 * (cell_h + GAP) - GAP, 2 * (W + GAP) - GAP, 3)
        assert f.params["size"] == [img.shape[1], img.shape[0]]
        for k, (run, text) in enumerate([(0, "base"), (1, "IN04"), (2, "M00"), (3, "OUT11")]):
            y0, x0 = (k // 2) * (cell_h + GAP), (k % 2) * (W + GAP)
            np.testing.assert_array_equal(img[y0 : y0 + band, x0 : x0 + W], caption(text, band))
            np.testing.assert_array_equal(img[y0 + band : y0 + cell_h, x0 : x0 + W], final_image(run, i))
        assert not img[:, W : W + GAP].any() and not img[cell_h : cell_h + GAP].any()
    assert files[1].params["cells"] == [
        {"run": "base", "caption": "base"}, {"run": "IN04", "caption": "IN04"},
        {"run": "M00", "caption": "M00"}, {"run": "OUT11", "caption": "OUT11"},
    ]
    doc = json.loads((tmp_path / "sheet/manifest.json").read_text())
    assert [e["file"] for e in doc["files"]] == ["sweep-img0.png", "sweep-img1.png"]
    assert doc["files"][0]["kind"] == "sweep"


def test_an_unfinished_run_gets_an_empty_labelled_cell(tmp_path):
    store = make_paired_store(tmp_path / "sweep.zarr", labels=("IN04", "M00"), unfinished=("M00",))
    (f,) = contact_sheet(store, Pick(images="0"), out=tmp_path / "sheet")
    band = max(text_image(t).shape[0] for t in ("base", "IN04", "M00 (unfinished)"))
    assert f.params["cells"][2] == {"run": None, "caption": "M00 (unfinished)"}
    img = pixels(f)
    y0 = band + H + GAP
    assert f.params["grid"]["cols"] == 2 and img[y0 + band : y0 + band + H, :W].max() == 0
    assert img[y0 : y0 + band, :W].max() == 255


def test_layout_is_near_square():
    assert sheet_shape(26, 527, 512) == (6, 5)  # SD1 sweep: base + 25 blocks at 512x512
    assert sheet_shape(20, 527, 512) == (5, 4)
    assert sheet_shape(2, 527, 512) == (2, 1)
    assert sheet_shape(5, 10, 100) == (1, 5)  # wide cells stack


def test_errors(girl, tmp_path):
    with pytest.raises(SelectionError) as err:
        contact_sheet(girl, out=tmp_path / "s")
    assert str(err.value) == f"{girl} holds no paired runs (record with --pair, or dumpunet sweep)"
    store = make_paired_store(tmp_path / "sweep.zarr", labels=("IN04",), unfinished=("base",))
    with pytest.raises(SelectionError) as err:
        contact_sheet(store, out=tmp_path / "s")
    assert str(err.value) == "run 'base' has no final images (the recording did not finish)"
    with pytest.raises(SpecError):
        contact_sheet(store, Pick(images="1"), out=tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_run_picks_the_sweep_of_one_base_run(tmp_path):
    store = make_paired_store(tmp_path / "sweep.zarr", labels=("IN04", "M00"))
    whole = contact_sheet(store, out=tmp_path / "all")[0]
    picked = contact_sheet(store, Pick(run="base"), out=tmp_path / "picked")[0]
    assert picked.params["cells"] == whole.params["cells"] and pixels(picked).tobytes() == pixels(whole).tobytes()
    with pytest.raises(SelectionError) as err:
        contact_sheet(store, Pick(run="IN04"), out=tmp_path / "s")
    assert str(err.value) == f"{store} holds no sweep of base run 'IN04' (base runs: base)"
    assert not (tmp_path / "s").exists()
