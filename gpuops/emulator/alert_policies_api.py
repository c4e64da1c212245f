"""Emulation of Cloud Monitoring v3's AlertPolicyService over gRPC, for google-cloud-monitoring's real client.

google-cloud-monitoring ships gRPC transports only (no `transport="rest"`; googleapis/google-cloud-python#16852),
so this stand-in speaks gRPC: the same service name, methods and protobuf messages as
monitoring.googleapis.com, reached with `AlertPolicyServiceGrpcTransport(channel=grpc.insecure_channel(...))`.
Requests are the real monitoring_v3 messages; what Google refuses on the fields gpuops writes is refused here
with the same gRPC status (INVALID_ARGUMENT naming the field, NOT_FOUND). Every call is logged as its REST
mapping (`POST /v3/projects/P/alertPolicies`, `PATCH /v3/projects/P/alertPolicies/ID`, ...), and faults
(`before`: an error, nothing changed; `after`: the write happened and its answer is lost) are injected like
the Cloud Run emulator's. Every answer carries the metadata `x-gpuops-emulator`.

Not emulated: notification channels (a well-formed channel name is accepted; Google checks it exists),
list filters and ordering (refused), MQL/PromQL/log conditions (refused: only conditionThreshold).
"""
from __future__ import annotations

import math
import random
import re
import threading
from concurrent import futures
from typing import Any, Callable

import grpc
from google.cloud import monitoring_v3
from google.protobuf import empty_pb2, timestamp_pb2

from .cloudrun_common import HTTP_STATUS_NAMES, ApiError, invalid, not_found, paginate
from .cloudrun_faults import LoggedRequest
from .fault_book import FaultBook, FaultSpec
from .loopback_server import LOOPBACK

LABEL = "gpuops local Cloud Monitoring v3 AlertPolicyService emulation (gRPC) \u2014 not Google"
SERVICE = "google.monitoring.v3.AlertPolicyService"
HEADER = ("x-gpuops-emulator", "monitoring-alert-policies")

Policy = monitoring_v3.AlertPolicy.pb()
Condition = monitoring_v3.AlertPolicy.Condition.pb()
Aggregation = monitoring_v3.Aggregation.pb()

# The Cloud Run metrics the emulation knows (Google Cloud metrics list, run.googleapis.com): kind, value type.
METRICS = {
    "run.googleapis.com/request_count": ("DELTA", "INT64"),
    "run.googleapis.com/request_latencies": ("DELTA", "DISTRIBUTION"),
    "run.googleapis.com/container/cpu/utilizations": ("DELTA", "DISTRIBUTION"),
    "run.googleapis.com/container/memory/utilizations": ("DELTA", "DISTRIBUTION"),
    "run.googleapis.com/container/gpu/utilizations": ("DELTA", "DISTRIBUTION"),
    "run.googleapis.com/container/gpu/memory_utilizations": ("DELTA", "DISTRIBUTION"),
    "run.googleapis.com/container/instance_count": ("GAUGE", "INT64"),
}
RESOURCE_TYPES = {"cloud_run_revision"}
# Aligners Monitoring accepts for a distribution (ALIGN_MIN/MAX/RATE take numbers only); numbers take these too.
DISTRIBUTION_ALIGNERS = {"ALIGN_NONE", "ALIGN_DELTA", "ALIGN_MEAN", "ALIGN_COUNT", "ALIGN_SUM", "ALIGN_PERCENTILE_99",
                         "ALIGN_PERCENTILE_95", "ALIGN_PERCENTILE_50", "ALIGN_PERCENTILE_05"}
NUMBER_ALIGNERS = {"ALIGN_NONE", "ALIGN_DELTA", "ALIGN_RATE", "ALIGN_MEAN", "ALIGN_MIN", "ALIGN_MAX", "ALIGN_SUM",
                   "ALIGN_COUNT", "ALIGN_STDDEV"}

