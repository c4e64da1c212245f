"""Progressive delivery behind a small backend interface (Flagger's router is the model).

`engine` owns the canary: every phase, gates, holds, approvals, rollback, resume. A backend only
moves traffic and keeps the state on its resource. Adding one is a module implementing
`backend.TrafficBackend` and a row in BACKENDS; nothing in the flows changes.
"""
from __future__ import annotations

import importlib

# kind -> "module:Class". Capabilities (e.g. switch_only) are attributes of each class.
BACKENDS: dict[str, str] = {
    "cloud-run": "gpuops.rollout.cloud_run:CloudRunBackend",
    "elastic-ip": "gpuops.rollout.elastic_ip:ElasticIpBackend",
}


def backend_class(kind: str) -> type:
    """The registered backend class for `kind` (imported only when asked for)."""
    if kind not in BACKENDS:
        raise KeyError(f"no rollout backend {kind!r}; registered: {', '.join(sorted(BACKENDS))}")
    module, _, name = BACKENDS[kind].partition(":")
    return getattr(importlib.import_module(module), name)
