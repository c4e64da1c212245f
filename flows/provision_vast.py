"""Flows `provision-vast` (runbook 004: rent a vast.ai GPU that really works) and `release-vast` (stop or destroy, approved).

provision-vast: check the whole request, search, rank (gpuops.offers), then per offer in rank order: rent,
wait with a bound, read the card on the host and compare it with the listing (a mismatch destroys that
fresh instance: the one automatic destroy), confirm the set-up's result, sample health and run a real
generation. Instances that never became usable are kept until an approver releases them (stop offered
before destroy); a failure after set-up keeps the instance and says how to release it.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Literal, Optional

from prefect import flow, get_run_logger, runtime, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.input import RunInput
from pydantic import Field

from gpuops import approvals, offers, vast, vast_plan
from gpuops.errors import BadInput, CheckFailed, CouldNotRun
from gpuops.host_checks import HostClient, judge_latency
from gpuops.sample_app import DEFAULT_PROMPT
from gpuops.vast_plan import ABANDONED, FAILED_AFTER_SETUP, READY, REFUSED, SKIPPED, VRAM_MISMATCH, Attempt

SETUP_TEMPLATE = Path(__file__).resolve().parents[1] / "deployments" / "vast_setup.sh"
REQUEST_TIMEOUT_S = 120.0  # one probe or generation on the host; the bounds above it are the flow's parameters
NO_RELEASE = {"approve": False, "action": "stop", "instance_ids": []}


def poll_every(bound_s: float) -> float:
    """How often to ask while waiting up to `bound_s`: every 3 s for the real API's minutes, faster for short bounds."""
    return max(0.2, min(3.0, bound_s / 20))


class ReleaseApproval(RunInput):
    """The answer to: release these vast.ai instances? Name each one. `stop` (the default) keeps the disk, still
    billed for storage, and `vastai start instance ID` brings it back; `destroy` deletes everything on it."""

    approve: bool = False
    action: Literal["stop", "destroy"] = "stop"
    instance_ids: list[int] = Field(default_factory=list)


# ---------------------------------------------------------------- tasks (they hold the client: nothing persisted)


@task(name="check-image", cache_policy=NO_CACHE, persist_result=False)
def image_verdicts(image: str) -> list:
    """Pull size from the registry's manifests, trust from Docker Hub's figures, the tag (gpuops.registry)."""
    from gpuops import registry

    return registry.check_image(image).verdicts


def log_text(api: vast.Vast, instance_id: int) -> str:
    """The instance's log, or "" while vast.ai has none to give (a 4xx for a log is no reason to stop)."""
    try:
        return vast.instance_logs(api, instance_id)
    except vast.VastRefused:
        return ""


@task(name="search-offers", cache_policy=NO_CACHE, persist_result=False)
def search_offers(api: vast.Vast, flt: offers.OfferFilter) -> list[dict]:
    return vast.search_offers(api, offers.vast_query(flt))


@task(name="create-instance", cache_policy=NO_CACHE, persist_result=False)
def create_instance(api: vast.Vast, offer: dict, request: vast_plan.Request, script: str, label: str):
    return vast.create_instance(api, offer["id"], label=label, image=request.image, env=request.setup.env(),
                                onstart=script, disk_gb=request.disk_gb)


@task(name="wait-for-host", cache_policy=NO_CACHE, persist_result=False)
def wait_for_host(api: vast.Vast, instance_id: int, request: vast_plan.Request) -> dict:
    """Until vast.ai reports it running (boot bound), then until the app answers (wait bound); seconds measured."""
    started, every = time.monotonic(), poll_every(request.bounds.boot_timeout_s)
    record = vast.show_instance(api, instance_id)
    while vast_plan.instance_url(record, request.setup.app_port) is None and record is not None \
            and time.monotonic() - started < request.bounds.boot_timeout_s:
        time.sleep(every)
        record = vast.show_instance(api, instance_id)
    url = vast_plan.instance_url(record, request.setup.app_port)
    waited = {"record": record, "url": url, "boot_s": None, "answer_s": None}
    if url is None:
        return waited
    waited["boot_s"] = round(time.monotonic() - started, 2)
    with HostClient(url, timeout_s=min(5.0, request.bounds.wait_s)) as client:
        waited["answer_s"] = client.wait_answering(request.bounds.wait_s, path=request.setup.health_path)
    return waited


