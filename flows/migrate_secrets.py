"""Flow `migrate-secrets` (runbook phase 5-A: Secret Manager移行): plaintext secrets of a service and its jobs
into Secret Manager, switched to secret references only once the new revision is seen serving."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Optional

from google.api_core import exceptions as gexc
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from blocks.cloud_run_blocks import CloudRunTarget
from flows.common import Target, connect, resolve_target, where
from flows.describe_revision import describe_revision
from flows.smoke_test import call_service
from gpuops import cloudrun, job_plan, params, probe_auth, secret_manager, secret_plan
from gpuops.errors import BadInput, CheckFailed, CouldNotRun
from gpuops.rollout.cloud_run import single_serving_revision, tag_url

_KIND_GET = {"service": cloudrun.get_service, "job": cloudrun.get_job}


@dataclass
class Progress:
    """What this run changed so far: what a failure report says is left, and how to go on."""

    project: str
    stable: dict[str, str] = field(default_factory=dict)  # service id -> the revision serving before
    created: list[dict] = field(default_factory=list)  # secrets made in this run: {"secret", "version"}
    switched: list[str] = field(default_factory=list)  # resources now on references
    steps: list[str] = field(default_factory=list)

    def done(self, step: str) -> None:
        self.steps.append(step)
        get_run_logger().info(step)

    def left(self, command: str) -> str:
        """The state a failure leaves, and how to resume or undo it (names only)."""
        parts = [f"service {sid}: traffic stays on {rev}, which serves as before."
                 for sid, rev in self.stable.items() if sid not in self.switched]
        if self.switched:
            parts.append(f"Already on secret references: {', '.join(self.switched)}.")
        if self.created:
            names = ", ".join(f"{c['secret']} (version {c['version']})" for c in self.created)
            parts.append(f"Created in this run: secret {names}. To resume, run the same command again "
                         f"({command}): it reuses them. To remove them instead: "
                         + "; ".join(f"gcloud secrets delete {c['secret']} --project {self.project}"
                                     for c in self.created)
                         + (" (only once nothing references them)." if self.switched else "."))
        else:
            parts.append(f"To resume, run the same command again ({command}).")
        return " ".join(parts)


# --- reading -------------------------------------------------------------------------------


def _full_name(target: Target, kind: str, rid: str) -> str:
    return cloudrun.service_name(target.project, target.region, rid) if kind == "service" else target.job_name(rid)


@task(name="read-resources", cache_policy=NO_CACHE, persist_result=False)
def read_resources(cr: cloudrun.CloudRun, target: Target, prefix: Optional[str]) -> dict[str, dict]:
    """role -> {kind, id, name, current, serving}: the service, gpuops' GPU service and jobs, and the revision
    each service serves (env values stay in memory, never in a result)."""
    ids = job_plan.resource_ids(prefix or target.service)
    roles = (("service", "service", target.service), ("gpu_service", "service", ids["gpu_service"]),
             ("cpu_job", "job", ids["cpu_job"]), ("gpu_job", "job", ids["gpu_job"]))
    found = {}
    for role, kind, rid in roles:
        name = _full_name(target, kind, rid)
        current, serving = _KIND_GET[kind](cr, name), None
        if role == "service" and current is None:
            raise BadInput(f"service {rid!r} not found: check --project, --region and --service.")
        if kind == "service" and current is not None:
            serving = cloudrun.get_revision(cr, f"{name}/revisions/{single_serving_revision(current)}")
        found[role] = {"kind": kind, "id": rid, "name": name, "current": current, "serving": serving}
    return found


@task(name="read-secrets", cache_policy=NO_CACHE, persist_result=False)
def read_secrets(sm: secret_manager.SecretManager, project: str, secret_ids: list[str]) -> dict[str, dict | None]:
    return {sid: secret_manager.get_secret(sm, secret_manager.secret_name(project, sid)) for sid in secret_ids}


def _containers(entry: dict) -> list[dict]:
    return [c for r in (entry["current"], entry["serving"]) if r for c in secret_plan.template_containers(r)]


def disagreeing(found: dict[str, dict], rows: list[dict]) -> list[str]:
    """Vars whose plaintext differs between resources (compared here; only the names leave)."""
    out = []
    for row in rows:
        values: set[str] = set()
        for entry in found.values():
            if entry["id"] in row["resources"]:
                values |= secret_plan.plaintext_values(_containers(entry), row["name"])
        if len(values) > 1:
            out.append(row["name"])
    return out


# --- writing -------------------------------------------------------------------------------


@task(name="store-secret", cache_policy=NO_CACHE, persist_result=False)
def store_secret(sm: secret_manager.SecretManager, project: str, service: str, row: dict,
                 found: dict[str, dict]) -> dict:
    """Read the value from the resources, hand it to Secret Manager, drop it. Returns names only."""
    name = secret_manager.secret_name(project, row["secret"])
    created = False
    if row["secret_state"] == "absent":
        secret_manager.create_secret(sm, name, secret_plan.secret_labels(service, row["name"]))
        created = True
    data = next(v for e in found.values() if e["id"] in row["resources"]
                for v in secret_plan.plaintext_values(_containers(e), row["name"])).encode()
    version = None if created else secret_manager.matching_version(sm, name, data)
    added = version is None
    if added:
        version = secret_manager.add_version(sm, name, data)["name"]
    del data  # the value goes no further than Secret Manager
    return {"name": row["name"], "secret": row["secret"], "version": secret_manager.version_id(version),
            "created": created, "version_added": added}


def _changed(what: str) -> CheckFailed:
    return CheckFailed(f"{what} changed while gpuops migrated its secrets: nothing of gpuops' was written over "
                       "it. Check what changed, then run again.")


@task(name="deploy-revision", cache_policy=NO_CACHE, persist_result=False)
def deploy_revision(cr: cloudrun.CloudRun, entry: dict, refs: dict[str, dict]) -> dict:
    """The template on secret references as a named revision at 0% with tag gpuops-secrets; the serving
    revision pinned at 100%. Returns {"from", "to"}."""
    sid, planned = entry["id"], {}

    def decide(service: dict) -> cloudrun.TrafficChange | None:
        stable = secret_plan.serving_revision(service)
        template = None
        if secret_plan.plaintext_suspects(secret_plan.template_containers(service)):
            template = secret_plan.switched_template(service, sid, refs)
            candidate = template["revision"]
        elif secret_plan.is_own_revision(sid, (service.get("template") or {}).get("revision")):
            candidate = service["template"]["revision"]
        else:
            raise _changed(f"service {sid}'s template")
        if stable is None or stable == candidate:
            raise _changed(f"service {sid}'s traffic")
        traffic, record = secret_plan.deploy_traffic(service, stable, candidate)
        earlier = secret_plan.state_of(service) or {}
        if earlier.get("to") == candidate and earlier.get("from") == stable:
            record = {**earlier, "phase": "verifying"}  # a resumed run keeps the first run's traffic form
        planned.update({"from": stable, "to": candidate})
        return cloudrun.TrafficChange(traffic, {secret_plan.STATE_ANNOTATION: json.dumps(record)}, template=template)

    try:
        cloudrun.update_traffic(cr, entry["name"], decide)
    except gexc.GoogleAPICallError:
        # An error can come after the write took (the revision did not start, an answer was lost): then
        # the verification says what is wrong with the revision; anything else stops the run.
        after = cloudrun.get_service(cr, entry["name"]) or {}
        if not planned or (after.get("template") or {}).get("revision") != planned["to"]:
            raise
    return dict(planned)


@task(name="verify-revision", cache_policy=NO_CACHE, persist_result=False)
def verify_revision(cr: cloudrun.CloudRun, entry: dict, revision: str, probe: dict,
                    auth: Optional[probe_auth.ProbeAuth]) -> dict:
    """Ready, then `probe["requests"]` requests to its tag URL, each answered below 400."""
    deadline = time.monotonic() + probe["ready_timeout_s"]
    while True:
        state, message = secret_plan.ready_state(cloudrun.get_revision(cr, f"{entry['name']}/revisions/{revision}"))
        if state != "pending" or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    if state != "ready":
        why = message or f"not ready after {probe['ready_timeout_s']:g} s"
        return {"passed": False, "ready": False, "why": f"revision {revision} is not ready: {why}", "requests": []}
    url = tag_url(cloudrun.get_service(cr, entry["name"]) or {}, secret_plan.SECRETS_TAG)
    if url is None:
        return {"passed": False, "ready": True, "why": f"no URL for tag {secret_plan.SECRETS_TAG}", "requests": []}
    records = call_service.fn(url, [("GET", probe["path"], None)], probe["requests"], probe["timeout_s"], auth)
    answered = records[probe["path"]]
    bad = [r for r in answered if r["status"] is None or r["status"] >= 400]
    said = (f"HTTP {bad[0]['status']}" if bad and bad[0]["status"] else bad[0]["error"] if bad else "")
    why = f"{len(bad)}/{len(answered)} probe requests GET {url}{probe['path']} failed ({said})" if bad else None
    return {"passed": not bad, "ready": True, "why": why, "url": url,
            "requests": [{"status": r["status"], "ms": r["ms"]} for r in answered]}


@task(name="move-traffic", cache_policy=NO_CACHE, persist_result=False)
def move_traffic(cr: cloudrun.CloudRun, entry: dict, deployed: dict) -> None:
    """100% to the verified revision (LATEST again if it was), only over what the deploy left."""
    def decide(service: dict) -> cloudrun.TrafficChange | None:
        record = secret_plan.state_of(service) or {}
        if (service.get("template") or {}).get("revision") != deployed["to"] or record.get("to") != deployed["to"]:
            raise _changed(f"service {entry['id']}'s template")
        if secret_plan.serving_revision(service) != deployed["from"]:
            raise _changed(f"service {entry['id']}'s traffic")
        return cloudrun.TrafficChange(secret_plan.final_traffic(service, record, deployed["to"]),
                                      {secret_plan.STATE_ANNOTATION: json.dumps({**record, "phase": "done"})})

    cloudrun.update_traffic(cr, entry["name"], decide)


@task(name="switch-job", cache_policy=NO_CACHE, persist_result=False)
def switch_job(cr: cloudrun.CloudRun, entry: dict, refs: dict[str, dict]) -> None:
    job = cloudrun.get_job(cr, entry["name"])
    if job is None or set(secret_plan.plaintext_suspects(secret_plan.template_containers(job))) != set(refs):
        raise _changed(f"job {entry['id']}")
    try:
        cloudrun.update_job(cr, entry["name"], secret_plan.switched_job(job, refs), etag=job.get("etag"))
    except gexc.Conflict:
        raise _changed(f"job {entry['id']}") from None


# --- the flow ------------------------------------------------------------------------------


def _check(prefix, probe_path, probe_requests, ready_timeout_s, auth_params: dict) -> None:
    params.prefix(prefix)
    if not isinstance(probe_path, str) or not probe_path.startswith("/") or any(c.isspace() for c in probe_path):
        raise params.bad("probe_path", probe_path, "is not a URL path", "pass e.g. --probe-path /healthz")
    params.count("probe_requests", probe_requests, 1, 100, example="3")
    params.seconds("ready_timeout_s", ready_timeout_s, high=3600, example="300")
    params.probe_auth(**auth_params)


def _plan(found: dict[str, dict], secrets_of, service: str, adopt: bool) -> tuple[list[dict], list[dict], list]:
    items = [secret_plan.resource_plan(role, e["kind"], e["id"], e["current"], e["serving"], adopt)
             for role, e in found.items()]
    names = dict.fromkeys(n for i in items for n in secret_plan.moving(i))
    secrets = secrets_of([secret_plan.secret_id(service, n) for n in names])
    rows = secret_plan.variables(service, items, secrets, adopt)
    return items, rows, secret_plan.refusals(items, rows, adopt, disagreeing(found, rows))


def _publish(result: dict) -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(key=f"migrate-secrets-{result['service']}", markdown=secret_plan.plan_markdown(result),
                             description=f"Secret Manager migration of {result['service']} (names only)")


def _switch_service(cr, entry: dict, refs: dict, probe: dict, auth, progress: Progress) -> dict:
    """Deploy on references, verify the new revision serves, and only then move traffic off the plaintext one."""
    deployed = deploy_revision(cr, entry, refs)
    progress.done(f"service {entry['id']}: revision {deployed['to']} on secret references deployed at 0% "
                  f"(tag {secret_plan.SECRETS_TAG}); {deployed['from']} keeps 100%")
    verified = verify_revision(cr, entry, deployed["to"], probe, auth)
    if not verified["passed"]:
        raise CheckFailed(f"service {entry['id']}: the new revision {deployed['to']} did not pass its check "
                          f"({verified['why']}); traffic was not moved.", [verified])
    move_traffic(cr, entry, deployed)
    progress.switched.append(entry["id"])
    progress.done(f"service {entry['id']}: {deployed['to']} answered {len(verified['requests'])} probe requests; "
                  f"traffic moved to it from {deployed['from']}, which no longer serves")
    return {**deployed, "verified": verified}


def _old_revisions(cr, found: dict[str, dict], switched: list[str]) -> list[str]:
    """Revisions of the switched services that still hold a plaintext secret (they serve nothing now)."""
    held = []
    for entry in found.values():
        if entry["kind"] == "service" and entry["id"] in switched:
            held += [cloudrun.short(r["name"]) for r in cloudrun.list_revisions(cr, entry["name"])
                     if secret_plan.plaintext_suspects(secret_plan.template_containers(r))]
    return held


def _execute(cr, sm, target: Target, found, items, rows, probe, auth, progress: Progress, result: dict) -> None:
    stored = {}
    for row in rows:
        stored[row["name"]] = saved = store_secret(sm, target.project, target.service, row, found)
        row["version"] = saved["version"]
        if saved["created"]:
            progress.created.append({"secret": saved["secret"], "version": saved["version"]})
        progress.done(f"secret {saved['secret']}: " + ("created, " if saved["created"] else "") +
                      (f"version {saved['version']} added" if saved["version_added"]
                       else f"version {saved['version']} already holds the value"))
    for item in sorted(items, key=lambda i: secret_plan.ROLES.index(i["role"])):
        if item["action"] not in ("switch", "resume"):
            continue
        entry = found[item["role"]]
        refs = {n: {"secret": secret_plan.secret_id(target.service, n), "version": stored[n]["version"]}
                for n in item["vars"]}
        if entry["kind"] == "service":
            result["services"][entry["id"]] = _switch_service(cr, entry, refs, probe, auth, progress)
        else:
            switch_job(cr, entry, refs)
            progress.switched.append(entry["id"])
            progress.done(f"job {entry['id']}: {', '.join(refs)} now secret references")


@flow(name="migrate-secrets", persist_result=False)
def migrate_secrets(
    project: Optional[str] = None,
    region: Optional[str] = None,
    service: Optional[str] = None,
    execute: bool = False,
    adopt: bool = False,
    prefix: Optional[str] = None,
    probe_path: str = "/healthz",
    probe_requests: int = 3,
    ready_timeout_s: float = 300,
    target: Optional[CloudRunTarget] = None,
    id_token: bool = False,
    id_token_audience: Optional[str] = None,
    api_key_header: str = probe_auth.DEFAULT_API_KEY_HEADER,
    api_key_secret: Optional[str] = None,
    api_key_env: Optional[str] = None,
) -> dict:
    """Move plaintext env vars that look like secrets into Secret Manager and reference them instead.

    The service, and gpuops' `<service>-gpu`, `<service>-cpu-job` and `<service>-gpu-job`. Each value goes
    from the resource to a Secret Manager version (secret `<service>-<var>`, label managed-by=gpuops), never
    to a log or result. A service gets a new revision on references at 0%; traffic moves to it only once
    it is ready and answers the probe. Dry run unless `execute`.

    Args:
        project: Google Cloud project ID (or take it from `target`).
        region: Cloud Run region (or take it from `target`).
        service: the Cloud Run service whose plaintext secrets move.
        execute: False (default) lists what would change (names only) and changes nothing.
        adopt: use secrets of those names, and switch jobs or a GPU service, that gpuops did not create.
        prefix: name prefix create-jobs used (default: the service name).
        probe_path: GET path the new revision must answer below 400 before traffic moves to it.
        probe_requests: how many probe requests; every one must pass.
        ready_timeout_s: how long the new revision may take to become ready.
        target: a gpuops Cloud Run target block; explicit parameters win over its fields.
        id_token: send a Google ID token with the probes (services that require authentication).
        id_token_audience: a custom audience for the ID token (implies id_token).
        api_key_header: the header an API key goes in.
        api_key_secret: NAME of a Prefect Secret block holding the probes' API key.
        api_key_env: NAME of an environment variable holding the probes' API key.
    """
    where_to, credentials = resolve_target(project, region, service, target)
    auth_params = {"id_token": id_token, "id_token_audience": id_token_audience, "api_key_header": api_key_header,
                   "api_key_secret": api_key_secret, "api_key_env": api_key_env}
    _check(prefix, probe_path, probe_requests, ready_timeout_s, auth_params)
    auth = probe_auth.from_parameters(**auth_params)
    probe = {"path": probe_path, "requests": probe_requests, "ready_timeout_s": ready_timeout_s, "timeout_s": 30.0}

    # describe's own code in this flow run (a subflow costs seconds): its snapshot and artifacts, the rule it reports by
    described = describe_revision.fn(where_to.project, where_to.region, where_to.service, target)
    cr = connect(where_to, credentials)
    sm = secret_manager.connect(cr.endpoint if cr.is_emulator else None, credentials)
    found = read_resources(cr, where_to, prefix)
    items, rows, refused = _plan(found, lambda ids: read_secrets(sm, where_to.project, ids), where_to.service, adopt)
    result = {"service": where_to.service, "api": where(cr), "secret_manager_api": sm.where(), "execute": execute,
              "described_suspects": described["plaintext_secret_suspects"], "variables": rows, "resources": items,
              "services": {}, "steps": [], "notes": []}
    if refused:
        _publish(result)
        raise CheckFailed("migrate-secrets refused before any change:\n" + "\n".join(f"  - {v}" for v in refused),
                          [v.__dict__ for v in refused])
    result["plan"] = secret_plan.preview(rows, items, probe_path)
    if not execute or not rows:
        result["notes"].append("nothing to move: no plaintext env value looks like a secret." if not rows else
                               "dry run: run with --execute (execute: true) to make these changes.")
        _publish(result)
        return result
    flags = (f" --prefix {prefix}" if prefix else "") + (" --adopt" if adopt else "")
    return _run(cr, sm, where_to, found, items, rows, probe, auth, result, target, flags)


def _run(cr, sm, target: Target, found, items, rows, probe, auth, result: dict, block, flags: str) -> dict:
    command = (f"gpuops migrate-secrets --project {target.project} --region {target.region} "
               f"--service {target.service}{flags} --execute")
    moving = {i["id"] for i in items if i["kind"] == "service" and i["action"] in ("switch", "resume")}
    progress = Progress(target.project, {e["id"]: cloudrun.short(e["serving"]["name"])
                                         for e in found.values() if e["id"] in moving})
    try:
        _execute(cr, sm, target, found, items, rows, probe, auth, progress, result)
    except Exception as exc:
        result["steps"] = progress.steps
        result["notes"].append(progress.left(command))
        _publish(result)
        if isinstance(exc, (CheckFailed, BadInput)):
            raise CheckFailed(f"{exc} {progress.left(command)}", getattr(exc, "details", [])) from None
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise CouldNotRun(f"migrate-secrets stopped ({type(exc).__name__}: {first}). "
                          f"{progress.left(command)}") from None
    result["steps"] = progress.steps
    old = _old_revisions(cr, found, progress.switched)
    result["old_revisions_with_plaintext"] = old
    if old:
        result["notes"].append(
            f"The new revisions and the jobs no longer hold the plaintext; older revisions still do: {', '.join(old)}. "
            f"They serve nothing: `gpuops cleanup --project {target.project} --region {target.region} --service "
            f"{target.service} --execute` deletes them. Past job executions keep the env they ran with.")
    after = describe_revision.fn(target.project, target.region, target.service, block)  # the snapshot, refreshed
    result["suspects_after"] = after["plaintext_secret_suspects"]
    _publish(result)
    return result
