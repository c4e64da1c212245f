"""`gpuops alerts apply`: alerts as code (issue 10, item 3): Cloud Monitoring alert policies and Prefect automations.

The Cloud Monitoring half is gpuops/alert_policies.py (the plan) and gpuops/monitoring_alerts.py (the calls). The
Prefect half is deployments/automations.py, run as its own command (`python -m deployments.automations`) from
this checkout: gpuops_cli may not import deployments/ (tests/unit/test_layout.py), and deployments/ is not
part of the installed package. Order: every parameter checked, the project's policies read and planned (no
write), then the automations (which check their API and block before writing), then the policies written.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from gpuops.errors import BadInput, CheckFailed, CouldNotRun

BLOCK_ENV = "GPUOPS_ALERTS_BLOCK"  # deployments/automations.py's own default for --notification-block
AUTOMATIONS_MODULE = "deployments.automations"
AUTOMATIONS_TIMEOUT_S = 300.0
# deployments/automations.py says one line per automation: `<action> <name>[: why]`.
AUTOMATION_LINE = re.compile(r"^(?P<action>in sync|created|updated|would create|would update|differs|error)\s+"
                             r"(?P<rest>gpuops: .*)$")
BAD_BLOCK = ("is not saved on this Prefect API", "<block-type-slug>/<name>", "cannot notify",
             "name the notification block")


def register(subparsers) -> None:
    alerts = subparsers.add_parser("alerts", help="alerts as code: Cloud Monitoring alert policies and Prefect "
                                                  "automations (read, create what is missing, report drift)")
    commands = alerts.add_subparsers(dest="alerts_command", required=True, metavar="ALERTS_COMMAND")
    p = commands.add_parser(
        "apply", help="apply gpuops' alerts: Cloud Monitoring policies for the service (GPU utilisation over 95%% "
                      "for 5 minutes, GPU memory, CPU, memory, response time over 30 s) and the Prefect automations "
                      "(a GPU pool's backlog, a GPU deployment failing 3 runs)",
        description="Reads what exists, creates what is missing, reports drift (changed only with --update). "
                    "Policies without the label managed-by=gpuops are never touched. Exit 0 done; 1 a policy "
                    "differs (without --update) or is blocked by someone else's; 2 bad input; 3 could not run.")
    p.add_argument("--project", required=True, help="Google Cloud project holding the alert policies")
    p.add_argument("--service", required=True, help="the Cloud Run service the policies watch")
    p.add_argument("--notification-channel", action="append", dest="notification_channels", metavar="CHANNEL",
                   help="a Cloud Monitoring notification channel (projects/P/notificationChannels/ID, or the ID); "
                        "repeat for several")
    p.add_argument("--notification-block", default=os.environ.get(BLOCK_ENV), metavar="TYPE/NAME",
                   help=f"the Prefect notification block the automations notify through (default ${BLOCK_ENV}), "
                        "e.g. custom-webhook/gpuops-alerts")
    p.add_argument("--no-automations", action="store_true",
                   help="apply the Cloud Monitoring policies only, not the Prefect automations")
    p.add_argument("--update", action="store_true", help="update gpuops' policies and automations that differ")
    p.add_argument("--dry-run", action="store_true", help="print the policies and what would change; change nothing")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout (logs go to stderr)")
    # cli.py adds --verbose to top-level commands only; a nested one needs its own.
    p.add_argument("--verbose", action="store_true", help="show the traceback of an internal error")
    p.set_defaults(run=_apply)


def _apply(args) -> dict:
    from gpuops import alert_policies, monitoring_alerts

    where = alert_policies.target(args.project, args.service, args.notification_channels)
    if not args.no_automations:
        _check_block(args.notification_block)
    ap = monitoring_alerts.connect()
    prepared = monitoring_alerts.prepare(ap, where)
    if args.no_automations:
        automations = {"skipped": "--no-automations"}
    elif prepared.refused:
        automations = {"skipped": "nothing was applied: a Cloud Monitoring policy is blocked"}
    else:
        automations = apply_automations(args.notification_block, update=args.update, dry_run=args.dry_run)
    monitoring = monitoring_alerts.apply(ap, prepared, update=args.update, dry_run=args.dry_run)
    result = {"dry_run": args.dry_run, "update": args.update, "monitoring": monitoring, "automations": automations}
    result["ok"] = monitoring["ok"] and automations.get("ok", True)
    if not args.json:
        _say(result)
        result = {"ok": result["ok"], "monitoring": monitoring["counts"],
                  "automations": automations.get("counts", automations.get("skipped"))}
    if not result["ok"]:
        raise CheckFailed(_why(monitoring, automations), [result])
    return result


def _check_block(block: str | None) -> None:
    if not block:
        raise BadInput(f"notification_block (--notification-block) is not set: name the Prefect notification block "
                       f"the automations go through as TYPE/NAME (e.g. custom-webhook/gpuops-alerts), or set "
                       f"{BLOCK_ENV}; --no-automations applies the Cloud Monitoring policies only.")
    if "/" not in block:
        raise BadInput(f"notification_block (--notification-block) {block!r} is not TYPE/NAME: give the block "
                       "type's slug and the block's name, e.g. slack-webhook/gpuops-alerts.")


# ---------------------------------------------------------------- the Prefect half


def checkout() -> Path:
    """The gpuops checkout this command runs from: deployments/ lives there, not in the installed package."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "deployments" / "automations.py").is_file():
        raise BadInput(f"the Prefect automations are applied from a gpuops checkout (deployments/automations.py), "
                       f"and {root} is none: run gpuops from the checkout, or pass --no-automations.")
    return root


