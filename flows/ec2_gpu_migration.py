"""Flow `ec2-gpu-migration` (runbook 002): an app host moves from a CPU instance to a GPU one behind its
Elastic IP, switched by the rollout engine only after the new instance is healthy and its GPU checked."""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Optional

from prefect import flow, get_run_logger, runtime, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import TerminationSignal
from prefect.input import RunInput

from flows.common import notify
from gpuops import approvals, ec2, ec2_cost, ec2_report, ec2_request, security_audit
from gpuops.errors import BadInput, CheckFailed, CouldNotRun
from gpuops.host_checks import PROXY_ENV, HostClient, judge_latency
from gpuops.rollout import elastic_ip as eip
from gpuops.rollout.elastic_ip import ElasticIpBackend
from gpuops.rollout.engine import Observation, Plan, Rollout
from gpuops.traffic import PROMOTED, CanaryState, Gates, Window

HOST_TIMEOUT_S = 10.0  # each health request; a slower answer counts as failed
WATCH_INTERVAL_S = 0.1  # one request through the Elastic IP this often while the rollout runs
PRISTINE = "stopped before any change"  # the outcome until the run changes something


class StopOldInstance(RunInput):
    """The answer to: stop the old instance now that the Elastic IP serves the new one?"""

    approve: bool = False
    note: str = ""


@dataclass
class Run:
    """What this run read, decided and measured; the report is made from `facts`."""

    request: ec2_request.MigrationRequest
    api: ec2.Ec2
    address: ec2.Address
    facts: dict = field(default_factory=dict)
    no_op: bool = False  # a rerun after a finished migration: its report must not replace the measured one

    @property
    def artifact_key(self) -> str:
        return f"ec2-migration-{self.address.allocation_id}" + ("-rerun" if self.no_op else "")

    def commands(self) -> tuple[str, str]:
        base = f"gpuops ec2-migrate --elastic-ip {self.address.public_ip} --region {self.api.region}"
        return base, f"{base} --rollback"

    def timing(self, what: str, seconds: float, how: str) -> None:
        self.facts.setdefault("timings", []).append({"what": what, "seconds": round(seconds, 2), "how": how})


# --- before the first write: what is there, and may it be changed ------------------------------


@task(name="read-elastic-ip", cache_policy=NO_CACHE, persist_result=False)
def read_current(api: ec2.Ec2, request: ec2_request.MigrationRequest) -> ec2.Address:
    address = ec2.describe_address(api, request.elastic_ip)
    if address is None:
        raise eip.missing(request.elastic_ip, api.region)
    return address


@task(name="check-launch-inputs", cache_policy=NO_CACHE, persist_result=False)
def launch_spec(api: ec2.Ec2, request: ec2_request.MigrationRequest, old: ec2.Instance, allocation_id: str,
                flow_run_id: str) -> tuple[ec2.LaunchSpec, str]:
    """The launch as it will be sent, every input checked against the API first; and where the AMI came from."""
    info = ec2.instance_type_info(api, request.instance_type)
    if info is None:
        raise BadInput(f"instance_type (--instance-type) {request.instance_type!r}: EC2 offers no such type in "
                       f"{api.region}: pass e.g. --instance-type g4dn.xlarge.")
    if not info["gpus"]:
        raise BadInput(f"instance_type (--instance-type) {request.instance_type!r} has no GPU: pass a GPU type, "
                       "e.g. --instance-type g4dn.xlarge (one NVIDIA T4).")
    image, image_from = request.ami_id, "the ami_id parameter"
    if image is None:
        image = ec2.ami_from_parameter(api, request.ami_ssm_parameter)
        image_from = f"SSM parameter {request.ami_ssm_parameter}"
        if image is None:
            raise BadInput(f"ami_ssm_parameter (--ami-ssm-parameter) {request.ami_ssm_parameter!r} does not exist in "
                           f"{api.region}: pass --ami-id ami-... or the name of a parameter that holds one.")
    if not ec2.image_exists(api, image):
        raise BadInput(f"ami_id (--ami-id) {image!r} (from {image_from}) is not an AMI this account can launch in "
                       f"{api.region}: pass another --ami-id.")
    key = request.key_name or old.key_name
    if key and not ec2.key_pair_exists(api, key):
        raise BadInput(f"key_name (--key-name) {key!r} is not a key pair in {api.region}: pass an existing one.")
    subnet = request.subnet_id or old.subnet_id
    if subnet and not ec2.subnet_exists(api, subnet):
        raise BadInput(f"subnet_id (--subnet-id) {subnet!r} does not exist in {api.region}.")
    groups = request.security_group_ids or old.security_group_ids
    missing = ec2.missing_groups(api, groups)
    if missing:
        raise BadInput(f"security_group_ids (--security-group-ids) {', '.join(missing)} do not exist in {api.region}.")
    name = old.tags.get("Name")
    tags = {"Name": f"{name}-gpu" if name else f"gpuops-{request.instance_type}", **request.tags,
            ec2.MIGRATION_TAG: allocation_id, "gpuops:replaces": old.id, "gpuops:flow-run": flow_run_id or "-"}
    spec = ec2.LaunchSpec(request.instance_type, image, subnet, tuple(groups), key, tags)
    return spec, f"{image_from} ({image})"


