"""Cross-attention cut at the source: the heads' mean (--attention-heads mean) and kept tokens (--attention-tokens)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import zarr
from click.testing import CliRunner
from test_attention import generate, make_pipe

import dumpunet
from dumpunet.cli import main
from dumpunet.errors import OptionError
from dumpunet.recorder.attention_layers import AttentionOptions
from dumpunet.store.validate import validate

pytestmark = pytest.mark.recorder

LAYERS = "IN01, M00, OUT11"


def _record(tmp_path, name, dtype="fp16", **attention):
    pipe = make_pipe()
    opts = AttentionOptions(features=("qk", "k"), blocks=LAYERS, **attention)
    with dumpunet.record(pipe, tmp_path / name, blocks="M00", attention=opts, dtype=dtype, progress=False):
        images = generate(pipe)
    return images, tmp_path / name


def _qk(path, layer="IN01.attn2", feature="qk"):
    arr = zarr.open_array(path / f"runs/main/attention/{layer}/{feature}", mode="r")
    return arr[...], dict(arr.attrs)


@pytest.fixture(scope="module")
def all_heads(tmp_path_factory):
    return _record(tmp_path_factory.mktemp("all"), "all.zarr")


def test_head_mean_equals_the_mean_of_an_all_heads_recording_and_leaves_the_image_alone(tmp_path, all_heads):
    plain = generate(make_pipe())
    images, path = _record(tmp_path, "mean.zarr", heads="mean")
    assert np.array_equal(images, plain)  # bit-identical to the pipeline without hooks
    assert np.array_equal(all_heads[0], plain)
    for layer in ("IN01.attn2", "M00.attn2", "OUT11.attn2"):
        full, _ = _qk(all_heads[1], layer)
        mean, attrs = _qk(path, layer)
        assert full.shape[3] == 2 and mean.shape == (*full.shape[:3], 1, *full.shape[4:])
        assert mean.dtype == np.float16 and attrs["heads"] == "mean" and attrs["cross_attention"] is True
        # the device mean is taken in float32 before rounding to fp16; the fp16 heads' mean rounds twice
        np.testing.assert_allclose(mean[:, :, :, 0].astype(np.float32), full.astype(np.float32).mean(axis=3),
                                   rtol=2e-3, atol=2e-4)
        np.testing.assert_allclose(mean.astype(np.float32).sum(-1), 1.0, atol=2e-2)
    k_full, _ = _qk(all_heads[1], feature="k")
    k_mean, k_attrs = _qk(path, feature="k")
    assert np.array_equal(k_full, k_mean) and "heads" not in k_attrs  # keys keep their heads
    report = validate(path)
    assert report.ok, report.problems


def test_kept_tokens_are_the_columns_of_an_all_tokens_recording(tmp_path, all_heads):
    images, path = _record(tmp_path, "tok.zarr", tokens="5-6,1")
    assert np.array_equal(images, all_heads[0])
    full, _ = _qk(all_heads[1])
    kept, attrs = _qk(path)
    assert attrs["kept_tokens"] == [1, 5, 6] and kept.shape == (*full.shape[:5], 3)
    assert np.array_equal(kept, full[..., [1, 5, 6]])  # softmax over all 77 tokens, then cut
    k_full, _ = _qk(all_heads[1], feature="k")
    k_kept, k_attrs = _qk(path, feature="k")
    assert k_attrs["kept_tokens"] == [1, 5, 6] and np.array_equal(k_kept, k_full[:, :, :, :, [1, 5, 6]])
    _record(tmp_path, "both.zarr", heads="mean", tokens="1,5,6")
    mean, _ = _qk(tmp_path / "both.zarr")
    all_mean, _ = _qk(_record(tmp_path, "m.zarr", heads="mean")[1])
    assert np.array_equal(mean, all_mean[..., [1, 5, 6]])
    report = validate(path)
    assert report.ok, report.problems


def test_cuts_shrink_the_estimate_by_the_head_count_and_the_kept_share(tmp_path):
    from dumpunet.recorder import job as recording

    job = recording.prepare(recording.RecordRequest(out=tmp_path / "x.zarr"))
    sizes = {}
    for name, extra in {"all": {}, "mean": {"attention_heads": "mean"}, "tokens": {"attention_tokens": "1-7"},
                        "both": {"attention_heads": "mean", "attention_tokens": "1-7"}}.items():
        req = recording.RecordRequest(out=tmp_path / "x.zarr", sampling_steps=4, width=64, height=64, blocks="none", **extra)
        sizes[name] = recording.estimate(dataclasses.replace(job, req=req)).attention_bytes
    assert sizes["mean"] * 2 == sizes["all"]  # tiny-sd1 has 2 heads
    assert sizes["tokens"] * 11 == sizes["all"]  # 7 of 77 tokens
    assert sizes["both"] * 22 == sizes["all"]


@pytest.mark.parametrize(("extra", "message"), [
    (["--attention-tokens", "1,girl"], ("--attention-tokens takes token positions such as 1-8 or 1,4,5 (as attention "
                                        "grids label them: 5:girl), not words: 'girl'")),
    (["--attention-tokens", "3-90"], "bad --attention-tokens: token 90 out of range 0..76\n  3-90\n    ^^"),
    (["--attention-heads", "mean", "--attention", "k"], ("--attention-heads mean averages the cross-attention qk maps; "
                                                         "--attention 'k' records none (add qk)")),
    (["--attention-tokens", "1", "--attention", "vqk"], ("--attention-tokens keeps token columns of cross-attention qk "
                                                         "and k; --attention 'vqk' records neither")),
])
def test_bad_cuts_are_one_line_errors_and_write_nothing(tmp_path, extra, message):
    out = tmp_path / "x.zarr"
    res = CliRunner().invoke(main, ["record", "--prompt", "a girl", "--sampling-steps", "1", "--width", "64", "--height",
                                    "64", "--quiet", "--out", str(out), *extra])
    assert res.exit_code == 1 and res.output.rstrip().endswith(f"Error: {message}"), res.output
    assert not out.exists()


def test_attention_options_refuse_other_head_choices():
    with pytest.raises(OptionError, match="^attention heads must be 'all' or 'mean', got 'max'$"):
        AttentionOptions(heads="max")


@pytest.fixture(scope="module")
def cut(tmp_path_factory):
    """All heads, the heads' mean with tokens 1, 5, 6 kept ("a", "pink", "hair"), of one seed."""
    base = tmp_path_factory.mktemp("cut")
    return _record(base, "all.zarr")[1], _record(base, "cut.zarr", heads="mean", tokens="1,5-6")[1]


