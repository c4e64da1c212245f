"""The pipeline's `source` runtime (the runbook's lesson: `git clone` + `uv sync` beats giant images):
check the repository out at the job's commit and install it, every line of it logged as it happens."""
from __future__ import annotations

import shutil
from pathlib import Path

from gpuops.errors import CheckFailed
from gpuops.job_status import check_job_id
from gpuops.process_stream import Finished, LineSink, job_env, run_streaming

GIT_TIMEOUT_S = 600.0


def install_command(checkout: Path) -> list[str] | None:
    """How the checked-out project installs: `uv sync --frozen` when it has a uv.lock; else nothing."""
    if (checkout / "uv.lock").exists():
        return ["uv", "sync", "--frozen"]
    return None


def checkout(repo: str, sha: str, dest: Path, on_line: LineSink) -> str:
    """Clone `repo` into `dest` (emptied first) and check out `sha` detached; returns the resolved commit.

    Both runtimes start here: the source runtime installs the tree, the container runtime builds it.
    """
    sha = check_job_id(sha)
    if shutil.which("git") is None:
        raise CheckFailed("git is not installed on this worker: the pipeline's build needs it.")
    if dest.exists():
        shutil.rmtree(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    steps = [["git", "clone", "--quiet", "--no-checkout", repo, str(dest)],
             ["git", "-C", str(dest), "checkout", "--quiet", "--detach", sha]]
    for command in steps:
        _require(run_streaming(command, str(dest.parent), on_line, GIT_TIMEOUT_S, env=_no_prompt_env()))
    resolved = _head(dest)
    if not resolved.startswith(sha):
        raise CheckFailed(f"checked out {resolved}, not {sha}: the repository does not have that commit.")
    return resolved


def build_from_source(repo: str, sha: str, dest: Path, on_line: LineSink,
                      install_timeout_s: float = 1800.0) -> dict:
    """Check `repo` out at `sha` into `dest` (see `checkout`), then install it.

    Raises CheckFailed with the failing step's last lines; returns what was built.
    """
    resolved = checkout(repo, sha, dest, on_line)
    install = install_command(dest)
    if install is None:
        on_line("no uv.lock: nothing to install")
    else:
        _require(run_streaming(install, str(dest), on_line, install_timeout_s, env=_no_prompt_env()))
    return {"checkout": str(dest), "commit": resolved, "installed": install is not None}


def _no_prompt_env() -> dict[str, str]:
    # git (and uv fetching a git dependency) asking for a password would hang the worker: fail instead.
    return job_env(GIT_TERMINAL_PROMPT="0")


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
