"""bench/gpu_session.sh is what a device call runs, and a device call is scarce: a step whose pytest selection
matches nothing, or whose benchmark is given a flag it does not take, wastes the call and brings back nothing.
These checks run that script's own command lines here, without a GPU: every pytest selection it makes is
collected (pytest's own -m / -k semantics) and must select at least one test, every bench script's flags must be
ones its --help lists, and every step it names must be a function it defines and exports."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gpu_session.sh"


def _joined_lines() -> list[str]:
    """The script's lines with backslash continuations joined, comments dropped."""
    text = re.sub(r"\\\n", " ", SCRIPT.read_text())
    return [line.split(" #", 1)[0] for line in text.splitlines() if not line.lstrip().startswith("#")]


def _command_words(line: str, program: str) -> list[str]:
    """The words of `line` from `program` on, up to the first pipe, redirection or list operator."""
    start = line.index(program)
    words: list[str] = []
    lexer = shlex.shlex(line[start:], posix=True, punctuation_chars="|&;<>")
    lexer.whitespace_split = True
    for word in lexer:
        if word and set(word) <= set("|&;<>"):
            break
        if re.match(r"^\d?>", word):  # 2>&1 and friends, split oddly when no punctuation follows
            break
        words.append(word)
    return words


def _pytest_selections() -> list[tuple[str, ...]]:
    found = set()
    for line in _joined_lines():
        if "-m pytest" not in line:
            continue
        words = _command_words(line, "pytest")[1:]
        args: list[str] = []
        i = 0
        while i < len(words):
            w = words[i]
            if w in ("-m", "-k"):
                args += [w, words[i + 1]]
                i += 2
                continue
            if w.startswith("tests"):
                args.append(w)
            i += 1
        found.add(tuple(args))
    return sorted(found)


def _bench_invocations() -> list[tuple[str, tuple[str, ...]]]:
    """(bench script, every long option the script's command lines give it)."""
    found: dict[str, set[str]] = {}
    for line in _joined_lines():
        for m in re.finditer(r"python3 (bench/[a-z_0-9]+\.py)", line):
            words = _command_words(line[m.start():], m.group(1))
            found.setdefault(m.group(1), set()).update(_long_options(words[1:]))
        # serve_runs and the `for v in` loops hand bench/serve.py their flags as quoted strings
        if re.match(r"\s*(\(export [^;]*; )?([A-Z_0-9]+=\S+ )?serve_runs |\s*for v in ", line):
            for quoted in re.findall(r'"([^"]*)"', line):
                found.setdefault("bench/serve.py", set()).update(_long_options(quoted.split()))
    return sorted((script, tuple(sorted(flags))) for script, flags in found.items())


def _long_options(words) -> set[str]:
    return {w.split("=", 1)[0] for w in words if w.startswith("--")} | {
        w.split("=", 1)[0] + "=" + w.split("=", 2)[1] for w in words if re.match(r"--(lm|vision)-flag=--", w)}


@lru_cache(maxsize=None)
def _help_text(script: str) -> str:
    out = subprocess.run([sys.executable, str(ROOT / script), "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, f"{script} --help failed:\n{out.stderr[-2000:]}"
    return out.stdout


def test_the_script_parses():
    out = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_the_parsers_find_the_script_commands():
    # Guards the two tests below against passing because nothing was found.
    assert len(_pytest_selections()) >= 20
    assert len(_bench_invocations()) >= 6
    assert "--mps" in dict(_bench_invocations())["bench/serve.py"]
    assert any(sel[-2:] == ("-k", "rope_inside") for sel in _pytest_selections())


@pytest.mark.parametrize("selection", _pytest_selections(), ids=lambda s: " ".join(s))
def test_every_pytest_selection_selects_a_test(selection):
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                          *selection], cwd=ROOT, capture_output=True, text=True, timeout=300)
    summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else ""
    assert out.returncode != 5, f"selects nothing: {summary}"
    assert out.returncode == 0, f"collection failed: {summary}\n{out.stderr[-2000:]}"
    m = re.search(r"(\d+)(?:/\d+)? tests? collected", summary)
    assert m and int(m.group(1)) > 0, f"selects nothing: {summary}"


@pytest.mark.parametrize("script,flags", _bench_invocations(), ids=lambda v: v if isinstance(v, str) else ",".join(v))
def test_every_bench_flag_is_one_the_script_takes(script, flags):
    help_text = _help_text(script)
    unknown = [f for f in flags if "=" not in f and not re.search(re.escape(f) + r"(?![\w-])", help_text)]
    assert not unknown, f"{script} does not take {unknown}"
    # --lm-flag=--x / --vision-flag=--x pass --x on to a service: it must be one that service takes
    for f in flags:
        if "=" in f:
            service = "lm" if f.startswith("--lm-flag") else "vision"
            inner = f.split("=", 1)[1]
            assert re.search(re.escape(inner) + r"(?![\w-])", _service_help(service)), \
                f"the {service} service does not take {inner}"


@lru_cache(maxsize=None)
def _service_help(service: str) -> str:
    out = subprocess.run([sys.executable, "-m", "vlmserve.cli", "serve", service, "--help"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT / "python")})
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_every_step_is_a_defined_exported_function():
    text = SCRIPT.read_text()
    steps = re.findall(r"^step ([a-z_0-9]+) \d+$", text, re.M)
    assert len(steps) >= 20
    defined = set(re.findall(r"^([a-z_0-9]+)\(\) \{", text, re.M))
    exported = set()
    for m in re.finditer(r"^export -f (.*)$", text, re.M):
        exported.update(m.group(1).split())
    assert not [s for s in steps if s not in defined], "steps without a function"
    assert not [s for s in steps if s not in exported], "steps whose function is not exported to the step's shell"


def test_steps_stay_within_the_calls_budget_and_results_are_packed(tmp_path):
    # A step that would run past the call's budget is cut to what is left; one that cannot start in time is
    # skipped, and the archive still holds what was done (the device call's own limit would take it all).
    def run(budget: int, out: Path) -> str:
        proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "STEPS": "pyenv", "CALL_BUDGET_S": str(budget), "OUT": str(out)})
        assert (out / "results-pyenv.tgz").is_file()
        return proc.stdout

    assert re.search(r"== pyenv cut to \d+ s \(the call's budget; its own limit 30 s\)", run(25, tmp_path / "a"))
    assert "== pyenv skipped: the call's budget is spent" in run(12, tmp_path / "b")
    assert "cut to" not in run(600, tmp_path / "c")


def test_an_unknown_step_refuses_the_call_before_any_work(tmp_path):
    # A name with no `step NAME SECONDS` line (a typo, a new function not yet given one) ran nothing and said
    # nothing, the call spent on the other steps; now nothing runs and the call says which.
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "STEPS": "pyenv no_such_step", "OUT": str(tmp_path)})
    assert proc.returncode == 2
    assert "unknown step(s): no_such_step" in proc.stderr
    assert "== pyenv" not in proc.stdout and not list(tmp_path.iterdir())
