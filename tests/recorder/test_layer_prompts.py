"""Per-block prompts on real (tiny) U-Nets: invariants, where the change acts, pairs and sweeps."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from click.testing import CliRunner  # noqa: E402

import dumpunet  # noqa: E402
from dumpunet.cli import main  # noqa: E402
from dumpunet.layouts import BUILTIN_LAYOUTS, BUILTIN_STRUCTURES  # noqa: E402
from dumpunet.prompts import parse_layer_prompt  # noqa: E402
from dumpunet.recorder.blocks import unet_blocks, unet_structure  # noqa: E402
from dumpunet.recorder.conditioning import BlockConditioning  # noqa: E402
from dumpunet.recorder.samplers import make_scheduler  # noqa: E402
from dumpunet.recorder.tiny import build_tiny_pipeline  # noqa: E402
from dumpunet.store.schema import PairInfo  # noqa: E402

pytestmark = pytest.mark.recorder


def make_pipe(name):
    pipe = build_tiny_pipeline(name)
    pipe.scheduler = make_scheduler("Euler", pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompt, negative=None, steps=3):
    return pipe(prompt=prompt, negative_prompt=negative, num_inference_steps=steps, height=64, width=64,
                generator=torch.Generator().manual_seed(11), output_type="np").images


def generate_layered(pipe, prompt, negative=None, steps=3):
    names = [u.name for u in unet_blocks(pipe.unet)]
    pos = parse_layer_prompt(prompt).resolve(names)
    neg = parse_layer_prompt(negative).resolve(names) if negative else None
    with BlockConditioning(pipe, pos, neg) as cond:
        return generate(pipe, cond.pipeline_prompt, cond.pipeline_negative, steps)


@pytest.mark.parametrize("model", ["tiny-sd1", "tiny-sdxl"])
def test_builtin_layouts_equal_the_derived_block_tables(model):
    unet = make_pipe(model).unet
    assert unet_structure(unet) == BUILTIN_STRUCTURES[model]  # explain and the recorder read one rule
    units = unet_blocks(unet)
    layout = BUILTIN_LAYOUTS[model]
    assert list(layout.blocks) == [u.name for u in units]
    assert set(layout.cross_attention) == {u.name for u in units if u.cross_attention}
    assert layout.aliases == {m: u.name for u in units for m in u.modules}


@pytest.mark.parametrize("model", ["tiny-sd1", "tiny-sdxl"])
@pytest.mark.parametrize(
    "layered",
    [
        "a (~: _: cute :~) girl",
        "(~: IN00-M00: a cute girl; OUT00-OUT08: a cute girl; _: a cute girl :~)",
    ],
)
def test_a_layer_prompt_giving_every_block_the_plain_text_is_bit_identical(model, layered):
    pipe = make_pipe(model)
    plain = generate(pipe, "a cute girl", "blurry")
    assert np.array_equal(plain, generate_layered(pipe, layered, "blurry"))
    assert np.array_equal(plain, generate_layered(pipe, layered, "(~: _: blurry :~)"))


def test_a_block_prompt_acts_exactly_from_that_block_on(tmp_path):
    """Step 1: every block before M00 sees the same input and prompt, so only M00 on can differ."""
    pipe = make_pipe("tiny-sd1")
    with dumpunet.record(pipe, tmp_path / "plain.zarr", progress=False):
        generate(pipe, "a cute girl")
    with dumpunet.record(pipe, tmp_path / "layered.zarr", progress=False):
        generate_layered(pipe, "a (~: IN00-OUT11: cute; M00: excellent :~) girl")
    plain, layered = dumpunet.open(tmp_path / "plain.zarr"), dumpunet.open(tmp_path / "layered.zarr")
    for block in plain.blocks[:12]:
        for half in ("uncond", "cond"):
            np.testing.assert_array_equal(plain.features(block, 1, guidance=half), layered.features(block, 1, guidance=half))
    assert not np.array_equal(plain.features("M00", 1), layered.features("M00", 1))
    np.testing.assert_array_equal(plain.features("M00", 1, guidance="uncond"), layered.features("M00", 1, guidance="uncond"))
    assert not np.array_equal(plain.features("IN01", 2), layered.features("IN01", 2))


def test_negative_groups_change_only_the_unconditional_half(tmp_path):
    pipe = make_pipe("tiny-sd1")
    with dumpunet.record(pipe, tmp_path / "plain.zarr", blocks="M00", progress=False):
        generate(pipe, "a cute girl", "blurry")
    with dumpunet.record(pipe, tmp_path / "neg.zarr", blocks="M00", progress=False):
        generate_layered(pipe, "a cute girl", "(~: M00: ugly; _: blurry :~)")
    plain, neg = dumpunet.open(tmp_path / "plain.zarr"), dumpunet.open(tmp_path / "neg.zarr")
    np.testing.assert_array_equal(plain.features("M00", 1, guidance="cond"), neg.features("M00", 1, guidance="cond"))
    assert not np.array_equal(plain.features("M00", 1, guidance="uncond"), neg.features("M00", 1, guidance="uncond"))


def invoke(*args):
    return CliRunner().invoke(main, list(args))


def test_pair_records_base_and_layered_with_the_same_seed(tmp_path):
    out = tmp_path / "pair.zarr"
    res = invoke("record", "--prompt", "a (~: IN00-OUT11: cute; M00: excellent :~) girl", "--pair", "--sampling-steps", "3",
                 "--width", "64", "--height", "64", "--seed", "7", "--blocks", "M00, OUT11", "--out", str(out), "--quiet")
    assert res.exit_code == 0, res.output
    store = dumpunet.open(out)
    assert store.pairs == [PairInfo(base="base", layered="layered", label="layered")]
    base, layered = store.pair()
    assert base.info.prompt == "a  girl" and base.info.seed == layered.info.seed == 7
    assert layered.info.block_prompts["cond"]["M00"] == "a excellent girl"
    assert layered.info.block_prompts["cond"]["IN01"] == "a cute girl"
    assert set(layered.info.prompt_tokens) == {"a cute girl", "a excellent girl"}
    assert layered.info.prompt_tokens["a excellent girl"].tokens[:4] == ("<|startoftext|>", "a</w>", "excellent</w>", "girl</w>")
    assert not np.array_equal(base.features("M00", 1), layered.features("M00", 1))
    info = invoke("info", str(out))
    assert "block prompts    IN00-IN11, OUT00-OUT11: 'a cute girl'" in info.output
    assert "                 M00: 'a excellent girl'" in info.output
    assert "pair layered: layered vs base base" in info.output
    # --base chooses the base prompt
    out2 = tmp_path / "pair2.zarr"
    res = invoke("record", "--prompt", "a (~: M00: excellent :~) girl", "--pair", "--base", "a cute girl", "--sampling-steps", "2",
                 "--width", "64", "--height", "64", "--blocks", "M00", "--out", str(out2), "--quiet")
    assert res.exit_code == 0, res.output
    assert dumpunet.open(out2).pair()[0].info.prompt == "a cute girl"


def test_sweep_pairs_one_run_per_block_against_one_base(tmp_path):
    out = tmp_path / "sweep.zarr"
    res = invoke("sweep", "--prompt", "a cute school girl, pink hair, wide shot", "--insert", "bad anatomy",
                 "--into-blocks", "IN01, M00", "--record-blocks", "OUT11", "--sampling-steps", "2", "--width", "64", "--height", "64",
                 "--seed", "5", "--out", str(out), "--quiet")
    assert res.exit_code == 0, res.output
    store = dumpunet.open(out)
    assert store.run_names == ["base", "IN01", "M00"]
    assert [p.label for p in store.pairs] == ["IN01", "M00"]
    base = store.run("base")
    assert base.info.prompt == "a cute school girl, pink hair, wide shot, "
    m00 = store.run("M00").info.block_prompts["cond"]
    assert m00["M00"] == "a cute school girl, pink hair, wide shot, bad anatomy"
    assert m00["IN01"] == "a cute school girl, pink hair, wide shot, "
    assert all(store.run(r).info.seed == 5 for r in store.run_names)
    assert store.run("M00").recorded() == ["OUT11"]


SWEEP_ARGS = ("--prompt", "a cute girl", "--insert", "bad anatomy", "--record-blocks", "OUT11", "--sampling-steps", "2",
              "--width", "64", "--height", "64", "--seed", "5", "--quiet")


def _warnings(output):
    return [line for line in output.splitlines() if "cross-attention" in line]


def test_sweep_estimate_warns_once_about_blocks_without_cross_attention_and_states_per_run_and_total(tmp_path):
    blind = [u.name for u in unet_blocks(make_pipe("tiny-sd1").unet) if not u.cross_attention]
    assert 0 < len(blind) < 25
    res = invoke("sweep", *SWEEP_ARGS, "--into-blocks", "IN00-OUT11", "--dry-run", "--out", str(tmp_path / "s.zarr"))
    assert res.exit_code == 0, res.output
    (warning,) = _warnings(res.output)
    assert warning.startswith(f"warning: {len(blind)} swept block(s) have no cross-attention")
    assert warning.split(": ", 2)[2].split(";")[0] == ", ".join(blind)
    assert f"per run x {1 + 25} runs" in res.output
    skipped = invoke("sweep", *SWEEP_ARGS, "--into-blocks", "IN00-OUT11", "--dry-run", "--skip-no-xattn",
                     "--out", str(tmp_path / "s.zarr"))
    assert skipped.exit_code == 0, skipped.output
    (note,) = _warnings(skipped.output)
    assert note.startswith(f"note: --skip-no-xattn leaves out {len(blind)} block(s)") and note.endswith(", ".join(blind))
    assert f"per run x {1 + 25 - len(blind)} runs" in skipped.output
    assert not (tmp_path / "s.zarr").exists()


def test_the_old_sweep_blocks_spelling_still_names_the_targets_with_one_deprecation_line(tmp_path):
    common = [*SWEEP_ARGS, "--dry-run", "--out", str(tmp_path / "s.zarr")]
    old, new = invoke("sweep", *common, "--blocks", "IN01, M00"), invoke("sweep", *common, "--into-blocks", "IN01, M00")
    assert old.exit_code == 0 and new.exit_code == 0, old.output + new.output
    assert old.stderr.splitlines() == [
        "warning: sweep --blocks is deprecated and goes in dumpunet 0.3: write --into-blocks (--blocks will name the "
        "blocks to record, as in record; today that is --record-blocks)", *new.stderr.splitlines()]
    assert "per run x 3 runs" in new.stderr


def test_a_swept_block_without_cross_attention_equals_the_base_and_skip_no_xattn_leaves_it_out(tmp_path):
    out = tmp_path / "s.zarr"
    res = invoke("sweep", *SWEEP_ARGS, "--into-blocks", "IN00, IN01", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert _warnings(res.output)[0].split(": ", 2)[2].startswith("IN00;")
    store = dumpunet.open(out)
    np.testing.assert_array_equal(store.run("IN00").image(0), store.run("base").image(0))  # the warning's claim
    assert not np.array_equal(store.run("IN01").image(0), store.run("base").image(0))
    res = invoke("sweep", *SWEEP_ARGS, "--into-blocks", "IN00, IN01", "--skip-no-xattn", "--out", str(out), "--overwrite")
    assert res.exit_code == 0, res.output
    assert dumpunet.open(out).run_names == ["base", "IN01"]
    res = invoke("sweep", *SWEEP_ARGS, "--into-blocks", "IN00", "--skip-no-xattn", "--dry-run", "--out", str(tmp_path / "t.zarr"))
    assert res.exit_code != 0 and "Error: --skip-no-xattn leaves no block: none of IN00 has cross-attention" in res.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt", "a cute girl", "--pair"], "Error: --pair needs a layer-prompt group"),
        (["--prompt", "a (~: IN00: cute girl"], "Error: bad layer prompt: unclosed group"),
        (["--model", "tiny-sdxl", "--prompt", "a (~: OUT11: cute :~) girl"],
         "Error: bad layer prompt: unknown block 'OUT11' (this model has IN00..OUT08)\n  a (~: OUT11: cute :~) girl\n        ^^^^^"),
    ],
)
def test_bad_layer_prompts_record_nothing(tmp_path, args, message):
    out = tmp_path / "x.zarr"
    res = invoke("record", *args, "--sampling-steps", "2", "--width", "64", "--height", "64", "--out", str(out))
    assert res.exit_code == 1, res.output
    assert res.output.startswith(message), res.output
    assert not out.exists()
