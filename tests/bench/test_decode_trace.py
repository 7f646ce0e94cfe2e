"""bench/decode_trace.py's step accounting: steps end at the argmax kernel, overlapping kernels count once."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from decode_trace import analyse, busy_time, short_name  # noqa: E402


def k(name, ts, dur):
    return {"name": name, "ts": ts, "dur": dur}


def test_overlapping_kernels_count_once_in_the_busy_time():
    assert busy_time([(0, 10), (5, 12), (20, 25)]) == 17
    assert busy_time([(20, 25), (0, 10)]) == 15


def test_short_names_drop_namespaces_templates_and_parameters():
    assert short_name("void vlm::cuda::(anonymous namespace)::argmax_kernel<float>(const float*, int)") == \
        "argmax_kernel"
    assert short_name("w4a16_decode_kernel(int)") == "w4a16_decode_kernel"


def test_steps_run_from_one_argmax_to_the_next():
    # Two whole steps after the first argmax: each a GEMM, an attention kernel overlapping it by 2 µs,
    # and the argmax; 10 µs of idle time before each step's first kernel.
    events = [k("argmax_kernel", 0, 5)]
    for t0 in (15, 50):
        events += [k("gemm<1>", t0, 10), k("attention(int)", t0 + 8, 12), k("argmax_kernel", t0 + 20, 5)]
    r = analyse(list(reversed(events)))  # any order
    assert r["steps"] == 2
    assert r["span_us_median"] == pytest.approx(35)   # argmax ends 5 -> 40 -> 75
    assert r["busy_us_median"] == pytest.approx(25)   # 15..35 and the argmax 35..40
    assert r["kernel_sum_us_median"] == pytest.approx(27)
    assert r["kernels_per_step"] == 3
    rows = {row["kernel"]: row for row in r["by_kernel"]}
    assert rows["attention"]["per_step_us"] == pytest.approx(12)
    # Own time: the GEMM 10 µs, the attention from the GEMM's end (t0 + 10) to its own (t0 + 20), the argmax 5.
    assert [row["kernel"] for row in r["by_kernel"]] == ["gemm", "attention", "argmax_kernel"]
    assert [row["own_per_step_us"] for row in r["by_kernel"]] == pytest.approx([10, 10, 5])
    assert sum(row["own_per_step_us"] for row in r["by_kernel"]) == pytest.approx(r["busy_us_median"])


def test_a_window_without_two_whole_steps_is_refused():
    with pytest.raises(RuntimeError, match="no whole decode step"):
        analyse([k("argmax_kernel", 0, 5), k("gemm", 10, 5), k("argmax_kernel", 20, 5)])
