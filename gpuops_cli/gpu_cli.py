"""`gpuops gpu-check` (judge a recorded nvidia-smi reading) and `gpuops gpu-probe` (on the GPU host)."""
from __future__ import annotations

import argparse
import json
import sys

from gpuops.gpu import DEFAULT_HEADROOM, DEFAULT_MIN_COMPUTE_CAP, MIB_PER_GIB, SmiParseError, cap_tuple, judge, \
    parse_smi_csv, vram_need_gib

EXIT_OK, EXIT_FAIL, EXIT_ERROR = 0, 1, 2


def register(subparsers) -> None:
    p = subparsers.add_parser("gpu-check", help="judge an nvidia-smi CSV reading: compute capability and real VRAM")
    p.add_argument("--smi-csv", required=True, metavar="FILE",
                   help="output of nvidia-smi --query-gpu=name,memory.total,compute_cap --format=csv "
                        "(or csv,noheader,nounits); '-' reads stdin")
    _guardrail_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.set_defaults(run=_gpu_check)

    p = subparsers.add_parser("gpu-probe", help="on a GPU host or job: nvidia-smi, PyTorch, a timed compute test; "
                                                "prints one JSON line")
    _guardrail_args(p)
    p.add_argument("--model-gib", type=_non_negative, help="model weights in GiB (need = weights + 20%%)")
    p.add_argument("--second-model-gib", type=_non_negative, help="a second model loaded alongside, in GiB")
    p.add_argument("--headroom", type=_non_negative, default=DEFAULT_HEADROOM, help="fraction added (default 0.2)")
    p.add_argument("--compute-seconds", type=_non_negative, default=0,
                   help="keep the compute test running this long (default: one run)")
    p.add_argument("--json", action="store_true", help="accepted for symmetry: the probe always prints JSON")
    p.set_defaults(run=_gpu_probe)


def _guardrail_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--min-vram-gib", type=_non_negative, help="VRAM each GPU must read, in GiB (1 GiB = 1024 MiB)")
    p.add_argument("--min-compute-cap", type=_compute_cap, default=DEFAULT_MIN_COMPUTE_CAP,
                   help="lowest compute capability (default 7.0: PyTorch 2.x needs sm_70+)")


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _compute_cap(text: str) -> str:
    try:
        cap_tuple(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _gpu_check(args) -> tuple[dict | None, int]:
    try:
        gpus = parse_smi_csv(_read(args.smi_csv))
    except (OSError, UnicodeDecodeError, SmiParseError) as exc:
        message = f"{args.smi_csv}: {exc}"
        result = {"verdict": "error", "error": message, "gpus": [], "reasons": [message]}
        if args.json:
            return result, EXIT_ERROR
        print(f"gpuops gpu-check: {message}", file=sys.stderr)
        return None, EXIT_ERROR
    result = judge(gpus, args.min_vram_gib, args.min_compute_cap)
    code = EXIT_OK if result["verdict"] == "pass" else EXIT_FAIL
    if args.json:
        return result, code
    _print_human(result)
    return None, code


def _read(path: str) -> str:
    return sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()


def _print_human(result: dict) -> None:
    failed = set(result["failed_gpus"])
    for index, gpu in enumerate(result["gpus"]):
        mark = "FAIL" if index in failed else "ok  "
        print(f"{mark} GPU {index}: {gpu['name']}, {gpu['memory_total_mib']} MiB "
              f"({gpu['memory_total_mib'] / MIB_PER_GIB:.1f} GiB), compute capability {gpu['compute_cap']}")
    checked = result["checked"]
    vram = "not checked" if checked["min_vram_gib"] is None else f"{checked['min_vram_gib']:g} GiB"
    print(f"verdict: {result['verdict']} (min compute capability {checked['min_compute_cap']}, min VRAM {vram})")
    for reason in result["reasons"]:
        print(f"- {reason}")


def _gpu_probe(args) -> tuple[None, int]:
    from gpuops.gpu_probe import probe  # subprocess/torch machinery only for this command

    need = _probe_need(args)
    report, code = probe(need, args.min_compute_cap, args.compute_seconds)
    # One line: job logs are read back line by line.
    print(json.dumps(report, sort_keys=True, default=str), flush=True)
    return None, code


def _probe_need(args) -> float | None:
    """The larger of --min-vram-gib and the model-based need, so neither guardrail is dropped."""
    needs = [args.min_vram_gib] if args.min_vram_gib is not None else []
    if args.model_gib is not None or args.second_model_gib is not None:
        needs.append(vram_need_gib(args.model_gib or 0, args.second_model_gib or 0, args.headroom))
    return max(needs) if needs else None
