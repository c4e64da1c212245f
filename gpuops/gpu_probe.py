"""The probe's I/O on a GPU host: run nvidia-smi, ask PyTorch, time a real computation."""
from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import shutil
import socket
import subprocess
import time
from datetime import datetime, timezone

from gpuops.gpu import NOHEADER_FIELDS, SmiParseError, judge, parse_smi_csv

EMULATED_ENV = "GPUOPS_EMULATED_GPU"
# The emulator's fake nvidia-smi writes this on stderr, so a report names emulation even when
# the job's environment lost the variable.
EMULATED_SMI_MARKER = "gpuops-emulated-gpu: this nvidia-smi prints a recorded reading, not a GPU"
SMI_TIMEOUT_S = 20
# Queried in the order gpu-check reads noheader files in, so a probe's reading can be replayed.
SMI_COMMAND = ["nvidia-smi", f"--query-gpu={','.join(NOHEADER_FIELDS)}", "--format=csv,noheader,nounits"]
CPU_MATRIX_N = 64
CUDA_MATRIX_N = 4096
_KEEP_CHARS = 4000  # of stderr: a crashing driver can print pages


class ProbeError(RuntimeError):
    """nvidia-smi is missing, failing or hung (exit 2); record holds what it did print."""

    def __init__(self, message: str, record: dict):
        super().__init__(message)
        self.record = record


