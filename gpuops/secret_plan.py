"""Moving plaintext secrets of a service and its gpuops jobs into Secret Manager (runbook phase 5-A), planned (pure).

Which env vars are secrets is `revision.split_env`'s rule, the one `describe` reports. Everything
returned here holds names only; `plaintext_values` is the one function that reads values, for the
flow to hand to Secret Manager and drop.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re

from gpuops import cleanup_plan, job_plan, revision
from gpuops.cloud_run_traffic import REVISION_TYPE, serving
from gpuops.gpu_rules import Violation

SECRETS_TAG = "gpuops-secrets"  # the new revision's tag while it is verified at 0%
STATE_ANNOTATION = "gpuops.dev/secret-migration"
REVISION_INFIX = "-sm-"
LATEST_TYPE = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"
JOB_WRITABLE = ("labels", "annotations", "client", "clientVersion", "launchStage", "binaryAuthorization", "template")
ROLES = ("service", "gpu_service", "cpu_job", "gpu_job")  # the order the flow switches them in


def secret_id(service: str, var: str) -> str:
    """`no-code-architects-toolkit` + `API_KEY` -> `no-code-architects-toolkit-api-key`."""
    return f"{service}-{re.sub(r'[^a-z0-9]+', '-', var.lower()).strip('-')}"


def secret_labels(service: str, var: str) -> dict[str, str]:
    return {job_plan.MANAGED_BY[0]: job_plan.MANAGED_BY[1], "gpuops-source-service": service,
            "gpuops-env": re.sub(r"[^a-z0-9_-]+", "-", var.lower())[:63]}


def template_containers(resource: dict) -> list[dict]:
    """Containers of a service's or job's template, or of a revision."""
    if "containers" in resource:
        return resource["containers"]
    template = resource.get("template") or {}
    return (template.get("template") or template).get("containers") or []


def plaintext_suspects(containers: list[dict]) -> list[str]:
    """Plaintext env names that look like secrets, in every container (describe's rule)."""
    found: list[str] = []
    for container in containers:
        found += [n for n in revision.split_env(container.get("env", []))[2] if n not in found]
    return found


def plaintext_values(containers: list[dict], var: str) -> set[str]:
    """The plaintext values of `var`: for the flow to hand to Secret Manager, never to show."""
    return {e["value"] for c in containers for e in c.get("env", [])
            if e.get("name") == var and not e.get("valueSource") and e.get("value")}


def with_refs(containers: list[dict], refs: dict[str, dict]) -> list[dict]:
    """Copies whose plaintext `refs` vars become `valueSource.secretKeyRef` {secret, version}."""
    out = copy.deepcopy(containers)
    for container in out:
        container["env"] = [{"name": e["name"], "valueSource": {"secretKeyRef": dict(refs[e["name"]])}}
                            if e.get("name") in refs and not e.get("valueSource") else e
                            for e in container.get("env", [])]
    return out


def revision_name(service_id: str, template: dict) -> str:
    """Named by its content (values included only inside the hash), so a re-run finds the revision it made."""
    body = {k: v for k, v in template.items() if k != "revision"}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:6]
    return f"{service_id}{REVISION_INFIX}{digest}"


def is_own_revision(service_id: str, name: str | None) -> bool:
    return bool(name) and re.fullmatch(rf"{re.escape(service_id)}{REVISION_INFIX}[0-9a-f]{{6}}", name) is not None


def switched_template(service: dict, service_id: str, refs: dict[str, dict]) -> dict:
    template = copy.deepcopy(service["template"])
    template["containers"] = with_refs(template.get("containers", []), refs)
    template.pop("revision", None)
    template["revision"] = revision_name(service_id, template)
    return template


def switched_job(job: dict, refs: dict[str, dict]) -> dict:
    """The job's writable spec with its env switched (UpdateJob replaces the whole job)."""
    body = {k: copy.deepcopy(v) for k, v in job.items() if k in JOB_WRITABLE}
    task = body["template"]["template"]
    task["containers"] = with_refs(task.get("containers", []), refs)
    return body


def ready_state(rev: dict | None) -> tuple[str, str]:
    """("ready" | "failed" | "pending", message) from the revision's Ready condition."""
    if rev is None:
        return "failed", "the revision does not exist"
    cond = next((c for c in rev.get("conditions", []) if c.get("type") == "Ready"), {})
    state = {"CONDITION_SUCCEEDED": "ready", "CONDITION_FAILED": "failed"}.get(cond.get("state"), "pending")
    return state, cond.get("message", "")