@task(name="security-audit", cache_policy=NO_CACHE, persist_result=False)
def audit_groups(api: ec2.Ec2, group_ids: tuple[str, ...], internal_ports: tuple[int, ...]) -> list:
    return security_audit.audit(ec2.security_groups(api, tuple(dict.fromkeys(group_ids))), internal_ports)


# --- the new instance --------------------------------------------------------------------------


@task(name="launch-gpu-instance", cache_policy=NO_CACHE, persist_result=False)
def launch(api: ec2.Ec2, spec: ec2.LaunchSpec, token: str) -> ec2.Instance:
    return ec2.launch(api, spec, token)


@task(name="wait-running", cache_policy=NO_CACHE, persist_result=False)
def wait_running(api: ec2.Ec2, instance_id: str, bound_s: float) -> ec2.Instance:
    started = time.monotonic()
    while True:
        instance = ec2.describe_instance(api, instance_id)
        if instance is not None and instance.state == "running":
            return instance
        if instance is None or instance.state not in ec2.LIVE_STATES:
            raise CheckFailed(f"{instance_id} is {instance.state if instance else 'gone'}, not running: the Elastic IP "
                              "was not touched. Look at its console output (aws ec2 get-console-output).")
        if time.monotonic() - started > bound_s:
            raise CouldNotRun(f"{instance_id} was not running within {bound_s:g} s (still {instance.state}); the "
                              "Elastic IP was not touched. Run the same command again to resume: it waits for the "
                              "same instance. Or terminate it: aws ec2 terminate-instances --instance-ids "
                              f"{instance_id}")
        time.sleep(2.0)


@task(name="wait-answering", cache_policy=NO_CACHE, persist_result=False)
def wait_answering(url: str, path: str, bound_s: float) -> float | None:
    with HostClient(url, timeout_s=HOST_TIMEOUT_S) as client:
        return client.wait_answering(bound_s, path)


@task(name="gpu-probe", cache_policy=NO_CACHE, persist_result=False)
def gpu_probe(url: str, need_gib: float | None, min_compute_cap: str) -> dict:
    with HostClient(url, timeout_s=60) as client:
        return client.probe(need_gib, min_compute_cap)


@task(name="stop-old-instance", cache_policy=NO_CACHE, persist_result=False)
def stop_old(api: ec2.Ec2, instance_id: str) -> str:
    return ec2.stop_instance(api, instance_id)


@task(name="spot-price-history", cache_policy=NO_CACHE, persist_result=False)
def spot_history(api: ec2.Ec2, instance_types: tuple[str, ...]) -> list[dict] | None:
    from datetime import timedelta

    try:
        return ec2.spot_price_history(api, instance_types, datetime.now(timezone.utc) - timedelta(days=1))
    except Exception as exc:  # a cost table is no reason to fail a migration: the price table answers instead
        get_run_logger().warning("spot price history unavailable (%s): using the price table", type(exc).__name__)
        return None


# --- observing ---------------------------------------------------------------------------------


