"""`gpuops provision-vast` (rent a vast.ai GPU that really works) and `gpuops release-vast` (stop or destroy, approved)."""
from __future__ import annotations

import argparse
import sys

from gpuops.sample_app import DEFAULT_PROMPT

EXIT_OK = 0
FLOW_ONLY = ("check_image", "setup_script")  # checked by the flow itself (a file read, a registry lookup)


def register(subparsers) -> None:
    # allow_abbrev=False here only: `--gpu RTX` is refused, not taken for --gpu-name.
    p = subparsers.add_parser("provision-vast", allow_abbrev=False, help="rent a vast.ai GPU through the guardrails (runbook 004): "
                                                    "rank offers, rent, check the real card, set up, test a generation")
    what = p.add_argument_group("what to run")
    what.add_argument("--image", required=True, help="container image, e.g. nvidia/cuda:12.4.1-runtime-ubuntu22.04")
    what.add_argument("--app-command", required=True, help="starts the app (listening on $APP_PORT) once the model "
                                                           "is checked")
    what.add_argument("--model-dir", required=True, help="where the model must be after the fetch")
    what.add_argument("--model-min-mb", type=int, required=True, help="smallest believable model size in MB")
    what.add_argument("--model-gib", type=float, help="model weights in GiB: the VRAM need is (weights + second) x 1.2")
    what.add_argument("--second-model-gib", type=float, default=0.0, help="a second model loaded alongside, in GiB")
    what.add_argument("--model-fetch", default="", help="command fetching the model into --model-dir (default: none, "
                                                        "the image holds it)")
    what.add_argument("--app-port", type=int, default=8000, help="the app's container port (default 8000)")
    what.add_argument("--health-path", default="/healthz", help="the app's health path (default /healthz)")
    what.add_argument("--disk-gb", type=float, default=40.0, help="instance disk in GB (default 40)")
    what.add_argument("--setup-script", help="on-start script to send instead of deployments/vast_setup.sh "
                                             "(it must `set -euo pipefail`)")
    what.add_argument("--no-check-image", dest="check_image", action="store_false",
                      help="do not look the image up in its registry (a private image): size and trust unchecked")
    _filter_args(p.add_argument_group("which offers (flags override --filter's fields)"))
    bounds = p.add_argument_group("bounds")
    bounds.add_argument("--wait-s", type=float, default=30.0, help="a running instance's app must answer within this "
                                                                  "(default 30, runbook 004), else the next offer")
    bounds.add_argument("--boot-timeout-s", type=float, default=600.0, help="vast.ai must report it running within "
                                                                           "this (image pull; default 600)")
    bounds.add_argument("--max-offers", type=int, default=5, help="most instances rented in one run (default 5)")
    bounds.add_argument("--host-failures", type=int, default=3, help="a host failing this often is skipped (default 3)")
    bounds.add_argument("--latency-target-ms", type=float, default=1000.0, help="mean health latency target (default "
                                                                               "1000)")
    bounds.add_argument("--prompt", default=DEFAULT_PROMPT, help="the test generation's prompt")
    bounds.add_argument("--steps", type=int, default=1000, help="the test generation's steps (default 1000)")
    _release_args(p)
    p.set_defaults(run=_provision, uses_prefect=True)

    p = subparsers.add_parser("release-vast", allow_abbrev=False, help="stop or destroy vast.ai instances once approved (stop offered "
                                                  "first; no answer keeps them)")
    p.add_argument("--instance", dest="instance_ids", type=int, action="append", required=True, metavar="ID",
                   help="an instance to offer for release (repeatable)")
    _release_args(p)
    p.set_defaults(run=_release, uses_prefect=True)