@task(name="read-card", cache_policy=NO_CACHE, persist_result=False)
def read_card(api: vast.Vast, instance_id: int, url: str, request: vast_plan.Request) -> dict:
    """The card as the host reads it: the project's probe at the app's /gpu-probe, else the set-up log's nvidia-smi."""
    import httpx

    source = f"gpuops probe at {url}/gpu-probe"
    with HostClient(url, timeout_s=REQUEST_TIMEOUT_S) as client:
        try:
            report = client.probe(request.need_gib, request.filter.min_compute_cap)
            return {"gpus": report.get("gpus") or [], "source": source,
                    "verdict": report.get("verdict"), "reasons": report.get("reasons") or []}
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != 404:  # a probe that fails is an unread card, not a crashed run
                return {"gpus": [], "source": source, "verdict": None, "reasons": [],
                        "unread": f"the probe answered HTTP {exc.response.status_code}"}
        except httpx.HTTPError as exc:
            return {"gpus": [], "source": source, "verdict": None, "reasons": [],
                    "unread": f"the probe did not answer ({type(exc).__name__})"}
    result = vast_plan.setup_result(log_text(api, instance_id))
    return {"gpus": vast_plan.gpus_from_setup_log(result) or [], "verdict": None, "reasons": [],
            "source": "nvidia-smi line of the set-up log (the app has no /gpu-probe)"}


@task(name="destroy-mismatched-instance", cache_policy=NO_CACHE, persist_result=False)
def destroy_mismatched(api: vast.Vast, instance_id: int, why: list[str]) -> bool:
    get_run_logger().warning("destroying fresh instance %s: %s", instance_id, " / ".join(why))
    return vast.destroy_instance(api, instance_id)


@task(name="confirm-set-up", cache_policy=NO_CACHE, persist_result=False)
def confirm_setup(api: vast.Vast, instance_id: int, bound_s: float) -> vast_plan.SetupResult:
    """The on-start script's verdict from the instance's log: complete, or its FATAL lines (bounded wait)."""
    started, every = time.monotonic(), poll_every(bound_s)
    while True:
        result = vast_plan.setup_result(log_text(api, instance_id))
        if result.complete or result.failed or time.monotonic() - started + every > bound_s:
            return result
        time.sleep(every)


@task(name="check-app", cache_policy=NO_CACHE, persist_result=False)
def check_app(url: str, request: vast_plan.Request) -> dict:
    """Health latency (5 samples, the mean judged) and a real generation whose output is fetched."""
    with HostClient(url, timeout_s=REQUEST_TIMEOUT_S) as client:
        latency = client.latency(path=request.setup.health_path)
        generation = client.generate(request.prompt, request.steps)
    reasons = judge_latency(latency, request.bounds.latency_target_ms)
    if not generation.ok:
        reasons.append(f"the test generation failed (HTTP {generation.status}: {generation.error}) while health "
                       "passed: runbook 004 case 8. Fix: read the app's log (VRAM, the model, a worker that died).")
    return {"latency": latency.as_dict(), "generation": {**generation.as_dict(), "output_chars": len(generation.output),
                                                          "how": f"POST {url}/generate, timed by the flow"},
            "reasons": reasons}


@task(name="release-instance", cache_policy=NO_CACHE, persist_result=False)
def release_instance(api: vast.Vast, instance_id: int, action: str) -> dict:
    if action == "destroy":
        done = vast.destroy_instance(api, instance_id)
        return {"id": instance_id, "action": "destroy", "result": "destroyed" if done else "already gone"}
    vast.stop_instance(api, instance_id)
    record = vast.show_instance(api, instance_id) or {}
    return {"id": instance_id, "action": "stop", "result": f"stopped (actual_status {record.get('actual_status')})"}


# ---------------------------------------------------------------- releasing, with an approval