def observer(run: Run):
    """One window: `latency_samples` health requests to the candidate at its own address (0%), or through the
    Elastic IP once it is switched (100%), after one unmeasured warm-up request (a cold first answer is
    connection set-up, not the app); judged by the engine's gates and the mean-latency target."""
    request, eip_url = run.request, f"http://{run.address.public_ip}:{run.request.app_port}"

    def observe(urls, state: CanaryState) -> Observation:
        url = eip_url if state.percent == 100 else urls.candidate
        with HostClient(url, timeout_s=HOST_TIMEOUT_S) as client:
            latency = client.latency(request.latency_samples, request.health_path, warmup=True)
        failed = tuple(judge_latency(latency, request.latency_target_ms))
        when = "after the switch, through the Elastic IP" if state.percent == 100 else \
            "before the switch, at the new instance's own address"
        run.facts.setdefault("windows", []).append(
            {**latency.as_dict(), "when": when, "percent": state.percent, "target_ms": request.latency_target_ms,
             "failed": list(failed)})
        errors = sum(1 for status in latency.statuses if not 200 <= status < 300)
        window = Window(requests=len(latency.samples_ms), errors=errors, latencies_ms=latency.samples_ms,
                        source=latency.how(), ended_at=time.time())
        return Observation(window, failed=failed)

    return observe


class Watch:
    """Requests through the Elastic IP every WATCH_INTERVAL_S while the rollout runs: what a user of the
    address saw during the switch (the runbook claimed zero downtime without measuring it)."""

    def __init__(self, url: str, path: str):
        self.url, self.path = url, path
        self.statuses: list[int] = []
        self.first = self.last = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="eip-watch", daemon=True)

    def _loop(self) -> None:
        with HostClient(self.url, timeout_s=2.0) as client:
            self.first = _utc()
            while not self._stop.is_set():
                self.statuses.append(client.latency(1, self.path).statuses[0])
                self.last = _utc()
                self._stop.wait(WATCH_INTERVAL_S)

    def __enter__(self) -> "Watch":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def summary(self) -> dict:
        failed = sum(1 for s in self.statuses if not 200 <= s < 300)
        return {"requests": len(self.statuses), "failed": failed, "first": self.first, "last": self.last,
                "how": f"GET {self.url}{self.path} every {WATCH_INTERVAL_S:g} s from a thread of the flow, "
                       "2 s timeout; a non-2xx answer or no answer is a failure"}


def proxy_shown(proxy: str | None) -> str | None:
    """The host proxy as a report names it: scheme, host and port; a bastion's credentials never."""
    if not proxy:
        return None
    from urllib.parse import urlsplit

    parts = urlsplit(proxy)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


def _utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# --- the phases --------------------------------------------------------------------------------


def prepare_candidate(run: Run, recorded: CanaryState | None, spec: ec2.LaunchSpec | None, old: ec2.Instance,
                      flow_run_id: str) -> ec2.Instance:
    """The new instance running, answering and with its GPU checked: resumed, reused or launched."""
    api, request = run.api, run.request
    started = time.monotonic()
    if recorded is not None and recorded.live:
        instance, origin = ec2.describe_instance(api, recorded.candidate), \
            f"recorded on the Elastic IP by flow run {recorded.flow_run_id} (resumed)"
        if instance is None:
            raise CheckFailed(f"the recorded new instance {recorded.candidate} no longer exists: roll back with "
                              f"`{run.commands()[1]}`.")
    else:
        earlier = [i for i in ec2.find_instances(api, {ec2.MIGRATION_TAG: run.address.allocation_id})
                   if i.type == request.instance_type and i.id != old.id]
        if earlier:
            instance, origin = earlier[-1], "launched earlier for this Elastic IP and still running (reused)"
        else:
            token = ec2.client_token(flow_run_id, run.address.allocation_id, request.instance_type)
            instance, origin = launch(api, spec, token), "launched by this run"
    run.facts["new"] = {"id": instance.id, "type": instance.type, "image_id": instance.image_id, "origin": origin,
                        "image_from": run.facts.get("image_from") if origin == "launched by this run" else None}
    instance = wait_running(api, instance.id, request.running_within_s)
    run.timing(f"{'launch' if origin == 'launched by this run' else 'this run'} to state running",
               time.monotonic() - started, "the flow's clock, DescribeInstances polled every 2 s")
    where = ec2.reachable_address(api, instance)
    if where is None:
        raise CheckFailed(f"{instance.id} has no address of its own to check it at (its public one is an Elastic IP "
                          f"held elsewhere, and no private one): the Elastic IP was not touched.")
    url = f"http://{where}:{request.app_port}"
    answered = wait_answering(url, request.health_path, request.answering_within_s)
    if answered is None:
        raise CouldNotRun(f"{instance.id}'s app did not answer {url}{request.health_path} within "
                          f"{request.answering_within_s:g} s; the Elastic IP was not touched. Run the same command "
                          f"again to resume (it reuses {instance.id}), or terminate it: aws ec2 terminate-instances "
                          f"--instance-ids {instance.id}")
    run.timing("running to the app answering its health path", answered,
               f"GET {url}{request.health_path} every 0.5 s until a 2xx")
    check_gpu(run, instance, url)
    return instance