def serving_revision(service: dict) -> str | None:
    """The one revision serving 100% (None when traffic is split)."""
    shares = serving(service)
    return next(iter(shares)) if list(shares.values()) == [100] else None


def _serving_target(service: dict, rev: str) -> dict:
    """The asked-for traffic target that sends the 100% to `rev` (LATEST or by name)."""
    for t in service.get("traffic") or []:
        if int(t.get("percent", 0)) == 100:
            return t
    return {"type": REVISION_TYPE, "revision": rev, "percent": 100}


def _kept(service: dict, *drop: str) -> list[dict]:
    """Other tagged targets at 0%, as they are (their URLs keep working)."""
    return [t for t in service.get("traffic") or [] if t.get("tag") and int(t.get("percent", 0)) == 0
            and t.get("tag") != SECRETS_TAG and t.get("revision") not in drop]


def deploy_traffic(service: dict, stable: str, candidate: str) -> tuple[list[dict], dict]:
    """(traffic: 100% pinned on `stable`, the candidate at 0% with SECRETS_TAG; the state to record)."""
    target = _serving_target(service, stable)
    pinned = {"type": REVISION_TYPE, "revision": stable, "percent": 100}
    if target.get("tag"):
        pinned["tag"] = target["tag"]
    record = {"from": stable, "to": candidate, "latest": target.get("type") == LATEST_TYPE,
              "tag": target.get("tag"), "phase": "verifying"}
    return [pinned, *_kept(service, stable, candidate),
            {"type": REVISION_TYPE, "revision": candidate, "percent": 0, "tag": SECRETS_TAG}], record


def final_traffic(service: dict, record: dict, candidate: str) -> list[dict]:
    """100% on the candidate, in the form the service had before (LATEST stays LATEST), its tag kept."""
    tag = {"tag": record["tag"]} if record.get("tag") else {}
    first = ({"type": LATEST_TYPE, "percent": 100, **tag} if record.get("latest") and
             service.get("latestCreatedRevision", "").endswith("/" + candidate) else
             {"type": REVISION_TYPE, "revision": candidate, "percent": 100, **tag})
    return [first, *_kept(service, candidate, record.get("from", ""))]


def state_of(service: dict) -> dict | None:
    try:
        found = json.loads((service.get("annotations") or {}).get(STATE_ANNOTATION) or "null")
    except ValueError:
        return None
    return found if isinstance(found, dict) else None


# --- the plan ------------------------------------------------------------------------------


def resource_plan(role: str, kind: str, rid: str, current: dict | None, serving_rev: dict | None,
                  adopt: bool) -> dict:
    """What happens to one resource: `switch` (template has plaintext), `resume` (only the serving
    revision still has it: verify and move traffic), `unchanged`, `absent`, or `refused` with why."""
    item = {"role": role, "kind": kind, "id": rid, "vars": [], "serving_vars": [], "action": "absent", "why": None,
            "fix": None}
    if current is None:
        return item
    item["vars"] = plaintext_suspects(template_containers(current))
    if serving_rev is not None:
        item["serving_vars"] = plaintext_suspects(template_containers(serving_rev))
    canary = cleanup_plan.live_blocker(current) if kind == "service" else None
    if not item["vars"] and not item["serving_vars"]:
        item["action"] = "unchanged"
    elif canary:  # its template is the canary's candidate: switching it would deploy the GPU configuration
        item.update(action="refused", why=f"{canary}.", fix="run migrate-secrets once the canary is done")
    elif role != "service" and not adopt and not job_plan.managed_by_gpuops(current):
        item.update(action="refused", why=f"{kind} {rid} exists and gpuops did not create it (no label "
                                          "managed-by=gpuops).", fix="pass --adopt to switch it too")
    elif item["vars"]:
        item["action"] = "switch"
    elif is_own_revision(rid, (current.get("template") or {}).get("revision")):
        item["action"] = "resume"  # an earlier run deployed the switch; traffic has not moved yet
    else:
        item.update(action="refused", why=f"the revision serving {rid} has plaintext "
                    f"{', '.join(item['serving_vars'])}, but the service's template no longer does and gpuops did "
                    "not write it.", fix="send traffic to the template's revision yourself, then run again")
    return item


