"""What Google validates in service and job specs beyond parsing: containers, scaling, counts."""

from __future__ import annotations

from google.protobuf.message import Message

from .cloudrun_common import invalid


def check_containers(containers, where: str) -> None:
    """At least one container, each with an image and resource limits that are not negative."""
    if not containers:
        raise invalid(f"{where}.containers: at least one container is required")
    for index, container in enumerate(containers):
        here = f"{where}.containers[{index}]"
        if not container.image:
            raise invalid(f"{here}.image: must be set")
        for key, quantity in container.resources.limits.items():
            # Limits are Kubernetes quantities in strings ("1000m", "512Mi", "1"): a sign is all we judge.
            if quantity.strip().startswith("-"):
                raise invalid(f"{here}.resources.limits['{key}']: must not be negative, got '{quantity}'")


def check_not_negative(msg: Message, where: str, *fields: str) -> None:
    for name in fields:
        value = getattr(msg, name)
        if value < 0:
            raise invalid(f"{where}.{name}: must not be negative, got {value}")


def check_scaling(scaling: Message, where: str) -> None:
    """Instance counts are never negative, and a minimum never exceeds a set maximum (0 = unset)."""
    fields = [f.name for f in scaling.DESCRIPTOR.fields if f.name.endswith("_instance_count")]
    check_not_negative(scaling, where, *fields)
    low, high = scaling.min_instance_count, scaling.max_instance_count
    if high and low > high:
        raise invalid(
            f"{where}.min_instance_count ({low}) must not exceed {where}.max_instance_count ({high})"
        )


def check_service_spec(svc: Message) -> None:
    """Service-level and revision-level scaling, request concurrency and containers."""
    check_scaling(svc.scaling, "service.scaling")
    template = svc.template
    check_scaling(template.scaling, "service.template.scaling")
    check_not_negative(template, "service.template", "max_instance_request_concurrency")
    check_containers(template.containers, "service.template")


def check_job_spec(job: Message) -> None:
    """Task count, parallelism, retries and containers of a job."""
    check_not_negative(job.template, "job.template", "task_count", "parallelism")
    check_not_negative(job.template.template, "job.template.template", "max_retries")
    check_containers(job.template.template.containers, "job.template.template")