def check_gpu(run: Run, instance: ec2.Instance, url: str) -> None:
    report = gpu_probe(url, run.request.need_vram_gib, run.request.min_compute_cap)
    run.facts["gpu"] = {"gpus": report.get("gpus", []), "verdict": report.get("verdict"),
                        "reasons": report.get("reasons", []), "emulated": bool(report.get("emulated")),
                        "how": f"the project's GPU probe (gpuops.gpu_probe: nvidia-smi, PyTorch, a timed computation) "
                               f"run by the app at {url}/gpu-probe on {instance.id}"}
    if report.get("verdict") != "pass":
        reasons = "; ".join(report.get("reasons") or ["no verdict"]).rstrip(".")
        raise CheckFailed(f"GPU probe on {instance.id} failed: {reasons}. "
                          f"The Elastic IP was not touched; {instance.id} is left running for inspection: fix it and "
                          f"run again (it is reused), or terminate it: aws ec2 terminate-instances --instance-ids "
                          f"{instance.id}", [report])


def switch(run: Run, backend: ElasticIpBackend, candidate: ec2.Instance, flow_run_id: str, tell) -> dict:
    """The rollout engine with the Elastic IP backend: observe at 0%, switch, verify through the address."""
    request = run.request
    backend.candidate_id = candidate.id
    gates = Gates(max_error_rate=0.0, max_p95_ms=HOST_TIMEOUT_S * 1000, min_requests=request.latency_samples)
    rollout = Rollout(backend, Plan(steps=(100,), gates=gates, window_s=0.0), observe=observer(run), notify=tell,
                      api=run.api.label(), flow_run_id=flow_run_id)
    eip_url = f"http://{run.address.public_ip}:{request.app_port}"
    old_id = run.facts["old"]["id"]
    try:
        with Watch(eip_url, request.health_path) as watch:
            try:
                return rollout.run()
            finally:
                run.facts["availability"] = watch.summary()
    except CheckFailed as exc:
        run.facts["outcome"] = f"rolled back: the Elastic IP stays on {old_id}"
        run.facts["next"] = [f"fix the new instance's app and run the same command again (it reuses {candidate.id})",
                             f"or terminate it: aws ec2 terminate-instances --instance-ids {candidate.id}"]
        raise CheckFailed(f"{str(exc).rstrip('.')}. The Elastic IP {run.address.public_ip} stays on {old_id}; "
                          f"{candidate.id} is left running: {'; '.join(run.facts['next'])}.", exc.details) from None
    except CouldNotRun:
        run.facts["outcome"] = "stopped on an error"
        run.facts["next"] = [f"resume: `{run.commands()[0]}`", f"roll back: `{run.commands()[1]}`"]
        raise


def ask_to_stop(run: Run, backend: ElasticIpBackend, old: ec2.Instance | None, candidate: ec2.Instance) -> str:
    """The old instance is stopped only on an explicit approval, and only if nothing moved while asking."""
    api, request = run.api, run.request
    if old is None or old.state not in ec2.LIVE_STATES:
        return f"{old.id if old else 'the old instance'} is already {old.state if old else 'gone'}."
    stop_cmd = f"aws ec2 stop-instances --instance-ids {old.id}"
    if not request.ask_to_stop_old:
        return f"{old.id} left running (ask_to_stop_old is off): stop it when ready: {stop_cmd}"
    must_serve(run, candidate.id, old.id, "before asking")
    question = (f"stop the old instance {old.id} ({old.type})? The Elastic IP {run.address.public_ip} now serves "
                f"{candidate.id} ({candidate.type}).")
    decision = approvals.ask(question, StopOldInstance, request.stop_approval_timeout_s,
                             example={"approve": True, "note": "the GPU instance serves; stop the old one"},
                             refusal={"approve": False, "note": "no answer"},
                             key=f"ec2-stop-approval-{run.address.allocation_id}")
    if not decision.approved:
        why = "no answer in time" if decision.timed_out else f"refused ({decision.answer.get('note', '')})"
        return f"{old.id} left running: {why}. Run the same command again to be asked again, or: {stop_cmd}"
    live = backend.read()  # the answer may come hours later: stop only what is still true
    state = live.state
    if state is None or state.phase != PROMOTED or live.serving.get(candidate.id) != 100 or state.stable != old.id:
        raise CheckFailed(f"the Elastic IP {run.address.public_ip} changed while waiting for the approval (it now "
                          f"serves {', '.join(live.serving) or 'nothing'}): {old.id} was not stopped.")
    must_serve(run, candidate.id, old.id, "after the approval")
    now_state = stop_old(api, old.id)
    note = decision.answer.get("note", "")
    return f"{old.id} stopped on approval ({note!r}, flow run {decision.flow_run_id}); EC2 reports it {now_state}."


