"""Attention capture: probabilities checked against an independent computation, untouched images."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import zarr  # noqa: E402

import dumpunet  # noqa: E402
from dumpunet.store.validate import validate  # noqa: E402
from dumpunet.recorder.attention_layers import AttentionOptions, attention_layers  # noqa: E402
from dumpunet.recorder.blocks import unet_blocks  # noqa: E402
from dumpunet.recorder.samplers import make_scheduler  # noqa: E402
from dumpunet.recorder.tiny import build_tiny_pipeline  # noqa: E402

pytestmark = pytest.mark.recorder

PROMPT = "a cute girl, pink hair"
NEGATIVE = "bad anatomy"


def make_pipe(name="tiny-sd1"):
    pipe = build_tiny_pipeline(name)
    pipe.scheduler = make_scheduler("Euler", pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, steps=2):
    return pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=steps, height=64, width=64,
                generator=torch.Generator().manual_seed(3), output_type="np").images


def test_layers_are_named_after_their_blocks():
    sd1 = make_pipe("tiny-sd1")
    names = [layer.name for layer in attention_layers(sd1.unet, unet_blocks(sd1.unet)) if layer.cross]
    assert names == ["IN01.attn2", "IN02.attn2", "IN04.attn2", "IN05.attn2", "IN07.attn2", "IN08.attn2", "M00.attn2",
                     "OUT03.attn2", "OUT04.attn2", "OUT05.attn2", "OUT06.attn2", "OUT07.attn2", "OUT08.attn2",
                     "OUT09.attn2", "OUT10.attn2", "OUT11.attn2"]
    xl = make_pipe("tiny-sdxl")
    layers = attention_layers(xl.unet, unet_blocks(xl.unet))
    assert [layer.name for layer in layers][:4] == ["IN04.attn1.0", "IN04.attn2.0", "IN04.attn1.1", "IN04.attn2.1"]
    assert layers[1].module == "down_blocks.1.attentions.0.transformer_blocks.0.attn2"


def test_stored_probabilities_match_an_independent_softmax_of_q_and_k(tmp_path):
    pipe = make_pipe()
    mods = dict(pipe.unet.named_modules())
    layer_path = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"  # IN01.attn2
    attn = mods[layer_path]
    seen = {"q": [], "k": [], "v": []}
    hs = [getattr(attn, f"to_{n}").register_forward_hook(lambda m, a, o, n=n: seen[n].append(o.detach().clone()))
          for n in ("q", "k", "v")]
    try:
        with dumpunet.record(pipe, tmp_path / "a.zarr", attention="qk,k,vqk", dtype="fp32", progress=False):
            generate(pipe, steps=2)
    finally:
        for h in hs:
            h.remove()
    root = zarr.open_group(tmp_path / "a.zarr", mode="r")
    qk = root["runs/main/attention/IN01.attn2/qk"][...]  # [call, image, guidance, head, query, token]
    k_st = root["runs/main/attention/IN01.attn2/k"][...]
    vqk = root["runs/main/attention/IN01.attn2/vqk"][...]
    heads = attn.heads
    for call in range(2):
        q, k, v = (seen[n][call].double() for n in ("q", "k", "v"))  # [batch(uncond, cond), N, inner]
        b, nq, inner = q.shape
        d = inner // heads
        qh = q.view(b, nq, heads, d).permute(0, 2, 1, 3)
        kh = k.view(b, -1, heads, d).permute(0, 2, 1, 3)
        vh = v.view(b, -1, heads, d).permute(0, 2, 1, 3)
        probs = torch.softmax(torch.einsum("bhqd,bhkd->bhqk", qh, kh) / d**0.5, dim=-1)
        for g in range(2):
            np.testing.assert_allclose(qk[call, 0, g], probs[g].numpy(), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(k_st[call, 0, g], kh[g].numpy(), rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(vqk[call, 0, g], (probs[g] @ vh[g]).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(qk.sum(-1), 1.0, atol=1e-5)


def test_attention_recording_never_changes_the_picture_and_restores_processors(tmp_path):
    for model in ("tiny-sd1", "tiny-sdxl"):
        pipe = make_pipe(model)
        before = dict(pipe.unet.attn_processors)
        plain = generate(pipe, steps=3)
        opts = AttentionOptions(features=("qk", "k", "vqk"), self_attention=True, query_stride=2)
        with dumpunet.record(pipe, tmp_path / f"{model}.zarr", attention=opts, progress=False):
            wrapped = dict(pipe.unet.attn_processors)
            recorded = generate(pipe, steps=3)
        assert np.array_equal(plain, recorded)
        after = dict(pipe.unet.attn_processors)
        assert after.keys() == before.keys() and all(after[n] is before[n] for n in before)
        some = next(iter(wrapped.values()))
        assert inspect.signature(some.__call__) == inspect.signature(next(iter(before.values())).__call__)


def test_tokens_of_both_halves_are_stored_for_labels(tmp_path):
    pipe = make_pipe()
    with dumpunet.record(pipe, tmp_path / "a.zarr", blocks="M00", progress=False):
        generate(pipe)
    tokens = dumpunet.open(tmp_path / "a.zarr").run().info.tokens
    cond, uncond = tokens["cond"][0], tokens["uncond"][0]
    assert list(cond.tokens[: cond.length]) == ["<|startoftext|>", *pipe.tokenizer.tokenize(PROMPT), "<|endoftext|>"]
    assert list(uncond.tokens[: uncond.length]) == ["<|startoftext|>", "bad</w>", "anatomy</w>", "<|endoftext|>"]
    assert len(cond.ids) == 77


def test_self_attention_filters_shape_what_is_stored(tmp_path):
    pipe = make_pipe()
    opts = AttentionOptions(features=(), self_attention=True, self_blocks="IN01, OUT11", self_steps="2",
                            self_heads="mean", query_region=(0.0, 0.0, 0.5, 0.5), query_stride=2)
    with dumpunet.record(pipe, tmp_path / "s.zarr", blocks="M00", attention=opts, dtype="fp32", progress=False):
        generate(pipe, steps=3)
    store = dumpunet.open(tmp_path / "s.zarr")
    assert store.run().info.attention_layers == ("IN01.attn1", "OUT11.attn1")
    arr = zarr.open_array(tmp_path / "s.zarr/runs/main/attention/IN01.attn1/qk", mode="r")
    assert arr.shape == (3, 1, 2, 1, 4, 64)  # 3 calls; heads averaged; 2x2 queries of the top-left quarter of 8x8
    assert arr.attrs["query_rows"] == [0, 2] and arr.attrs["query_cols"] == [0, 2] and arr.attrs["heads"] == "mean"
    data = arr[...]
    assert np.all(data[[0, 2]] == 0) and np.allclose(data[1].sum(-1), 1.0, atol=1e-5)  # only step 2 holds maps
    assert arr.attrs["recorded_steps"] == "2"
    report = validate(tmp_path / "s.zarr")
    assert report.ok, report.problems


def test_self_attention_head_mean_is_the_mean_of_the_heads(tmp_path):
    pipe = make_pipe()
    kw = dict(features=(), self_attention=True, self_blocks="OUT11")
    with dumpunet.record(pipe, tmp_path / "all.zarr", blocks="M00", attention=AttentionOptions(**kw), dtype="fp32", progress=False):
        generate(pipe)
    with dumpunet.record(pipe, tmp_path / "mean.zarr", blocks="M00", attention=AttentionOptions(**kw, self_heads="mean"),
                         dtype="fp32", progress=False):
        generate(pipe)
    full = zarr.open_array(tmp_path / "all.zarr/runs/main/attention/OUT11.attn1/qk", mode="r")[...]
    mean = zarr.open_array(tmp_path / "mean.zarr/runs/main/attention/OUT11.attn1/qk", mode="r")[...]
    np.testing.assert_allclose(mean[:, :, :, 0], full.mean(axis=3), rtol=1e-5, atol=1e-7)


def test_info_lists_attention_layers_with_heads_and_tokens_read_from_the_arrays(tmp_path):
    from dumpunet.store.summary import describe, summarize

    pipe = make_pipe()
    opts = AttentionOptions(features=("qk", "k"), blocks="IN01, M00", self_attention=True, self_blocks="OUT11",
                            self_heads="mean", query_stride=2)
    with dumpunet.record(pipe, tmp_path / "a.zarr", blocks="M00", attention=opts, progress=False):
        generate(pipe, steps=1)
    s = summarize(tmp_path / "a.zarr")
    layers = s.runs["main"].attention
    assert [layer.name for layer in layers] == ["IN01.attn2", "M00.attn2", "OUT11.attn1"]
    text = describe(s)
    listed = s.to_json()["runs"]["main"]["attention"]
    for layer, doc in zip(layers, listed):
        qk = zarr.open_array(tmp_path / f"a.zarr/runs/main/attention/{layer.name}/qk", mode="r")
        _, _, _, heads, queries, tokens = qk.shape
        assert (layer.heads, layer.tokens, layer.queries) == (heads, tokens, queries)
        assert (doc["heads"], doc["tokens"], doc["queries"]) == (heads, tokens, queries)
        row = next(line.split() for line in text.splitlines() if line.split()[:1] == [layer.name])
        heads_text = [str(heads)] if layer.cross_attention else [str(heads), "(mean)"]
        assert row[1:] == ["cross" if layer.cross_attention else "self", "x".join(map(str, layer.layer_hw)), *heads_text,
                           str(tokens), str(queries), "+".join(layer.features)]
    assert layers[0].heads > 1 and layers[0].tokens == 77 and layers[0].features == ["qk", "k"]
    assert layers[2].heads == 1 and layers[2].heads_mode == "mean" and layers[2].tokens == layers[2].layer_hw[0] * layers[2].layer_hw[1]