def apply_automations(block: str, *, update: bool = False, dry_run: bool = False,
                      timeout_s: float = AUTOMATIONS_TIMEOUT_S) -> dict:
    """Run `python -m deployments.automations` on PREFECT_API_URL and say what it did to each automation."""
    command = [sys.executable, "-m", AUTOMATIONS_MODULE, "--notification-block", block]
    command += ["--update"] * update + ["--dry-run"] * dry_run
    try:
        done = subprocess.run(command, cwd=checkout(), capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise CouldNotRun(f"the Prefect automations did not finish within {timeout_s:.0f} s "
                          "(python -m deployments.automations); run the same command again") from None
    automations = parse_automations(done.stdout)
    problem = (done.stderr.strip().splitlines() or [""])[-1].removeprefix("error: ")
    if done.returncode == 1 and not automations:  # refused before any automation was read
        raise refusal(block, problem)
    errors = [a for a in automations if a["action"] == "error"]
    if errors:
        raise CouldNotRun("the Prefect API refused automation(s): " + "; ".join(a["said"] for a in errors)
                          + ". Run the same command again once the Prefect API answers.")
    counts: dict[str, int] = {}
    for item in automations:
        counts[item["action"]] = counts.get(item["action"], 0) + 1
    api = next((line.split(": ", 1)[1] for line in done.stdout.splitlines() if line.startswith("Prefect API: ")), None)
    return {"prefect_api": api, "notification_block": block, "automations": automations,
            "counts": dict(sorted(counts.items())), "ok": "differs" not in counts,
            "applied_by": f"python -m {AUTOMATIONS_MODULE} (exit {done.returncode})"}


def refusal(block: str, problem: str) -> Exception:
    """deployments/automations.py's last stderr line, when it refused before reading any automation, as the
    error gpuops raises: bad input for a missing API setting or block, else could not run (API unreachable)."""
    if "PREFECT_API_URL is not set" in problem:
        return BadInput(f"{problem}; or pass --no-automations to apply the Cloud Monitoring policies only.")
    if any(marker in problem for marker in BAD_BLOCK):
        return BadInput(f"notification_block (--notification-block) {block!r}: {problem}")
    return CouldNotRun(f"the Prefect automations could not be applied: {problem or 'exit 1'}")


def parse_automations(stdout: str) -> list[dict]:
    """`created      gpuops: NAME` -> {"name", "action": "created", "said"}; a reason after the name stays in
    "said" (names are `gpuops: ...`, so the reason is what follows the next ': ')."""
    found = []
    for line in stdout.splitlines():
        match = AUTOMATION_LINE.match(line.strip())
        if match:
            name = "gpuops: " + match["rest"][len("gpuops: "):].split(": ", 1)[0]
            action = match["action"].replace(" ", "-")
            found.append({"name": name, "action": action, "said": line.strip()})
    return found


# ---------------------------------------------------------------- saying it


def _say(result: dict) -> None:
    monitoring, automations = result["monitoring"], result["automations"]
    if result["dry_run"]:
        import json

        print(json.dumps(monitoring["plan"], indent=2, ensure_ascii=False))
    print(f"Cloud Monitoring ({monitoring['endpoint']}), project {monitoring['project']}, "
          f"service {monitoring['service']}:")
    for item in monitoring["policies"]:
        print(f"  {item['action']:<13} {item['display_name']}" + (f" ({item['policy']})" if item["policy"] else ""))
        for line in item["differences"]:
            print(f"      {line}")
        for key in ("reason", "disabled"):
            if key in item:
                print(f"      {item[key]}")
    print(f"  {monitoring['foreign_left_alone']} other polic(ies) without managed-by=gpuops left alone")
    if "skipped" in automations:
        print(f"Prefect automations: skipped ({automations['skipped']})")
    else:
        print(f"Prefect automations ({automations['prefect_api']}):")
        for item in automations["automations"]:
            print(f"  {item['said']}")


def _why(monitoring: dict, automations: dict) -> str:
    if monitoring.get("refused"):
        return f"alerts not applied: {monitoring['refused']}"
    differs = [p["display_name"] for p in monitoring["policies"] if p["action"] == "differs"]
    differs += [a["name"] for a in automations.get("automations", []) if a["action"] == "differs"]
    return (f"{len(differs)} alert(s) differ from gpuops' plan and were left as they are: {'; '.join(differs)}. "
            "Run with --update to apply the plan.")