@task(name="check-through-elastic-ip", cache_policy=NO_CACHE, persist_result=False)
def not_serving(run: Run, instance_id: str) -> str:
    """Why `instance_id` does not serve through the Elastic IP ("" when it does): running, and healthy by the
    switch's own checks (health samples all 2xx, mean under the target) at the Elastic IP's address."""
    instance = ec2.describe_instance(run.api, instance_id)
    if instance is None or instance.state != "running":
        return f"{instance_id} is {instance.state if instance else 'gone'}, not running"
    url = f"http://{run.address.public_ip}:{run.request.app_port}"
    with HostClient(url, timeout_s=HOST_TIMEOUT_S) as client:
        latency = client.latency(run.request.latency_samples, run.request.health_path, warmup=True)
    failed = judge_latency(latency, run.request.latency_target_ms)
    return f"{instance_id} runs but fails through the Elastic IP: {' '.join(failed)}" if failed else ""


def must_serve(run: Run, candidate_id: str, old_id: str, when: str) -> None:
    """The old instance is stopped only while the new one serves: a finished migration's record says nothing
    about the new instance today, and an approval may come hours after the question."""
    wrong = not_serving(run, candidate_id)
    if wrong:
        run.facts["outcome"] = f"the new instance {candidate_id} does not serve: {old_id} left running"
        raise CheckFailed(f"not stopping {old_id} ({when}): {wrong}. {old_id} was left running. Start or fix "
                          f"{candidate_id} (aws ec2 start-instances --instance-ids {candidate_id}), or move the "
                          f"Elastic IP back: `{run.commands()[1]}`.")


def left_over(run: Run, backend: ElasticIpBackend) -> str:
    """What a run stopped part-way leaves, read live (the launched instances, where the Elastic IP is) and put
    in the report's outcome and Next: the operator's message and the report say the same."""
    resume, back = run.commands()
    old_id = (run.facts.get("old") or {}).get("id")
    try:
        launched = [i for i in ec2.find_instances(run.api, {ec2.MIGRATION_TAG: run.address.allocation_id})
                    if i.id != old_id]
        live = backend.read()
    except Exception as exc:  # the API is what failed, maybe: say where to look instead
        return (f"what it left could not be read ({type(exc).__name__}): look for instances tagged "
                f"{ec2.MIGRATION_TAG}={run.address.allocation_id}. Resume: `{resume}`; undo: `{back}`.")
    now_on = ", ".join(live.serving) or "no instance"
    if not launched:
        return f"no GPU instance was launched and the Elastic IP {run.address.public_ip} is on {now_on}: run " \
               f"`{resume}` again."
    ids = [i.id for i in launched]
    moved = now_on in ids
    if "new" not in run.facts:
        last = launched[-1]
        run.facts["new"] = {"id": last.id, "type": last.type, "image_id": last.image_id,
                            "origin": "launched for this Elastic IP (found by its tag)"}
    where = f"was moved to {now_on}" if moved else f"did not move (it is on {now_on})"
    terminate = f"aws ec2 terminate-instances --instance-ids {' '.join(ids)}"
    undo = (f"`{back}` (moves the Elastic IP back), then terminate: {terminate}" if moved or
            (live.state and live.state.live) else f"terminate (the Elastic IP never moved): {terminate}")
    run.facts["outcome"] = f"stopped part-way: {', '.join(ids)} launched, the Elastic IP {where}"
    run.facts["next"] = [f"resume: `{resume}` (it reuses {ids[-1]})", f"or undo: {undo}"]
    return (f"GPU instance {', '.join(f'{i.id} ({i.type}, {i.state})' for i in launched)} is left (billed while it "
            f"runs); the Elastic IP {run.address.public_ip} {where}. Resume: `{resume}`; or undo: {undo}.")