PROJECT = re.compile(r"^projects/(?P<project>[^/]+)$")
POLICY = re.compile(r"^projects/(?P<project>[^/]+)/alertPolicies/(?P<id>[^/]+)$")
CHANNEL = re.compile(r"^projects/[^/]+/notificationChannels/[^/]+$")
LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
CLAUSE = re.compile(r'\s*(?P<key>[a-z_]+(\.[a-z_]+)*)\s*=\s*"(?P<value>[^"\\]*)"\s*')
FILTER_KEY = re.compile(r"^(metric\.type|resource\.type|(metric|resource)\.labels?\.[a-z_]+)$")
MAX_CONDITIONS = 6
MAX_LABELS = 64
MAX_DISPLAY_NAME = 512
MAX_DOC_CHARS, MAX_DOC_BYTES = 8192, 10240


# ---------------------------------------------------------------- checks Google makes


def check_filter(text: str, where: str) -> str:
    """`key = "value"` clauses joined by AND; returns the metric type. Google's grammar is wider: the emulation
    refuses what it does not understand rather than accept it unread."""
    found: dict[str, str] = {}
    for clause in text.split(" AND "):
        match = CLAUSE.fullmatch(clause)
        if not match or not FILTER_KEY.match(match["key"]) or match["key"] in found:
            raise invalid(f'Field {where} had an invalid value of "{text}": the emulation understands '
                          'key = "value" clauses (metric.type, resource.type, resource.labels.*, metric.labels.*) '
                          "joined by AND, each key once")
        found[match["key"]] = match["value"]
    metric = found.get("metric.type")
    if metric is None:
        raise invalid(f'Field {where} had an invalid value of "{text}": a metric.type is required')
    if metric not in METRICS:
        raise invalid(f'Field {where} had an invalid value of "{text}": Cannot find metric(s) that match '
                      f'type = "{metric}" (the emulation knows {", ".join(sorted(METRICS))})')
    if found.get("resource.type", "cloud_run_revision") not in RESOURCE_TYPES:
        raise invalid(f'Field {where} had an invalid value of "{text}": {metric} is written for '
                      f'resource.type "cloud_run_revision", not "{found["resource.type"]}"')
    return metric


def check_aggregation(agg, metric: str, where: str) -> None:
    aligner = Aggregation.Aligner.Name(agg.per_series_aligner)
    reducer = Aggregation.Reducer.Name(agg.cross_series_reducer)
    period = agg.alignment_period.seconds if agg.HasField("alignment_period") else None
    if aligner != "ALIGN_NONE" and period is None:
        raise invalid(f"Field {where}.alignment_period is required when per_series_aligner is {aligner}")
    if period is not None and period < 60:
        raise invalid(f"Field {where}.alignment_period had an invalid value of {period}s: "
                      "it must be at least 60 seconds")
    _, value_type = METRICS[metric]
    allowed = DISTRIBUTION_ALIGNERS if value_type == "DISTRIBUTION" else NUMBER_ALIGNERS
    if aligner not in allowed:
        raise invalid(f"Field {where}.per_series_aligner had an invalid value of {aligner}: "
                      f"it cannot align {METRICS[metric][0]} {value_type} metric {metric}")
    if reducer != "REDUCE_NONE" and aligner == "ALIGN_NONE":
        raise invalid(f"Field {where}.cross_series_reducer {reducer} needs a per_series_aligner other than ALIGN_NONE")


def check_threshold(threshold, where: str) -> None:
    metric = check_filter(threshold.filter, f"{where}.filter")
    for index, agg in enumerate(threshold.aggregations):
        check_aggregation(agg, metric, f"{where}.aggregations[{index}]")
    if threshold.comparison == 0:
        raise invalid(f"Field {where}.comparison is required (COMPARISON_GT, COMPARISON_LT, ...)")
    if not math.isfinite(threshold.threshold_value):
        raise invalid(f"Field {where}.threshold_value must be a finite number")
    duration = threshold.duration
    if duration.nanos or duration.seconds < 0 or duration.seconds % 60:
        raise invalid(f"Field {where}.duration had an invalid value of {duration.seconds}.{duration.nanos:09d}s: "
                      "only whole minutes are supported (0, 60, 120, 300 seconds ...)")
    trigger = threshold.trigger
    if trigger.WhichOneof("type") == "count" and trigger.count < 0 or not 0 <= trigger.percent <= 100:
        raise invalid(f"Field {where}.trigger must have a count of at least 0 or a percent within 0..100")


