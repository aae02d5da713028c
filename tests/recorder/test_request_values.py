"""The numeric ranges of :class:`~dumpunet.recorder.request.RecordRequest`: checked when it is made, in one table."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from fuzz import FUZZ, outcome
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from dumpunet.errors import OptionError  # noqa: E402
from dumpunet.recorder.request import MAX_SEED, RANGES, RecordRequest  # noqa: E402

pytestmark = pytest.mark.recorder
OUT = Path("/nonexistent/x.zarr")  # nothing is written: every check here happens before the disk is looked at


def request(**kw):
    return RecordRequest(out=OUT, **kw)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"sampling_steps": 1_000_000_000}, "--sampling-steps must be between 1 and 10000, got 1000000000"),
        ({"sampling_steps": 0}, "--sampling-steps must be between 1 and 10000, got 0"),
        ({"seed": 99999999999999999999999}, f"--seed must be between -1 and {MAX_SEED}, got 99999999999999999999999"),
        ({"seed": -2}, f"--seed must be between -1 and {MAX_SEED}, got -2"),
        ({"seed": MAX_SEED, "batch_size": 2}, f"--seed {MAX_SEED} + --batch-size 2 - 1 passes the largest seed {MAX_SEED}"),
        ({"cfg": math.inf}, "--cfg must be between 0.0 and 100.0, got inf"),
        ({"cfg": 1e308}, "--cfg must be between 0.0 and 100.0, got 1e+308"),
        ({"cfg": math.nan}, "--cfg must be between 0.0 and 100.0, got nan"),
        ({"cfg": -1.0}, "--cfg must be between 0.0 and 100.0, got -1.0"),
        ({"cfg": "7"}, "--cfg must be a number, got '7'"),
        ({"sampling_steps": 2.5}, "--sampling-steps must be a whole number, got 2.5"),
        ({"batch_size": True}, "--batch-size must be a whole number, got True"),
        ({"width": 800_000}, "--width must be between 8 and 8192, got 800000"),
        ({"height": 0}, "--height must be between 8 and 8192, got 0"),
        ({"width": 100}, "--width must be a positive multiple of 8, got 100"),
        ({"batch_size": 100_000_000}, "--batch-size must be between 1 and 256, got 100000000"),
        ({"strength": math.nan}, "--strength must be between 0.0 and 1.0, got nan"),
        ({"strength": 0.0}, "--strength must be in (0, 1], got 0.0"),
        ({"clip_skip": 0}, "--clip-skip must be between 1 and 48, got 0"),
        ({"query_stride": 10_000, "self_attention": True}, "--query-stride must be between 1 and 64, got 10000"),
        ({"max_bytes": -1}, f"--max-bytes must be between 0 and {2**63 - 1}, got -1"),
        ({"device": "meta"}, "device 'meta' holds no data; choose cpu, cuda or mps"),
        ({"sweep_insert": "  "}, "--insert is empty: every run would equal the base run; give the text to insert"),
        ({"query_region": "0,0,0.5,0.5"}, "--query-region only filters self-attention maps; add --self-attention"),
        ({"query_stride": 2, "self_attention_steps": "1"},
         "--query-stride, --self-attention-steps only filter self-attention maps; add --self-attention"),
        ({"self_attention": True, "query_region": "nan,0,1,1"},
         "query region (nan, 0.0, 1.0, 1.0) must be fractions 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1"),
    ],
)
def test_a_value_out_of_range_is_one_line_naming_the_option(kw, message):
    with pytest.raises(OptionError) as err:
        request(**kw)
    assert str(err.value) == message


def test_device_names_torch_does_not_know_are_refused():
    with pytest.raises(OptionError, match=r"^unknown device 'gpu0': "):
        request(device="gpu0")


@pytest.mark.parametrize("name", sorted(RANGES))
def test_both_ends_of_every_range_are_accepted(name):
    lo, hi = RANGES[name]
    if name == "strength":
        lo = 0.01  # (0, 1]: zero leaves no step to run
    extra = {"self_attention": True} if name == "query_stride" else {}
    for v in (lo, hi):
        if name in ("width", "height"):
            v = v // 8 * 8
        assert getattr(request(**{name: v}, **extra), name) == v


def test_a_huge_record_steps_range_is_bounded_by_the_steps_before_expanding():
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(Exception, match=r"bad --record-steps: step 999999999 out of range 1\.\.20"):
            request(sampling_steps=20, record_steps="1-999999999")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # no expansion of the range: well under a megabyte


def test_the_python_api_checks_a_huge_step_range_against_the_steps_that_run(tmp_path):
    import dumpunet
    from dumpunet.errors import SpecError
    from dumpunet.recorder.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("tiny-sd1")
    pipe.set_progress_bar_config(disable=True)
    # the step count is known once the pipeline starts
    with pytest.raises(SpecError) as err, dumpunet.record(pipe, tmp_path / "r.zarr", blocks="M00", steps="1-999999999"):
        pipe("a cat", num_inference_steps=2, height=64, width=64, output_type="np")
    assert str(err.value) == "bad step spec: step 999999999 out of range 1..2\n  1-999999999\n    ^^^^^^^^^"


_NUMBERS = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                     st.none(), st.text(max_size=3))


@FUZZ
@given(st.dictionaries(st.sampled_from(sorted(RANGES)), _NUMBERS, max_size=4))
def test_any_numbers_make_a_request_or_an_option_error(values):
    got = outcome(OptionError, request, **values)
    if isinstance(got, OptionError):
        assert "\n" not in str(got)
        return
    for name, v in values.items():
        lo, hi = RANGES[name]
        assert v is None or lo <= v <= hi


def test_the_old_steps_keyword_is_the_sampling_step_count_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match=r"RecordRequest\(steps=N\) is deprecated: write sampling_steps=N"):
        req = request(steps=7)
    assert req == request(sampling_steps=7)
    assert req.sampling_steps == 7 and req.steps is None
    with pytest.raises(OptionError, match="steps=7 is the old name of sampling_steps; give sampling_steps only"):
        request(steps=7, sampling_steps=9)
