"""gpuops' local vast.ai API stand-in: the endpoints the `vastai` SDK calls for offers and instances, on 127.0.0.1.

Stateful: a search applies the query the SDK sends (eq, neq, gt, gte, lt, lte, in, notin; `order`, `limit`)
to a list of raw offers (gpuops/data/vast_offers_sample.json by default); renting an offer creates an
instance shaped like `vastai show instance --raw` (actual_status loading -> running, public_ipaddr, ports,
ssh_host/ssh_port, gpu_name, gpu_ram, machine_id, host_id, dph_total, label, ...) and boots it as an emulated
host (gpuops.emulator.gpu_hosts) with the card the machine REALLY has: a table keyed by machine id, which is
where a listing lies (an "RTX 3060 12 GB" reading 8 GB) or a host stays silent. Every request to /api is
logged (never its headers or body), so tests assert which instances were created, stopped and destroyed.
Requests without `Authorization: Bearer <key>` get 401, as on vast.ai.
"""
from __future__ import annotations

import itertools
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from gpuops.emulator.fault_book import FaultBook, FaultSpec
from gpuops.emulator.gpu_hosts import SILENT, GpuHostFleet
from gpuops.emulator.loopback_server import LOOPBACK, LoopbackServer
from gpuops.host_rules import country_of

VAST_EMULATOR_LABEL = "gpuops local vast.ai API stand-in \u2014 not vast.ai"
HEADER = {"X-Gpuops-Emulator": "vast-api"}
SAMPLE_OFFERS = "vast_offers_sample.json"
STUCK_LOADING = "stuck-loading"  # a machine whose image never finishes pulling (runbook 004, case 5)
NO_DEVICES = "no-devices"  # boots and serves, but its nvidia-smi finds no card ("No devices were found")
FIRST_INSTANCE_ID = 9_100_001
APP_PORT = "8000/tcp"  # the container port gpuops maps (`-p 8000:8000`) when the create names none
QUERY_KEYS = {"order", "type", "limit", "allocated_storage", "disable_bundling"}
OPERATORS = ("eq", "neq", "gt", "gte", "lt", "lte", "in", "notin")
# Cards the stand-in has recorded readings of (gpuops/data/nvidia_smi), by the names vast.ai lists:
# for a machine missing from the truth table, the card its listing names.
CARD_BY_NAME = {"Tesla T4": "t4", "L4": "l4", "A100 PCIE": "a100_80gb", "A100 SXM4": "a100_80gb",
                "H100 SXM": "h100", "H100 PCIE": "h100", "GTX 1080": "gtx1080"}

# Only real public readings (shared/FACTS.md) are emulated: a card without one (an RTX 4090) is not faked.
RENTABLE_HINT = (f"--gpu-name with one of {', '.join(repr(n) for n in ['RTX 3060', *CARD_BY_NAME])} (e.g. --gpu-name "
                 "'Tesla T4'); or add a real nvidia-smi reading to gpuops/data/nvidia_smi and the machine to "
                 "gpuops.emulator.vast_api's tables.")


@dataclass(frozen=True)
class Machine:
    """What a machine really is, whatever its listing says: its card (a recorded reading's name, None: no
    GPU) and how its host behaves ("" boots and serves, SILENT never answers, STUCK_LOADING never boots,
    NO_DEVICES serves with a driver that sees no card)."""

    card: str | None
    behaviour: str = ""


# The sample's machines as they really are (gpuops/data/vast_offers_sample.json), where a listing lies.
# A machine not named here gets the card its listing names, when a recorded reading of it exists.
SAMPLE_MACHINES = {
    22000: Machine("rtx3060_8gb"),  # offer 21034117, listed as a 12 GB RTX 3060: reads 8 GB (runbook 004 case 7)
    22053: Machine("rtx3060_8gb"),  # offer 21034205, listed 8 GB
    22106: Machine("rtx3060_12gb"),  # offer 20981743
    22212: Machine("rtx3060_12gb"),  # offer 21099871, in CN
    22265: Machine("gtx1080"),  # offer 19877012, sm_61
    23060: Machine("t4", SILENT),  # offer 20766101, Tesla T4 in Virginia: never answers
    23113: Machine("t4"),  # offer 20766277
    23431: Machine("a100_80gb"),  # offer 20901442
    23537: Machine("h100"),  # offer 21188003
}


