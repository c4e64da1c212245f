"""GPU guardrails judged on nvidia-smi readings: compute capability and the card's real VRAM."""
from __future__ import annotations

import re

MIB_PER_GIB = 1024
DEFAULT_MIN_COMPUTE_CAP = "7.0"
DEFAULT_HEADROOM = 0.20
QUERY_FIELDS = "name,memory.total,compute_cap"

# With noheader, nvidia-smi prints the queried fields in query order and nothing names them:
# this is the order gpuops queries and records them in (the probe uses it too).
NOHEADER_FIELDS = ("name", "memory.total", "compute_cap", "memory.used", "driver_version")
REQUIRED_FIELDS = ("name", "memory.total", "compute_cap")
# nvidia-smi field -> key in a parsed GPU; memory fields are integers of MiB.
FIELD_KEYS = {
    "name": "name",
    "memory.total": "memory_total_mib",
    "memory.used": "memory_used_mib",
    "memory.free": "memory_free_mib",
    "compute_cap": "compute_cap",
    "driver_version": "driver_version",
    "index": "index",
}
MEMORY_FIELDS = ("memory.total", "memory.used", "memory.free")

# Runbook 004's table: what each capability is, and whether PyTorch 2.x wheels run on it.
COMPUTE_CAPABILITIES = {
    "5.2": {"examples": "GTX 9xx", "pytorch2": False},
    "6.1": {"examples": "GTX 1080, TITAN Xp", "pytorch2": False},
    "7.0": {"examples": "TITAN V, V100", "pytorch2": True},
    "7.5": {"examples": "RTX 20xx, T4", "pytorch2": True},
    "8.0": {"examples": "A100", "pytorch2": True},
    "8.6": {"examples": "RTX 30xx, A10", "pytorch2": True},
    "8.9": {"examples": "RTX 40xx, L4, L40S", "pytorch2": True},
    "9.0": {"examples": "H100", "pytorch2": True},
    "10.0": {"examples": "B100, B200", "pytorch2": True},
}
PYTORCH2_MIN_COMPUTE_CAP = "7.0"

# Cards sold under one name with different VRAM: the name says nothing, only the reading does
# (runbook 004, case 7: an "RTX 3060" rented on vast.ai had 8 GB, not 12).
VRAM_VARIANTS = (
    (re.compile(r"\bRTX 3060\b(?! Ti)(?! Laptop)"), "8 GB and 12 GB"),
    (re.compile(r"\bRTX 4060 Ti\b"), "8 GB and 16 GB"),
    (re.compile(r"\bRTX 3080\b(?! Ti)(?! Laptop)"), "10 GB and 12 GB"),
    (re.compile(r"\bGTX 1060\b"), "3 GB and 6 GB"),
)

_CAP = re.compile(r"^\d+\.\d+$")
_HEADER_UNIT = re.compile(r"^(?P<field>.*?)\s*\[(?P<unit>[^\]]+)\]$")
_SMI_FAILURES = ("NVIDIA-SMI has failed", "Failed to initialize NVML", "Unable to determine the device handle")
_NO_DEVICES = "No devices were found"


class SmiParseError(ValueError):
    """A reading that cannot be trusted: the message names the line and what was wrong."""