def check_condition(condition, where: str) -> None:
    if not condition.display_name:
        raise invalid(f"Field {where}.display_name is required")
    kind = condition.WhichOneof("condition")
    if kind is None:
        raise invalid(f"Field {where} must set one condition type (condition_threshold, condition_absent, ...)")
    if kind != "condition_threshold":
        raise invalid(f"Field {where}.{kind}: the emulation supports condition_threshold only")
    check_threshold(condition.condition_threshold, f"{where}.condition_threshold")


def check_policy(policy, where: str = "alert_policy") -> None:
    """What Google refuses on the fields gpuops writes, with the field named as Google names it."""
    if not policy.display_name.strip():
        raise invalid(f"Field {where}.display_name is required")
    if len(policy.display_name) > MAX_DISPLAY_NAME:
        raise invalid(f"Field {where}.display_name is longer than {MAX_DISPLAY_NAME} characters")
    if not 1 <= len(policy.conditions) <= MAX_CONDITIONS:
        raise invalid(f"Field {where}.conditions must hold 1 to {MAX_CONDITIONS} conditions, "
                      f"got {len(policy.conditions)}")
    if len(policy.conditions) > 1 and policy.combiner == 0:
        raise invalid(f"Field {where}.combiner is required when a policy has more than one condition")
    for index, condition in enumerate(policy.conditions):
        check_condition(condition, f"{where}.conditions[{index}]")
    if len(policy.user_labels) > MAX_LABELS:
        raise invalid(f"Field {where}.user_labels holds more than {MAX_LABELS} labels")
    for key, value in policy.user_labels.items():
        if not LABEL_KEY.match(key) or not LABEL_VALUE.match(value):
            raise invalid(f"Field {where}.user_labels had an invalid entry {key!r}: {value!r}: keys start with a "
                          "lowercase letter; keys and values hold lowercase letters, digits, '_' and '-', at most 63")
    for channel in policy.notification_channels:
        if not CHANNEL.match(channel):
            raise invalid(f"Field {where}.notification_channels had an invalid value of \"{channel}\": "
                          "expected projects/PROJECT/notificationChannels/ID")
    doc = policy.documentation
    if doc.content and doc.mime_type != "text/markdown":
        raise invalid(f"Field {where}.documentation.mime_type must be \"text/markdown\", got \"{doc.mime_type}\"")
    if len(doc.content) > MAX_DOC_CHARS or len(doc.content.encode()) > MAX_DOC_BYTES:
        raise invalid(f"Field {where}.documentation.content is over {MAX_DOC_CHARS} characters or "
                      f"{MAX_DOC_BYTES} bytes")


# ---------------------------------------------------------------- the store


def _now() -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.GetCurrentTime()
    return stamp


def _digits(n: int) -> str:
    return str(random.randint(1, 9)) + "".join(random.choice("0123456789") for _ in range(n - 1))