class VastError(Exception):
    """An error answer in vast.ai's shape: {"success": false, "error": ..., "msg": ...}."""

    def __init__(self, status: int, error: str, msg: str):
        super().__init__(msg)
        self.status, self.error, self.msg = status, error, msg


@dataclass
class VastRequest:
    """One logged /api request: never its headers or body (the key and the on-start script stay out)."""

    method: str
    path: str
    status: int
    action: str = ""  # search, create, show, list, stop, start, label, destroy, logs
    offer_id: int | None = None
    instance_id: int | None = None
    fault: int | None = None


@dataclass
class VastFault(FaultSpec):
    """Answer `status` to matching /api requests. mode "before": nothing changes; "after": the request is
    applied, then its answer is replaced by the error (a lost answer: a create that did happen)."""

    MODES = ("before", "after")


# ---------------------------------------------------------------- the query the SDK sends


def _coerce(have: Any, want: Any) -> Any:
    """A query value as the offer's field is typed: the SDK sends most values as strings ("0.99", "true")."""
    if isinstance(have, bool):
        return want if isinstance(want, bool) else str(want).lower() == "true"
    if isinstance(have, (int, float)) and not isinstance(want, bool):
        try:
            return float(want)
        except (TypeError, ValueError):
            raise VastError(400, "invalid_query", f"{want!r} is not a number") from None
    return want if have is None else str(want)


def _field_value(offer: dict, name: str) -> Any:
    """A field as vast.ai's search filters it: geolocation by country code ("Texas, US" matches "US"),
    `verified` from the record's `verification`, `datacenter` from `hosting_type`."""
    if name == "geolocation" and isinstance(offer.get(name), str):
        return country_of(offer[name])
    if name == "verified" and "verified" not in offer:
        return offer.get("verification") == "verified"
    if name == "datacenter" and "datacenter" not in offer:
        return offer.get("hosting_type") == 1
    return offer.get(name)


def _holds(have: Any, op: str, want: Any) -> bool:
    if op in ("in", "notin"):
        if not isinstance(want, list):
            raise VastError(400, "invalid_query", f"operator {op} needs a list, got {want!r}")
        inside = have is not None and have in [_coerce(have, w) for w in want]
        return inside if op == "in" else not inside
    if have is None:
        return op == "neq"
    value = _coerce(have, want)
    if op == "eq":
        return have == value
    if op == "neq":
        return have != value
    if isinstance(have, bool) or not isinstance(have, (int, float)):
        raise VastError(400, "invalid_query", f"operator {op} compares numbers, the field holds {have!r}")
    return {"gt": have > value, "gte": have >= value, "lt": have < value, "lte": have <= value}[op]


def offer_matches(offer: dict, query: dict) -> bool:
    """Every field's every operator holds (a missing field holds only `neq` and `notin`)."""
    for name, condition in query.items():
        if name in QUERY_KEYS:
            continue
        if not isinstance(condition, dict):
            raise VastError(400, "invalid_query", f"filter {name!r} must map operators to values, got {condition!r}")
        for op, want in condition.items():
            if op not in OPERATORS:
                raise VastError(400, "invalid_query", f"unknown operator {op!r} on {name!r}")
            if not _holds(_field_value(offer, name), op, want):
                return False
    return True


def search(offers: list[dict], query: dict) -> list[dict]:
    """The offers a query selects, in its `order` ([[field, "asc"|"desc"], ...]), at most `limit`."""
    if not isinstance(query, dict):
        raise VastError(400, "invalid_query", "the query must be a JSON object")
    found = [dict(o) for o in offers if offer_matches(o, query)]
    for name, direction in reversed(query.get("order") or []):
        present = [o for o in found if isinstance(o.get(name), (int, float))]
        missing = [o for o in found if not isinstance(o.get(name), (int, float))]
        found = sorted(present, key=lambda o: o[name], reverse=direction == "desc") + missing
    limit = query.get("limit")
    return found[: int(limit)] if limit else found


# ---------------------------------------------------------------- instances


