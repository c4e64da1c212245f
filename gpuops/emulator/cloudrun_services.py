"""Services, revisions and traffic of the Cloud Run emulator."""

from __future__ import annotations


from google.cloud import run_v2
from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from .cloudrun_common import (
    RECONCILING,
    SERVICE_ID_RE,
    SUCCEEDED,
    TAG_RE,
    Name,
    aborted_etag,
    already_exists,
    check_namespaces,
    clone,
    condition,
    copy_into,
    failed_precondition,
    invalid,
    make_etag,
    new_uid,
    now,
    random_suffix,
)
from .cloudrun_checks import check_service_spec
from .cloudrun_store import Context, TopLevelStore

ServicePb = run_v2.Service.pb()
RevisionPb = run_v2.Revision.pb()
TrafficType = run_v2.TrafficTargetAllocationType
LATEST = TrafficType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST
REVISION = TrafficType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION

# Output-only Service fields: Google ignores them in requests and computes them itself.
SERVICE_OUTPUT_FIELDS = (
    "uid", "generation", "create_time", "update_time", "delete_time", "expire_time", "creator",
    "last_modifier", "observed_generation", "terminal_condition", "conditions",
    "latest_ready_revision", "latest_created_revision", "traffic_statuses", "uri", "urls",
    "satisfies_pzs", "reconciling",
)


def template_key(template: Message) -> Message:
    """The part of a template that decides whether a new revision is needed."""
    key = clone(template)
    key.revision = ""
    return key


def default_template(template: Message) -> None:
    """Fill the defaults Google fills, so a read-modify-write round trip compares equal."""
    if not template.max_instance_request_concurrency:
        template.max_instance_request_concurrency = 80
    if not template.HasField("timeout"):
        template.timeout.seconds = 300
    for container in template.containers:
        if not container.resources.limits:
            container.resources.limits.update({"cpu": "1000m", "memory": "512Mi"})
        if not container.ports and len(template.containers) == 1:
            container.ports.add(name="http1", container_port=8080)