def ask_release(candidates: list[dict], timeout_s: int, why: str) -> approvals.Decision:
    """One question for every candidate; stop is the default and comes first; no answer keeps them all."""
    ids = [c["id"] for c in candidates]
    rows = "\n".join(f"| {c['id']} | {c.get('gpu_name')} | {c.get('dph_total')} | {c.get('actual_status')} | "
                     f"{c.get('label')} |" for c in candidates)
    description = "\n".join([
        f"# Release {len(ids)} vast.ai instance(s)?", why, "",
        "| instance | GPU | $/h listed | status | label |", "|---|---|---|---|---|", rows, "",
        "- **stop** (default): the disk stays and is still billed for storage; `vastai start instance ID` resumes.",
        "- **destroy**: everything on the instance is deleted; only when nothing on it is wanted.",
        "Name each instance in `instance_ids`; no answer keeps them running (and billed)."])
    return approvals.ask(f"release vast.ai instance(s) {', '.join(map(str, ids))}?", ReleaseApproval, timeout_s,
                         example={"approve": True, "action": "stop", "instance_ids": ids}, refusal=NO_RELEASE,
                         key="vast-release-approval", description=description)


def apply_release(api: vast.Vast, decision: approvals.Decision, candidates: list[dict]) -> dict:
    """Stop or destroy only the approved instances that were offered; the rest are kept."""
    offered = [c["id"] for c in candidates]
    named = [int(i) for i in decision.answer.get("instance_ids") or []] if decision.approved else []
    action = decision.answer.get("action") or "stop"
    done = [release_instance(api, i, action) for i in offered if i in named]
    kept = [i for i in offered if i not in named]
    return {"approval": decision.as_dict(), "released": done, "kept": kept,
            "not_offered": [i for i in named if i not in offered]}


# ---------------------------------------------------------------- one run's offers


class Provisioning:
    """The offers of one run tried in rank order; what each attempt did is kept for the report."""

    def __init__(self, api: vast.Vast, request: vast_plan.Request, script: str, flow_run_id: str):
        self.api, self.request, self.script, self.flow_run_id = api, request, script, flow_run_id
        self.strikes = vast_plan.Strikes(request.bounds.host_failures)
        self.attempts: list[Attempt] = []
        self.records: dict[int, dict] = {}  # instance id -> record, of every instance rented
        self.final: Attempt | None = None
        self.url: str | None = None

    def try_offers(self, chosen: list[dict]) -> None:
        rented = 0
        for offer in chosen:
            if rented >= self.request.bounds.max_offers:
                break
            attempt = vast_plan.attempt_for(offer)
            self.attempts.append(attempt)
            skip = self.strikes.skip_reason(offer)
            if skip:
                attempt.outcome, attempt.reasons = SKIPPED, [skip]
                continue
            rented += self._try(offer, attempt)
            if attempt.outcome in (READY, FAILED_AFTER_SETUP):
                self.final = attempt
                return

    def _try(self, offer: dict, attempt: Attempt) -> bool:
        """One offer; True when an instance was rented for it."""
        label = vast.instance_label(self.flow_run_id, offer["id"])
        try:
            attempt.instance_id, created = create_instance(self.api, offer, self.request, self.script, label)
        except vast.VastRefused as exc:
            attempt.outcome, attempt.reasons = REFUSED, [str(exc)]
            return False
        attempt.measured["created"] = "now" if created else f"found by its label {label} (a retried run)"
        waited = wait_for_host(self.api, attempt.instance_id, self.request)
        self.records[attempt.instance_id] = waited["record"] or {"id": attempt.instance_id, "label": label}
        attempt.measured.update(boot_s=waited["boot_s"], answer_s=waited["answer_s"], how_waited=(
            f"boot_s: from the create until vast.ai reported it running (show instance every "
            f"{poll_every(self.request.bounds.boot_timeout_s):g} s); answer_s: "
            f"then until GET {self.request.setup.health_path} answered 2xx (every 0.5 s); both timed by the flow"))
        if waited["answer_s"] is None:
            log = log_text(self.api, attempt.instance_id) if waited["record"] else ""
            bound = self.request.bounds.wait_s if waited["url"] else self.request.bounds.boot_timeout_s
            return self._abandon(attempt, vast_plan.silence_reasons(bound, waited["record"], log))
        self._check_host(offer, attempt, waited["url"])
        return True

    def _check_host(self, offer: dict, attempt: Attempt, url: str) -> None:
        card = read_card(self.api, attempt.instance_id, url, self.request)
        if not card["gpus"]:
            self._abandon(attempt, vast_plan.card_unread(card["source"], card.get("unread"), card["reasons"]))
            return
        attempt.measured["vram"] = {**vast_plan.measured_vram(card["gpus"]), "how": card["source"]}
        mismatch = vast_plan.listing_mismatch(offer, card["gpus"])
        if mismatch:  # the card read is not the card listed: the one destroy without asking
            attempt.reasons = [str(mismatch)]
            destroy_mismatched(self.api, attempt.instance_id, attempt.reasons)
            attempt.outcome = VRAM_MISMATCH
            self.strikes.lying_machines.add(offer.get("machine_id"))
            self.records.pop(attempt.instance_id, None)
            return
        shortfall = vast_plan.need_shortfall(offer, card["gpus"], self.request.need_gib)
        if shortfall:
            self._abandon(attempt, [str(shortfall)])
            return
        if card["verdict"] == "fail":
            self._abandon(attempt, [f"the GPU probe failed: {r}" for r in card["reasons"]])
            return
        setup = confirm_setup(self.api, attempt.instance_id, self.request.bounds.wait_s)
        if not setup.complete:
            why = [f"set-up failed: {line}" for line in setup.fatal] or [
                f"the set-up did not report {vast_plan.SETUP_COMPLETE} within {self.request.bounds.wait_s:g} s"]
            self._abandon(attempt, why)
            return
        checked = check_app(url, self.request)
        attempt.measured.update(health=checked["latency"], generation=checked["generation"])
        attempt.outcome, attempt.reasons = (FAILED_AFTER_SETUP, checked["reasons"]) if checked["reasons"] else (READY, [])
        self.url = url

    def _abandon(self, attempt: Attempt, reasons: list[str]) -> bool:
        attempt.outcome, attempt.reasons = ABANDONED, reasons
        self.strikes.fail(attempt)
        get_run_logger().warning("abandoned instance %s (offer %s): %s", attempt.instance_id, attempt.offer_id,
                                 " / ".join(reasons))
        return True

    def kept(self) -> list[int]:
        """Instances rented and not destroyed: the abandoned ones, and the final one."""
        return [a.instance_id for a in self.attempts if a.outcome in (ABANDONED, READY, FAILED_AFTER_SETUP)]

    def abandoned(self) -> list[dict]:
        return [self.records[a.instance_id] for a in self.attempts if a.outcome == ABANDONED]