def _card_for(offer: dict) -> str | None:
    name = offer.get("gpu_name", "")
    if name == "RTX 3060":
        return "rtx3060_12gb" if (offer.get("gpu_ram") or 0) >= 11000 else "rtx3060_8gb"
    return CARD_BY_NAME.get(name)


def _env_and_ports(env: Any) -> tuple[dict[str, str], list[str]]:
    """vast.ai's env dict: `-p 8000:8000` keys map ports, the rest are environment variables."""
    if not isinstance(env, dict):
        raise VastError(400, "invalid_args", "env must be a JSON object")
    ports = [k.split()[1].split(":")[-1] + "/tcp" for k in env if k.startswith("-p ") and len(k.split()) == 2]
    variables = {k: str(v) for k, v in env.items() if not k.startswith("-")}
    return variables, ports or [APP_PORT]


# Fields of an offer an instance record carries over as they are.
OFFER_FIELDS = ("machine_id", "host_id", "gpu_name", "num_gpus", "gpu_ram", "gpu_totalram", "cpu_cores",
                "cpu_cores_effective", "cpu_ram", "cpu_name", "compute_cap", "cuda_max_good", "driver_version",
                "dph_base", "dph_total", "storage_cost", "inet_up", "inet_down", "inet_up_cost", "inet_down_cost",
                "geolocation", "reliability", "reliability2", "verification", "hosting_type", "mobo_name",
                "pci_gen", "disk_bw", "total_flops", "dlperf", "min_bid")


@dataclass
class Instance:
    """One rented instance: the record `show instance --raw` answers, and its emulated host."""

    record: dict
    created: float
    behaviour: str
    command: str | None
    env: dict[str, str]
    ports: list[str]
    card: str | None
    host_port: int | None = None
    stopped: bool = False

    def view(self, boot_s: float, now: float) -> dict:
        booted = not self.stopped and self.behaviour != STUCK_LOADING and now - self.created >= boot_s
        status = "exited" if self.stopped else ("running" if booted else "loading")
        record = {**self.record, "actual_status": status, "cur_state": "stopped" if self.stopped else "running",
                  "intended_status": "stopped" if self.stopped else "running",
                  "status_msg": {"loading": "Pulling image", "running": "success, running",
                                 "exited": "stopped by user"}[status]}
        if booted and self.host_port is not None:
            mapped = [{"HostIp": "0.0.0.0", "HostPort": str(self.host_port)}]
            # One port per emulated host: every mapped container port reaches the app; SSH is not emulated
            # (22/tcp maps to the record's ssh_port, where nothing listens).
            record["ports"] = {**{p: mapped for p in self.ports},
                               "22/tcp": [{"HostIp": "0.0.0.0", "HostPort": str(record["ssh_port"])}]}
            record["public_ipaddr"] = LOOPBACK
        return record


