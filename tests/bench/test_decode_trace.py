"""bench/decode_trace.py's step accounting: a step runs from one embedding kernel to the last kernel before the next,
overlapping kernels count once; a layer's kernel positions are averaged over the layers."""
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


def test_steps_run_from_one_embedding_to_the_next():
    # Two whole steps after the last kernel of the one before: each an embedding, a GEMM, an attention kernel
    # overlapping it by 2 µs, and the argmax; 10 µs of idle time before each step's first kernel; the third
    # step's embedding closes the second.
    events = [k("argmax_kernel", 0, 5)]
    for t0 in (15, 52):
        events += [k("embed_kernel", t0, 2), k("gemm<1>", t0 + 2, 10), k("attention(int)", t0 + 10, 12),
                   k("argmax_kernel", t0 + 22, 5)]
    events.append(k("embed_kernel", 89, 2))
    r = analyse(list(reversed(events)))  # any order
    assert r["steps"] == 2
    assert r["span_us_median"] == pytest.approx(37)   # last ends 5 -> 42 -> 79
    assert r["busy_us_median"] == pytest.approx(27)   # 15..42
    assert r["kernel_sum_us_median"] == pytest.approx(29)
    assert r["kernels_per_step"] == 4
    rows = {row["kernel"]: row for row in r["by_kernel"]}
    assert rows["attention"]["per_step_us"] == pytest.approx(12)
    # Own time: the embedding 2 µs, the GEMM 10, the attention from the GEMM's end (t0 + 12) to its own (t0 + 22),
    # the argmax 5.
    assert [row["kernel"] for row in r["by_kernel"]] == ["gemm", "attention", "argmax_kernel", "embed_kernel"]
    assert [row["own_per_step_us"] for row in r["by_kernel"]] == pytest.approx([10, 10, 5, 2])
    assert sum(row["own_per_step_us"] for row in r["by_kernel"]) == pytest.approx(r["busy_us_median"])


def test_a_step_without_an_argmax_kernel_ends_with_its_last_kernel():
    # At one row the lm head takes the greedy token itself: its kernel ends the step.
    events = [k("dense_decode_kernel", 0, 5)]
    for t0 in (10, 30, 50):
        events += [k("embed_kernel", t0, 2), k("w4a16_decode_kernel", t0 + 2, 8), k("dense_decode_kernel", t0 + 10, 6)]
    events.append(k("embed_kernel", 70, 2))
    r = analyse(events)
    assert r["steps"] == 3
    assert r["span_us_median"] == pytest.approx(20)
    assert r["kernels_per_step"] == 3
    rows = {row["kernel"]: row for row in r["by_kernel"]}
    assert rows["dense_decode_kernel"]["per_step"] == 1
    assert rows["dense_decode_kernel"]["own_per_step_us"] == pytest.approx(6)


def test_a_window_without_two_whole_steps_is_refused():
    with pytest.raises(RuntimeError, match="no whole decode step"):
        analyse([k("argmax_kernel", 0, 5), k("embed_kernel", 8, 1), k("gemm", 10, 5), k("argmax_kernel", 20, 5),
                 k("embed_kernel", 28, 1)])


def _two_layer_steps(t0s):
    """Steps of an embedding, two layers of (gemm 6 µs, attention 4 µs starting 1 µs before the gemm's end), and
    the lm head."""
    events = [k("dense_decode_kernel", 0, 5)]
    for t0 in t0s:
        t = t0
        events.append(k("embed_kernel", t, 2))
        t += 2
        for _ in range(2):
            events += [k("gemm<1>", t, 6), k("attention(int)", t + 5, 4)]
            t += 9
        events.append(k("dense_decode_kernel", t, 3))
    return events


def test_a_layers_kernel_positions_are_averaged_over_layers_and_steps():
    events = _two_layer_steps([10, 40]) + [k("embed_kernel", 70, 2)]
    r = analyse(events, layers=2)
    pos = r["by_layer_position"]
    assert [p["kernel"] for p in pos] == ["gemm", "attention"]
    # The gemm starts at the previous kernel's end: own 6 µs, not early. The attention starts 1 µs before the gemm's
    # end and runs 3 µs past it.
    assert [p["own_us"] for p in pos] == pytest.approx([6, 3])
    assert [p["mean_us"] for p in pos] == pytest.approx([6, 4])
    assert [p["early_us"] for p in pos] == pytest.approx([0, 1])


def test_no_position_table_where_the_layers_do_not_repeat():
    events = _two_layer_steps([10, 40]) + [k("embed_kernel", 70, 2)]
    assert analyse(events, layers=3)["by_layer_position"] is None  # 4 layer kernels are not 3 runs of one layer
    assert "by_layer_position" not in analyse(events)
