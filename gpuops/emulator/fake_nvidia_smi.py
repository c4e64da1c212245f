"""A fake `nvidia-smi` for emulated GPU hosts: prints a recorded reading, and says it is one on stderr."""
from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

from gpuops.gpu_probe import EMULATED_ENV, EMULATED_SMI_MARKER

# Self-contained so it runs under any Python that can start it (no gpuops import needed).
_SCRIPT = '''#!{python}
"""gpuops fake nvidia-smi: prints a recorded reading. An emulated GPU host, not a GPU."""
import sys

READING = {reading!r}
MARKER = {marker!r}
# The recording's columns by position, as `--format=csv,noheader,nounits` printed them.
RECORDED = ("name", "memory.total", "compute_cap", "memory.used", "driver_version")
MIB = ("memory.total", "memory.used", "memory.free")
# Real fields this recording does not hold print as nvidia-smi prints unsupported ones.
NOT_RECORDED = ("memory.free", "uuid", "pci.bus_id", "temperature.gpu", "utilization.gpu", "power.draw")
ALIASES = {{"gpu_name": "name"}}


def gpus():
    lines = [line for line in READING.splitlines() if line.strip()]
    return [dict(zip(RECORDED, (v.strip() for v in line.split(",")))) for line in lines]


def value(gpu, index, field):
    if field == "index":
        return str(index)
    if field == "memory.free" and gpu.get("memory.total", "").isdigit() and gpu.get("memory.used", "").isdigit():
        return str(int(gpu["memory.total"]) - int(gpu["memory.used"]))
    return gpu.get(field, "[N/A]")


def query(fields, fmt):
    for field in fields:
        if field not in RECORDED and field not in NOT_RECORDED and field != "index":
            print('Field "%s" is not a valid field to query.' % field, file=sys.stderr)
            return 2
    if "noheader" not in fmt:
        print(", ".join(f + (" [MiB]" if f in MIB else "") for f in fields))
    for index, gpu in enumerate(gpus()):
        cells = []
        for field in fields:
            cell = value(gpu, index, field)
            units = field in MIB and "nounits" not in fmt and not cell.startswith("[")
            cells.append(cell + (" MiB" if units else ""))
        print(", ".join(cells))
    return 0


def main(argv):
    print(MARKER, file=sys.stderr)
    opts = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    if not gpus():
        print("No devices were found")
        return 6
    if "-L" in argv or "--list-gpus" in argv:
        for index, gpu in enumerate(gpus()):
            print("GPU %d: %s (UUID: GPU-emulated-%d)" % (index, gpu["name"], index))
        return 0
    if "query-gpu" not in opts:
        print("gpuops emulated nvidia-smi (recorded reading, no GPU). Use --query-gpu=... --format=csv")
        return query(["index", "name", "memory.total", "compute_cap"], {{"csv"}})
    if "format" not in opts:
        print('"--format=" switch is missing. Please try again with the switch set.', file=sys.stderr)
        return 2
    fields = [ALIASES.get(f.strip(), f.strip()) for f in opts["query-gpu"].split(",")]
    return query(fields, set(opts["format"].split(",")))


sys.exit(main(sys.argv[1:]))
'''


def install_fake_nvidia_smi(directory: str | Path, reading_csv_noheader: str) -> Path:
    """Write an executable `nvidia-smi` into directory that prints this reading; return its path.

    The reading is `name, memory.total, compute_cap[, memory.used, driver_version]` lines, as
    `--format=csv,noheader,nounits` prints them. It is not validated: garbage is how tests
    exercise a broken driver's output.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "nvidia-smi"
    path.write_text(_SCRIPT.format(python=sys.executable, reading=reading_csv_noheader, marker=EMULATED_SMI_MARKER))
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def emulated_gpu_env(directory: str | Path, env: dict | None = None) -> dict:
    """An environment whose first `nvidia-smi` is the fake in directory, marked as emulated."""
    env = dict(os.environ if env is None else env)
    env["PATH"] = os.pathsep.join(p for p in (str(directory), env.get("PATH", "")) if p)
    env[EMULATED_ENV] = "1"
    return env


def recorded_reading(card: str) -> str:
    """A real card's reading shipped with gpuops (`l4`, `t4`, `gtx1080`, ...), noheader form."""
    from importlib import resources

    return resources.files("gpuops.data").joinpath("nvidia_smi", f"{card}_noheader.csv").read_text()
