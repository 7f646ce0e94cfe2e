"""bench/serving/stack.py's CPU accounting: a service process's CPU time includes its child processes' (the
vision service's image preprocessing workers), live or ended; the whole host's load over a level comes from
/proc/stat and reaches the report's CPU column."""
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from serving.stack import process_cpu_seconds  # noqa: E402

# A parent that idles while a child it started burns CPU, then (after "reap") waits for the child.
PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time\\nt = time.process_time()\\nwhile time.process_time() - t < 0.6: pass\\ntime.sleep(30)"])
print(child.pid, flush=True)
sys.stdin.readline()
child.kill()
child.wait()
print("reaped", flush=True)
time.sleep(30)
"""


def test_a_process_counts_the_cpu_of_its_children_live_and_ended():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        parent.stdout.readline()  # the child's pid
        time.sleep(1.5)  # the child has burnt its 0.6 s
        live = process_cpu_seconds(parent.pid)
        parent.stdin.write("reap\n")
        parent.stdin.flush()
        assert parent.stdout.readline().strip() == "reaped"
        ended = process_cpu_seconds(parent.pid)
    finally:
        parent.kill()
        parent.wait()
    assert live is not None and live >= 0.5, live
    assert ended is not None and ended >= 0.5, ended


def test_the_host_load_comes_from_the_cpu_line_of_proc_stat(tmp_path):
    from serving.report import cpu_cell
    from serving.stack import host_cpu_seconds, host_load

    tick = os.sysconf("SC_CLK_TCK")
    stat = tmp_path / "stat"
    #                 user nice system idle iowait irq softirq steal
    stat.write_text(f"cpu  {100 * tick} 0 {50 * tick} {800 * tick} {10 * tick} 0 {5 * tick} {20 * tick} 0 0\n"
                    "cpu0 1 2 3 4 5 6 7 8 0 0\n")
    before = host_cpu_seconds(stat)
    assert before == {"busy": 155.0, "idle": 810.0, "steal": 20.0}
    stat.write_text(f"cpu  {130 * tick} 0 {60 * tick} {810 * tick} {10 * tick} 0 {5 * tick} {22 * tick} 0 0\n")
    load = host_load(before, host_cpu_seconds(stat), 10.0)
    assert load == {"cores": os.cpu_count(), "busy_cores": 4.0, "steal_cores": 0.2,
                    "tick_error_cores": os.cpu_count() * 5 / (tick * 10.0)}
    cell = cpu_cell({"service_cpu_cores": {"lm": 0.93}, "client_cpu_cores": 2.1, "client_processes": 8,
                     "host_cpu": load})
    assert cell == f"lm 0.93; 2.10 in 8; host 4.0 of {os.cpu_count()} (steal 0.2)"


def test_an_unreadable_or_foreign_stat_file_gives_no_host_load(tmp_path):
    from serving.stack import host_cpu_seconds, host_load

    assert host_cpu_seconds(tmp_path / "missing") is None
    (tmp_path / "stat").write_text("intr 1 2 3\n")
    assert host_cpu_seconds(tmp_path / "stat") is None
    assert host_load(None, {"busy": 1.0, "idle": 0.0, "steal": 0.0}, 1.0) is None
    live = host_cpu_seconds()
    assert live is not None and live["busy"] > 0 and live["idle"] >= 0


def test_thread_times_resolve_work_shorter_than_a_clock_tick():
    # A short benchmark level (tens of ms in the CPU tests) must still see the threads that worked in it:
    # a thread's time is read in nanoseconds, not in the 10 ms ticks of its stat file.
    import threading

    import pytest

    from serving.stack import thread_cpu_seconds

    if not Path(f"/proc/self/task/{threading.get_native_id()}/schedstat").exists():
        pytest.skip("this kernel keeps no per-thread schedstat; thread times fall back to 10 ms ticks")
    spun = {}

    def spin():
        t = time.thread_time()
        while time.thread_time() - t < 0.003:
            pass
        spun["seconds"] = time.thread_time() - t
        spun["after"] = thread_cpu_seconds(os.getpid())
        spun["tid"] = threading.get_native_id()

    before = thread_cpu_seconds(os.getpid())
    worker = threading.Thread(target=spin, name="spinner")
    worker.start()
    worker.join()
    assert "main" in before and before["main"] > 0
    mine = next(v for k, v in spun["after"].items() if k.endswith(f"#{spun['tid']}"))
    # its own clock and /proc agree to well under a tick (the read itself costs a little)
    assert spun["seconds"] <= mine < spun["seconds"] + 0.005, (mine, spun["seconds"])