# ---------------------------------------------------------------- the flows


def load_setup_script(path: Optional[str]) -> str:
    """The on-start script: deployments/vast_setup.sh without its comments (it travels in the create request),
    or the operator's as it is, which must fail fast too."""
    source = Path(path) if path else SETUP_TEMPLATE
    try:
        text = source.read_text()
    except OSError as exc:
        raise BadInput(f"setup_script (--setup-script) {str(source)!r} cannot be read ({exc.strerror}): give a "
                       "readable file, or leave it out for deployments/vast_setup.sh.") from None
    checked = vast_plan.check_setup_script(text, repr(str(source)))
    return checked if path else vast_plan.without_comments(checked)


def guard_image(image: str, look_up: bool) -> list[dict]:
    """The image's guardrails before anything is rented: a refused image ends the run (exit 1)."""
    verdicts = image_verdicts(image) if look_up else vast_plan.unlooked_image_verdicts(image)
    refused = [str(v) for v in verdicts if not v.ok]
    if refused:
        raise CheckFailed(f"image {image} refused before anything was rented: {' '.join(refused)}",
                          [v.as_dict() for v in verdicts])
    for verdict in verdicts:
        if verdict.warn:
            get_run_logger().warning("%s", verdict)
    return [v.as_dict() for v in verdicts]


def publish_ranking(ranking: offers.Ranking, where: str) -> dict:
    create_markdown_artifact(key="vast-offer-ranking", markdown=vast_plan.ranking_markdown(ranking, where),
                             description="vast.ai offers: chosen best first, rejected with every failed rule")
    summary = ranking.as_dict(limit=0)
    summary["chosen"] = [{"id": o["id"], "gpu_name": o["gpu_name"], "dph_total": o["dph_total"], "score": o["score"]}
                         for o in ranking.chosen]
    summary["rejected"] = [{"id": r["id"], "gpu_name": r["gpu_name"], "reasons": r["reasons"]} for r in ranking.rejected]
    for warning in summary["warnings"]:
        get_run_logger().warning("%s", warning)
    return summary


