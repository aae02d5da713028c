"""The recording plan: one source for the estimate, the recorder's arrays and the store's root attributes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import zarr  # noqa: E402

import dumpunet  # noqa: E402
from dumpunet.errors import OptionError, RecordError  # noqa: E402
from dumpunet.recorder import job as recording  # noqa: E402
from dumpunet.recorder.attention_capture import attention_probs  # noqa: E402
from dumpunet.recorder.attention_layers import AttentionOptions  # noqa: E402
from dumpunet.recorder.request import RecordRequest, check, resolve_seed  # noqa: E402
from dumpunet.store import schema  # noqa: E402
from dumpunet.store.schema import RootAttrs  # noqa: E402
from test_attention import make_pipe  # noqa: E402  (one tiny-pipeline builder for the attention tests)

pytestmark = pytest.mark.recorder


def generate(pipe, steps=2):
    return pipe(prompt="a cute girl", negative_prompt="blurry", num_inference_steps=steps, height=64, width=64,
                generator=torch.Generator().manual_seed(3), output_type="np").images


# --------------------------------------------------------------------------- softmax branches


def test_head_by_head_softmax_gives_the_one_shot_maps_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 64, 16, generator=gen, dtype=torch.float16)
    k = torch.randn(2, 4, 64, 16, generator=gen, dtype=torch.float16)
    index = torch.tensor([0, 5, 17, 63])
    for query_index in (None, index):
        for head_mean in (False, True):
            one, by_head = {}, {}
            a = attention_probs(q, k, 0.25, query_index, head_mean, scratch=one)
            b = attention_probs(q, k, 0.25, query_index, head_mean, scratch=by_head, one_shot_bytes=0)
            # the scratch buffers show which branch ran: all heads at once, or one head's scores
            assert [key[:-1] for key in one] == [(2, 4, 64 if query_index is None else 4, 64)]
            assert [key[:-1] for key in by_head] == [(2, 64 if query_index is None else 4, 64)]
            assert a.shape == b.shape == (2, 1 if head_mean else 4, 64 if query_index is None else 4, 64)
            assert torch.equal(a, b)
            exact = torch.softmax(q.double()[:, :, query_index if query_index is not None else slice(None)]
                                  @ k.double().transpose(-1, -2) * 0.25, dim=-1)
            exact = exact.mean(dim=1, keepdim=True) if head_mean else exact
            np.testing.assert_allclose(b.numpy(), exact.numpy(), rtol=0, atol=2e-7)


def test_head_by_head_branch_stores_the_same_self_attention_maps(tmp_path):
    pipe = make_pipe()
    kw = dict(features=("qk",), self_attention=True, self_blocks="IN01, OUT11", query_stride=2)
    stored = {}
    for name, opts in {"one-shot": AttentionOptions(**kw), "by-head": AttentionOptions(**kw, one_shot_bytes=0)}.items():
        with dumpunet.record(pipe, tmp_path / f"{name}.zarr", blocks="none", attention=opts, dtype="fp32", progress=False):
            generate(pipe)
        root = zarr.open_group(tmp_path / f"{name}.zarr", mode="r")
        stored[name] = {layer: root[f"runs/main/attention/{layer}/qk"][...] for layer in ("IN01.attn1", "OUT11.attn1", "IN01.attn2")}
    for layer, maps in stored["one-shot"].items():
        assert maps.any()
        np.testing.assert_array_equal(stored["by-head"][layer], maps)


# --------------------------------------------------------------------------- one plan, two paths


def test_estimate_equals_what_the_recording_creates(tmp_path):
    req = RecordRequest(out=tmp_path / "e.zarr", sampling_steps=3, sampler="Euler", width=64, height=64, blocks="IN00, M00",
                        inputs=True, attention="qk,k", self_attention=True, self_attention_blocks="OUT11",
                        self_attention_steps="2-3", quiet=True, seed=5)
    job = recording.prepare(req)
    est = recording.estimate(job)
    recording.execute(job)
    root = zarr.open_group(req.out, mode="r")
    arrays = {path: a for path, a in root.members(max_depth=None) if isinstance(a, zarr.Array)}

    def nbytes(kind: str, layer: str = "") -> int:  # the data arrays; the small coordinate arrays are not estimated
        return sum(a.nbytes for p, a in arrays.items()
                   if f"/{kind}/" in p and layer in p and p.rsplit("/", 1)[-1] not in schema.COORDS)

    assert est.calls == 3 and est.blocks == 2
    assert est.block_bytes == nbytes("blocks")
    assert est.attention_bytes - est.self_attention_bytes == nbytes("attention", "attn2")
    # self-attention is written at 2 of the 3 calls; its array holds every call
    assert est.self_attention_bytes * 3 == nbytes("attention", "attn1") * 2


def test_api_and_cli_write_the_same_root_attributes(tmp_path):
    job = recording.prepare(RecordRequest(out=tmp_path / "cli.zarr", sampling_steps=2, sampler="Euler", width=64, height=64,
                                          blocks="M00", quiet=True))
    assert job.req.seed >= 0  # drawn where the recording starts
    summary = recording.execute(job)
    with dumpunet.record(job.pipe, tmp_path / "api.zarr", blocks="M00", model_info=job.model_info, progress=False):
        generate(job.pipe)
    cli, api = (RootAttrs.from_json(dict(zarr.open_group(tmp_path / n, mode="r").attrs), n) for n in ("cli.zarr", "api.zarr"))
    assert dataclasses.replace(cli, header=api.header) == api
    assert api.model["unet_fingerprint"] and api.model["source"] == "embedded" and api.blocks
    assert summary.seed == job.req.seed == dumpunet.open(tmp_path / "cli.zarr").run().info.seed


# --------------------------------------------------------------------------- the request is a value


def test_a_request_is_a_value_checked_against_the_disk_separately(tmp_path):
    out = tmp_path / "exists.zarr"
    out.mkdir()
    state = torch.get_rng_state()
    req = RecordRequest(out=out, init_image=tmp_path / "missing.png")  # no disk look, no random draw
    assert req.seed == -1 and torch.equal(torch.get_rng_state(), state)
    with pytest.raises(dataclasses.FrozenInstanceError):
        req.seed = 3  # type: ignore[misc]
    with pytest.raises(RecordError, match=f"^no init image at {tmp_path / 'missing.png'}$"):
        check(req)
    with pytest.raises(RecordError, match="already exists; choose another --out or pass --overwrite$"):
        check(dataclasses.replace(req, init_image=None))
    check(dataclasses.replace(req, init_image=None, overwrite=True))
    drawn = resolve_seed(req)
    assert 0 <= drawn.seed < 2**32 - 1 and req.seed == -1 and torch.equal(torch.get_rng_state(), state)
    assert resolve_seed(dataclasses.replace(req, seed=7)).seed == 7
    with pytest.raises(OptionError, match="^--width must be a positive multiple of 8, got 100$"):
        RecordRequest(out=Path("x.zarr"), width=100)