def _filter_args(group) -> None:
    from gpuops_cli.offers_cli import GPU_NAME_HELP, country_args

    # The same flags as `gpuops offers rank`, read by its filter_fields.
    group.add_argument("--filter", metavar="FILTER.json", help="gpuops.offers filter fields as a JSON object")
    group.add_argument("--gpu-name", action="append", metavar="NAME", help=GPU_NAME_HELP)
    group.add_argument("--need-vram-gib", type=float, metavar="N", help="VRAM per GPU needed, in GiB (instead of "
                                                                        "--model-gib)")
    group.add_argument("--max-dph", type=float, metavar="USD", help="price cap in USD per hour (dph_total)")
    group.add_argument("--min-reliability", type=float, metavar="R", help="above this (default and lowest 0.99)")
    country_args(group)


def _release_args(p: argparse.ArgumentParser) -> None:
    # --approval-timeout-s is the name errors use (the flow's approval_timeout_s); --approval-timeout stays.
    p.add_argument("--approval-timeout-s", "--approval-timeout", dest="approval_timeout_s", type=int, default=3600, metavar="SECONDS",
                   help="how long a release waits for approval; no answer keeps the instances (default 3600)")
    p.add_argument("--api-key-secret", metavar="BLOCK", help="Prefect Secret block holding the vast.ai API key "
                                                            "(default: the VAST_API_KEY environment variable)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (logs go to stderr)")


def provision_parameters(args) -> dict:
    """The flow's parameters from the command line (the same names as in the Prefect UI)."""
    from gpuops_cli.offers_cli import filter_fields

    names = ("image", "app_command", "model_dir", "model_min_mb", "model_gib", "second_model_gib", "model_fetch",
             "app_port", "health_path", "disk_gb", "check_image", "setup_script", "wait_s", "boot_timeout_s",
             "max_offers", "host_failures", "latency_target_ms", "prompt", "steps", "approval_timeout_s",
             "api_key_secret")
    return {**{name: getattr(args, name) for name in names}, "offer_filter": filter_fields(args)}


def _flows(args):
    """flows.provision_vast, imported only when a command runs (Prefect and the vastai SDK cost seconds)."""
    import flows.provision_vast as module

    return module


def _provision(args):
    from gpuops import vast_plan

    parameters = provision_parameters(args)
    # Refused here, naming the flag, before a flow run exists.
    vast_plan.check_request(**{k: v for k, v in parameters.items() if k not in FLOW_ONLY})
    provision_vast = _flows(args).provision_vast
    print("gpuops provision-vast: abandoned instances pause the run for an approval; how to answer is printed "
          "when it pauses.", file=sys.stderr)
    result = provision_vast(**parameters)
    if args.json:
        return result
    print_provisioned(result)
    return None


def print_provisioned(result: dict) -> None:
    """The text form: the instance in one line, not its raw record (--json gives everything)."""
    instance = result["instance"]
    for warning in result.get("warnings") or []:
        print(f"WARNING: {warning}")
    print(f"outcome: {result['outcome']} ({result['api']})")
    print(f"instance: {instance['id']} {instance.get('gpu_name')} at {result['url']}, listed "
          f"${instance.get('dph_total'):.4f}/h, label {instance.get('label')}")
    measured = result.get("measured") or {}
    if measured.get("vram"):
        print(f"card read: {measured['vram']['gpu']}, {measured['vram']['memory_total_mib']} MiB")
    print(f"offers tried: " + "; ".join(f"{a['offer_id']} {a['outcome']}" for a in result["attempts"]))
    if result.get("how_to_release"):
        print(f"kept: {', '.join(map(str, result['kept']))}; {result['how_to_release']}")


def _release(args):
    from gpuops import vast_plan

    vast_plan.check_release(args.instance_ids, args.approval_timeout_s, args.api_key_secret)
    release_vast = _flows(args).release_vast
    print("gpuops release-vast: the run pauses for an approval; how to answer (Prefect UI or "
          "POST /api/flow_runs/{id}/resume) is printed below once it pauses.", file=sys.stderr)
    result = release_vast(args.instance_ids, approval_timeout_s=args.approval_timeout_s,
                          api_key_secret=args.api_key_secret)
    timed_out = bool(result["approval"]["timed_out"])
    return result, 1 if timed_out or result["kept"] else EXIT_OK