def costs(run: Run, old_type: str, zone: str | None) -> dict:
    types = tuple(dict.fromkeys((old_type, run.request.instance_type)))
    history = spot_history(run.api, types)
    return ec2_cost.cost_table(types, history, datetime.now(timezone.utc), run.api.label(), zone)


def publish(run: Run) -> None:
    """The report artifact, whatever the outcome (failures included: they say what was left and how to go on)."""
    from prefect.artifacts import create_markdown_artifact

    try:
        create_markdown_artifact(key=run.artifact_key,
                                 markdown=ec2_report.markdown(run.facts))
    except Exception as exc:  # the report must not hide the run's own outcome
        get_run_logger().warning("the migration report could not be saved: %s", exc)


def migrate(run: Run, backend: ElasticIpBackend, flow_run_id: str, tell) -> dict:
    api, request = run.api, run.request
    live = backend.read()
    recorded = live.state
    if not live.serving and not (recorded and recorded.live):
        raise BadInput(f"elastic_ip (--elastic-ip) {run.address.public_ip} is associated with no instance: nothing "
                       "serves to migrate from. Associate it with the running app host first.")
    done = bool(recorded and recorded.phase == PROMOTED and live.serving.get(recorded.candidate) == 100)
    fresh = not done and not (recorded and recorded.live)  # neither finished nor under way: a new migration
    old_id = run.address.instance_id if fresh else recorded.stable
    old = ec2.describe_instance(api, old_id)
    if old is None:
        raise CheckFailed(f"{old_id}, the instance the Elastic IP {'is on' if fresh else 'was moved from'}, no longer "
                          "exists.")
    run.facts["old"] = {"id": old.id, "type": old.type, "image_id": old.image_id}
    serving = ec2.describe_instance(api, recorded.candidate) if done else old
    if done and serving.type != request.instance_type:
        raise BadInput(f"the Elastic IP's last migration finished on {serving.id} ({serving.type}), not on a "
                       f"{request.instance_type}: to migrate again, delete its record first (aws ec2 delete-tags "
                       f"--resources {run.address.allocation_id} --tags Key=gpuops:rollout).")
    if fresh and old.type == request.instance_type:
        run.facts["outcome"] = f"nothing to do: {old.id} is already a {old.type}"
        return {"outcome": "nothing-to-do", "elastic_ip": run.address.public_ip, "serving": old.id}
    if fresh and old.state != "running":
        raise CheckFailed(f"{old.id}, which holds the Elastic IP, is {old.state}: start it before migrating.")
    spec = None
    if fresh:
        spec, run.facts["image_from"] = launch_spec(api, request, old, run.address.allocation_id, flow_run_id)
    findings = audit_groups(api, old.security_group_ids + (spec.security_group_ids if spec else ()),
                            request.internal_ports)
    run.facts.update(findings=[f.as_dict() for f in findings], findings_mode=request.security_findings)
    run.facts["cost"] = costs(run, old.type, old.zone)
    if findings and spec is not None and request.security_findings == "refuse":
        run.facts["outcome"] = "refused by the security audit (nothing launched)"
        run.facts["next"] = [f.fix for f in findings]
        raise CheckFailed(security_audit.refusal(findings), [f.as_dict() for f in findings])
    if done:
        candidate, history, run.no_op = serving, [], True
        run.facts["new"] = {"id": serving.id, "type": serving.type, "image_id": serving.image_id}
        run.facts["rerun"] = (f"already migrated at {recorded.updated} by flow run {recorded.flow_run_id}; this run "
                              f"changed no traffic. The measured report is the artifact "
                              f"ec2-migration-{run.address.allocation_id}.")
    else:
        candidate = prepare_candidate(run, recorded, spec, old, flow_run_id)
        history = switch(run, backend, candidate, flow_run_id, tell)["history"]
        promoted = backend.read().state
        run.facts["switch"] = {"address": run.address.public_ip, "from": old.id, "to": candidate.id,
                               "at": promoted.updated if promoted else "-"}
    run.facts["outcome"] = f"migrated: the Elastic IP serves {candidate.id} ({candidate.type})"
    run.facts["old_instance"] = ask_to_stop(run, backend, ec2.describe_instance(api, old.id), candidate)
    return result(run, "migrated" if not done else "already-migrated", history)