def outcome_of(run: Provisioning) -> str:
    if run.final is None:
        return "nothing acceptable"
    return READY if run.final.outcome == READY else FAILED_AFTER_SETUP


def assemble(run: Provisioning, ranking: dict, image_checks: list[dict], release: dict | None) -> dict:
    final = run.final
    record = vast_plan.instance_record(run.records[final.instance_id]) if final else None
    measured = final.measured if final else {}
    released = {r["id"] for r in (release or {}).get("released", [])}
    kept = [i for i in run.kept() if i not in released]
    return {"outcome": outcome_of(run), "api": run.api.where(), "warnings": ranking["warnings"],
            "instance": record, "url": run.url,
            "ranking": ranking, "image_checks": image_checks, "attempts": [a.as_dict() for a in run.attempts],
            "measured": measured, "estimates": {"monthly_cost": vast_plan.monthly_estimate(
                record.get("dph_total") if record else None)} if record else {},
            "release": release, "kept": kept, "how_to_release": vast_plan.release_help(kept) if kept else None}


def publish_result(result: dict) -> None:
    create_markdown_artifact(key="vast-provision-report", markdown=vast_plan.report_markdown(result),
                             description="provision-vast: offers tried, measured figures, estimates labelled")
    if result["instance"]:
        # The cost report reads dph_total from this artifact's data (gpuops.monthly_cost).
        create_table_artifact(key=f"vast-instance-{result['instance']['id']}", table=[result["instance"]],
                              description="the rented vast.ai instance as `show instance --raw` gave it (selected "
                                          "fields: never its env or on-start script)")


