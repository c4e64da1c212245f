"""Start-up cost of the `gpuops` CLI, beside `import prefect` and a bare run_v2 call, in one run.

Starts a real Prefect server (SQLite) and the Cloud Run emulator, then runs each command as a new
process, as a user would, interleaved, N times, and prints the median wall and CPU time of each
(CPU: user + system of the child process, from its rusage), and each command's difference to
`python -c "import prefect"`, which every flow command pays first.

  python benchmarks/cli_startup.py [--runs 5] [--tree DIR ...] [--pyc-cache]

--tree runs the CLI from another checkout (e.g. `git archive` of an older commit) in the same run,
on the same server and machine, so that figures compare side by side. --pyc-cache lets the child
processes cache compiled bytecode in a temporary directory (PYTHONPYCACHEPREFIX) when the
environment forbids writing it (PYTHONDONTWRITEBYTECODE, as on these machines) or the virtualenv
holds none: the figures of an installation whose bytecode is compiled.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
P, R, S = "nca-toolkit-438301", "us-central1", "no-code-architects-toolkit"
SERVICE_ARGS = ["--project", P, "--region", R, "--service", S]

BARE_RUN_V2 = f"""
from google.auth.credentials import AnonymousCredentials
from google.cloud import run_v2
client = run_v2.ServicesClient(transport="rest", credentials=AnonymousCredentials(),
                               client_options={{"api_endpoint": __import__("os").environ["GPUOPS_CLOUD_RUN_API"]}})
client.get_service(name="projects/{P}/locations/{R}/services/{S}")
"""


def cli_module(tree: Path) -> str:
    """The module behind the `gpuops` console script in that checkout."""
    return "gpuops_cli.cli" if (tree / "gpuops_cli" / "cli.py").exists() else "gpuops.cli"


def commands(smi_csv: Path) -> list[tuple[str, list[str], bool]]:
    """(label, argv after the interpreter, runs the tree's CLI: "{cli}" is its module)."""
    return [
        ('python -c "import prefect"', ["-c", "import prefect"], False),
        ("bare run_v2 get_service", ["-c", BARE_RUN_V2], False),
        ("gpuops describe --json", ["-m", "{cli}", "describe", *SERVICE_ARGS, "--json"], True),
        ("gpuops create-jobs --dry-run --json", ["-m", "{cli}", "create-jobs", *SERVICE_ARGS, "--dry-run", "--json"], True),
        ("gpuops gpu-check (recorded L4)", ["-m", "{cli}", "gpu-check", "--smi-csv", str(smi_csv), "--json"], True),
        ("gpuops --help", ["-m", "{cli}", "--help"], True),
    ]


def run_once(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float, int]:
    """Wall and CPU seconds of one child process, and its exit code."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *argv], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        print(f"  exit {proc.returncode}: {' '.join(argv[:3])}: {tail[0][:200]}", file=sys.stderr)
    return wall, cpu, proc.returncode


def bytecode_note(env: dict[str, str]) -> str:
    import prefect

    cached = (Path(prefect.__file__).parent / "__pycache__").is_dir()
    if env.get("PYTHONPYCACHEPREFIX"):
        return f"bytecode cached under {env['PYTHONPYCACHEPREFIX']} (--pyc-cache; warmed before timing)"
    if env.get("PYTHONDONTWRITEBYTECODE") and not cached:
        return ("PYTHONDONTWRITEBYTECODE is set and the virtualenv holds no .pyc: every process compiles "
                "every module it imports (try --pyc-cache)")
    return "bytecode: " + ("cached in the virtualenv" if cached else "written on first import")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="runs per command; the median is shown (default 5)")
    parser.add_argument("--tree", action="append", type=Path,
                        help="checkout whose CLI to run (repeatable; default: this one)")
    parser.add_argument("--pyc-cache", action="store_true",
                        help="let the children cache bytecode in a temporary directory")
    args = parser.parse_args()
    trees = [t.resolve() for t in (args.tree or [ROOT])]
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # A stopped benchmark still stops its Prefect server (the with-blocks below run on SystemExit).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sys.path.insert(0, str(ROOT))
    from gpuops.emulator import CloudRunEmulator
    from gpuops.stack import PrefectServer

    seed = json.loads(resources.files("gpuops.data").joinpath("demo_seed.json").read_text())
    smi_csv = ROOT / "gpuops" / "data" / "nvidia_smi" / "l4.csv"
    cmds = commands(smi_csv)
    with tempfile.TemporaryDirectory() as tmp, PrefectServer(Path(tmp) / "prefect") as prefect, \
            CloudRunEmulator(seed=seed) as emulator:
        env = {**os.environ, **prefect.env(), "GPUOPS_CLOUD_RUN_API": emulator.url,
               "GPUOPS_STATE_DIR": str(Path(tmp) / "state")}
        if args.pyc_cache:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(Path(tmp) / "pycache")
        jobs = [(tree, label, [a.replace("{cli}", cli_module(tree)) for a in argv])
                for tree in trees for label, argv, per_tree in cmds if per_tree or tree == trees[0]]
        for tree, _, argv in jobs:  # warm-up: the server's first runs, the bytecode cache
            run_once(argv, tree, env)
        samples: dict[tuple[Path, str], list[tuple[float, float, int]]] = {}
        for _ in range(args.runs):  # interleaved, so that a busy moment hits every command alike
            for tree, label, argv in jobs:
                samples.setdefault((tree, label), []).append(run_once(argv, tree, env))
        note = bytecode_note(env)

    def median(tree: Path, label: str, i: int) -> float:
        return statistics.median(s[i] for s in samples[(tree, label)])

    base_label = cmds[0][0]
    base_wall, base_cpu = median(trees[0], base_label, 0), median(trees[0], base_label, 1)
    print(f"CLI start-up, median of {args.runs} runs per command, each a new process "
          f"(Prefect server on SQLite and the Cloud Run emulator on 127.0.0.1, {os.cpu_count()} cores)")
    print(note)
    print(f"{'command':38} {'tree':12} {'wall s':>7} {'CPU s':>7} {'wall - import prefect':>22} {'CPU - import prefect':>21}  fails")
    for tree, label, _ in jobs:
        wall, cpu = median(tree, label, 0), median(tree, label, 1)
        fails = sum(1 for s in samples[(tree, label)] if s[2] != 0)
        name = tree.name if tree != ROOT else "."
        delta = "" if label == base_label else f"{wall - base_wall:+22.2f} {cpu - base_cpu:+21.2f}"
        print(f"{label:38} {name[:12]:12} {wall:7.2f} {cpu:7.2f} {delta:44}  {fails}")
    for tree in trees:
        wall = median(tree, "gpuops describe --json", 0)
        print(f"describe - import prefect ({tree.name if tree != ROOT else '.'}): {wall - base_wall:.2f} s wall "
              f"(target: within 1.5 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
