"""Apply deployments/work_pools/*.json to the Prefect API: create what is missing, report drift."""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NoReturn

WORK_POOLS_DIR = Path(__file__).resolve().parent / "work_pools"
REQUIRED_KEYS = ("name", "type", "description", "base_job_template")

EXIT_OK = 0  # every pool exists as written (possibly after this run created/updated it)
EXIT_ERROR = 1  # bad input, API unreachable or an API call refused
EXIT_PENDING = 2  # changes remain: --dry-run found work, or drift was found without --update


class PoolFileError(ValueError):
    """A work pool file is unreadable or not shaped like a work pool."""


@dataclass
class Plan:
    """What to do for one work pool: create, update, nothing, or refuse (type mismatch)."""

    name: str
    action: str  # "create" | "update" | "in-sync" | "type-mismatch"
    diff: list[str] = field(default_factory=list)


def load_pool_file(path: Path) -> dict[str, Any]:
    """Read one work pool file and check its shape (not its template: the server does that)."""
    try:
        pool = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise PoolFileError(f"{path}: cannot read JSON: {exc}") from exc
    if not isinstance(pool, dict):
        raise PoolFileError(f"{path}: expected a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in pool]
    if missing:
        raise PoolFileError(f"{path}: missing key(s) {', '.join(missing)}")
    if pool["name"] != path.stem:
        raise PoolFileError(f"{path}: name {pool['name']!r} does not match the file name")
    template = pool["base_job_template"]
    if not isinstance(template, dict) or set(template) != {"job_configuration", "variables"}:
        raise PoolFileError(
            f"{path}: base_job_template must hold exactly job_configuration and variables"
        )
    return pool


def load_pool_files(directory: Path) -> list[dict[str, Any]]:
    """Every *.json in the directory, sorted by file name."""
    paths = sorted(directory.glob("*.json"))
    if not paths:
        raise PoolFileError(f"{directory}: no work pool files (*.json)")
    return [load_pool_file(path) for path in paths]


def _dump(value: Any) -> list[str]:
    return json.dumps(value, indent=2, sort_keys=True).splitlines()


def describe_difference(current: dict[str, Any], desired: dict[str, Any]) -> list[str]:
    """Lines showing how the live pool differs from the file (empty when it does not)."""
    lines: list[str] = []
    if (current.get("description") or "") != (desired.get("description") or ""):
        lines += [
            "description:",
            f"- {json.dumps(current.get('description'))}",
            f"+ {json.dumps(desired.get('description'))}",
        ]
    if current["base_job_template"] != desired["base_job_template"]:
        lines += difflib.unified_diff(
            _dump(current["base_job_template"]),
            _dump(desired["base_job_template"]),
            fromfile=f"{desired['name']} (Prefect API)",
            tofile=f"{desired['name']} (file)",
            lineterm="",
        )
    return lines


def plan_pool(current: dict[str, Any] | None, desired: dict[str, Any]) -> Plan:
    """Pure: compare the live pool (None when missing) with the file."""
    name = desired["name"]
    if current is None:
        return Plan(name, "create")
    if current["type"] != desired["type"]:
        return Plan(
            name,
            "type-mismatch",
            [f"type is {current['type']!r} in the API, {desired['type']!r} in the file"],
        )
    diff = describe_difference(current, desired)
    return Plan(name, "update" if diff else "in-sync", diff)


def _read_pool(client: Any, name: str) -> dict[str, Any] | None:
    from prefect.exceptions import ObjectNotFound

    try:
        pool = client.read_work_pool(name)
    except ObjectNotFound:
        return None
    return {
        "name": pool.name,
        "type": pool.type,
        "description": pool.description,
        "base_job_template": pool.base_job_template,
    }


def _execute(client: Any, plan: Plan, desired: dict[str, Any]) -> None:
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate

    if plan.action == "create":
        client.create_work_pool(
            WorkPoolCreate(
                name=desired["name"],
                type=desired["type"],
                description=desired["description"],
                base_job_template=desired["base_job_template"],
            )
        )
    elif plan.action == "update":
        client.update_work_pool(
            desired["name"],
            WorkPoolUpdate(
                description=desired["description"],
                base_job_template=desired["base_job_template"],
            ),
        )


def _api_error(exc: Exception) -> str:
    """The server's own words for a refused call, without the request it echoes back."""
    response = getattr(exc, "response", None)
    if response is None:
        return f"{type(exc).__name__}: {exc}"
    try:
        body = response.json()
    except ValueError:
        body = None
    details = None
    if isinstance(body, dict):
        details = body.get("exception_detail") or body.get("detail")
    if isinstance(details, list):
        text = "; ".join(d.get("msg", str(d)) if isinstance(d, dict) else str(d) for d in details)
    else:
        text = str(details or response.text[:500])
    return f"HTTP {response.status_code}: {text}"


def _apply_one(client: Any, desired: dict[str, Any], *, update: bool, dry_run: bool) -> str:
    """Plan and (unless dry_run) apply one pool; print what happened; return its outcome."""
    name, kind = desired["name"], desired["type"]
    try:
        plan = plan_pool(_read_pool(client, name), desired)
    except Exception as exc:
        print(f"error        {name}: cannot read the work pool: {_api_error(exc)}")
        return "error"
    outcome = "ok"
    if plan.action == "in-sync":
        print(f"in sync      {name} ({kind})")
    elif plan.action == "type-mismatch":
        print(
            f"error        {name}: {plan.diff[0]}; the type of a work pool cannot be "
            f"changed: delete it (prefect work-pool delete {name}) and apply again"
        )
        return "error"
    elif plan.action == "update" and not update:
        print(f"differs      {name} ({kind}): not updated, run with --update to apply the file")
        outcome = "pending"
    elif dry_run:
        print(f"would {plan.action:<6} {name} ({kind})")
        outcome = "pending"
    else:
        try:
            _execute(client, plan, desired)
        except Exception as exc:
            print(f"error        {name}: {plan.action} refused: {_api_error(exc)}")
            return "error"
        print(f"{plan.action + 'd':<12} {name} ({kind})")
    for line in plan.diff:
        print(f"    {line}")
    return outcome


def apply_pools(
    client: Any, pools: list[dict[str, Any]], *, update: bool, dry_run: bool
) -> int:
    """Apply every pool (one failure does not stop the others); return an exit code."""
    outcomes = [_apply_one(client, pool, update=update, dry_run=dry_run) for pool in pools]
    errors, pending = outcomes.count("error"), outcomes.count("pending")
    summary = f"{len(pools)} work pool(s): {errors} error(s), {pending} pending change(s)"
    print(summary + (" (dry run)" if dry_run else ""))
    if errors:
        return EXIT_ERROR
    return EXIT_PENDING if pending else EXIT_OK


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # usage errors are errors (1), not "pending" (2)
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m deployments.apply",
        description=(
            "Create the work pools described in deployments/work_pools/*.json on the Prefect "
            "API at PREFECT_API_URL. A pool that exists with a different base job template or "
            "description is reported with a diff and changed only with --update."
        ),
        epilog=(
            "exit status: 0 all pools match the files; 1 error (bad file, API unreachable or "
            "refusing, pool type mismatch); 2 changes pending (--dry-run found work, or drift "
            "was found without --update)."
        ),
    )
    parser.add_argument("--update", action="store_true", help="update pools that differ")
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would change; change nothing"
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=WORK_POOLS_DIR,
        help=f"directory of work pool JSON files (default: {WORK_POOLS_DIR})",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        pools = load_pool_files(args.dir)
    except PoolFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR

    return with_api(lambda client: apply_pools(client, pools, update=args.update, dry_run=args.dry_run))


def with_api(work: Callable[[Any], int]) -> int:
    """Run `work(client)` against the Prefect API at PREFECT_API_URL once it answers; EXIT_ERROR, saying
    why on stderr, when it is not set or does not answer."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    api_url = get_current_settings().api.url
    if not api_url:
        # Without it get_client() would start a throwaway local server and apply to that.
        print(
            "error: PREFECT_API_URL is not set; point it at the Prefect API to apply to "
            "(e.g. export PREFECT_API_URL=http://127.0.0.1:4200/api)",
            file=sys.stderr,
        )
        return EXIT_ERROR
    print(f"Prefect API: {api_url}")
    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
        if problem is not None:
            print(f"error: Prefect API at {api_url} is unreachable: {problem}", file=sys.stderr)
            return EXIT_ERROR
        return work(client)


if __name__ == "__main__":
    sys.exit(main())
