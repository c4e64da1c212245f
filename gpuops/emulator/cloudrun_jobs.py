"""Jobs, executions and tasks of the Cloud Run emulator, with a pluggable execution runner."""

from __future__ import annotations

import string
import urllib.parse
from typing import Callable, Protocol

from google.cloud import run_v2
from google.protobuf.message import Message
from google.rpc import status_pb2

from .cloudrun_common import (
    FAILED,
    JOB_ID_RE,
    RECONCILING,
    RPC_CODES,
    Name,
    aborted_etag,
    check_namespaces,
    clone,
    condition,
    copy_into,
    invalid,
    make_etag,
    new_uid,
    not_found,
    now,
    paginate,
    parent_matches,
    random_suffix,
)
from .cloudrun_checks import check_job_spec
from .cloudrun_store import Context, TopLevelStore

JobPb = run_v2.Job.pb()
ExecutionPb = run_v2.Execution.pb()
TaskPb = run_v2.Task.pb()
Completion = run_v2.ExecutionReference.CompletionStatus
Reason = run_v2.Condition.ExecutionReason

JOB_OUTPUT_FIELDS = (
    "uid", "generation", "create_time", "update_time", "delete_time", "expire_time", "creator",
    "last_modifier", "observed_generation", "terminal_condition", "conditions", "execution_count",
    "latest_created_execution", "reconciling", "satisfies_pzs",
)

# report(task_name, exit_code, message) — how a runner tells the emulator a task has ended.
ReportFn = Callable[..., None]


class ExecutionRunner(Protocol):
    """Runs an execution's tasks. start() must not block for long: it is called per :run."""

    def start(self, execution: run_v2.Execution, tasks: list[run_v2.Task], report: ReportFn) -> None: ...

    def cancel(self, execution_name: str) -> None: ...


class InstantSuccessRunner:
    """The default runner: every task exits 0 at once, so :run completes immediately."""

    def start(self, execution, tasks, report) -> None:
        for task in tasks:
            report(task.name, 0)

    def cancel(self, execution_name: str) -> None:
        return None


class RunsUntilCancelled:
    """A runner whose tasks never finish on their own: an execution stays running until cancelled
    (a long GPU job, as a rollback finds it). Records what it was asked to cancel."""

    def __init__(self):
        self.cancelled: list[str] = []

    def start(self, execution, tasks, report) -> None:
        return None

    def cancel(self, execution_name: str) -> None:
        self.cancelled.append(execution_name)


def console_log_uri(job: Name, execution_id: str) -> str:
    """Execution.log_uri as Google writes it: the Logs Explorer filtered to the execution."""
    query = urllib.parse.quote(
        f'resource.type = "cloud_run_job"\nresource.labels.job_name = "{job.id}"\n'
        f'resource.labels.location = "{job.location}"\n'
        f'labels."run.googleapis.com/execution_name" = "{execution_id}"', safe="")
    return f"https://console.cloud.google.com/logs/viewer?project={job.project}&advancedFilter={query}"


def default_task_template(template: Message) -> None:
    """Google's job defaults: one task, three retries, ten minutes per task."""
    if not template.task_count:
        template.task_count = 1
    task = template.template
    if not task.HasField("max_retries"):
        task.max_retries = 3
    if not task.HasField("timeout"):
        task.timeout.seconds = 600
    for container in task.containers:
        if not container.resources.limits:
            container.resources.limits.update({"cpu": "1000m", "memory": "512Mi"})


def apply_overrides(task_template: Message, overrides: Message) -> None:
    """RunJobRequest.overrides: per-container args/env, then the task timeout."""
    containers = task_template.containers
    for index, override in enumerate(overrides.container_overrides):
        target = _override_target(containers, override.name, index)
        if override.clear_args:
            del target.args[:]
        if override.args:
            del target.args[:]
            target.args.extend(override.args)
        for env in override.env:
            _set_env(target, env)
    if overrides.HasField("timeout"):
        task_template.timeout.CopyFrom(overrides.timeout)


def _override_target(containers, name: str, index: int) -> Message:
    if not name:
        # An unnamed override applies to the job's only (or first) container.
        return containers[0]
    for container in containers:
        if container.name == name:
            return container
    raise invalid(f"overrides.container_overrides[{index}].name: no container named '{name}'")


def _set_env(container: Message, env: Message) -> None:
    for existing in container.env:
        if existing.name == env.name:
            existing.CopyFrom(env)
            return
    container.env.add().CopyFrom(env)


