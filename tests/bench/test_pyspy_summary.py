"""bench/pyspy_summary.py reads py-spy's raw (collapsed) output, with and without thread names, into per-thread
self and inclusive shares."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from pyspy_summary import function_of, parse, summary  # noqa: E402

FOLDED = """\
thread (100): MainThread;run (asyncio/runners.py:118);_run_once (asyncio/base_events.py:1907);select (selectors.py:468) 30
thread (100): MainThread;run (asyncio/runners.py:118);_run_once (asyncio/base_events.py:1922);Handle._run (asyncio/events.py:80) 60
thread (100): MainThread;run (asyncio/runners.py:118);_run_once (asyncio/base_events.py:1922);Chat (lm.py:70);Chat (lm.py:71) 10
thread (200);_bootstrap (threading.py:1002);poll (engine.py:330) 25
not a py-spy line
"""


def test_threads_self_and_inclusive_shares():
    threads = parse(FOLDED.splitlines(keepends=True))
    assert set(threads) == {"MainThread (100)", "thread (200)"}
    main = threads["MainThread (100)"]
    assert main.samples == 100 and threads["thread (200)"].samples == 25
    assert main.self_frames["Handle._run (asyncio/events.py:80)"] == 60
    # inclusive: a function counts once a stack, whatever its lines (the recursive Chat counts 10, not 20)
    assert main.inclusive["_run_once (asyncio/base_events.py)"] == 100
    assert main.inclusive["Chat (lm.py)"] == 10
    text = summary(threads, top=2, thread="MainThread")
    assert "125 samples over 2 thread(s)" in text and "## MainThread (100): 100 samples (80.0 %)" in text
    assert "| 60.0 | Handle._run (asyncio/events.py:80) |" in text and "thread (200)" not in text.split("\n", 2)[2]


def test_frames_lose_their_line_numbers_only():
    assert function_of("spin (<string>:5)") == "spin (<string>)"
    assert function_of("<module> (x.py)") == "<module> (x.py)"
