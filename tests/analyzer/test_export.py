"""dumpunet.export: .bin, .npy and .safetensors files read back exactly, with names and manifest."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import dumpunet
from dumpunet.errors import OptionError, SpecError


def export(store, out, format="bin", **kw):  # noqa: A002
    return dumpunet.export(store, dumpunet.Pick(**kw), out=out, format=format, progress=False)


def test_bin_is_the_original_dump_one_float32_file_per_channel(pair, tmp_path):
    store = dumpunet.open(pair)
    files = export(pair, tmp_path, blocks="IN04", steps="5", guidance="both", format="bin")
    names = [f.path.name for f in files]
    assert names == [f"{i:03d}-IN04-005-{c:04d}-{g}.bin" for i in (0, 1) for g in ("uncond", "cond") for c in range(6)]
    for f in files:
        p = f.params
        x = store.features("IN04", 5, image=p["image"], guidance=p["guidance"])[p["channel"]]
        assert f.path.read_bytes() == x.astype("<f4").tobytes()
        assert len(f.path.read_bytes()) == 4 * 4 * 4
    assert sorted(names + ["manifest.json"]) == sorted(p.name for p in tmp_path.iterdir())


def test_bin_channel_subset_and_inputs(girl, tmp_path):
    files = export(girl, tmp_path, blocks="OUT11", steps="20", channels="1,3", which="input")
    assert [f.path.name for f in files] == ["000-OUT11-input-020-0001-cond.bin", "000-OUT11-input-020-0003-cond.bin"]
    x = dumpunet.open(girl).features("OUT11", 20, which="input")
    assert files[1].path.read_bytes() == x[3].astype("<f4").tobytes()


def test_npy_holds_image_guidance_channel_y_x_in_the_stored_dtype(pair, tmp_path):
    store = dumpunet.open(pair)
    files = export(pair, tmp_path, blocks="M00,OUT11", steps="1,20", guidance="both", format="npy")
    assert [f.path.name for f in files] == ["M00-step001.npy", "OUT11-step001.npy", "M00-step020.npy", "OUT11-step020.npy"]
    a = np.load(files[3].path, allow_pickle=False)
    assert a.dtype == np.float16 and a.shape == (2, 2, 4, 8, 8)
    for i in (0, 1):
        for gi, g in enumerate(("uncond", "cond")):
            np.testing.assert_array_equal(a[i, gi], store.features("OUT11", 20, image=i, guidance=g))
    assert files[3].params["shape"] == [2, 2, 4, 8, 8] and files[3].params["guidance"] == ["uncond", "cond"]


def test_safetensors_reads_back_with_the_safetensors_package(pair, tmp_path):
    st = pytest.importorskip("safetensors")
    from safetensors.numpy import load_file

    store = dumpunet.open(pair)
    (f,) = export(pair, tmp_path, blocks="OUT05", steps="10", images="1", channels="2-5", format="safetensors")
    assert f.path.name == "OUT05-step010.safetensors"
    tensors = load_file(f.path)
    assert list(tensors) == ["features"]
    assert tensors["features"].dtype == np.float16 and tensors["features"].shape == (1, 1, 4, 4, 4)
    np.testing.assert_array_equal(tensors["features"][0, 0], store.features("OUT05", 10, image=1)[2:6])
    with st.safe_open(str(f.path), "np") as fh:
        meta = fh.metadata()
    assert meta == {
        "block": "OUT05", "which": "output", "step": "10", "call": "2", "timestep": "500.0", "images": "1",
        "guidance": "cond", "channels": "2-5", "dims": "image,guidance,channel,y,x",
        "store": str(pair.resolve()), "run": "main",
    }
    n = struct.unpack("<Q", f.path.read_bytes()[:8])[0]
    assert n % 8 == 0


def test_export_manifest_and_errors(girl, tmp_path):
    export(girl, tmp_path, blocks="M00", steps="20", format="npy")
    export(girl, tmp_path, blocks="M00", steps="20", format="bin", channels="0")
    doc = json.loads((tmp_path / "manifest.json").read_text())
    assert [e["file"] for e in doc["files"]] == ["000-M00-020-0000-cond.bin", "M00-step020.npy"]
    assert doc["files"][0] == {
        "file": "000-M00-020-0000-cond.bin", "kind": "export", "store": str(girl.resolve()), "run": "main",
        "block": "M00", "which": "output", "step": 20, "call": 3, "timestep": 0.0, "image": 0, "guidance": "cond",
        "channel": 0, "format": "bin", "dtype": "<f4", "shape": [2, 2],
    }
    with pytest.raises(OptionError) as err:
        export(girl, tmp_path / "x", format="tiff")
    assert str(err.value) == "unknown export format 'tiff' (valid: bin, npy, safetensors)"
    with pytest.raises(SpecError) as err:
        export(girl, tmp_path / "x", blocks="OUT12")
    assert str(err.value) == "bad block spec: unknown block 'OUT12' (this model has IN00..OUT11)\n  OUT12\n  ^^^^^"
    assert not (tmp_path / "x").exists()