class AlertPolicyStore:
    """Every project's alert policies, behind one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._policies: dict[str, Any] = {}  # name -> AlertPolicy (raw protobuf), in creation order

    def reset(self) -> None:
        with self._lock:
            self._policies.clear()

    def create(self, parent: str, policy) -> Any:
        if not PROJECT.match(parent):
            raise invalid(f"Field name had an invalid value of \"{parent}\": expected projects/PROJECT")
        check_policy(policy)
        stored = Policy()
        stored.CopyFrom(policy)
        # Google assigns the name: one given in the request is ignored.
        stored.name = f"{parent}/alertPolicies/{_digits(20)}"
        self._name_conditions(stored, {})
        if not stored.HasField("enabled"):
            stored.enabled.value = True  # unset means enabled, and Google says so when read back
        record = monitoring_v3.MutationRecord.pb()(mutate_time=_now(), mutated_by="gpuops-emulator (anonymous)")
        stored.creation_record.CopyFrom(record)
        stored.mutation_record.CopyFrom(record)
        with self._lock:
            self._policies[stored.name] = stored
            return _copy(stored)

    def get(self, name: str) -> Any:
        with self._lock:
            if name not in self._policies:
                raise not_found(name)
            return _copy(self._policies[name])

    def list(self, parent: str, page_size: int, page_token: str) -> tuple[list, str, int]:
        if not PROJECT.match(parent):
            raise invalid(f"Field name had an invalid value of \"{parent}\": expected projects/PROJECT")
        with self._lock:
            mine = [_copy(p) for n, p in self._policies.items() if n.startswith(parent + "/")]
        items, token = paginate(mine, page_size, page_token)
        return items, token, len(mine)

    def update(self, policy, mask) -> Any:
        name = policy.name
        if not POLICY.match(name):
            raise invalid(f"Field alert_policy.name had an invalid value of \"{name}\": "
                          "expected projects/PROJECT/alertPolicies/ID")
        with self._lock:
            if name not in self._policies:
                raise not_found(name)
            current = self._policies[name]
            updated = _copy(current)
            if mask.paths:
                if not mask.IsValidForDescriptor(Policy.DESCRIPTOR):
                    raise invalid(f"Field update_mask had an invalid value of \"{','.join(mask.paths)}\": "
                                  "it names no field of AlertPolicy")
                if {"name", "creation_record", "mutation_record"} & set(mask.paths):
                    raise invalid("Field update_mask names an output-only field")
                mask.MergeMessage(policy, updated, replace_message_field=True, replace_repeated_field=True)
            else:  # no mask: the whole policy is replaced, the server's fields kept
                updated.CopyFrom(policy)
                updated.creation_record.CopyFrom(current.creation_record)
                if not updated.HasField("enabled"):
                    updated.enabled.value = True
            check_policy(updated)
            self._name_conditions(updated, {c.name for c in current.conditions})
            updated.mutation_record.CopyFrom(
                monitoring_v3.MutationRecord.pb()(mutate_time=_now(), mutated_by="gpuops-emulator (anonymous)"))
            self._policies[name] = updated
            return _copy(updated)

    def delete(self, name: str) -> None:
        with self._lock:
            if self._policies.pop(name, None) is None:
                raise not_found(name)

    @staticmethod
    def _name_conditions(policy, known: set[str]) -> None:
        """A condition keeps its name when it is one of the policy's; a new one gets a new name."""
        for index, condition in enumerate(policy.conditions):
            if condition.name and condition.name not in known:
                raise invalid(f"Field alert_policy.conditions[{index}].name had an invalid value of "
                              f"\"{condition.name}\": it is no condition of {policy.name}")
            if not condition.name:
                condition.name = f"{policy.name}/conditions/{_digits(20)}"


def _copy(message):
    copy = type(message)()
    copy.CopyFrom(message)
    return copy


# ---------------------------------------------------------------- the RPCs


def _list(store: AlertPolicyStore, request) -> Any:
    if request.filter or request.order_by:
        raise invalid("The emulation does not support filter or order_by in ListAlertPolicies: list all and "
                      "filter in the client")
    items, token, total = store.list(request.name, request.page_size, request.page_token)
    return monitoring_v3.ListAlertPoliciesResponse.pb()(alert_policies=items, next_page_token=token,
                                                        total_size=total)


def _get(store: AlertPolicyStore, request) -> Any:
    return store.get(request.name)


def _create(store: AlertPolicyStore, request) -> Any:
    return store.create(request.name, request.alert_policy)


def _update(store: AlertPolicyStore, request) -> Any:
    return store.update(request.alert_policy, request.update_mask)


def _delete(store: AlertPolicyStore, request) -> Any:
    store.delete(request.name)
    return empty_pb2.Empty()


