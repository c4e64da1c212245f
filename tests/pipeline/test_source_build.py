"""The source runtime against a real local git repository, and output streamed line by line."""
import subprocess
import sys
from pathlib import Path

import pytest

from gpuops.errors import BadInput, CheckFailed
from gpuops.process_stream import run_streaming
from gpuops.source_build import build_from_source, checkout


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, text=True)
    return done.stdout.strip()


def make_repo(repo: Path, *commits: dict[str, str]) -> list[str]:
    """A git repository at `repo` with one commit per {file name: content}; returns their SHAs.

    The container runtime's tests make theirs with it too."""
    repo.mkdir()
    git(repo, "init", "--quiet", "--initial-branch=main")
    git(repo, "config", "user.email", "ci@example.invalid")
    git(repo, "config", "user.name", "ci")
    shas = []
    for n, files in enumerate(commits, 1):
        for name, content in files.items():
            (repo / name).write_text(content)
        git(repo, "add", *files)
        git(repo, "commit", "--quiet", "-m", f"commit {n}")
        shas.append(git(repo, "rev-parse", "HEAD"))
    return shas


@pytest.fixture
def tiny_app(tmp_path) -> tuple[Path, str, str]:
    """A git repository with two commits of a tiny app; returns (path, first sha, second sha)."""
    repo = tmp_path / "tiny-app"
    first, second = make_repo(repo, {"app.py": "print('v1')\n"}, {"app.py": "print('v2')\n"})
    return repo, first, second


def test_the_checkout_is_the_job_commit_not_the_branch_head(tiny_app, tmp_path):
    repo, first, _second = tiny_app
    lines = []
    built = build_from_source(str(repo), first, tmp_path / "work" / first, lines.append)
    assert built["commit"] == first and built["installed"] is False
    assert (Path(built["checkout"]) / "app.py").read_text() == "print('v1')\n"
    assert "no uv.lock: nothing to install" in lines


def test_a_commit_the_repository_lacks_fails_the_build_with_gits_words(tiny_app, tmp_path):
    repo, _first, _second = tiny_app
    with pytest.raises(CheckFailed, match="exited") as failed:
        build_from_source(str(repo), "deadbeef" * 5, tmp_path / "work", lambda _line: None)
    assert failed.value.details[0]["exit_code"] != 0 and failed.value.details[0]["tail"]


def test_a_sha_that_is_not_one_is_bad_input(tmp_path):
    with pytest.raises(BadInput, match=r"sha \(--sha\)"):
        build_from_source("/nowhere", "main; rm -rf /", tmp_path / "work", lambda _line: None)


def test_lines_arrive_while_the_process_still_runs(tmp_path):
    """The child waits for a file that only the first line's handler creates: without streaming it
    would wait until the deadline and be killed."""
    flag = tmp_path / "seen"
    script = ("import os, sys, time\nprint('first', flush=True)\n"
              f"while not os.path.exists({str(flag)!r}): time.sleep(0.01)\nprint('second')\n")
    lines = []

    def on_line(line):
        lines.append(line)
        flag.touch()

    done = run_streaming([sys.executable, "-c", script], str(tmp_path), on_line, timeout_s=60)
    assert done.ok and lines == ["first", "second"] and done.tail == ("first", "second")


def test_a_command_past_its_deadline_is_killed(tmp_path):
    done = run_streaming([sys.executable, "-c", "import time; time.sleep(30)"], str(tmp_path),
                         lambda _line: None, timeout_s=0.5)
    assert done.exit_code is None and not done.ok


def test_checkout_resolves_a_short_sha_to_the_full_commit(tiny_app, tmp_path):
    repo, first, _second = tiny_app
    lines = []
    assert checkout(str(repo), first[:7], tmp_path / "work", lines.append) == first
    assert (tmp_path / "work" / "app.py").read_text() == "print('v1')\n"


def test_a_jobs_own_commands_see_none_of_gpuops_credentials(tmp_path, monkeypatch):
    """The job's clone, install and app run its code, which may print its environment into a public log."""
    from gpuops.process_stream import WITHHELD_FROM_JOBS, job_env

    for name in WITHHELD_FROM_JOBS:
        monkeypatch.setenv(name, f"planted-{name}")
    monkeypatch.setenv("GPUOPS_HARMLESS", "kept")
    lines = []
    script = "import os\nfor k, v in sorted(os.environ.items()): print(f'{k}={v}')\n"
    done = run_streaming([sys.executable, "-c", script], str(tmp_path), lines.append, timeout_s=60,
                         env=job_env(GPUOPS_JOB_ID="job-1"))
    assert done.ok and "GPUOPS_HARMLESS=kept" in lines and "GPUOPS_JOB_ID=job-1" in lines
    assert not [line for line in lines if "planted-" in line], lines