def result(run: Run, outcome: str, history: list[dict]) -> dict:
    facts = run.facts
    return {"outcome": outcome, "elastic_ip": run.address.public_ip, "allocation_id": run.address.allocation_id,
            "api": facts.get("api"), "old": facts.get("old"), "new": facts.get("new"),
            "timings": facts.get("timings", []), "latency": facts.get("windows", []), "gpu": facts.get("gpu"),
            "availability": facts.get("availability"), "security_findings": facts.get("findings", []),
            "cost": facts.get("cost"), "old_instance": facts.get("old_instance"), "history": history,
            "report_artifact": run.artifact_key}


def roll_back(run: Run, backend: ElasticIpBackend) -> dict:
    """The Elastic IP back on the recorded stable instance (or on rollback_to); refuses stale records."""
    changes = backend.restore_stable(("rolled back by the operator",), run.request.rollback_to)
    now_on = backend.address().instance_id
    run.facts.update(outcome=f"rolled back by the operator: the Elastic IP is on {now_on}",
                     old_instance="; ".join(changes) or "nothing to change: it already served the stable instance")
    wrong = not_serving(run, now_on)  # moved back is not the same as serving again
    if wrong:
        run.facts["outcome"] = f"rolled back, but {now_on} does not serve through the Elastic IP"
        raise CheckFailed(f"the Elastic IP {run.address.public_ip} is back on {now_on}, but its app does not answer "
                          f"healthy through it: {wrong}. Fix {now_on}'s app, or move the address elsewhere: "
                          f"`{run.commands()[1]} --rollback-to INSTANCE`.")
    verified = f"{now_on}'s app answers healthy through the Elastic IP {run.address.public_ip} (checked after the move)"
    run.facts["verified"] = verified
    run.facts["old_instance"] += f". {verified}"
    return {"outcome": "rolled-back", "elastic_ip": run.address.public_ip, "allocation_id": run.address.allocation_id,
            "serving": now_on, "changes": changes, "verified": verified, "report_artifact": run.artifact_key}


