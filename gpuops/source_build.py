"""The pipeline's `source` runtime (the runbook's lesson: `git clone` + `uv sync` beats giant images):
check the repository out at the job's commit and install it, every line of it logged as it happens."""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from gpuops.errors import BadInput, CheckFailed
from gpuops.process_stream import Finished, LineSink, run_streaming

SHA = re.compile(r"^[0-9a-f]{7,40}$")
GIT_TIMEOUT_S = 600.0


def check_sha(sha: str) -> str:
    if not isinstance(sha, str) or not SHA.match(sha):
        raise BadInput(f"sha (--sha) {sha!r} is not a commit id: pass 7 to 40 lowercase hex digits, "
                       "e.g. --sha $(git rev-parse HEAD).")
    return sha


def install_command(checkout: Path) -> list[str] | None:
    """How the checked-out project installs: `uv sync --frozen` when it has a uv.lock; else nothing."""
    if (checkout / "uv.lock").exists():
        return ["uv", "sync", "--frozen"]
    return None


def build_from_source(repo: str, sha: str, dest: Path, on_line: LineSink,
                      install_timeout_s: float = 1800.0) -> dict:
    """Clone `repo` into `dest` (emptied first), check out `sha` detached, install it.

    Raises CheckFailed with the failing step's last lines; returns what was built.
    """
    check_sha(sha)
    if shutil.which("git") is None:
        raise CheckFailed("git is not installed on this worker: the source runtime needs it.")
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}  # a private repo without credentials fails, not hangs
    steps = [["git", "clone", "--quiet", "--no-checkout", repo, str(dest)],
             ["git", "-C", str(dest), "checkout", "--quiet", "--detach", sha]]
    for command in steps:
        _require(run_streaming(command, str(dest.parent), on_line, GIT_TIMEOUT_S, env=env))
    resolved = _head(dest)
    if not resolved.startswith(sha):
        raise CheckFailed(f"checked out {resolved}, not {sha}: the repository does not have that commit.")
    install = install_command(dest)
    if install is None:
        on_line("no uv.lock: nothing to install")
    else:
        _require(run_streaming(install, str(dest), on_line, install_timeout_s, env=env))
    return {"checkout": str(dest), "commit": resolved, "installed": install is not None}


def _require(done: Finished) -> None:
    if done.ok:
        return
    what = "timed out" if done.exit_code is None else f"exited {done.exit_code}"
    tail = "\n".join(done.tail[-10:])
    raise CheckFailed(f"`{' '.join(done.command[:3])} ...` {what} after {done.seconds} s:\n{tail}",
                      [{"command": list(done.command), "exit_code": done.exit_code, "tail": list(done.tail)}])


def _head(checkout: Path) -> str:
    lines: list[str] = []
    _require(run_streaming(["git", "-C", str(checkout), "rev-parse", "HEAD"], str(checkout), lines.append, 30))
    return lines[-1].strip() if lines else ""