class VastState:
    """Offers, machines and instances behind one lock; hosts started and stopped through the fleet."""

    def __init__(self, offers: list[dict], machines: dict[int, Machine], fleet: GpuHostFleet, boot_s: float,
                 base_url):
        self._initial, self._initial_machines = [dict(o) for o in offers], dict(machines)
        self.machines: dict[int, Machine] = {}
        self.fleet, self.boot_s, self._base_url = fleet, boot_s, base_url
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            instances = list(getattr(self, "instances", {}))
            self.offers = [{"rentable": True, "rented": False, **o} for o in self._initial]
            self.machines.clear()
            self.machines.update(self._initial_machines)
            self.instances: dict[int, Instance] = {}
            self.log_texts: dict[str, str] = {}
            self.loose_search = False
            self._ids = itertools.count(FIRST_INSTANCE_ID)
        for instance_id in instances:
            self.fleet.stop(host_id(instance_id))

    # ------------------------------------------------------------ offers

    def use_offers(self, offers: list[dict]) -> None:
        with self._lock:
            self.offers = [{"rentable": True, "rented": False, **o} for o in offers]

    def search(self, query: dict) -> list[dict]:
        with self._lock:
            offers = list(self.offers)
        if self.loose_search:  # every rentable offer, in the query's order: a server whose filters let traps through
            keep = QUERY_KEYS | {"rentable", "rented"}
            query = {k: v for k, v in query.items() if k in keep} if isinstance(query, dict) else query
        return search(offers, query)

    def rent(self, offer_id: int, body: dict) -> int:
        """Create an instance on the offer (then no longer rentable) and boot its host."""
        if not isinstance(body.get("image"), str) or not body["image"].strip():
            raise VastError(400, "invalid_args", "image is required")
        variables, ports = _env_and_ports(body.get("env") or {})
        with self._lock:
            offer = next((o for o in self.offers if o.get("id") == offer_id), None)
            if offer is None or not offer.get("rentable") or offer.get("rented"):
                raise VastError(404, "no_such_ask", f"Instance type by id {offer_id} is not available.")
            machine = self.machines.get(offer.get("machine_id")) or Machine(_card_for(offer))
            if machine.card is None and offer.get("num_gpus"):
                raise VastError(400, "invalid_args", f"{VAST_EMULATOR_LABEL}: no recorded reading for machine "
                                                     f"{offer.get('machine_id')} ({offer.get('gpu_name')}), so it "
                                                     f"cannot boot it. Choose a card it can rent: {RENTABLE_HINT}")
            offer.update(rentable=False, rented=True)
            instance = self._new_instance(offer, body, machine, variables, ports)
            self.instances[instance.record["id"]] = instance
        self._boot(instance)
        return instance.record["id"]

    def _new_instance(self, offer: dict, body: dict, machine: Machine, variables: dict, ports: list[str]):
        new_id = next(self._ids)
        record = {k: offer[k] for k in OFFER_FIELDS if k in offer}
        record.update({
            "id": new_id, "bundle_id": offer["id"], "label": body.get("label"), "image_uuid": body["image"],
            "image_runtype": body.get("runtype") or "ssh", "onstart": body.get("onstart"),
            "extra_env": [[k, v] for k, v in (body.get("env") or {}).items()], "disk_space": body.get("disk"),
            "start_date": time.time(), "ssh_host": LOOPBACK, "ssh_port": 20000 + new_id % 10000, "ssh_idx": "0",
            "public_ipaddr": None, "ports": None, "local_ipaddrs": LOOPBACK, "is_bid": False,
            "direct_port_start": -1, "direct_port_end": -1, "machine_dir_ssh_port": None,
        })
        return Instance(record, time.time(), machine.behaviour, body.get("onstart") or None, variables, ports,
                        machine.card)

    def _boot(self, instance: Instance) -> None:
        behaviour = SILENT if instance.behaviour in (SILENT, STUCK_LOADING) else ""
        card = None if instance.behaviour == NO_DEVICES else instance.card
        host = self.fleet.start(host_id(instance.record["id"]), card, command=instance.command,
                                env=instance.env, behaviour=behaviour)
        instance.host_port = host.port

    # ------------------------------------------------------------ instances

    def get(self, instance_id: int) -> Instance:
        with self._lock:
            instance = self.instances.get(instance_id)
        if instance is None:
            raise VastError(404, "no_such_instance", f"Instance {instance_id} not found.")
        return instance

    def view(self, instance_id: int) -> dict:
        return self.get(instance_id).view(self.boot_s, time.time())

    def views(self) -> list[dict]:
        with self._lock:
            instances = sorted(self.instances.values(), key=lambda i: i.record["id"])
        now = time.time()
        return [i.view(self.boot_s, now) for i in instances]

    def change(self, instance_id: int, body: dict) -> str:
        """PUT /instances/{id}/: {"state": "stopped"|"running"} or {"label": ...}; the action done."""
        instance = self.get(instance_id)
        if "label" in body and "state" not in body:
            instance.record["label"] = body["label"]
            return "label"
        state = body.get("state")
        if state == "stopped":
            instance.stopped = True
            self.fleet.stop(host_id(instance_id))
            return "stop"
        if state == "running":
            if instance.stopped:
                instance.stopped, instance.created = False, time.time()
                self._boot(instance)
            return "start"
        raise VastError(400, "invalid_args", f"state {state!r} is not stopped or running")

    def destroy(self, instance_id: int) -> None:
        self.get(instance_id)
        with self._lock:
            self.instances.pop(instance_id, None)
        self.fleet.stop(host_id(instance_id))

    def request_logs(self, instance_id: int, tail: Any) -> str:
        """A result URL for the instance's console log as it is now (vast.ai answers with an S3 URL)."""
        self.get(instance_id)
        host = self.fleet.get(host_id(instance_id))
        text = host.log() if host is not None else ""
        if tail:
            text = "\n".join(text.splitlines()[-int(tail):]) + "\n"
        token = secrets.token_urlsafe(16)
        with self._lock:
            self.log_texts[token] = text
        return f"{self._base_url()}/emulator/v1/logs/{token}"