def run_smi(timeout: float = SMI_TIMEOUT_S) -> dict:
    """Run the first nvidia-smi on PATH; the record keeps what it printed for the job log."""
    path = shutil.which("nvidia-smi")
    record = {"path": path, "command": SMI_COMMAND, "exit_code": None, "stdout": "", "stderr": "", "seconds": None}
    if path is None:
        raise ProbeError("nvidia-smi is not on PATH: no NVIDIA driver here, or the job did not request a GPU. "
                         "Fix: run on a GPU host/job (Cloud Run: --gpu 1 --gpu-type nvidia-l4).", record)
    started = time.perf_counter()
    try:
        done = subprocess.run([path, *SMI_COMMAND[1:]], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ProbeError(f"nvidia-smi did not answer within {timeout:g} s: the driver is hung; "
                         "Fix: replace this host.", record)
    except OSError as exc:
        raise ProbeError(f"nvidia-smi at {path} could not be run: {exc}", record)
    record.update(exit_code=done.returncode, stdout=done.stdout, stderr=done.stderr[:_KEEP_CHARS],
                  seconds=round(time.perf_counter() - started, 3))
    if done.returncode != 0 and "No devices were found" not in done.stdout:
        said = (done.stdout.strip() or done.stderr.strip()).splitlines()[:1] or ["nothing"]
        raise ProbeError(f"nvidia-smi exited {done.returncode}: {said[0]}", record)
    return record


def torch_info() -> dict | None:
    """What PyTorch sees; None when torch is not installed (the probe still runs)."""
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        torch = importlib.import_module("torch")
        available = bool(torch.cuda.is_available())
        count = torch.cuda.device_count() if available else 0
        devices = [{"index": i, "name": torch.cuda.get_device_name(i),
                    "compute_cap": "%d.%d" % torch.cuda.get_device_capability(i)} for i in range(count)]
        return {"version": torch.__version__, "cuda_build": torch.version.cuda, "cuda_available": available,
                "device_count": count, "devices": devices}
    except Exception as exc:  # a broken install must become a finding, not a crash
        return {"error": f"{type(exc).__name__}: {exc}"}


def compute_test(torch_seen: dict | None, seconds: float = 0) -> dict:
    """A real, checked computation, repeated for `seconds` (at least once), with its timing.

    On the GPU when PyTorch sees CUDA, else on the CPU, labelled so. A health endpoint can answer
    while the GPU cannot compute (runbook 004, case 8): only real work shows that.
    """
    if torch_seen and torch_seen.get("cuda_available"):
        try:
            return _repeat(lambda: _cuda_matmul(CUDA_MATRIX_N), seconds)
        except Exception as exc:  # e.g. "no kernel image is available for execution on the device"
            return {"device": "cuda", "ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return _repeat(lambda: _cpu_matmul(CPU_MATRIX_N), seconds)


def _repeat(run_once, seconds: float) -> dict:
    started = time.perf_counter()
    first = run_once()
    runs, ok, fastest = 1, first["ok"], first["seconds"]
    while ok and time.perf_counter() - started < seconds:
        again = run_once()
        runs, ok, fastest = runs + 1, again["ok"], min(fastest, again["seconds"])
    return {**first, "ok": ok, "runs": runs, "fastest_seconds": fastest,
            "seconds": round(time.perf_counter() - started, 4)}


def _cuda_matmul(n: int) -> dict:
    torch = importlib.import_module("torch")
    warm = torch.ones(64, 64, device="cuda")
    (warm @ warm).sum().item()  # the first matmul pays cuBLAS start-up; keep it out of the timing
    a = torch.rand(n, n, device="cuda")
    b = torch.rand(n, n, device="cuda")
    torch.cuda.synchronize()
    started = time.perf_counter()
    c = a @ b
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    # sum(A·B) = Σ_k colsum(A)_k · rowsum(B)_k: a second route to the same number checks the kernel.
    expected = float((a.sum(0) * b.sum(1)).sum())
    got = float(c.sum())
    return {"device": "cuda", "name": torch.cuda.get_device_name(0), "what": f"float32 matmul {n}x{n}",
            "seconds": round(seconds, 4), "gflops": round(2 * n**3 / max(seconds, 1e-9) / 1e9, 1),
            "ok": abs(got - expected) <= 1e-3 * abs(expected)}


def _cpu_matmul(n: int) -> dict:
    a = [[(i * 7 + j * 3) % 11 for j in range(n)] for i in range(n)]
    b = [[(i * 5 + j * 2) % 13 for j in range(n)] for i in range(n)]
    bt = list(zip(*b))
    started = time.perf_counter()
    c = [[sum(x * y for x, y in zip(row, col)) for col in bt] for row in a]
    seconds = time.perf_counter() - started
    expected = sum(sum(col_a) * sum(row_b) for col_a, row_b in zip(zip(*a), b))
    return {"device": "cpu", "what": f"integer matmul {n}x{n} in plain Python",
            "note": "PyTorch with CUDA is not available here: this timed the CPU, not a GPU",
            "seconds": round(seconds, 4), "ok": sum(map(sum, c)) == expected}


def probe(need_gib: float | None, min_compute_cap: str, compute_seconds: float = 0,
          smi_timeout: float = SMI_TIMEOUT_S) -> tuple[dict, int]:
    """The whole probe as one report and its exit code (0 pass, 1 fail, 2 nvidia-smi unusable)."""
    report = {"probe": _about(need_gib, min_compute_cap), "smi": None, "gpus": [], "torch": None,
              "compute": None, "verdict": "error", "reasons": [], "emulated": False}
    smi_error = None
    try:
        report["smi"] = run_smi(smi_timeout)
        report["gpus"] = parse_smi_csv(report["smi"]["stdout"])
    except ProbeError as exc:
        report["smi"], smi_error = exc.record, str(exc)
    except SmiParseError as exc:
        smi_error = f"nvidia-smi output unparsable: {exc}"
    report["emulated"] = is_emulated(report["smi"])
    # Even without a usable nvidia-smi the job log gets what PyTorch and the CPU can tell.
    report["torch"] = torch_info()
    report["compute"] = compute_test(report["torch"], compute_seconds)
    if smi_error:
        report.update(error=smi_error, reasons=[smi_error])
        return report, 2
    verdict = judge(report["gpus"], need_gib, min_compute_cap)
    reasons = verdict["reasons"] + _runtime_reasons(report)
    report.update(verdict="fail" if reasons else "pass", reasons=reasons, failed_gpus=verdict["failed_gpus"])
    return report, (1 if reasons else 0)


def is_emulated(smi_record: dict | None) -> bool:
    """The variable the emulator sets, or the fake nvidia-smi's own mark on stderr."""
    flag = os.environ.get(EMULATED_ENV, "").strip().lower() not in ("", "0", "false", "no")
    return flag or EMULATED_SMI_MARKER in (smi_record or {}).get("stderr", "")


def _about(need_gib: float | None, min_compute_cap: str) -> dict:
    return {"tool": "gpuops gpu-probe", "host": socket.gethostname(), "python": platform.python_version(),
            "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "vram_need_gib": need_gib, "min_compute_cap": min_compute_cap}


def _runtime_reasons(report: dict) -> list[str]:
    """What nvidia-smi cannot show: PyTorch failing to use the GPU, or the computation failing."""
    reasons, seen, compute = [], report["torch"], report["compute"]
    if seen and "error" in seen:
        reasons.append(f"PyTorch is installed but failed: {seen['error']}. "
                       "Fix: reinstall a torch wheel built for this CUDA driver.")
    elif seen and report["gpus"] and not seen["cuda_available"]:
        driver = report["gpus"][0].get("driver_version", "?")
        reasons.append(f"PyTorch {seen['version']} (CUDA build {seen['cuda_build']}) sees no CUDA device while "
                       f"nvidia-smi lists {len(report['gpus'])} GPU(s) on driver {driver}. Fix: install a CUDA "
                       "wheel the driver supports (a CPU-only wheel or a newer CUDA build than the driver).")
    if not compute.get("ok"):
        reasons.append(f"the {compute['device']} compute test failed: {compute.get('error', 'wrong result')}. "
                       "Fix: replace this host; a passing health check does not mean the GPU computes.")
    return reasons