class ServiceStore(TopLevelStore):
    """Services and their revisions; every public method runs under the shared lock."""

    KIND, COLLECTION, ID_RE = "service", "services", SERVICE_ID_RE

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.services: dict[str, Message] = {}
        self.revisions: dict[str, Message] = {}
        self._keys: dict[str, Message] = {}  # revision name -> its template key
        self._counters: dict[str, int] = {}  # service name -> last revision number

    def reset(self) -> None:
        with self.ctx.lock:
            self.services.clear()
            self.revisions.clear()
            self._keys.clear()
            self._counters.clear()

    # ------------------------------------------------------------ services

    @property
    def table(self) -> dict[str, Message]:
        return self.services

    def list(self, parent: str, page_size: int = 0, page_token: str = "") -> tuple[list, str]:
        return self._page(self.services, parent, page_size, page_token)

    def delete(self, name: str, etag: str = "", validate_only: bool = False) -> Message:
        with self.ctx.lock:
            svc = self._checked(name, etag)
            if validate_only:
                return svc
            del self.services[name]
            for rev in [r for r in self.revisions if r.startswith(name + "/revisions/")]:
                del self.revisions[rev], self._keys[rev]
            self._counters.pop(name, None)
            svc.delete_time.CopyFrom(now())
            return svc

    def _merge_masked(self, old: Message, body: Message, mask: field_mask_pb2.FieldMask) -> Message:
        if not mask.IsValidForDescriptor(ServicePb.DESCRIPTOR):
            raise invalid(f"update_mask has an unknown path: {list(mask.paths)}")
        merged = clone(old)
        mask.MergeMessage(body, merged, replace_message_field=True, replace_repeated_field=True)
        return merged

    def _write(self, name: str, body: Message, old: Message | None, validate_only: bool) -> Message:
        """Validate the desired state, compute the observed state, then commit it."""
        svc = clone(body)
        for output_field in SERVICE_OUTPUT_FIELDS:
            svc.ClearField(output_field)
        svc.name = name
        self._validate_spec(svc)
        default_template(svc.template)
        revision = self._plan_revision(svc, old)
        latest = revision.name if revision is not None else old.latest_created_revision
        if not svc.traffic:
            svc.traffic.add(type_=LATEST, percent=100)
        statuses = self._plan_traffic(svc, revision)
        self._fill_status(svc, old, latest, statuses)
        if not validate_only:
            self.services[name] = svc
            if revision is not None:
                self._commit_revision(revision, svc.template)
        return clone(svc)

    @staticmethod
    def _validate_spec(svc: Message) -> None:
        check_namespaces("service.labels", svc.labels)
        check_namespaces("service.template.labels", svc.template.labels)
        check_namespaces("service.template.annotations", svc.template.annotations)
        if not svc.HasField("template"):
            raise invalid("service.template: must be set")
        check_service_spec(svc)

    def _fill_status(self, svc: Message, old: Message | None, latest: str, statuses: list) -> None:
        stamp = now()
        svc.uid = old.uid if old is not None else new_uid()
        svc.generation = old.generation + 1 if old is not None else 1
        svc.observed_generation = svc.generation
        svc.create_time.CopyFrom(old.create_time if old is not None else stamp)
        svc.update_time.CopyFrom(stamp)
        svc.creator = old.creator if old is not None else self.ctx.creator
        svc.last_modifier = self.ctx.creator
        svc.latest_created_revision = latest
        svc.latest_ready_revision = latest
        svc.traffic_statuses.extend(statuses)
        svc.uri = self.ctx.uri_for(Name.parse(svc.name), None)
        svc.urls.append(svc.uri)
        svc.terminal_condition.CopyFrom(self._service_ready(latest))
        svc.conditions.extend([condition("RoutesReady"), condition("ConfigurationsReady")])
        svc.reconciling = svc.terminal_condition.state == RECONCILING
        svc.etag = make_etag(svc.uid, svc.generation)

    def _service_ready(self, latest: str) -> Message:
        """The service is as ready as its latest revision (which a local process may be starting)."""
        rev = self.revisions.get(latest)
        ready = next((c for c in rev.conditions if c.type_ == "Ready"), None) if rev is not None else None
        if ready is None or ready.state == SUCCEEDED:
            return condition("Ready")
        message = ready.message and (
            f"Revision '{Name.parse(latest).id}' is not ready and cannot serve traffic. {ready.message}"
        )
        return condition("Ready", ready.state, message)

    # ------------------------------------------------------------ revisions

    def _plan_revision(self, svc: Message, old: Message | None) -> Message | None:
        """A new revision on create, and on update only when the template really changed."""
        key = template_key(svc.template)
        service_id = Name.parse(svc.name).id
        wanted = svc.template.revision
        if wanted:
            if not wanted.startswith(service_id + "-"):
                raise invalid(f"template.revision '{wanted}' must begin with '{service_id}-'")
            full = f"{svc.name}/revisions/{wanted}"
            if full in self._keys:
                if self._keys[full] == key:
                    return None
                raise already_exists(full)
            return self._build_revision(svc, full)
        if old is not None and self._keys.get(old.latest_created_revision) == key:
            return None
        return self._build_revision(svc, self._next_revision_name(svc.name, service_id))

    def _next_revision_name(self, service: str, service_id: str) -> str:
        number = self._counters.get(service, 0) + 1
        while True:
            candidate = f"{service}/revisions/{service_id}-{number:05d}-{random_suffix(3)}"
            if candidate not in self.revisions:
                return candidate

    def _build_revision(self, svc: Message, full_name: str) -> Message:
        rev = copy_into(svc.template, RevisionPb, drop=("revision", "health_check_disabled"))
        stamp = now()
        rev.name = full_name
        rev.uid = new_uid()
        rev.generation = 1
        rev.observed_generation = 1
        rev.create_time.CopyFrom(stamp)
        rev.update_time.CopyFrom(stamp)
        rev.service = Name.parse(svc.name).id
        rev.launch_stage = svc.launch_stage
        rev.creator = self.ctx.creator
        rev.reconciling = False
        rev.conditions.extend(
            [condition("Ready"), condition("ContainerHealthy"), condition("ResourcesAvailable")]
        )
        rev.etag = make_etag(rev.uid, 1)
        return rev

    def _commit_revision(self, rev: Message, template: Message) -> None:
        service = Name.parse(rev.name).parent
        self.revisions[rev.name] = rev
        self._keys[rev.name] = template_key(template)
        self._counters[service] = self._counters.get(service, 0) + 1

    def get_revision(self, name: str) -> Message:
        return self._lookup(self.revisions, name)

    def list_revisions(self, parent: str, page_size: int = 0, page_token: str = "") -> tuple[list, str]:
        return self._page(self.revisions, parent, page_size, page_token, newest_first=True)

    def delete_revision(self, name: str, etag: str = "", validate_only: bool = False) -> Message:
        with self.ctx.lock:
            rev = self.get_revision(name)
            if etag and etag != rev.etag:
                raise aborted_etag(name)
            svc = self.services.get(Name.parse(name).parent)
            if svc is not None and self._serves(svc, name):
                raise failed_precondition(
                    f"Revision '{Name.parse(name).id}' is referenced by a traffic target "
                    "(it receives traffic or carries a tag) and cannot be deleted."
                )
            if not validate_only:
                del self.revisions[name], self._keys[name]
            rev.delete_time.CopyFrom(now())
            return rev

    def mark_revision(self, name: str, state: int, message: str = "") -> None:
        """Readiness of a revision's local process: its Ready condition, and its service's if latest."""
        with self.ctx.lock:
            rev = self.revisions.get(name)
            if rev is None:
                return
            rev.reconciling = state == RECONCILING
            for kind in ("Ready", "ContainerHealthy"):
                _replace_condition(rev, condition(kind, state, message))
            svc = self.services.get(Name.parse(name).parent)
            if svc is not None and svc.latest_created_revision == name:
                svc.terminal_condition.CopyFrom(self._service_ready(name))
                svc.reconciling = rev.reconciling

    def serving_revisions(self) -> dict[str, tuple[Message, str]]:
        """Revisions that take traffic or carry a tag: revision full name -> (revision, service name)."""
        with self.ctx.lock:
            serving = {}
            for svc in self.services.values():
                for target in svc.traffic_statuses:
                    if target.percent <= 0 and not target.tag:
                        continue
                    short = target.revision or Name.parse(svc.latest_ready_revision).id
                    full = f"{svc.name}/revisions/{short}"
                    if full in self.revisions:
                        serving[full] = (clone(self.revisions[full]), svc.name)
            return serving

    @staticmethod
    def _serves(svc: Message, revision_name: str) -> bool:
        short = Name.parse(revision_name).id
        for target in svc.traffic_statuses:
            if target.revision == short and (target.percent > 0 or target.tag):
                return True
            if target.type_ == LATEST and target.percent > 0 and svc.latest_ready_revision == revision_name:
                return True
        return False

    # ------------------------------------------------------------ traffic

    def _plan_traffic(self, svc: Message, new_rev: Message | None) -> list:
        """Validate the traffic targets and resolve them into traffic statuses."""
        total, tags, statuses = 0, set(), []
        name = Name.parse(svc.name)
        for index, target in enumerate(svc.traffic):
            where = f"service.traffic[{index}]"
            self._check_target(svc, target, new_rev, where)
            if target.tag:
                if not TAG_RE.match(target.tag):
                    raise invalid(f"{where}.tag '{target.tag}' must be lowercase letters, digits and hyphens")
                if target.tag in tags:
                    raise invalid(f"{where}.tag '{target.tag}' is used by more than one traffic target")
                tags.add(target.tag)
            total += target.percent
            status = run_v2.TrafficTargetStatus.pb()(
                type_=target.type_, revision=target.revision, percent=target.percent, tag=target.tag
            )
            if target.tag:
                status.uri = self.ctx.uri_for(name, target.tag)
            statuses.append(status)
        if total != 100:
            raise invalid(
                f"service.traffic: the percent of all traffic targets must add up to 100, got {total}"
            )
        return statuses

    def _check_target(self, svc: Message, target: Message, new_rev: Message | None, where: str) -> None:
        if not target.type_ and target.revision:
            # Google infers REVISION from a revision name; a target with neither is rejected.
            target.type_ = REVISION
        if not target.type_:
            raise invalid(f"{where}: set type LATEST or name a revision")
        if not 0 <= target.percent <= 100:
            raise invalid(f"{where}.percent must be between 0 and 100, got {target.percent}")
        if target.type_ == LATEST and target.revision:
            raise invalid(f"{where}: a LATEST target must not name a revision ('{target.revision}')")
        if target.type_ == REVISION:
            if not target.revision:
                raise invalid(f"{where}: a REVISION target must name a revision")
            full = f"{svc.name}/revisions/{target.revision}"
            if full not in self.revisions and (new_rev is None or new_rev.name != full):
                raise invalid(f"{where}: revision '{target.revision}' does not exist in service '{svc.name}'")


def _replace_condition(resource: Message, cond: Message) -> None:
    for existing in resource.conditions:
        if existing.type_ == cond.type_:
            existing.CopyFrom(cond)
            return
    resource.conditions.append(cond)
