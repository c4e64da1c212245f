"""A tiny app in a local git repository: the pipeline's source in `make demo`, the tests and the benchmark.

Its `main.py` prints a line per step (flushed, so the log follows it), asks nvidia-smi which GPU it
landed on, and writes `result.json` and a README into `$GPUOPS_OUTPUT_DIR`: what the pipeline publishes.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

MAIN_PY = '''\
"""The demo app: a few steps of "work" on the GPU it was given, and an output folder."""
import json, os, subprocess, sys, time

steps = int(os.environ.get("APP_STEPS", "3"))
pause = float(os.environ.get("APP_STEP_S", "0.2"))
out = os.environ.get("GPUOPS_OUTPUT_DIR", "output")
os.makedirs(out, exist_ok=True)
try:
    gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=20).stdout.strip()
except OSError:
    gpu = "none"
print(f"app: starting on GPU {gpu!r}", flush=True)
for step in range(1, steps + 1):
    time.sleep(pause)
    print(f"app: step {step}/{steps} done at {time.time():.6f}", flush=True)
if os.environ.get("APP_FAIL"):
    print("app: failing as asked (APP_FAIL)", file=sys.stderr, flush=True)
    sys.exit(3)
with open(os.path.join(out, "result.json"), "w") as f:
    json.dump({"steps": steps, "gpu": gpu}, f)
with open(os.path.join(out, "README.md"), "w") as f:
    f.write(f"Result of {steps} steps on {gpu}.\\n")
print("app: wrote result.json", flush=True)
'''
# No build backend and no dependencies: `uv sync` needs no index, and plain Python can run it.
PYPROJECT = '[project]\nname = "gpuops-demo-app"\nversion = "0.1.0"\nrequires-python = ">=3.11"\ndependencies = []\n'
# What `uv lock` writes for it (no dependencies): `uv sync --frozen` then makes .venv without an index.
UV_LOCK = ('version = 1\nrevision = 5\nrequires-python = ">=3.11"\n\n[[package]]\nname = "gpuops-demo-app"\n'
           'version = "0.1.0"\nsource = { virtual = "." }\n')
DOCKERFILE = 'FROM python:3.11-slim\nWORKDIR /app\nCOPY . .\nCMD ["python", "main.py"]\n'


def make_app_repo(path: Path, *, broken_build: bool = False) -> str:
    """Create (or add a commit to) the app's repository at `path`; returns the new commit's SHA.

    The app is a uv project with a lock, so the source runtime's `uv sync --frozen` really runs (uv must
    be on the PATH: `uv_dir()`). `broken_build` commits a uv.lock that uv refuses, so the build fails.
    """
    path.mkdir(parents=True, exist_ok=True)
    if not (path / ".git").exists():
        _git(path, "init", "--quiet", "--initial-branch=main")
    (path / "main.py").write_text(MAIN_PY)
    (path / "pyproject.toml").write_text(PYPROJECT)
    (path / "Dockerfile").write_text(DOCKERFILE)
    (path / "uv.lock").write_text("this is not a lock file\n" if broken_build else UV_LOCK)
    _git(path, "add", "--all")
    _git(path, "commit", "--quiet", "--allow-empty", "-m", "broken build" if broken_build else "demo app")
    return _git(path, "rev-parse", "HEAD").strip()


def uv_dir() -> str | None:
    """The folder holding `uv`: on the PATH, else the one `make` bootstrapped into the checkout."""
    found = shutil.which("uv")
    if found:
        return str(Path(found).parent)
    bootstrapped = Path(__file__).resolve().parents[1] / ".uv-bootstrap" / "bin" / "uv"
    return str(bootstrapped.parent) if bootstrapped.exists() else None


def _git(path: Path, *args: str) -> str:
    identity = ["-c", "user.name=gpuops demo", "-c", "user.email=demo@gpuops.invalid", "-c", "commit.gpgsign=false"]
    return subprocess.run(["git", *identity, "-C", str(path), *args], check=True, capture_output=True,
                          text=True).stdout