def test_views_label_kept_tokens_by_position_and_refuse_the_others(tmp_path, cut):
    from dumpunet.analyzer.attention_grids import render_attention
    from dumpunet.analyzer.heatmap import word_heatmap
    from dumpunet.analyzer.pick import Pick
    from dumpunet.errors import SelectionError

    full, part = (dumpunet.open(p) for p in cut)
    pick = Pick(blocks="IN01.attn2", steps="2", images="0", guidance="cond")
    (f,) = render_attention(part, pick, out=tmp_path / "a", plain=True, progress=False)
    assert f.params["rows"] == ["mean"] and f.params["columns"] == ["1:a", "5:pink", "6:hair"]
    (g,) = render_attention(part, pick, tokens="hair", out=tmp_path / "b", plain=True, progress=False)
    assert g.params["columns"] == ["6:hair"]
    (h,) = render_attention(full, pick, tokens="hair", average="mean", out=tmp_path / "c", plain=True, progress=False)
    assert h.params["columns"] == ["6:hair"]
    with pytest.raises(SelectionError, match=r"^token 3 was not recorded at IN01.attn2: --attention-tokens kept 1,5-6$"):
        render_attention(part, pick, tokens="girl", out=tmp_path / "d", progress=False)
    with pytest.raises(SelectionError, match=r"^IN01.attn2 holds only the mean of its heads \(recorded with "
                                             r"--attention-heads mean\): --heads 1 has no head to pick$"):
        render_attention(part, pick, heads="1", out=tmp_path / "e", progress=False)
    assert not (tmp_path / "d").exists() and not (tmp_path / "e").exists()
    hair = Pick(blocks="IN01, M00, OUT11", steps="1-2")
    np.testing.assert_allclose(word_heatmap(part, "pink hair", hair), word_heatmap(full, "pink hair", hair), atol=2e-3)
    with pytest.raises(SelectionError, match=r"^token 2 was not recorded at IN01.attn2: --attention-tokens kept 1,5-6$"):
        word_heatmap(part, "cute", hair)
    res = CliRunner().invoke(main, ["attention", str(cut[1]), "--layers", "IN01.attn2", "--heads", "3", "--out",
                                    str(tmp_path / "f")])
    assert res.exit_code == 1 and res.output.strip().splitlines()[-1].startswith("Error: IN01.attn2 holds only the mean")


def test_xarray_stats_and_info_show_the_kept_positions(tmp_path, cut):
    pytest.importorskip("dask")
    from dumpunet.analyzer.pick import Pick
    from dumpunet.analyzer.stats import block_stats
    from dumpunet.store.summary import describe, summarize

    ds = dumpunet.open(cut[1]).to_xarray(layers="IN01.attn2")
    qk = ds["IN01.attn2.qk"]
    assert qk.sizes["head"] == 1 and qk.sizes["token"] == 3
    assert ds["token_position"].values.tolist() == [1, 5, 6]
    assert ds["token_label"].sel(guidance="cond").values.tolist() == ["a</w>", "pink</w>", "hair</w>"]
    assert "token_position" not in dumpunet.open(cut[0]).to_xarray(layers="IN01.attn2").coords
    _, rows = block_stats([cut[1]], Pick(blocks="M00", steps="2", images="0", guidance="cond"), layers="IN01.attn2")
    assert [(r["head"], r["token"], r["token_label"]) for r in rows] == [(0, 1, "a</w>"), (0, 5, "pink</w>"), (0, 6, "hair</w>")]
    layer = summarize(cut[1]).runs["main"].attention[0]
    assert (layer.heads, layer.heads_mode, layer.tokens, layer.kept_tokens) == (1, "mean", 3, (1, 5, 6))
    row = next(line.split() for line in describe(summarize(cut[1])).splitlines() if line.split()[:1] == ["IN01.attn2"])
    assert row[3:7] == ["1", "(mean)", "3", "(1,5-6)"]


def test_prompt_list_options_name_the_cuts_only_when_used(tmp_path):
    from dumpunet.recorder.prompt_runs import shared_options
    from dumpunet.recorder.request import RecordRequest

    plain = shared_options(RecordRequest(out=tmp_path / "x.zarr"))
    assert "attention_heads" not in plain and "attention_tokens" not in plain  # stores recorded before them compare equal
    cut = shared_options(RecordRequest(out=tmp_path / "x.zarr", attention_heads="mean", attention_tokens="1-8"))
    assert (cut["attention_heads"], cut["attention_tokens"]) == ("mean", "1-8")