def host_id(instance_id: int) -> str:
    return f"vast-{instance_id}"


# ---------------------------------------------------------------- the HTTP app


def error_response(err: VastError):
    from starlette.responses import JSONResponse

    return JSONResponse({"success": False, "error": err.error, "msg": err.msg}, status_code=err.status,
                        headers=HEADER)


async def _body(request) -> dict:
    raw = await request.body()
    try:
        body = json.loads(raw or b"{}")
    except ValueError:
        raise VastError(400, "invalid_args", "the body is not JSON") from None
    if not isinstance(body, dict):
        raise VastError(400, "invalid_args", "the body must be a JSON object")
    return body


def _query_arg(request, name: str, default: Any) -> Any:
    # The SDK sends each query argument as JSON (quote_plus(json.dumps(value))).
    values = parse_qs(request.url.query).get(name)
    if not values:
        return default
    try:
        return json.loads(values[0])
    except ValueError:
        return values[0]


def build_app(state: VastState, info) -> Any:
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route

    async def offers(request):
        body = await _body(request)
        query = body.get("q", body) if request.method == "PUT" else body  # /search/asks/ wraps it in "q"
        return {"offers": state.search(query)}

    async def create(request):
        return {"success": True, "new_contract": state.rent(int(request.path_params["id"]), await _body(request))}

    async def show(request):
        try:
            return {"instances": state.view(int(request.path_params["id"]))}
        except VastError:
            return {"instances": None}  # vast.ai answers an instance that is not yours (or gone) with null

    async def change(request):
        request.state.action = state.change(int(request.path_params["id"]), await _body(request))
        return {"success": True}

    async def destroy(request):
        state.destroy(int(request.path_params["id"]))
        return {"success": True}

    async def list_instances(request):
        return _page(state.views(), _query_arg(request, "select_filters", {}), _query_arg(request, "limit", 25),
                     _query_arg(request, "after_token", None))

    async def request_logs(request):
        body = await _body(request)
        return {"success": True, "result_url": state.request_logs(int(request.path_params["id"]), body.get("tail"))}

    async def log_text(request):
        text = state.log_texts.get(request.path_params["token"])
        return PlainTextResponse(text, status_code=200 if text is not None else 404, headers=HEADER)

    async def emulator_info(request):
        return JSONResponse(info(), headers=HEADER)

    v0 = "/api/v0"
    routes = [
        Route("/emulator/v1/info", emulator_info),
        Route("/emulator/v1/logs/{token}", log_text),
        Route(f"{v0}/bundles/", _api(offers, "search"), methods=["POST"]),
        Route(f"{v0}/search/asks/", _api(offers, "search"), methods=["PUT"]),
        Route(f"{v0}/asks/{{id:int}}/", _api(create, "create"), methods=["PUT"]),
        Route(f"{v0}/instances/request_logs/{{id:int}}/", _api(request_logs, "logs"), methods=["PUT"]),
        Route(f"{v0}/instances/{{id:int}}/", _api(show, "show"), methods=["GET"]),
        Route(f"{v0}/instances/{{id:int}}/", _api(change, "change"), methods=["PUT"]),
        Route(f"{v0}/instances/{{id:int}}/", _api(destroy, "destroy"), methods=["DELETE"]),
        Route("/api/v1/instances/", _api(list_instances, "list"), methods=["GET"]),
    ]

    async def not_found(request, exc):
        return error_response(VastError(getattr(exc, "status_code", 404), "not_found",
                                        f"{VAST_EMULATOR_LABEL}: nothing is served at {request.method} "
                                        f"{request.url.path}"))

    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})