@flow(name="provision-vast")
def provision_vast(
    image: str,
    app_command: str,
    model_dir: str,
    model_min_mb: int,
    model_gib: Optional[float] = None,
    second_model_gib: float = 0.0,
    offer_filter: Optional[dict] = None,
    model_fetch: str = "",
    app_port: int = 8000,
    health_path: str = "/healthz",
    disk_gb: float = 40.0,
    check_image: bool = True,
    setup_script: Optional[str] = None,
    wait_s: float = 30.0,
    boot_timeout_s: float = 600.0,
    max_offers: int = 5,
    host_failures: int = 3,
    latency_target_ms: float = 1000.0,
    prompt: str = DEFAULT_PROMPT,
    steps: int = 1000,
    approval_timeout_s: int = 3600,
    api_key_secret: Optional[str] = None,
) -> dict:
    """Rent a vast.ai GPU that passes every guardrail and really generates, or rent nothing that stays unasked.

    Args:
        image: the container image to run, e.g. nvidia/cuda:12.4.1-runtime-ubuntu22.04 (devel tags are flagged).
        app_command: the command the set-up starts once the model is checked; it listens on $APP_PORT.
        model_dir: where the model must be after the fetch.
        model_min_mb: the smallest believable size of model_dir in MB (catches a partial download).
        model_gib: the model's weights in GiB; the VRAM need is (weights + second_model_gib) x 1.2.
        second_model_gib: a second model loaded alongside (runbook 004 case 9: the LLM beside the DiT).
        offer_filter: gpuops.offers filter fields: gpu_name (exact names), num_gpus, max_vram_gib,
            min_compute_cap, min_reliability, blocked_countries, allowed_countries, min_inet_down_mbps,
            max_dph, verified_only, prefer_verified, prefer_datacenter.
        model_fetch: the command that fetches the model into model_dir ('' when the image holds it). Never put a
            token in it: it is stored as a flow parameter; give the image or the host its credentials instead.
        app_port: the app's container port, mapped by vast.ai.
        health_path: the app's health path.
        disk_gb: the instance's disk.
        check_image: look the image up in its registry first: pull size (over 100 GB refused, over 20 GB
            warned) and trust (Docker Hub pulls and stars; official images pass). Off for a private image.
        setup_script: a file to send as the on-start script instead of deployments/vast_setup.sh.
        wait_s: how long a running instance's app may take to answer before it is abandoned (runbook: 30 s).
        boot_timeout_s: how long vast.ai may take to report the instance running (the image pull).
        max_offers: the most instances one run rents.
        host_failures: a host failing this often is skipped for the rest of the run.
        latency_target_ms: the mean health latency (5 samples) the host must meet.
        prompt: the test generation's prompt.
        steps: the test generation's steps.
        approval_timeout_s: how long to wait for an approval to release abandoned instances; no answer keeps them.
        api_key_secret: a Prefect Secret block holding the vast.ai API key (default: the VAST_API_KEY environment
            variable).
    """
    request = vast_plan.check_request(
        offer_filter=offer_filter, model_gib=model_gib, second_model_gib=second_model_gib, image=image,
        disk_gb=disk_gb, prompt=prompt, steps=steps, api_key_secret=api_key_secret, model_dir=model_dir,
        model_min_mb=model_min_mb, model_fetch=model_fetch, app_command=app_command, app_port=app_port,
        health_path=health_path, wait_s=wait_s, boot_timeout_s=boot_timeout_s, max_offers=max_offers,
        host_failures=host_failures, latency_target_ms=latency_target_ms, approval_timeout_s=approval_timeout_s)
    script = load_setup_script(setup_script)
    image_checks = guard_image(request.image, check_image)
    api = vast.connect(request.api_key_secret)
    ranking = offers.rank(search_offers(api, request.filter), request.filter)
    summary = publish_ranking(ranking, api.where())
    if not summary["offers"]:
        raise CheckFailed(offers.no_offers_message(request.filter, api.where()), [summary])
    if not ranking.chosen:
        raise CheckFailed(f"no vast.ai offer passed the guardrails ({summary['offers']} searched, rejected by rule: "
                          f"{summary['rejected_by_rule']}); nothing was rented. Fix: loosen the filter where those rules point (the "
                          "vast-offer-ranking artifact lists every offer's failed rules).", [summary])
    run = Provisioning(api, request, script, str(runtime.flow_run.id))
    try:
        run.try_offers(ranking.chosen)
    except CouldNotRun as exc:
        kept = run.kept()
        raise CouldNotRun(f"{exc} " + (f"Rented and kept: {kept}; {vast_plan.release_help(kept)}" if kept
                                        else "Nothing rented is left.")) from None
    release = None
    if run.abandoned():
        release = apply_release(api, ask_release(run.abandoned(), request.bounds.approval_timeout_s,
                                                 "Rented by this run and abandoned: they never became usable."),
                                run.abandoned())
    result = assemble(run, summary, image_checks, release)
    publish_result(result)
    if result["outcome"] == READY:
        return result
    if result["outcome"] == FAILED_AFTER_SETUP:
        raise CheckFailed(f"instance {run.final.instance_id} finished set-up, then failed: "
                          f"{' / '.join(run.final.reasons)}. It is kept; {vast_plan.release_help(result['kept'])}",
                          [result])
    raise CheckFailed(f"no offer gave a working host ({len(run.attempts)} tried: "
                      f"{'; '.join(f'{a.offer_id}: {a.outcome}' for a in run.attempts)})."
                      + (f" Kept: {result['kept']}; {result['how_to_release']}" if result["kept"] else ""), [result])


@flow(name="release-vast")
def release_vast(instance_ids: list[int], approval_timeout_s: int = 3600,
                 api_key_secret: Optional[str] = None) -> dict:
    """Stop or destroy vast.ai instances once an approver names them (stop offered first; no answer keeps them).

    Args:
        instance_ids: the instances to offer for release.
        approval_timeout_s: how long to wait for the approval; no answer keeps every instance.
        api_key_secret: a Prefect Secret block holding the vast.ai API key (default: the VAST_API_KEY environment
            variable).
    """
    ids, timeout, secret = vast_plan.check_release(instance_ids, approval_timeout_s, api_key_secret)
    api = vast.connect(secret)
    found = {i: vast.show_instance(api, i) for i in ids}
    missing = [i for i, record in found.items() if record is None]
    if missing:  # a mistyped id: refused whole, before anyone is asked
        raise BadInput(f"instance_ids (--instance): {', '.join(map(str, missing))} not found for this API key at the "
                       f"{api.where()}; nothing was asked or released. Fix: pass only ids of your instances "
                       "(`vastai show instances`).")
    candidates = list(found.values())
    outcome = apply_release(api, ask_release(candidates, timeout, "Asked for by release-vast."), candidates)
    return {"api": api.where(), "instances": [vast_plan.instance_record(c) for c in candidates],
            **outcome, "how_to_release": vast_plan.release_help(outcome["kept"]) if outcome["kept"] else None}
