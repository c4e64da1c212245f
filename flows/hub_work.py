"""The work the hub dispatches to (runbook Pattern B): flow `process-file` on the GPU pools and the CPU pool,
and flow `watch-gpu-backlog`, whose events the backlog alert (deployments/automations.py) reads.

process-file runs the processing command on one input file, its output streamed to the run log, and
records `processingTime` (measured seconds) in the result, in a `processingTime=…` log line (the runbook's
Cloud Logging line) and in an artifact. It retries 5 times with exponential backoff; the run that fails
its last retry is dead-lettered: `dlq/{task_id}.json` in the status bucket, a `gpuops.task.dead-lettered`
event and a notification through a Prefect notification block when one is named.

A signed input URL carries its credential in the query string: logs, the artifact, the event and the
notification show the URI without it (`shown_uri`). The dead letter keeps the request as it came, so it
can be replayed; it lives in the status bucket beside the flow run's own parameters, not in any log.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from blocks.pipeline_blocks import status_store
from flows.common import notify
from flows.run_app import app_command
from gpuops import dead_letter
from gpuops.errors import BadInput, CheckFailed
from gpuops.process_stream import job_env, run_streaming
from gpuops.uris import shown_uri
from gpuops.work_pool_backlog import GPU_POOLS, pool_backlog

RETRIES = 5  # the runbook: "retry 5回，失敗で DLQ へ"
DEFAULT_RETRY_BASE_S = 10  # retries wait 10, 20, 40, 80, 160 s
MAX_RETRY_DELAY_S = 600.0
RETRY_BASE_ENV = "GPUOPS_WORK_RETRY_BASE_S"  # tests set 0 (or 1 to see the waits grow)
DEFAULT_TIMEOUT_S = 900.0  # the runbook's GPU job: --timeout=900
# The project's sample workload in job mode (`gpuops sample-app --job`); the input URI is appended as its prompt.
SAMPLE_JOB_COMMAND = ["python", "-m", "gpuops_cli.sample_app_cli", "--job", "--prompt"]
INPUT_PLACEHOLDER = "{input_uri}"
DEAD_LETTERED = "gpuops.task.dead-lettered"


def retry_base_s() -> float:
    return float(os.environ.get(RETRY_BASE_ENV) or DEFAULT_RETRY_BASE_S)


def retry_delay_s(attempt: int, base_s: float) -> int:
    """The wait after failed attempt `attempt` (1-based): base, 2 x base, 4 x base ..., capped, in whole
    seconds (Prefect keeps a flow run's retry delay in whole seconds)."""
    return round(min(MAX_RETRY_DELAY_S, base_s * 2 ** (attempt - 1)))


def _this_attempt() -> int:
    """This attempt's number (the run's run_count), after setting the wait before the next one on the run.

    Prefect's flow retries wait a constant `retry_delay`, which the server reads from the run's policy when
    an attempt fails: setting it at the start of each attempt makes the waits grow exponentially. The work
    goes on if that update fails (the wait is then the last one set).
    """
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    run = FlowRunContext.get().flow_run
    attempt = run.run_count or 1
    try:
        with get_client(sync_client=True) as client:
            attempt = client.read_flow_run(run.id).run_count or attempt
            policy = run.empirical_policy.model_copy(update={"retry_delay": retry_delay_s(attempt, retry_base_s())})
            client.update_flow_run(run.id, empirical_policy=policy)
    except Exception as exc:  # noqa: BLE001 - the wait is a detail; the work is not
        get_run_logger().warning("could not set the next retry's wait (%s): the last one set applies", exc)
    return attempt


def command_for(command: Optional[list[str]], input_uri: str) -> list[str]:
    """The command with the input URI in place of `{input_uri}`, or appended when no argument holds it."""
    command = list(command or SAMPLE_JOB_COMMAND)
    if not command or not all(isinstance(part, str) for part in command):
        raise BadInput("command must be a non-empty list of strings (e.g. [\"python\", \"process.py\"])")
    if any(INPUT_PLACEHOLDER in part for part in command):
        return [part.replace(INPUT_PLACEHOLDER, input_uri) for part in command]
    return command + [input_uri]


def _artifact_key(task_id: str) -> str:
    return "processing-time-" + re.sub(r"[^a-z0-9-]+", "-", task_id.lower()).strip("-")[:80]


def dead_letter_on_final_failure(flow, flow_run, state) -> None:
    """on_failure hook: Prefect calls it once, when the run is Failed for good (an attempt that will be
    retried ends AwaitingRetry, not Failed). Writes the dead letter; the event and the notification go out
    only with the first write, so a repeat (a re-run of the task failing again) does not alert twice."""
    from prefect.client.orchestration import get_client
    from prefect.events import emit_event

    logger = get_run_logger()
    given = flow_run.parameters
    task_id = given["task_id"]
    with get_client(sync_client=True) as client:
        attempts = client.read_flow_run(flow_run.id).run_count
    error = state.message or state.name
    doc = dead_letter.record(task_id, given["input_uri"], given.get("params"), error, str(flow_run.id), attempts)
    try:
        store = status_store(given.get("status_bucket_block"))
        where = f"s3://{store.bucket}/{dead_letter.key(task_id)}"
        if not dead_letter.write(store, doc):
            logger.warning("task %s already has a dead letter at %s: kept as it was, no new alert", task_id, where)
            return
    except Exception as exc:  # noqa: BLE001 - the bucket being down must not silence the alert
        where = f"nowhere: the dead letter could not be written ({type(exc).__name__}: {exc})"
        logger.error("task %s: %s", task_id, where)
    emit_event(event=DEAD_LETTERED,
               resource={"prefect.resource.id": f"gpuops.task.{task_id}", "prefect.resource.name": task_id},
               related=[{"prefect.resource.id": f"prefect.flow-run.{flow_run.id}", "prefect.resource.role": "flow-run",
                         "prefect.resource.name": flow_run.name}],
               payload={"input_uri": shown_uri(given["input_uri"]), "error": doc["error"], "attempts": attempts,
                        "dead_letter": where})
    notify(given.get("notification_block"), f"gpuops task {task_id} dead-lettered",
           f"{shown_uri(given['input_uri'])} failed {attempts} attempts (flow run {flow_run.id}); the request is kept "
           f"{'at ' if where.startswith('s3://') else ''}{where}. Last error: {doc['error'][:500]}")


# Flow-level retries, not task retries: the runbook's queue retried the whole work item (a fresh start of
# the command on the file), and so does this: each attempt runs the command anew, and the attempts and the
# final failure are the run's own states, which the dead letter and the "3 failures in a row" alert read.
# Everywhere else gpuops retries only transient API errors inside a call (gpuops.retry), never the work.
@flow(name="process-file", persist_result=False, retries=RETRIES, retry_delay_seconds=DEFAULT_RETRY_BASE_S,
      on_failure=[dead_letter_on_final_failure])
def process_file(
    task_id: str,
    input_uri: str,
    params: Optional[dict] = None,
    command: Optional[list[str]] = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    status_bucket_block: Optional[str] = None,
    notification_block: Optional[str] = None,
) -> dict:
    """Process one file: run the command on it, its output streamed to this log; record processingTime.

    Retried 5 times with exponential backoff (GPUOPS_WORK_RETRY_BASE_S, default 10 s, doubling); a run
    failing its last retry writes `dlq/{task_id}.json` to the status bucket, emits
    `gpuops.task.dead-lettered` and notifies through `notification_block`.

    Args:
        task_id: the hub's task id (letters, digits, . _ -): the dead letter's name.
        input_uri: the file to process, e.g. gs://bucket/videos/clip.mp4.
        params: the request's processing parameters, handed to the command as JSON in $GPUOPS_TASK_PARAMS
            (never logged: only their names are).
        command: the processing command; `python` means this interpreter; the input URI replaces
            `{input_uri}`, else is appended. Default: the sample workload's job mode.
        timeout_s: the command is stopped past this many seconds and the attempt fails.
        status_bucket_block: a gpuops-status-bucket block for the dead letters; empty: GPUOPS_STATUS_BUCKET.
        notification_block: a Prefect notification block (`slack-webhook/ops`, `custom-webhook/n8n`) told of
            a dead letter; empty: the run log only.
    """
    logger = get_run_logger()
    dead_letter.check_task_id(task_id)
    if not isinstance(input_uri, str) or not input_uri.strip():
        raise BadInput("input_uri is required: the file to process, e.g. gs://bucket/videos/clip.mp4")
    argv = command_for(command, input_uri)
    attempt = _this_attempt()
    logger.info("task %s attempt %d of %d: %s on %s (params: %s)", task_id, attempt, RETRIES + 1, argv[0],
                shown_uri(input_uri), ", ".join(sorted(params or {})) or "none")
    env = job_env(GPUOPS_TASK_ID=task_id, GPUOPS_INPUT_URI=input_uri, GPUOPS_TASK_PARAMS=json.dumps(params or {}),
               GPUOPS_ATTEMPT=str(attempt), PYTHONUNBUFFERED="1")
    with tempfile.TemporaryDirectory(prefix="gpuops-work-") as where:
        done = run_streaming(app_command(argv, Path(where)), where, logger.info, timeout_s, env=env)
    # The runbook's Cloud Logging line, on every attempt: a failed attempt's time matters too.
    logger.info("processingTime=%.3f task=%s attempt=%d exit=%s", done.seconds, task_id, attempt, done.exit_code)
    outcome = "succeeded" if done.ok else (
        f"stopped at the {timeout_s:g} s bound" if done.exit_code is None else f"exited {done.exit_code}")
    create_markdown_artifact(
        key=_artifact_key(task_id), description=f"task {task_id}: processingTime {done.seconds:.3f} s",
        markdown=(f"| task | input | attempt | processingTime (s) | outcome |\n|---|---|---|---|---|\n"
                  f"| {task_id} | {shown_uri(input_uri)} | {attempt} | {done.seconds:.3f} | {outcome} |\n"))
    if not done.ok:
        raise CheckFailed(f"the command {outcome} after {done.seconds} s; last lines:\n" + "\n".join(done.tail[-10:]),
                          [{"exit_code": done.exit_code, "tail": list(done.tail)}])
    return {"task_id": task_id, "input_uri": input_uri, "processingTime": done.seconds, "attempts": attempt,
            "exit_code": done.exit_code, "finished_at": datetime.now(timezone.utc).isoformat()}


# --- the GPU backlog, as events the backlog alert reads ---------------------------------------------------

BACKLOG_THRESHOLD = 100  # the runbook's alert 4-2: gpu-tasks backlog > 100
BACKLOG_HIGH = "gpuops.work-pool.backlog.high"
BACKLOG_NORMAL = "gpuops.work-pool.backlog.normal"


@flow(name="watch-gpu-backlog", persist_result=False)
def watch_gpu_backlog(work_pools: Optional[list[str]] = None, threshold: int = BACKLOG_THRESHOLD) -> dict:
    """Measure each GPU pool's backlog and say it as an event: `gpuops.work-pool.backlog.high` when over the
    threshold, `.normal` otherwise (resource `gpuops.work-pool.<pool>`). Deployed every minute; the alert
    fires when a pool's `high` is not followed by a `normal` within 10 minutes.

    Args:
        work_pools: the pools to watch; default every GPU pool (Cloud Run GPU, GKE GPU, Docker GPU).
        threshold: a backlog over this many waiting runs is high.
    """
    from prefect.client.orchestration import get_client
    from prefect.events import emit_event

    logger = get_run_logger()
    measured = {}
    with get_client(sync_client=True) as client:
        for pool in work_pools or GPU_POOLS:
            backlog = pool_backlog(client, pool)
            measured[pool] = backlog
            emit_event(event=BACKLOG_HIGH if backlog > threshold else BACKLOG_NORMAL,
                       resource={"prefect.resource.id": f"gpuops.work-pool.{pool}", "prefect.resource.name": pool},
                       payload={"backlog": backlog, "threshold": threshold})
            logger.info("%s: backlog %d (threshold %d)", pool, backlog, threshold)
    return measured