def parse_smi_csv(text: str) -> list[dict]:
    """Parse `nvidia-smi --query-gpu=name,memory.total,compute_cap[,...] --format=csv[,noheader,nounits]`."""
    lines = [(n, line) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not lines:
        raise SmiParseError(
            f"line 1: empty file; expected the output of nvidia-smi --query-gpu={QUERY_FIELDS} --format=csv")
    first_no, first = lines[0]
    _refuse_smi_error(first_no, first)
    if first.strip() == _NO_DEVICES:
        return []  # a real reading: this host has no GPU (judge() says so with a fix)
    fields = _split(first)
    has_header = fields[0].lower() == "name"
    columns = _header(first_no, fields) if has_header else list(NOHEADER_FIELDS)
    rows = lines[1:] if has_header else lines
    return [_row(n, line, columns, has_header) for n, line in rows]


def _split(line: str) -> list[str]:
    return [field.strip() for field in line.split(",")]


def _refuse_smi_error(line_no: int, line: str) -> None:
    if line.strip().startswith(_SMI_FAILURES):
        raise SmiParseError(
            f"line {line_no}: nvidia-smi printed an error instead of a reading: {line.strip()!r}; "
            "the NVIDIA driver is not usable on this host (check the driver and that a GPU is attached)")


def _header(line_no: int, fields: list[str]) -> list[str]:
    columns, units = [], {}
    for field in fields:
        match = _HEADER_UNIT.match(field)
        name = match["field"] if match else field
        if match:
            units[name] = match["unit"]
        columns.append(name)
    missing = [f for f in REQUIRED_FIELDS if f not in columns]
    if missing:
        raise SmiParseError(
            f"line {line_no}: header {', '.join(fields)!r} lacks {', '.join(missing)}; "
            f"query with nvidia-smi --query-gpu={QUERY_FIELDS} --format=csv")
    for field in MEMORY_FIELDS:
        if units.get(field, "MiB") != "MiB":
            raise SmiParseError(f"line {line_no}: {field} is in {units[field]!r}; expected MiB as nvidia-smi prints")
    return columns


def _row(line_no: int, line: str, columns: list[str], has_header: bool) -> dict:
    _refuse_smi_error(line_no, line)
    values = _split(line)
    if has_header and len(values) != len(columns):
        raise SmiParseError(
            f"line {line_no}: {len(values)} fields, the header names {len(columns)} ({', '.join(columns)})")
    if not has_header and len(values) < len(REQUIRED_FIELDS):
        raise SmiParseError(
            f"line {line_no}: {len(values)} field(s) {line.strip()!r}; expected at least "
            f"{len(REQUIRED_FIELDS)} ({', '.join(REQUIRED_FIELDS)}) separated by commas")
    # Columns past the known positional ones keep their place so nothing read is dropped.
    names = columns + [f"column_{i + 1}" for i in range(len(columns), len(values))]
    gpu = {}
    for field, value in zip(names, values):
        gpu[FIELD_KEYS.get(field, field.replace(".", "_"))] = _value(line_no, field, value)
    return gpu


def _value(line_no: int, field: str, value: str):
    if field == "name":
        if not value:
            raise SmiParseError(f"line {line_no}: the GPU name is empty")
        return value
    if field == "compute_cap":
        if not _CAP.match(value):
            raise SmiParseError(
                f"line {line_no}: compute capability is {value!r}, not a number like 8.9"
                + ("; older drivers do not report compute_cap — update the driver, or read it with "
                   "torch.cuda.get_device_capability()" if value.startswith("[") else ""))
        return value
    if field in MEMORY_FIELDS:
        return _mib(line_no, field, value)
    if field == "index" and value.isdigit():
        return int(value)
    return value


def _mib(line_no: int, field: str, value: str) -> int | None:
    number = value[:-3].strip() if value.endswith("MiB") else value
    if number.isdigit():
        return int(number)
    if field != "memory.total" and value.startswith("["):
        return None  # "[N/A]" / "[Not Supported]" for a field judging does not need
    raise SmiParseError(f"line {line_no}: {field} is {value!r}, not a whole number of MiB")


def vram_need_gib(model_gib: float, second_model_gib: float = 0, headroom: float = DEFAULT_HEADROOM) -> float:
    """Weights of the model plus any second model loaded alongside, plus headroom (runbook: 20%).

    The advertised "runs in <4 GB" is the weights alone; the runbook's DiT 7.5 GB + LLM 1.5 GB
    needed about 10.8 GiB and an 8 GB card failed at the first real job.
    """
    for label, value in (("model_gib", model_gib), ("second_model_gib", second_model_gib), ("headroom", headroom)):
        if value < 0:
            raise ValueError(f"{label} must not be negative, got {value}")
    return round((model_gib + second_model_gib) * (1 + headroom), 3)


def cap_tuple(cap: str) -> tuple[int, int]:
    """'8.9' -> (8, 9), so '10.0' sorts above '9.0' as it should."""
    if not _CAP.match(str(cap)):
        raise ValueError(f"compute capability {cap!r} is not a number like 7.0")
    major, minor = str(cap).split(".")
    return int(major), int(minor)


def judge(gpus: list[dict], min_vram_gib: float | None = None,
          min_compute_cap: str = DEFAULT_MIN_COMPUTE_CAP) -> dict:
    """Pass only when every GPU meets the compute capability and the VRAM need by its own reading."""
    cap_tuple(min_compute_cap)  # a bad minimum is the caller's error, raised before any verdict
    reasons, failed = [], []
    if not gpus:
        reasons.append("no GPU in the reading: nvidia-smi listed none. Fix: run on a host with an NVIDIA "
                       "GPU attached and its driver loaded (check that the job requested a GPU).")
    for index, gpu in enumerate(gpus):
        gpu_reasons = _cap_reasons(index, gpu, min_compute_cap) + _vram_reasons(index, gpu, min_vram_gib)
        if gpu_reasons:
            failed.append(index)
        reasons.extend(gpu_reasons)
    return {
        "verdict": "fail" if reasons else "pass",
        "gpus": [{k: gpu[k] for k in ("name", "memory_total_mib", "compute_cap")} for gpu in gpus],
        "reasons": reasons,
        "failed_gpus": failed,
        "checked": {"min_compute_cap": min_compute_cap, "min_vram_gib": min_vram_gib},
    }


def _label(index: int, gpu: dict) -> str:
    return f"GPU {index} ({gpu['name']})"


def _cap_reasons(index: int, gpu: dict, min_cap: str) -> list[str]:
    cap = gpu["compute_cap"]
    if cap_tuple(cap) >= cap_tuple(min_cap):
        return []
    why = ""
    if cap_tuple(cap) < cap_tuple(PYTORCH2_MIN_COMPUTE_CAP):
        why = f"; PyTorch 2.x wheels need {PYTORCH2_MIN_COMPUTE_CAP}+ (sm_70)"
    return [f"{_label(index, gpu)} has compute capability {cap} (sm_{cap.replace('.', '')}), below the required "
            f"{min_cap}{why}. Fix: choose a newer card (T4 7.5, A10/RTX 30xx 8.6, L4 8.9, A100 8.0, H100 9.0)."]


def _vram_reasons(index: int, gpu: dict, min_vram_gib: float | None) -> list[str]:
    if min_vram_gib is None:
        return []
    have = gpu["memory_total_mib"]
    need = min_vram_gib * MIB_PER_GIB
    if have >= need:
        return []
    variant = next((sizes for pattern, sizes in VRAM_VARIANTS if pattern.search(gpu["name"])), None)
    note = f" This card is sold as {variant} under one name: trust the reading." if variant else ""
    return [f"{_label(index, gpu)} reads {have} MiB ({have / MIB_PER_GIB:.1f} GiB) of VRAM; the job needs "
            f"{min_vram_gib:g} GiB ({need:.0f} MiB).{note} Fix: choose a card whose nvidia-smi reading is at "
            f"least {need:.0f} MiB, or a smaller model (fewer weights, quantized, or one model at a time)."]
