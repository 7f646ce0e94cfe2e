"""bench/serving/stack.py's CPU accounting: a service process's CPU time includes its child processes' (the
vision service's image preprocessing workers), live or ended."""
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