def _api(fn, action: str):
    """An /api endpoint: VastError becomes vast.ai's error shape; the action is named for the log."""
    from starlette.responses import JSONResponse

    async def endpoint(request):
        request.state.action = action
        try:
            return JSONResponse(await fn(request), headers=HEADER)
        except VastError as err:
            return error_response(err)
    return endpoint


def _page(views: list[dict], filters: Any, limit: Any, after: Any) -> dict:
    if not isinstance(filters, dict):
        raise VastError(400, "invalid_query", "select_filters must be a JSON object")
    found = [v for v in views if offer_matches(v, filters)]
    start, size = int(after or 0), max(1, int(limit or 25))
    page = found[start:start + size]
    more = start + size < len(found)
    labels: dict[str, int] = {}
    for view in found:
        labels[str(view.get("label"))] = labels.get(str(view.get("label")), 0) + 1
    return {"instances": page, "next_token": str(start + size) if more else None, "total_instances": len(found),
            "label_counts": labels}


class Guard:
    """ASGI wrapper: the Bearer key on /api, injected faults, the request log."""

    def __init__(self, app: Any, faults: FaultBook, api_key: str):
        self.app, self.faults, self.api_key = app, faults, api_key

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/api/"):
            return await self.app(scope, receive, send)
        method = scope["method"]
        auth = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        fault = self.faults.take(method, path)
        scope.setdefault("state", {})
        statuses: list[int] = []

        async def send_logged(message):
            if message["type"] == "http.response.start" and not statuses:
                statuses.append(message["status"])
                self._record(scope, method, path, message["status"], fault)  # before the client reads the answer
            await send(message)

        try:
            await self._answer(scope, receive, send_logged, fault, auth)
        finally:
            if not statuses:
                self._record(scope, method, path, 500, fault)

    async def _answer(self, scope, receive, send, fault, auth):
        if auth != f"Bearer {self.api_key}":
            scope["state"]["action"] = "refused"
            return await error_response(VastError(401, "invalid_user_key", "Invalid user key"))(scope, receive, send)
        if fault is not None and fault.mode == "before":
            return await self._fault(scope, receive, send, fault)
        if fault is not None:  # "after": the request lands, its answer is lost
            async def swallow(message):
                pass
            await self.app(scope, receive, swallow)
            return await self._fault(scope, receive, send, fault)
        await self.app(scope, receive, send)

    @staticmethod
    async def _fault(scope, receive, send, fault: VastFault):
        err = VastError(fault.status, "injected", fault.message or f"Injected fault ({fault.mode}): HTTP {fault.status}")
        await error_response(err)(scope, receive, send)

    def _record(self, scope, method: str, path: str, status: int, fault) -> None:
        parts = [p for p in path.split("/") if p]
        number = next((int(p) for p in reversed(parts) if p.isdigit()), None)
        action = scope["state"].get("action", "")
        offer_id = number if action == "create" else None
        instance_id = number if number is not None and action != "create" else None
        self.faults.record(VastRequest(method, path, status, action, offer_id, instance_id,
                                       fault.id if fault else None))


# ---------------------------------------------------------------- the server


def sample_offers() -> list[dict]:
    """The raw offers gpuops ships as a sample (gpuops/data/vast_offers_sample.json); [] when absent."""
    source = resources.files("gpuops.data").joinpath(SAMPLE_OFFERS)
    if not source.is_file():
        return []
    data = json.loads(source.read_text())
    return data["offers"] if isinstance(data, dict) else data


