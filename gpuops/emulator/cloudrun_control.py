"""The emulator's own control API under /emulator/v1: info, faults, request log, seed, reset, config.

Every malformed request answers 400 INVALID_ARGUMENT in Google's error shape, never 500.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any

from .cloudrun_state import CloudRunState
from .cloudrun_common import ApiError, check_json_int, check_json_type, invalid


def handle_control(state: CloudRunState, method: str, path: str, body: str, info: dict) -> tuple[int, dict]:
    """Run one control request (never subject to faults, never logged)."""
    try:
        data = parse_control_body(body)
        return 200, _control(state, method, path.rstrip("/").removeprefix("/emulator/v1"), data, info)
    except ApiError as exc:
        return exc.code, exc.body()


def parse_control_body(body: str) -> dict[str, Any]:
    """A control body is empty or one JSON object of finite values."""
    if not body.strip():
        return {}
    try:
        data = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (json.JSONDecodeError, ValueError) as exc:
        raise invalid(f"control body is not JSON: {exc}") from exc
    check_json_type("control body", data, dict)
    return data


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: Python reads infinity, which no JSON answer can carry
        raise ValueError(f"{text} is out of range")
    return value


def _control(state: CloudRunState, method: str, route: str, data: dict, info: dict) -> dict:
    key = (method, route)
    if key in (("GET", ""), ("GET", "/info")):
        return info
    if key == ("POST", "/faults"):
        return {"fault": state.faults.add(**data).to_dict()}
    if key == ("GET", "/faults"):
        return {"faults": [f.to_dict() for f in state.faults.faults]}
    if key == ("DELETE", "/faults"):
        state.faults.clear_faults()
        return {"faults": []}
    if key == ("GET", "/requests"):
        return {"requests": [asdict(r) for r in state.faults.requests()]}
    if key == ("DELETE", "/requests"):
        state.faults.clear_requests()
        return {"requests": []}
    if key == ("POST", "/seed"):
        # The body itself is the seed: a path in it is never read (that is the CLI's --seed FILE).
        return {"seeded": state.seed_document(data)}
    if key == ("POST", "/reset"):
        _known_keys("reset", data, {"reseed"})
        reseed = data.get("reseed", True)
        check_json_type("reset.reseed", reseed, bool)
        state.reset(reseed=reseed)
        return {"reset": True}
    if key == ("GET", "/processes"):
        return {"processes": state.processes.snapshot()}
    if key in (("GET", "/config"), ("POST", "/config")):
        return _config(state, data if method == "POST" else {})
    raise ApiError(404, f"No emulator control route {method} /emulator/v1{route}", "NOT_FOUND")


def _config(state: CloudRunState, data: dict) -> dict:
    _known_keys("config", data, {"operation_polls_before_done"})
    if "operation_polls_before_done" in data:
        polls = data["operation_polls_before_done"]
        check_json_int("config.operation_polls_before_done", polls, 0)
        state.ops.polls_before_done = polls
    return {"operation_polls_before_done": state.ops.polls_before_done}


def _known_keys(where: str, data: dict, known: set[str]) -> None:
    unknown = set(data) - known
    if unknown:
        raise invalid(f"{where}: unknown keys {sorted(unknown)}; expected some of {sorted(known)}")