@flow(name="ec2-gpu-migration")
def ec2_gpu_migration(
    elastic_ip: str,
    region: Optional[str] = None,
    instance_type: str = "g4dn.xlarge",
    ami_id: Optional[str] = None,
    ami_ssm_parameter: str = ec2.DLAMI_PARAMETER,
    key_name: Optional[str] = None,
    subnet_id: Optional[str] = None,
    security_group_ids: Optional[list[str]] = None,
    tags: Optional[dict[str, str]] = None,
    app_port: int = 55433,
    health_path: str = "/healthz",
    latency_samples: int = 5,
    latency_target_ms: float = 50.0,
    need_vram_gib: Optional[float] = None,
    min_compute_cap: str = "7.0",
    internal_ports: Optional[list[int]] = None,
    security_findings: str = "refuse",
    running_within_s: float = 600.0,
    answering_within_s: float = 600.0,
    ask_to_stop_old: bool = True,
    stop_approval_timeout_s: int = 3600,
    rollback: bool = False,
    rollback_to: Optional[str] = None,
    notification_block: Optional[str] = None,
) -> dict:
    """Move the app behind an Elastic IP from its CPU instance to a new GPU instance, with no downtime.

    Checks the whole request, then reads the Elastic IP, the instance it serves, and every launch input
    (instance type with a GPU, AMI, key pair, subnet, groups) before the first write. Audits the security
    groups, launches the GPU instance (idempotent: a ClientToken from this flow run, and an instance launched
    earlier for this Elastic IP is reused), waits for it to run and its app to answer, runs the GPU probe
    through the app, then hands the switch to the rollout engine with the Elastic IP backend: health latency
    at the new instance's own address, gated; the Elastic IP moved; the same checks through the Elastic IP.
    A failing check leaves (or puts back) the Elastic IP on the old instance. The state is a tag on the
    Elastic IP allocation (`gpuops:rollout`): a run that died resumes when run again, or `rollback` moves
    the address back. Stopping the old instance waits for an approval, never automatic. The report artifact
    `ec2-migration-<allocation>` holds measured figures only, each with how; the cost table is an estimate.

    Args:
        elastic_ip: the Elastic IP's address (e.g. 3.115.141.166) or allocation ID (eipalloc-...).
        region: AWS region (default: AWS_DEFAULT_REGION / the profile's).
        instance_type: the GPU instance type to move to (runbook: g4dn.xlarge, one NVIDIA T4).
        ami_id: the AMI to launch; empty: the one `ami_ssm_parameter` holds.
        ami_ssm_parameter: SSM parameter holding the AMI ID (default: the Deep Learning Base OSS Nvidia Driver
            GPU AMI, Amazon Linux 2023, as AWS publishes it).
        key_name: key pair of the new instance (default: the old instance's).
        subnet_id: subnet of the new instance (default: the old instance's).
        security_group_ids: security groups of the new instance (default: the old instance's).
        tags: extra tags for the new instance, e.g. {"team": "ml"} (aws: and gpuops: keys are reserved).
        app_port: the port the app answers on (runbook: the backend's 55433).
        health_path: the app's health endpoint.
        latency_samples: health requests per check (runbook: 5).
        latency_target_ms: the mean health latency each check must stay under, in ms (runbook: 50).
        need_vram_gib: VRAM the app needs, in GiB, checked against the card's real nvidia-smi reading.
        min_compute_cap: lowest CUDA compute capability (7.0: PyTorch 2.x needs sm_70+).
        internal_ports: ports of internal services (databases, model servers) besides SSH that must not be open
            to 0.0.0.0/0 or ::/0; MySQL, PostgreSQL, Redis and MongoDB are always watched.
        security_findings: "refuse" (default): a world-open SSH or internal port fails the audit check and
            nothing is launched; "report": migrate anyway, with the findings and their fixes in the report.
        running_within_s: how long the new instance may take to reach `running`.
        answering_within_s: how long its app may take to answer the health path once running.
        ask_to_stop_old: after the switch, ask for an approval to stop the old instance (it is never stopped
            without one).
        stop_approval_timeout_s: how long to wait for that approval; no answer leaves the old instance running.
        rollback: move the Elastic IP back to the instance its recorded migration started from, and stop.
        rollback_to: with rollback, the instance to move it to instead (when the records are stale).
        notification_block: a Prefect notification block (`<type-slug>/<name>`) told of switches and rollbacks.
    """
    from flows import common

    request = ec2_request.check(
        elastic_ip=elastic_ip, region=region, instance_type=instance_type, ami_id=ami_id,
        ami_ssm_parameter=ami_ssm_parameter, key_name=key_name, subnet_id=subnet_id,
        security_group_ids=security_group_ids, tags=tags, app_port=app_port, health_path=health_path,
        latency_samples=latency_samples, latency_target_ms=latency_target_ms, need_vram_gib=need_vram_gib,
        min_compute_cap=min_compute_cap, internal_ports=internal_ports, security_findings=security_findings,
        running_within_s=running_within_s, answering_within_s=answering_within_s, ask_to_stop_old=ask_to_stop_old,
        stop_approval_timeout_s=stop_approval_timeout_s, rollback=rollback, rollback_to=rollback_to)
    if notification_block:
        common.notification_block(notification_block)
    api = ec2.Ec2(request.region)
    address = read_current(api, request)
    run = Run(request, api, address)
    run.facts.update(elastic_ip=address.public_ip, api=api.label(), outcome=PRISTINE,
                     proxy=proxy_shown(os.environ.get(PROXY_ENV)))
    resume, back = run.commands()
    backend = ElasticIpBackend(api, address.allocation_id, request.app_port, resume_command=resume,
                               rollback_command=back)
    try:
        if request.rollback:
            return roll_back(run, backend)
        return migrate(run, backend, str(runtime.flow_run.id or ""),
                       lambda subject, body: notify(notification_block, subject, body))
    except (KeyboardInterrupt, TerminationSignal) as exc:  # Ctrl-C, or SIGTERM (Prefect's bridge raises this)
        how = "SIGTERM" if isinstance(exc, TerminationSignal) else "Ctrl-C (SIGINT)"
        raise CouldNotRun(f"interrupted by {how}: {left_over(run, backend)}") from None
    except Exception:
        if run.facts["outcome"] == PRISTINE:  # a launched instance must not go unreported
            left_over(run, backend)
        raise
    finally:
        publish(run)