class VastApiEmulator(LoopbackServer):
    """The vast.ai API on 127.0.0.1 for `VastAI(api_key=emu.api_key, server_url=emu.url)`.

    `with VastApiEmulator() as emu:`; then `emu.writes()` (creates, stops, starts, destroys),
    `emu.requests("PUT", r"/asks/")`, `emu.instance(id)`, `emu.add_fault("PUT", "/asks/", 503, mode="after")`,
    `emu.machines[machine_id] = Machine("rtx3060_8gb")`, `emu.use_offers([...])`, `emu.reset()`.
    `emu.loose_search = True` answers every rentable offer whatever the filters (the SkyPilot #9733 lesson:
    a search that matched loosely rented the wrong card), so the client's own ranking must stop the traps.
    """

    name = "vast.ai API stand-in"

    def __init__(self, offers: list[dict] | None = None, machines: dict[int, Machine] | None = None,
                 api_key: str | None = None, boot_s: float = 0.3, fleet: GpuHostFleet | None = None, port: int = 0):
        super().__init__(port)
        self.api_key = api_key or "vast-stand-in-" + secrets.token_hex(8)
        self._own_fleet = fleet is None
        self.fleet = fleet or GpuHostFleet()
        self.faults = FaultBook(VastFault)
        self.state = VastState(sample_offers() if offers is None else offers,
                               SAMPLE_MACHINES if machines is None else machines, self.fleet, boot_s, lambda: self.url)

    @property
    def machines(self) -> dict[int, Machine]:
        return self.state.machines

    @property
    def loose_search(self) -> bool:
        return self.state.loose_search

    @loose_search.setter
    def loose_search(self, loose: bool) -> None:
        self.state.loose_search = bool(loose)

    def _app(self):
        return Guard(build_app(self.state, self.info), self.faults, self.api_key)

    def stop(self) -> None:
        super().stop()
        self.state.reset()
        if self._own_fleet:
            self.fleet.__exit__(None, None, None)

    # ------------------------------------------------------------ test helpers

    def info(self) -> dict[str, Any]:
        return {"name": VAST_EMULATOR_LABEL, "emulator": "vast-api", "url": self.url if self.port else None,
                "offers": len(self.state.offers), "instances": len(self.state.instances),
                "api": "search offers (POST /bundles/, PUT /search/asks/), create (PUT /asks/{id}/), show "
                       "(GET /instances/{id}/, GET /api/v1/instances/), stop/start/label (PUT /instances/{id}/), "
                       "destroy (DELETE /instances/{id}/), logs (PUT /instances/request_logs/{id}/); no SSH"}

    def add_fault(self, method: str = "*", path: str = ".*", status: int = 503, times: int = 1, mode: str = "before",
                  skip: int = 0, message: str = "") -> VastFault:
        return self.faults.add(method=method, path=path, status=status, times=times, mode=mode, skip=skip,
                               message=message)

    def requests(self, method: str | None = None, path: str | None = None) -> list[VastRequest]:
        """Logged /api requests, optionally filtered by method and a path regex."""
        return self.faults.requests(method, path)

    def writes(self, action: str | None = None) -> list[VastRequest]:
        """The requests that changed (or asked to change) an instance and were answered 2xx."""
        kinds = (action,) if action else ("create", "stop", "start", "label", "destroy")
        return [r for r in self.requests() if r.action in kinds and 200 <= r.status < 300]

    def instance(self, instance_id: int) -> dict | None:
        try:
            return self.state.view(instance_id)
        except VastError:
            return None

    def instances(self) -> list[dict]:
        return self.state.views()

    def use_offers(self, offers: list[dict]) -> None:
        """Serve these offers instead (until `reset`), for a test that needs, e.g., several offers of one host."""
        self.state.use_offers(offers)

    def reset(self) -> None:
        """The offers and machines as given, no instances (their hosts stopped), no faults or logged requests."""
        self.faults.clear_faults()
        self.faults.clear_requests()
        self.state.reset()


def serve(port: int = 8795, api_key: str | None = None) -> None:
    """Run the stand-in in the foreground until interrupted (Ctrl-C or SIGTERM: either stops its hosts, which run
    in sessions of their own and would outlive it)."""
    import signal

    def interrupted(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    emulator = VastApiEmulator(api_key=api_key, port=port)
    emulator.serve_forever(lambda: f"{VAST_EMULATOR_LABEL}\nlistening on {emulator.url}  "
                                   f"(GPUOPS_VAST_API={emulator.url} VAST_API_KEY={emulator.api_key})")


__all__ = ["Machine", "SAMPLE_MACHINES", "SILENT", "STUCK_LOADING", "VAST_EMULATOR_LABEL", "VastApiEmulator", "VastFault",
           "VastRequest", "offer_matches", "sample_offers", "search", "serve"]