def moving(item: dict) -> list[str]:
    """The vars a resource moves: its template's plaintext, or (resumed) what its serving revision still holds."""
    return {"switch": item["vars"], "resume": item["serving_vars"]}.get(item["action"], [])


def variables(service: str, items: list[dict], secrets: dict[str, dict | None], adopt: bool) -> list[dict]:
    """One row per env var to move: its secret, whether that exists and whose, and where the var is."""
    rows = []
    for name in dict.fromkeys(n for i in items for n in moving(i)):
        sid = secret_id(service, name)
        found = secrets.get(sid)
        state = "absent" if found is None else "gpuops" if job_plan.managed_by_gpuops(found) else "foreign"
        rows.append({"name": name, "secret": sid, "secret_state": state, "adopted": state == "foreign" and adopt,
                     "resources": [i["id"] for i in items if name in moving(i)]})
    return rows


def refusals(items: list[dict], rows: list[dict], adopt: bool, disagreeing: list[str]) -> list[Violation]:
    """Everything that stops the run before its first write (names only)."""
    out = [Violation("resource-refused", i["id"], i["why"], i["fix"]) for i in items if i["action"] == "refused"]
    out += [Violation("foreign-secret", r["secret"],
                      f"secret {r['secret']} exists and gpuops did not create it (no label managed-by=gpuops).",
                      "pass --adopt to add the value to it, or delete or rename it") for r in rows
            if r["secret_state"] == "foreign" and not adopt]
    out += [Violation("values-differ", name, f"{name} holds different values in different resources.",
                      "make them equal (or move them by hand): one secret holds one value") for name in disagreeing]
    seen: dict[str, str] = {}
    for r in rows:
        if r["secret"] in seen:
            out.append(Violation("secret-name-clash", r["secret"], f"{seen[r['secret']]} and {r['name']} both map to "
                                 f"secret {r['secret']}.", "rename one of the variables"))
        seen[r["secret"]] = r["name"]
    return out


def preview(rows: list[dict], items: list[dict], probe_path: str) -> list[str]:
    """What an executed run does, in order (names only)."""
    steps = [f"secret {r['secret']}: " + ("create it (label managed-by=gpuops), then " if r["secret_state"] == "absent"
                                          else "") + f"add {r['name']}'s value as a version unless the newest holds it"
             for r in rows]
    for item in sorted(items, key=lambda i: ROLES.index(i["role"])):
        if item["action"] == "switch" and item["kind"] == "job":
            steps.append(f"job {item['id']}: {', '.join(item['vars'])} become secret references")
        elif item["action"] in ("switch", "resume"):
            first = ("deploy a revision with " + ", ".join(item["vars"]) + " as secret references"
                     if item["action"] == "switch" else "the revision already deployed on secret references:")
            steps.append(f"service {item['id']}: {first} at 0% (tag {SECRETS_TAG}); once it is ready and answers "
                         f"GET {probe_path}, move the traffic to it from the revision serving now")
    return steps


def plan_markdown(result: dict) -> str:
    mode = "executed" if result["execute"] else "dry run: nothing was changed"
    lines = [f"# migrate-secrets for `{result['service']}` ({mode})",
             f"Cloud Run: {result['api']}; Secret Manager: {result['secret_manager_api']}", "",
             "Values are never shown, logged or stored by gpuops: names only.", "",
             "| variable | secret | secret now | version | resources |", "|---|---|---|---|---|"]
    for r in result["variables"]:
        lines.append(f"| `{r['name']}` | `{r['secret']}` | {r['secret_state']}{' (adopted)' if r['adopted'] else ''} "
                     f"| {r.get('version') or '(new)'} | {', '.join(r['resources'])} |")
    if not result["variables"]:
        lines.append("| (none) | | | | |")
    lines += ["", "| resource | plaintext secrets | action |", "|---|---|---|"]
    for i in result["resources"]:
        names = ", ".join(dict.fromkeys(i["vars"] + i["serving_vars"])) or "none"
        lines.append(f"| {i['kind']} `{i['id']}` | {names} | {i['action']}{': ' + i['why'] if i['why'] else ''} |")
    for key, title in (("plan", "Plan"), ("steps", "What happened"), ("notes", "Notes")):
        if result.get(key):
            lines += ["", f"## {title}", *(f"- {s}" for s in result[key])]
    return "\n".join(lines)
