"""What every benchmark shares: where it ran (the CPU, the source revision) and how it writes results
(whole files only, so a killed run never leaves half a JSON)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def git_revision() -> str:
    """Short commit, marked when the working tree differs from it."""
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    except OSError:
        return "unknown"
    if rev.returncode != 0 or not rev.stdout.strip():
        return "unknown (not a git checkout)"
    return rev.stdout.strip() + (" (uncommitted changes)" if dirty.strip() else "")


def library_settings() -> dict[str, str]:
    """The native library's settings in this process's environment (VLM_*: experimental kernels and the like),
    which change what a run measures; child processes (the services) inherit them."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("VLM_")}


def settings_line(settings: dict[str, str] | None) -> list[str]:
    """The results document's line naming them (none for runs that did not record them)."""
    if settings is None:
        return []
    named = ", ".join(f"`{k}={v}`" for k, v in settings.items())
    return [f"- Native library settings in the environment: {named or 'none (the defaults)'}"]


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def ints(s: str) -> list[int]:
    """A comma-separated command-line list of integers ("1,4,8")."""
    return [int(x) for x in s.split(",") if x]


def floats(s: str) -> list[float]:
    """A comma-separated command-line list of numbers ("5,1,0.5")."""
    return [float(x) for x in s.split(",") if x]