class JobStore(TopLevelStore):
    """Jobs, their executions and tasks; every public method runs under the shared lock."""

    KIND, COLLECTION, ID_RE = "job", "jobs", JOB_ID_RE

    def __init__(self, ctx: Context, runner: ExecutionRunner | None = None):
        self.ctx = ctx
        self.runner: ExecutionRunner = runner or InstantSuccessRunner()
        self.jobs: dict[str, Message] = {}
        self.executions: dict[str, Message] = {}
        self.tasks: dict[str, Message] = {}

    def reset(self) -> None:
        with self.ctx.lock:
            self.jobs.clear()
            self.executions.clear()
            self.tasks.clear()

    # ------------------------------------------------------------ jobs

    @property
    def table(self) -> dict[str, Message]:
        return self.jobs

    def delete(self, name: str, etag: str = "", validate_only: bool = False) -> Message:
        with self.ctx.lock:
            job = self._checked(name, etag)
            if validate_only:
                return job
            running = [e for e in self._children(self.executions, name) if self._running(e)]
            for execution in self._children(self.executions, name):
                self._drop_execution(execution)
            del self.jobs[name]
            job.delete_time.CopyFrom(now())
        for execution in running:
            self.runner.cancel(execution)
        return job

    def _write(self, name: str, body: Message, old: Message | None, validate_only: bool) -> Message:
        job = clone(body)
        for output_field in JOB_OUTPUT_FIELDS:
            job.ClearField(output_field)
        job.name = name
        check_namespaces("job.labels", job.labels)
        check_namespaces("job.template.labels", job.template.labels)
        check_namespaces("job.template.annotations", job.template.annotations)
        check_job_spec(job)
        default_task_template(job.template)
        self._fill_status(job, old)
        if not validate_only:
            self.jobs[name] = job
        return clone(job)

    def _fill_status(self, job: Message, old: Message | None) -> None:
        stamp = now()
        job.uid = old.uid if old is not None else new_uid()
        job.generation = old.generation + 1 if old is not None else 1
        job.observed_generation = job.generation
        job.create_time.CopyFrom(old.create_time if old is not None else stamp)
        job.update_time.CopyFrom(stamp)
        job.creator = old.creator if old is not None else self.ctx.creator
        job.last_modifier = self.ctx.creator
        if old is not None:
            job.execution_count = old.execution_count
            if old.HasField("latest_created_execution"):
                job.latest_created_execution.CopyFrom(old.latest_created_execution)
        # Present though empty until the first :run, as on Google: prefect-gcp's JobV2.get reads the key
        # unguarded right after a create.
        job.latest_created_execution.SetInParent()
        job.terminal_condition.CopyFrom(condition("Ready"))
        job.reconciling = False
        job.etag = make_etag(job.uid, job.generation)

    # ------------------------------------------------------------ :run

    def run(self, name: str, request: Message) -> tuple[Message, bool]:
        """Create an execution and hand it to the runner; returns (execution, committed)."""
        with self.ctx.lock:
            job = self.get(name)
            if request.etag and request.etag != job.etag:
                raise aborted_etag(name)
            execution = self._new_execution(job, request.overrides)
            tasks = self._new_tasks(execution)
            if request.validate_only:
                return execution, False
            self.executions[execution.name] = execution
            self.tasks.update({t.name: t for t in tasks})
            self._record_on_job(execution)
            handed = run_v2.Execution.wrap(clone(execution)), [run_v2.Task.wrap(clone(t)) for t in tasks]
        # Outside the lock: a runner may report synchronously (the default) or from its own threads.
        self.runner.start(handed[0], handed[1], self.report)
        return self.get_execution(execution.name), True

    def _new_execution(self, job: Message, overrides: Message) -> Message:
        job_id = Name.parse(job.name).id
        execution = copy_into(job.template, ExecutionPb)
        apply_overrides(execution.template, overrides)
        if overrides.task_count:
            execution.task_count = overrides.task_count
        while True:
            exec_id = f"{job_id}-{random_suffix(5, string.ascii_lowercase + string.digits)}"
            execution.name = f"{job.name}/executions/{exec_id}"
            if execution.name not in self.executions:
                break
        stamp = now()
        execution.uid = new_uid()
        execution.creator = self.ctx.creator
        execution.generation = execution.observed_generation = 1
        for stamp_field in (execution.create_time, execution.start_time, execution.update_time):
            stamp_field.CopyFrom(stamp)
        execution.job = job_id
        execution.launch_stage = job.launch_stage
        # Output fields Google always fills (prefect-gcp's ExecutionV2.get reads both unguarded): the
        # effective parallelism (unset means all tasks at once) and where the logs are in the Console.
        execution.parallelism = execution.parallelism or execution.task_count
        execution.log_uri = console_log_uri(Name.parse(job.name), exec_id)
        execution.running_count = execution.task_count
        execution.reconciling = True
        execution.conditions.extend(
            [condition("ResourcesAvailable"), condition("Started"), condition("Completed", RECONCILING)]
        )
        execution.etag = make_etag(execution.uid, 1)
        return execution

    def _new_tasks(self, execution: Message) -> list[Message]:
        parsed = Name.parse(execution.name)
        tasks = []
        for index in range(execution.task_count):
            task = copy_into(execution.template, TaskPb)
            task.name = f"{execution.name}/tasks/{parsed.id}-task{index}"
            task.uid = new_uid()
            task.generation = task.observed_generation = 1
            task.labels.update(execution.labels)
            task.annotations.update(execution.annotations)
            for stamp_field in (task.create_time, task.scheduled_time, task.start_time, task.update_time):
                stamp_field.CopyFrom(execution.create_time)
            task.job, task.execution, task.index = execution.job, parsed.id, index
            task.reconciling = True
            task.conditions.extend([condition("Started"), condition("Completed", RECONCILING)])
            task.etag = make_etag(task.uid, 1)
            tasks.append(task)
        return tasks

    def _record_on_job(self, execution: Message) -> None:
        job = self.jobs[Name.parse(execution.name).parent]
        job.execution_count += 1
        ref = job.latest_created_execution
        ref.Clear()
        ref.name = execution.name
        ref.create_time.CopyFrom(execution.create_time)
        ref.completion_status = Completion.EXECUTION_RUNNING

    # ------------------------------------------------------------ task reports

    def report(self, task_name: str, exit_code: int, message: str = "") -> None:
        """Mark a running task finished with an exit code; ignored once it is no longer running."""
        with self.ctx.lock:
            task = self.tasks.get(task_name)
            if task is None or not task.reconciling:
                return
            self._finish_task(task, exit_code, message)
            self._refresh_execution(self.executions[Name.parse(task_name).parent])

    def _finish_task(self, task: Message, exit_code: int, message: str) -> None:
        task.reconciling = False
        task.completion_time.CopyFrom(now())
        task.update_time.CopyFrom(task.completion_time)
        result = task.last_attempt_result
        result.exit_code = exit_code
        result.status.code = 0 if exit_code == 0 else RPC_CODES["UNKNOWN"]
        result.status.message = message or ("" if exit_code == 0 else "The container exited with an error.")
        completed = condition("Completed") if exit_code == 0 else condition(
            "Completed", FAILED, result.status.message, execution_reason=Reason.NON_ZERO_EXIT_CODE
        )
        self._replace_condition(task, completed)

    def _refresh_execution(self, execution: Message) -> None:
        tasks = self._children(self.tasks, execution.name)
        done = [self.tasks[t] for t in tasks if not self.tasks[t].reconciling]
        ended = [t for t in done if not self._cancelled(t)]
        failed = sum(1 for t in ended if t.last_attempt_result.exit_code != 0)
        execution.running_count = len(tasks) - len(done)
        execution.succeeded_count = len(ended) - failed
        execution.failed_count = failed
        execution.update_time.CopyFrom(now())
        if execution.running_count == 0 and not execution.cancelled_count:
            self._complete(execution, failed)

    def _complete(self, execution: Message, failed: int) -> None:
        execution.reconciling = False
        execution.completion_time.CopyFrom(now())
        if failed:
            message = (
                f"Execution {Name.parse(execution.name).id} has failed to complete, "
                f"{execution.succeeded_count}/{execution.task_count} tasks were a success."
            )
            cond = condition("Completed", FAILED, message, execution_reason=Reason.NON_ZERO_EXIT_CODE)
        else:
            cond = condition("Completed", message="Execution completed successfully.")
        self._replace_condition(execution, cond)
        status = Completion.EXECUTION_FAILED if failed else Completion.EXECUTION_SUCCEEDED
        self._update_job_ref(execution, status)

    def _update_job_ref(self, execution: Message, status: int) -> None:
        job = self.jobs.get(Name.parse(execution.name).parent)
        if job is not None and job.latest_created_execution.name == execution.name:
            job.latest_created_execution.completion_time.CopyFrom(execution.completion_time)
            job.latest_created_execution.completion_status = status

    # ------------------------------------------------------------ executions and tasks

    def get_execution(self, name: str) -> Message:
        return self._lookup(self.executions, name)

    def list_executions(self, parent: str, page_size: int = 0, page_token: str = "") -> tuple[list, str]:
        return self._page(self.executions, parent, page_size, page_token, newest_first=True)

    def execution_probe(self, name: str, fallback: Message):
        """Operation probe for :run/:cancel: live execution status until the execution ends."""

        def probe():
            with self.ctx.lock:
                current = self.executions.get(name)
                # A deleted execution will never finish: its operation ends with the last snapshot.
                execution = clone(current if current is not None else fallback)
            finished = current is None or not execution.reconciling
            return execution, finished, self._failure(execution) if finished else None

        return probe

    @staticmethod
    def _failure(execution: Message) -> status_pb2.Status | None:
        # A cancelled execution ends its operation without an error (the response says cancelled).
        if execution.failed_count and not execution.cancelled_count:
            cond = next(c for c in execution.conditions if c.type_ == "Completed")
            return status_pb2.Status(code=RPC_CODES["FAILED_PRECONDITION"], message=cond.message)
        return None

    def cancel_execution(self, name: str, etag: str = "", validate_only: bool = False) -> Message:
        with self.ctx.lock:
            execution = self.executions.get(name)
            if execution is None:
                raise not_found(name)
            if etag and etag != execution.etag:
                raise aborted_etag(name)
            if validate_only or not self._running(name):
                return clone(execution)  # cancelling a finished execution changes nothing
            self._cancel_locked(execution)
        self.runner.cancel(name)
        return self.get_execution(name)

    def _cancel_locked(self, execution: Message) -> None:
        for task_name in self._children(self.tasks, execution.name):
            task = self.tasks[task_name]
            if task.reconciling:
                task.reconciling = False
                task.completion_time.CopyFrom(now())
                self._replace_condition(
                    task, condition("Completed", FAILED, "Cancelled", execution_reason=Reason.CANCELLED)
                )
                execution.cancelled_count += 1
        execution.running_count = 0
        execution.reconciling = False
        execution.completion_time.CopyFrom(now())
        self._replace_condition(
            execution,
            condition("Completed", FAILED, "The execution was cancelled.", execution_reason=Reason.CANCELLED),
        )
        execution.conditions.append(condition("Cancelled"))
        self._update_job_ref(execution, Completion.EXECUTION_CANCELLED)

    def delete_execution(self, name: str, etag: str = "", validate_only: bool = False) -> Message:
        with self.ctx.lock:
            execution = self.get_execution(name)
            if etag and etag != execution.etag:
                raise aborted_etag(name)
            if validate_only:
                return execution
            was_running = self._running(name)
            self._drop_execution(name)
            execution.delete_time.CopyFrom(now())
        if was_running:
            self.runner.cancel(name)
        return execution

    def get_task(self, name: str) -> Message:
        return self._lookup(self.tasks, name)

    def list_tasks(self, parent: str, page_size: int = 0, page_token: str = "") -> tuple[list, str]:
        with self.ctx.lock:
            names = sorted(
                (n for n in self.tasks if parent_matches(parent, Name.parse(n).parent)),
                key=lambda n: (Name.parse(n).parent, self.tasks[n].index),
            )
            page, token = paginate(names, page_size, page_token)
            return [clone(self.tasks[n]) for n in page], token

    # ------------------------------------------------------------ helpers

    @staticmethod
    def _children(table: dict, parent: str) -> list[str]:
        return [n for n in table if n.startswith(parent + "/")]

    def _running(self, execution_name: str) -> bool:
        execution = self.executions.get(execution_name)
        return execution is not None and execution.reconciling

    @staticmethod
    def _cancelled(task: Message) -> bool:
        return any(c.execution_reason == Reason.CANCELLED for c in task.conditions)

    def _drop_execution(self, name: str) -> None:
        for task_name in self._children(self.tasks, name):
            del self.tasks[task_name]
        self.executions.pop(name, None)

    @staticmethod
    def _replace_condition(resource: Message, cond: Message) -> None:
        for existing in resource.conditions:
            if existing.type_ == cond.type_:
                existing.CopyFrom(cond)
                return
        resource.conditions.append(cond)
