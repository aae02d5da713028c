"""``dumpunet record`` from the command line, on the embedded tiny models."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
from waiting import BACKSTOP, wait_until

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from click.testing import CliRunner  # noqa: E402

import dumpunet  # noqa: E402
from dumpunet.store.validate import validate  # noqa: E402
from dumpunet.cli import main  # noqa: E402

pytestmark = pytest.mark.recorder


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_record_then_info_lists_every_block_with_shapes(tmp_path):
    out = tmp_path / "girl.zarr"
    res = invoke("record", "--prompt", "a cute girl, pink hair", "--sampling-steps", "3", "--sampler", "DPM++ 2M Karras",
                 "--cfg", "7", "--seed", "1719471015", "--blocks", "IN00-OUT11", "--width", "64", "--height", "64",
                 "--out", str(out), "--quiet", "--json")
    assert res.exit_code == 0, res.output
    assert res.stderr == ""  # --quiet: no bar, no estimate, no summary line
    summary = json.loads(res.stdout)
    assert (summary["out"], summary["seed"], summary["steps"], summary["calls"], summary["runs"]) == (
        str(out), 1719471015, 3, 3, ["main"])
    assert summary["estimate"]["runs"] == 1 and summary["estimate"]["total_bytes"] > 0
    info = invoke("info", str(out))
    assert info.exit_code == 0
    rows = [line.split() for line in info.output.splitlines() if line.startswith("  IN") or line.startswith("  M00") or line.startswith("  OUT")]
    assert [r[0] for r in rows] == list(dumpunet.specs.SD1_BLOCKS)
    table = {b["name"]: b for b in json.loads(invoke("info", str(out), "--json").output)["blocks"]}
    store = dumpunet.open(out)
    for r in rows:
        assert r[2] == "x".join(map(str, table[r[0]]["output_shape"]))
        assert store.features(r[0], 3).shape == tuple(table[r[0]]["output_shape"])
    assert "prompt           a cute girl, pink hair" in info.output
    assert "seed             1719471015" in info.output
    assert "sampler          DPM++ 2M Karras" in info.output
    assert "steps            1-3 of 3 complete (3 U-Net calls)" in info.output
    assert invoke("validate", str(out)).output.strip().endswith(": ok")


def test_cli_image_matches_the_plain_pipeline(tmp_path):
    from dumpunet.recorder.samplers import make_scheduler
    from dumpunet.recorder.tiny import build_tiny_pipeline

    out = tmp_path / "r.zarr"
    res = invoke("record", "--model", "tiny-sdxl", "--prompt", "a cat", "--negative-prompt", "blurry", "--sampling-steps", "4",
                 "--sampler", "Euler", "--seed", "42", "--width", "64", "--height", "64", "--out", str(out), "--quiet")
    assert res.exit_code == 0, res.output
    pipe = build_tiny_pipeline("tiny-sdxl")
    pipe.scheduler = make_scheduler("Euler", pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    plain = pipe(prompt="a cat", negative_prompt="blurry", num_inference_steps=4, guidance_scale=7.0, height=64,
                 width=64, generator=[torch.Generator().manual_seed(42)], output_type="np").images
    np.testing.assert_array_equal(dumpunet.open(out).image(0), (plain[0] * 255).round().astype(np.uint8))


def test_dry_run_prints_the_estimate_and_writes_nothing(tmp_path):
    out = tmp_path / "d.zarr"
    res = invoke("record", "--sampling-steps", "20", "--width", "64", "--height", "64", "--blocks", "IN01, OUT11",
                 "--out", str(out), "--dry-run")
    assert res.exit_code == 0
    assert "2 blocks x 20 U-Net calls" in res.output and "64x64, batch 1, cfg on, fp16" in res.output
    assert not out.exists()


def test_the_old_steps_count_still_works_with_one_deprecation_line(tmp_path):
    common = ["--width", "64", "--height", "64", "--blocks", "IN01", "--out", str(tmp_path / "d.zarr"), "--dry-run"]
    old = CliRunner().invoke(main, ["record", "--steps", "7", *common])
    new = CliRunner().invoke(main, ["record", "--sampling-steps", "7", *common])
    assert old.exit_code == 0 and new.exit_code == 0, old.output + new.output
    line = ("warning: record --steps is deprecated and goes in dumpunet 0.3: write --sampling-steps (--steps will "
            "choose the steps to record, as in render; today that is --record-steps)")
    assert old.stderr.splitlines() == [line, *new.stderr.splitlines()]
    assert "1 blocks x 7 U-Net calls" in new.stderr
    estimate = json.loads(CliRunner().invoke(main, ["record", "--sampling-steps", "7", "--json", *common]).stdout)
    assert estimate["estimate"]["block_bytes"] == 7 * 2 * json.loads(  # cfg on: two U-Net halves a step
        CliRunner().invoke(main, ["record", "--sampling-steps", "1", "--json", "--cfg", "1", *common]).stdout
    )["estimate"]["block_bytes"]
    both = CliRunner().invoke(main, ["record", "--steps", "7", "--sampling-steps", "7", *common])
    assert both.exit_code == 2 and "give --sampling-steps only" in both.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--blocks", "IN00-IN12"], "Error: bad --blocks: unknown block 'IN12' (this model has IN00..OUT11)\n  IN00-IN12\n       ^^^^"),
        (["--model", "tiny-sdxl", "--blocks", "IN10"], "Error: bad --blocks: unknown block 'IN10' (this model has IN00..OUT08)"),
        (["--sampling-steps", "5", "--record-steps", "1-6"], "Error: bad --record-steps: step 6 out of range 1..5\n  1-6\n    ^"),
        (["--sampler", "Euler b"], "Error: unknown sampler 'Euler b'"),
        (["--model", "missing/dir/model"], "Error: no model at missing/dir/model"),
        (["--width", "100"], "Error: --width must be a positive multiple of 8, got 100"),
    ],
)
def test_bad_input_gets_one_readable_line_and_no_store(tmp_path, args, message):
    out = tmp_path / "x.zarr"
    res = CliRunner().invoke(main, ["record", "--out", str(out), "--sampling-steps", "3", *args])
    assert res.exit_code == 1, res.output
    assert res.output.startswith(message), res.output
    assert "Traceback" not in res.output
    assert not out.exists()


def test_existing_store_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "r.zarr"
    base = ["record", "--sampling-steps", "2", "--width", "64", "--height", "64", "--blocks", "M00", "--quiet", "--out", str(out)]
    assert invoke(*base).exit_code == 0
    res = CliRunner().invoke(main, base)
    assert res.exit_code == 1 and f"{out} already exists; choose another --out or pass --overwrite" in res.output
    assert invoke(*base, "--overwrite", "--seed", "3").exit_code == 0
    assert dumpunet.open(out).run().info.seed == 3


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    fake = tmp_path / "model.safetensors"
    fake.write_text("this is not a checkpoint")
    res = CliRunner().invoke(main, ["record", "--model", str(fake), "--out", str(tmp_path / "o.zarr")])
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert str(fake) in res.output


def _record_proc(out, *extra):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "dumpunet.cli", "record", "--sampling-steps", "400", "--width", "64", "--height", "64",
         "--blocks", "IN00-OUT11", "--out", str(out), "--quiet", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _wait_for_calls(proc, out, n):
    """Wait until the recording in ``proc`` has completed more than ``n`` U-Net calls (its call table says so)."""
    import zarr

    done = out / "runs/main/call_done"
    wait_until(lambda: zarr.open_array(done, mode="r").shape[0] > n, proc=proc, what=f"{n + 1} recorded U-Net calls")


@pytest.mark.slow
def test_kill_9_mid_record_leaves_a_sound_store(tmp_path):
    out = tmp_path / "k.zarr"
    proc = _record_proc(out)
    try:
        _wait_for_calls(proc, out, 4)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(BACKSTOP)
    info = invoke("info", str(out))
    assert info.exit_code == 0 and "INCOMPLETE" in info.output
    assert invoke("validate", str(out)).exit_code == 0
    store = dumpunet.open(out)
    assert len(store.steps) >= 4
    assert store.features("OUT11", store.steps[-1]).shape[0] > 0
    assert validate(out).ok


@pytest.mark.slow
def test_sigterm_and_ctrl_c_stop_cleanly_with_a_message(tmp_path):
    out = tmp_path / "t.zarr"
    proc = _record_proc(out)
    try:
        _wait_for_calls(proc, out, 3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=BACKSTOP)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("Error: interrupted; complete steps (1-")
    run = dumpunet.open(out).run()
    assert run.info.interrupted == "interrupted (Ctrl-C)"
    assert validate(out).ok


def test_a_recording_over_max_bytes_is_refused_with_the_estimate(tmp_path):
    out = tmp_path / "big.zarr"
    res = CliRunner().invoke(main, ["record", "--sampling-steps", "20", "--width", "512", "--height", "512", "--self-attention",
                                    "--max-bytes", "1000000", "--out", str(out)])
    assert res.exit_code == 1
    lines = res.output.splitlines()
    assert lines[0].startswith("size estimate: ") and "self-attention" in lines[2]
    assert lines[-1].startswith("Error: the recording would write about ")
    assert lines[-1].endswith("more than --max-bytes 1.00 MB; record fewer blocks, steps or attention layers (or raise --max-bytes)")
    assert not out.exists()


def test_self_attention_filters_shrink_the_estimate(tmp_path):
    from dumpunet.recorder import job as recording

    job = recording.prepare(recording.RecordRequest(out=tmp_path / "x.zarr"))
    sizes = {}
    for name, extra in {
        "all": {},
        "mean": {"self_attention_heads": "mean"},
        "stride": {"query_stride": 2},
        "steps": {"self_attention_steps": "1-5"},
    }.items():
        req = recording.RecordRequest(out=tmp_path / "x.zarr", sampling_steps=20, width=128,
                                      height=128, attention="none", self_attention=True, blocks="none", **extra)
        sizes[name] = recording.estimate(dataclasses.replace(job, req=req)).self_attention_bytes
    assert sizes["mean"] * 2 == sizes["all"]  # tiny-sd1 has 2 heads
    assert sizes["stride"] * 4 == sizes["all"]
    assert sizes["steps"] * 4 == sizes["all"]


def test_img2img_from_the_cli_records_the_executed_steps(tmp_path):
    from PIL import Image

    photo = tmp_path / "photo.png"
    Image.fromarray(np.full((96, 80, 3), 128, np.uint8)).save(photo)
    out = tmp_path / "i2i.zarr"
    res = invoke("record", "--init-image", str(photo), "--strength", "0.6", "--sampling-steps", "10", "--width", "64",
                 "--height", "64", "--blocks", "M00", "--attention", "none", "--out", str(out), "--quiet")
    assert res.exit_code == 0, res.output
    run = dumpunet.open(out).run()
    assert run.steps == [1, 2, 3, 4, 5, 6] and run.info.strength == 0.6 and run.info.init_image == str(photo)
    res = CliRunner().invoke(main, ["record", "--init-image", str(tmp_path / "nope.png"), "--out", str(tmp_path / "x.zarr")])
    assert res.exit_code == 1 and res.output.startswith(f"Error: no init image at {tmp_path / 'nope.png'}")


def _store(path):
    from dumpunet.store.writer import StoreWriter

    StoreWriter(path, model={"name": "x"}, versions={}).close()
    return path


def test_an_out_that_record_must_not_touch_is_one_line_and_touches_nothing(tmp_path, monkeypatch):
    store = _store(tmp_path / "a.zarr")
    (tmp_path / "dangling.zarr").symlink_to(tmp_path / "nowhere.zarr")
    (tmp_path / "link.zarr").symlink_to(store)
    base = ["record", "--sampling-steps", "2", "--width", "64", "--height", "64", "--blocks", "M00", "--quiet", "--overwrite"]
    monkeypatch.chdir(store)
    res = CliRunner().invoke(main, [*base, "--out", ""])
    assert res.exit_code == 2 and "an empty path names no file or folder" in res.output, res.output
    res = CliRunner().invoke(main, [*base, "--out", "."])
    assert (res.exit_code, res.output) == (1, "Error: . is the folder you are in (or holds it); give --out a new folder name\n")
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(main, [*base, "--out", "dangling.zarr"])
    assert (res.exit_code, res.output) == (1, (f"Error: dangling.zarr is a symbolic link to {tmp_path / 'nowhere.zarr'}, "
                                               "which does not exist; give --out the store's real path or a new name\n"))
    res = CliRunner().invoke(main, [*base, "--out", "link.zarr"])
    assert (res.exit_code, res.output) == (1, (f"Error: link.zarr is a symbolic link to {store}; "
                                               "give --out the store's real path or a new name\n"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr", "dangling.zarr", "link.zarr"]
    assert sorted(p.name for p in store.iterdir()) == ["zarr.json"]
    assert json.loads((store / "zarr.json").read_text())["attributes"]["model"] == {"name": "x"}


@pytest.mark.slow
def test_a_second_overwrite_refuses_while_the_first_records_and_leaves_its_store_alone(tmp_path):
    out = tmp_path / "busy.zarr"
    proc = _record_proc(out)
    try:
        _wait_for_calls(proc, out, 1)
        res = CliRunner().invoke(main, ["record", "--sampling-steps", "2", "--blocks", "M00", "--quiet", "--overwrite",
                                        "--out", str(out)])
        assert (res.exit_code, res.output) == (1, (f"Error: {out} is being recorded by process {proc.pid} (lock file "
                                                   f"{tmp_path / '.busy.zarr.lock'}); wait for it to finish or stop "
                                                   "it, or choose another --out\n"))
        _wait_for_calls(proc, out, 6)  # the first goes on
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert err.strip().splitlines()[-1].startswith("Error: interrupted; complete steps (1-"), err
    assert validate(out).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy.zarr"]  # its lock file went with it


def test_disk_speed_adds_the_disk_time_to_the_estimate(tmp_path):
    out = tmp_path / "d.zarr"
    res = invoke("record", "--sampling-steps", "20", "--width", "64", "--height", "64", "--blocks", "IN01, OUT11",
                 "--disk-speed", "50", "--out", str(out), "--dry-run")
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("disk time: "))
    est = res.output.splitlines()[0].split()[2:4]  # "size estimate: 123.45 KB raw"
    assert line.endswith(f"to write {' '.join(est)} at 50 MB/s (--disk-speed)")
    assert "disk-bound" not in res.output  # a CPU U-Net is slower than any disk
    bad = invoke("record", "--disk-speed", "0", "--out", str(out), "--dry-run")
    assert bad.exit_code == 2 and "--disk-speed" in bad.output


@pytest.mark.slow
def test_two_processes_record_the_same_bytes_on_the_same_thread_count(tmp_path):
    # what README's "One command records the same bytes again" promises and docs/make_images.sh relies on;
    # the processes differ in their hash seed (set and dict orders of strings) but not in torch's threads
    stores = []
    for hash_seed in ("1", "2"):
        (tmp_path / hash_seed).mkdir()
        out = tmp_path / hash_seed / "pair.zarr"  # one name: the store's name is in its attributes
        env = {**os.environ, "OMP_NUM_THREADS": "2", "PYTHONHASHSEED": hash_seed}
        proc = subprocess.run(
            [sys.executable, "-m", "dumpunet.cli", "record", "--prompt", "a (~: IN00-OUT11: cute; M00: excellent :~) girl",
             "--pair", "--seed", "3292581281", "--sampling-steps", "2", "--width", "64", "--height", "64",
             "--quiet", "--out", str(out)],
            capture_output=True, text=True, env=env, timeout=BACKSTOP, check=False)
        assert proc.returncode == 0, proc.stderr
        stores.append({p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()})
    first, second = stores
    assert first.keys() == second.keys() and len(first) > 100
    root = [json.loads(s["zarr.json"]) for s in stores]
    for r in root:
        r["attributes"]["dumpunet"].pop("created")  # the one value that may differ: when the store was made
    assert root[0] == root[1]
    assert [name for name in first if name != "zarr.json" and first[name] != second[name]] == []
