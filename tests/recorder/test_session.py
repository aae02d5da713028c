"""The recorder: bit-identical images, faithful block outputs, step mapping, hook hygiene."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import dumpunet  # noqa: E402
from dumpunet.store.validate import validate  # noqa: E402
from dumpunet.errors import RecordError, SpecError  # noqa: E402
from dumpunet.recorder.blocks import block_table, unet_blocks  # noqa: E402
from dumpunet.recorder.samplers import make_scheduler  # noqa: E402
from dumpunet.recorder.tiny import build_tiny_pipeline  # noqa: E402

pytestmark = pytest.mark.recorder

SIZE = 64


def make_pipe(name: str = "tiny-sd1", sampler: str = "Euler a", *, img2img: bool = False):
    pipe = build_tiny_pipeline(name, img2img=img2img)
    pipe.scheduler = make_scheduler(sampler, pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, *, steps: int = 4, cfg: float = 7.0, seed: int = 1, batch: int = 1, size: int = SIZE, **kw):
    gens = [torch.Generator().manual_seed(seed + i) for i in range(batch)]
    args = dict(prompt="a cute girl, pink hair", negative_prompt="bad anatomy", num_inference_steps=steps,
                guidance_scale=cfg, generator=gens, num_images_per_prompt=batch, output_type="np", **kw)
    if "image" not in kw and "height" not in kw:
        args.update(height=size, width=size)
    return pipe(**args).images


def to_uint8(images: np.ndarray) -> np.ndarray:
    return (images * 255).round().astype(np.uint8)


@pytest.mark.parametrize("model", ["tiny-sd1", "tiny-sdxl"])
@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M Karras", "Heun"])
@pytest.mark.parametrize("cfg", [7.0, 1.0])
def test_recording_never_changes_the_picture(tmp_path, model, sampler, cfg):
    pipe = make_pipe(model, sampler)
    plain = generate(pipe, cfg=cfg)
    with dumpunet.record(pipe, tmp_path / "r.zarr", inputs=True, progress=False):
        recorded = generate(pipe, cfg=cfg)
    assert np.array_equal(plain, recorded)  # bit-identical, float images
    again = generate(pipe, cfg=cfg)  # hooks are gone: still the same picture
    assert np.array_equal(plain, again)
    store = dumpunet.open(tmp_path / "r.zarr")
    np.testing.assert_array_equal(store.image(0), to_uint8(plain)[0])
    assert store.run().guidance_labels == (["uncond", "cond"] if cfg > 1 else ["cond"])
    assert len(store.blocks) == (25 if model == "tiny-sd1" else 19)


def test_stored_outputs_equal_what_a_plain_forward_hook_sees(tmp_path):
    pipe = make_pipe()
    mods = dict(pipe.unet.named_modules())
    units = unet_blocks(pipe.unet)
    seen: dict[str, list] = {u.name: [] for u in units}
    seen_in: dict[str, list] = {u.name: [] for u in units}
    handles = []
    for u in units:
        def out_hook(m, a, o, name=u.name):
            t = o[0] if isinstance(o, tuple) else o
            seen[name].append(t.detach().clone())

        def in_hook(m, a, name=u.name):
            seen_in[name].append(a[0].detach().clone())

        handles.append(mods[u.output_module].register_forward_hook(out_hook))
        handles.append(mods[u.input_module].register_forward_pre_hook(in_hook))
    try:
        for dtype in ("fp32", "fp16"):
            for v in seen.values():
                v.clear()
            for v in seen_in.values():
                v.clear()
            path = tmp_path / f"{dtype}.zarr"
            with dumpunet.record(pipe, path, inputs=True, dtype=dtype, progress=False):
                generate(pipe, steps=3)
            store = dumpunet.open(path)
            assert store.steps == [1, 2, 3]
            for u in units:
                assert len(seen[u.name]) == 3  # one call per step
                for step in (1, 3):
                    ref = seen[u.name][step - 1]  # [uncond, cond] batch
                    ref_in = seen_in[u.name][step - 1]
                    for g, half in enumerate(("uncond", "cond")):
                        want = ref[g].numpy() if dtype == "fp32" else ref[g].half().numpy()
                        np.testing.assert_array_equal(store.features(u.name, step, guidance=half), want)
                        want_in = ref_in[g].numpy() if dtype == "fp32" else ref_in[g].half().numpy()
                        np.testing.assert_array_equal(store.features(u.name, step, guidance=half, which="input"), want_in)
    finally:
        for h in handles:
            h.remove()


def test_hooks_fire_once_per_block_per_call_and_are_removed(tmp_path):
    pipe = make_pipe()
    calls = {"n": 0}
    counter = pipe.unet.conv_in.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    before = {name: (len(m._forward_hooks), len(m._forward_pre_hooks)) for name, m in pipe.unet.named_modules()}
    rec = dumpunet.record(pipe, tmp_path / "r.zarr", blocks="IN00, M00", progress=False)
    with rec:
        generate(pipe, steps=5)
    after = {name: (len(m._forward_hooks), len(m._forward_pre_hooks)) for name, m in pipe.unet.named_modules()}
    assert after == before
    assert calls["n"] == 5 and rec.n_calls == 5
    counter.remove()
    store = dumpunet.open(tmp_path / "r.zarr")
    assert store.run().recorded() == ["IN00", "M00"]


def test_hooks_are_removed_when_the_body_raises(tmp_path):
    pipe = make_pipe()
    before = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in pipe.unet.modules())

    def stop_at_3(p, i, t, kw):
        if i == 2:
            raise KeyboardInterrupt
        return kw

    with pytest.raises(KeyboardInterrupt):
        with dumpunet.record(pipe, tmp_path / "r.zarr", progress=False):
            generate(pipe, steps=6, callback_on_step_end=stop_at_3)
    after = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in pipe.unet.modules())
    assert after == before
    store = dumpunet.open(tmp_path / "r.zarr")
    assert store.steps == [1, 2, 3]  # the callback runs after step 3's U-Net call
    assert not store.run().complete
    assert store.run().info.interrupted == "interrupted (Ctrl-C)"
    assert validate(tmp_path / "r.zarr").ok


@pytest.mark.parametrize(
    ("sampler", "steps", "expected_steps", "expected_substeps"),
    [
        ("Euler", 4, [1, 2, 3, 4], [0, 0, 0, 0]),
        ("Heun", 4, [1, 1, 2, 2, 3, 3, 4], [0, 1, 0, 1, 0, 1, 0]),
        ("DPM2", 3, [1, 1, 2, 2, 3], [0, 1, 0, 1, 0]),
        ("PLMS", 4, [1, 1, 2, 3, 4], [0, 1, 0, 0, 0]),
    ],
)
def test_multi_call_samplers_map_each_call_to_its_step(tmp_path, sampler, steps, expected_steps, expected_substeps):
    pipe = make_pipe(sampler=sampler)
    with dumpunet.record(pipe, tmp_path / "r.zarr", blocks="M00", progress=False):
        generate(pipe, steps=steps)
    run = dumpunet.open(tmp_path / "r.zarr").run()
    assert run.calls.step.tolist() == expected_steps
    assert run.calls.substep.tolist() == expected_substeps
    assert run.steps == list(range(1, steps + 1))
    assert run.info.steps == steps
    if 1 in expected_substeps:
        k = expected_substeps.index(1)
        a = run.features("M00", expected_steps[k], substep=0)
        b = run.features("M00", expected_steps[k], substep=1)
        assert not np.array_equal(a, b)


def test_record_steps_selects_calls(tmp_path):
    pipe = make_pipe()
    with dumpunet.record(pipe, tmp_path / "r.zarr", steps="2,4-5", progress=False):
        generate(pipe, steps=5)
    store = dumpunet.open(tmp_path / "r.zarr")
    assert store.steps == [2, 4, 5]
    assert store.run().info.record_steps == "2,4-5"
    with pytest.raises(dumpunet.errors.SelectionError, match=r"step 3 was not recorded \(recorded steps: 2,4-5\)"):
        store.features("IN01", 3)


def test_step_spec_beyond_the_run_is_an_error(tmp_path):
    pipe = make_pipe()
    with pytest.raises(SpecError, match="step 7 out of range 1..5"):
        with dumpunet.record(pipe, tmp_path / "r.zarr", steps="7", progress=False):
            generate(pipe, steps=5)


def test_unknown_block_is_refused_before_anything_runs(tmp_path):
    pipe = make_pipe("tiny-sdxl")
    with pytest.raises(SpecError, match=r"unknown block 'IN11' \(this model has IN00..OUT08\)"):
        dumpunet.record(pipe, tmp_path / "r.zarr", blocks="IN00-IN11")
    assert not (tmp_path / "r.zarr").exists()


@pytest.mark.parametrize("model", ["tiny-sd1", "tiny-sdxl"])
@pytest.mark.parametrize("hw", [(64, 64), (64, 128), (72, 88)])
def test_derived_shapes_match_the_tensors_at_any_size(model, hw):
    pipe = make_pipe(model)
    lat = (hw[0] // 8, hw[1] // 8)
    table = {b.name: b for b in block_table(pipe.unet, lat)}
    mods = dict(pipe.unet.named_modules())
    seen = {}
    handles = [
        mods[u.output_module].register_forward_hook(
            lambda m, a, o, n=u.name: seen.__setitem__(n, tuple((o[0] if isinstance(o, tuple) else o).shape[1:]))
        )
        for u in unet_blocks(pipe.unet)
    ]
    handles += [
        mods[u.input_module].register_forward_pre_hook(
            lambda m, a, n=u.name: seen.__setitem__(n + ".in", tuple(a[0].shape[1:]))
        )
        for u in unet_blocks(pipe.unet)
    ]
    try:
        generate(pipe, steps=1, height=hw[0], width=hw[1])
    finally:
        for h in handles:
            h.remove()
    for name, info in table.items():
        assert seen[name] == info.output_shape, name
        assert seen[name + ".in"] == info.input_shape, name


def test_sd1_block_table_has_sd1_shapes_at_512():
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_config(
        {"block_out_channels": [320, 640, 1280, 1280], "cross_attention_dim": 768, "attention_head_dim": 8},
    )  # the SD1.5 layout, random weights, never run
    shapes = {b.name: b.output_shape for b in block_table(unet, (64, 64))}
    assert shapes["IN00"] == (320, 64, 64) and shapes["IN03"] == (320, 32, 32)
    assert shapes["IN06"] == (640, 16, 16) and shapes["IN11"] == (1280, 8, 8) and shapes["M00"] == (1280, 8, 8)
    assert shapes["OUT02"] == (1280, 16, 16) and shapes["OUT05"] == (1280, 32, 32)
    assert shapes["OUT08"] == (640, 64, 64) and shapes["OUT11"] == (320, 64, 64)
    assert len(shapes) == 25


def test_batch_images_are_stored_per_image(tmp_path):
    pipe = make_pipe()
    plain = generate(pipe, batch=2, seed=5)
    with dumpunet.record(pipe, tmp_path / "r.zarr", blocks="OUT11", progress=False):
        recorded = generate(pipe, batch=2, seed=5)
    assert np.array_equal(plain, recorded)
    store = dumpunet.open(tmp_path / "r.zarr")
    for i in range(2):
        np.testing.assert_array_equal(store.image(i), to_uint8(plain)[i])
    a, b = store.features("OUT11", 4, image=0), store.features("OUT11", 4, image=1)
    assert a.shape == b.shape and not np.array_equal(a, b)


@pytest.mark.parametrize("model", ["tiny-sd1", "tiny-sdxl"])
def test_img2img_records_the_executed_steps_bit_identically(tmp_path, model):
    pipe = make_pipe(model, "DPM++ 2M", img2img=True)
    init = np.linspace(0, 1, SIZE * SIZE * 3, dtype=np.float32).reshape(1, SIZE, SIZE, 3)
    from PIL import Image

    image = Image.fromarray((init[0] * 255).astype(np.uint8))
    plain = generate(pipe, steps=10, image=image, strength=0.5)
    with dumpunet.record(pipe, tmp_path / "r.zarr", blocks="M00", progress=False):
        recorded = generate(pipe, steps=10, image=image, strength=0.5)
    assert np.array_equal(plain, recorded)
    run = dumpunet.open(tmp_path / "r.zarr").run()
    assert run.steps == [1, 2, 3, 4, 5]
    assert run.info.steps == 5 and run.info.num_inference_steps == 10


def test_an_unhookable_body_is_reported(tmp_path):
    pipe = make_pipe()
    with pytest.raises(RecordError, match="never called the U-Net"):
        with dumpunet.record(pipe, tmp_path / "r.zarr", progress=False):
            pass


def test_the_wait_on_a_slow_writer_is_printed_and_stored_in_the_run(tmp_path, monkeypatch, capsys):
    import time

    from dumpunet.store import writer as writer_module

    write_call = writer_module.write_call
    holder = {}

    def slow_first_call(st, k, *a, **kw):  # a disk that stalls on the first call until the second one is submitted
        if k == 0:
            deadline = time.monotonic() + 60
            while holder["rec"].clock.calls < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.2)
        return write_call(st, k, *a, **kw)

    monkeypatch.setattr(writer_module, "write_call", slow_first_call)
    pipe = make_pipe()
    holder["rec"] = rec = dumpunet.record(pipe, tmp_path / "r.zarr", max_queue_bytes=1)  # one call may wait at a time
    with rec:
        generate(pipe, steps=3)
    assert rec.writer_wait_seconds > 0  # the second call waited for the first
    info = dumpunet.open(tmp_path / "r.zarr").run().info
    assert info.writer_wait_seconds == round(rec.writer_wait_seconds, 3)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"record main: waited {rec.writer_wait_seconds:.2f} s on the store writer (")


def _chunk_files(store) -> dict[str, bytes]:
    """Every file of a store but its zarr.json documents (which hold the time of writing)."""
    return {str(f.relative_to(store)): f.read_bytes() for f in sorted(store.rglob("*")) if f.is_file() and f.name != "zarr.json"}


def test_reused_host_buffers_write_the_same_chunk_files_and_are_never_reused_before_written(tmp_path, monkeypatch):
    import time

    from dumpunet.recorder.attention_layers import AttentionOptions
    from dumpunet.recorder.buffers import HostBuffers
    from dumpunet.recorder.plan import RecordOptions
    from dumpunet.recorder.recorder import Recorder
    from dumpunet.store import writer as writer_module

    write_call = writer_module.write_call

    def slow(*a, **kw):  # a slow disk: the U-Net captures the next call while this one is being written
        time.sleep(0.05)
        return write_call(*a, **kw)

    class Poisoning(HostBuffers):
        """Fills every buffer given back with a value no recording holds: one reused too early shows in the store."""

        def give_back(self, tensors):
            for t in tensors:
                t.fill_(-777.0)
            super().give_back(tensors)

    class NoPool(HostBuffers):
        """Keeps nothing: every buffer is a new one."""

        def fit(self, max_bytes):
            pass

    options = RecordOptions(inputs=True, attention=AttentionOptions(features=("qk",)))
    pipe = make_pipe()
    stores = {}
    for name, pool in (("no pool", NoPool(0)), ("pool", Poisoning(0))):
        monkeypatch.setattr(writer_module, "write_call", slow if name == "pool" else write_call)
        rec = Recorder(pipe, tmp_path / f"{name}.zarr", options=options, progress=False, buffers=pool,
                       max_queue_bytes=1)  # one call waits for the writer at a time
        with rec:
            generate(pipe, steps=6)
        stores[name] = _chunk_files(tmp_path / f"{name}.zarr")
        call = rec.plan.call_bytes(1)
        if name == "no pool":
            assert pool.reused_bytes == 0 and pool.fresh_bytes == 6 * call  
        else:
            # steady state: the call being written and the call being captured, then reuse only
            assert pool.fresh_bytes <= 2 * call and pool.reused_bytes >= 4 * call
            assert pool.held_bytes <= pool.max_bytes == 2 * call
    assert len(stores["pool"]) > 100 and stores["pool"].keys() == stores["no pool"].keys()
    different = [f for f in stores["pool"] if stores["pool"][f] != stores["no pool"][f]]
    assert different == []  # byte-identical chunk files, no poison