# RPC -> (request type, response type, its REST mapping (verb, path of the request), handler)
RPCS: dict[str, tuple[Any, Any, Callable[[Any], tuple[str, str]], Callable]] = {
    "ListAlertPolicies": (monitoring_v3.ListAlertPoliciesRequest.pb(), monitoring_v3.ListAlertPoliciesResponse.pb(),
                          lambda r: ("GET", f"/v3/{r.name}/alertPolicies"), _list),
    "GetAlertPolicy": (monitoring_v3.GetAlertPolicyRequest.pb(), Policy, lambda r: ("GET", f"/v3/{r.name}"), _get),
    "CreateAlertPolicy": (monitoring_v3.CreateAlertPolicyRequest.pb(), Policy,
                          lambda r: ("POST", f"/v3/{r.name}/alertPolicies"), _create),
    "UpdateAlertPolicy": (monitoring_v3.UpdateAlertPolicyRequest.pb(), Policy,
                          lambda r: ("PATCH", f"/v3/{r.alert_policy.name}"), _update),
    "DeleteAlertPolicy": (monitoring_v3.DeleteAlertPolicyRequest.pb(), empty_pb2.Empty,
                          lambda r: ("DELETE", f"/v3/{r.name}"), _delete),
}


class AlertPolicyFault(FaultSpec):
    """A fault on the REST mapping of a call (`method` GET/POST/PATCH/DELETE, `path` a regex): `status` is the
    HTTP code whose gRPC status the call gets (503 -> UNAVAILABLE, 429 -> RESOURCE_EXHAUSTED)."""

    def error(self) -> ApiError:
        return ApiError(self.status, self.message or f"{LABEL}: injected fault {self.id}",
                        HTTP_STATUS_NAMES.get(self.status, "UNKNOWN"))


class AlertPolicyService:
    """The RPCs over one store, with faults and the request log."""

    def __init__(self) -> None:
        self.store = AlertPolicyStore()
        self.faults: FaultBook[AlertPolicyFault] = FaultBook(AlertPolicyFault)

    def call(self, rpc: str, request) -> tuple[Any, ApiError | None]:
        _, _, rest, handler = RPCS[rpc]
        method, path = rest(request)
        fault = self.faults.take(method, path)
        answer, error = None, None
        if fault is not None and fault.mode == "before":
            error = fault.error()
        else:
            try:
                answer = handler(self.store, request)
            except ApiError as exc:
                error = exc
            if fault is not None:  # "after": the call happened, its answer is lost
                answer, error = None, fault.error()
        status = error.code if error else 200
        self.faults.record(LoggedRequest(method, path, rpc, status, fault.mode if fault else None))
        return answer, error

    def handlers(self) -> grpc.GenericRpcHandler:
        def unary(rpc: str):
            def handle(request, context):
                context.send_initial_metadata((HEADER,))
                answer, error = self.call(rpc, request)
                if error is not None:
                    context.abort(grpc.StatusCode[error.status], error.message)
                return answer

            request_type, response_type = RPCS[rpc][:2]
            return grpc.unary_unary_rpc_method_handler(handle, request_deserializer=request_type.FromString,
                                                       response_serializer=response_type.SerializeToString)

        return grpc.method_handlers_generic_handler(SERVICE, {rpc: unary(rpc) for rpc in RPCS})

    def reset(self) -> None:
        self.store.reset()
        self.faults.clear_faults()
        self.faults.clear_requests()


class AlertPolicyEmulator:
    """The service on 127.0.0.1 over plain gRPC. `with AlertPolicyEmulator() as emu:` then point
    GPUOPS_ALERT_POLICY_API at `emu.url` (http://127.0.0.1:PORT: an insecure channel, no credentials)."""

    name = "Cloud Monitoring alert policy emulator"

    def __init__(self, port: int = 0) -> None:
        self.service = AlertPolicyService()
        self._wanted_port = port
        self.port: int | None = None
        self._server: grpc.Server | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError(f"the {self.name} is not started")
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def faults(self) -> FaultBook:
        return self.service.faults

    def requests(self, method: str | None = None, path: str | None = None) -> list[LoggedRequest]:
        return self.service.faults.requests(method, path)

    def reset(self) -> None:
        self.service.reset()

    def start(self) -> "AlertPolicyEmulator":
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="alert-policy-emulator"))
        server.add_generic_rpc_handlers((self.service.handlers(),))
        self.port = server.add_insecure_port(f"{LOOPBACK}:{self._wanted_port}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=1).wait(5)
        self._server = None

    def __enter__(self) -> "AlertPolicyEmulator":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
