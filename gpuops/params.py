"""Every parameter's rule in one place: the CLI and the flows check a whole request here before any write."""
from __future__ import annotations

import math
import re
from typing import Any

from gpuops.errors import BadInput

NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # Cloud Run service and job IDs
MAX_NAME = 49  # Cloud Run service and job IDs
LONGEST_SUFFIX = "-cpu-job"  # of the migration's resources: <prefix>-cpu-job, -gpu-job, -gpu
METRICS = ("probe", "cloud-monitoring")


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def bad(field: str, value: Any, why: str, fix: str) -> BadInput:
    """A refusal that names the parameter (as the flow and the CLI call it), the value and the fix."""
    return BadInput(f"{field} ({_flag(field)}) {value!r} {why}: {fix}.")


def number(field: str, value: Any, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, integer: bool = False, unit: str = "", example: str = "") -> float | int:
    """A finite number within [low, high] (or (low, high] when `low_open`), else BadInput naming it."""
    fix = f"pass e.g. {_flag(field)} {example}" if example else "pass a number in range"
    try:
        if isinstance(value, bool):
            raise ValueError
        parsed = int(value) if integer and float(value) == int(float(value)) else float(value)
    except (TypeError, ValueError):
        raise bad(field, value, f"is not {'a whole number' if integer else 'a number'}", fix) from None
    if integer and not isinstance(parsed, int):
        raise bad(field, value, "is not a whole number", fix)
    if not math.isfinite(parsed):
        raise bad(field, value, "is not a finite number", fix)
    unit = f" {unit}" if unit else ""
    if low is not None and (parsed <= low if low_open else parsed < low):
        raise bad(field, value, f"must be {'above' if low_open else 'at least'} {low:g}{unit}", fix)
    if high is not None and parsed > high:
        raise bad(field, value, f"must be at most {high:g}{unit}", fix)
    return parsed


def count(field: str, value: Any, low: int = 1, high: int | None = None, example: str = "") -> int:
    return int(number(field, value, low=low, high=high, integer=True, example=example or str(max(low, 1))))


def seconds(field: str, value: Any, high: float | None = None, example: str = "30") -> float:
    return float(number(field, value, low=0, low_open=True, high=high, unit="seconds", example=example))


def resource_name(field: str, value: Any, reserve: str = "") -> str:
    """A Cloud Run ID (lowercase letters, digits, hyphens), short enough to take `reserve` after it."""
    longest = MAX_NAME - len(reserve)
    fix = f"use lowercase letters, digits and hyphens, starting with a letter, at most {longest} characters"
    if not isinstance(value, str) or not NAME.match(value):
        raise bad(field, value, "is not a valid Cloud Run name", fix)
    if len(value) > longest:
        raise bad(field, value, f"is {len(value)} characters; with {reserve!r} it exceeds Cloud Run's "
                                f"{MAX_NAME}", fix)
    return value


def revision(field: str, value: str | None) -> str | None:
    """A revision ID as Cloud Run names them (`svc-00001-abc`), up to 63 characters."""
    if value is not None and (not isinstance(value, str) or not NAME.match(value) or len(value) > 63):
        raise bad(field, value, "is not a Cloud Run revision name", "pass e.g. my-service-00001-abc "
                  "(`gpuops describe` lists the serving revisions)")
    return value


def prefix(value: str | None) -> str | None:
    return None if value is None else resource_name("prefix", value, reserve=LONGEST_SUFFIX)


def steps(value: Any) -> tuple[int, ...]:
    from gpuops.traffic import parse_steps

    try:
        return parse_steps(value)
    except ValueError as exc:
        raise bad("steps", value, str(exc), "pass e.g. --steps 20,80,100") from None


def choice(field: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise bad(field, value, "is not one of " + ", ".join(choices), f"pass {_flag(field)} {choices[0]}")
    return value


# --- groups: each flow checks its whole request with one of these --------------------------


def gpu_profile(profile) -> None:
    """The GPU profile's quantities and counts (Cloud Run's GPU rules are judged later, in gpu_rules)."""
    from gpuops.units import cpu_cores, memory_bytes

    for field, parse, example in (("cpu", cpu_cores, "8"), ("memory", memory_bytes, "32Gi")):
        value = getattr(profile, field)
        try:
            amount = parse(value)
        except ValueError as exc:
            raise bad(field, value, "is not a quantity", f"{exc}; pass e.g. --{field} {example}") from None
        if amount <= 0:
            raise bad(field, value, "must be above 0", f"pass e.g. --{field} {example}")
    count("max_instances", profile.max_instances, low=1, example="3")
    count("min_instances", profile.min_instances, low=0, high=profile.max_instances, example="0")
    count("gpu_count", profile.gpu_count, low=1)
    count("concurrency", profile.concurrency, low=1, high=1000, example="1")
    count("timeout_seconds", profile.timeout_seconds, low=1, high=3600, example="1800")  # Cloud Run's request cap
    count("job_max_retries", profile.job_max_retries, low=0, high=10, example="3")
    count("job_task_count", profile.job_task_count, low=1, example="1")


def canary(*, steps_text: Any, window_s: Any, probe_requests: Any, min_requests: Any, max_error_rate: Any = 0.01,
           max_p95_ms: Any = 5000.0, max_holds: Any = 2, approval_timeout_s: Any = 3600,
           metrics: str = "probe", max_latency_ratio: Any = 1.5, max_error_margin: Any = 0.02) -> dict:
    """A canary's whole request; a window that can never pass (fewer probes than the minimum) is refused."""
    checked = {
        "steps": steps(steps_text),
        "window_s": seconds("window_s", window_s, high=86400),
        "probe_requests": count("probe_requests", probe_requests, low=1, example="30"),
        "min_requests": count("min_requests", min_requests, low=1, example="20"),
        "max_error_rate": float(number("max_error_rate", max_error_rate, low=0, high=1, example="0.01")),
        "max_p95_ms": float(number("max_p95_ms", max_p95_ms, low=0, low_open=True, unit="ms", example="5000")),
        "max_holds": count("max_holds", max_holds, low=0, example="2"),
        "approval_timeout_s": seconds("approval_timeout_s", approval_timeout_s, example="3600"),
        "metrics": choice("metrics", metrics, METRICS),
        "max_latency_ratio": float(number("max_latency_ratio", max_latency_ratio, low=1, high=100, example="1.5")),
        "max_error_margin": float(number("max_error_margin", max_error_margin, low=0, high=1, example="0.02")),
    }
    if metrics == "probe" and checked["min_requests"] > checked["probe_requests"]:
        raise bad("min_requests", min_requests, f"is more than the {checked['probe_requests']} probe requests a "
                  "window sends, so no window could ever pass", "lower --min-requests or raise --probe-requests")
    return checked


def smoke_test(*, prefix_value: str | None = None, min_vram_gib: Any = None, requests: Any = 3,
               timeout_s: Any = 600) -> None:
    prefix(prefix_value)
    if min_vram_gib is not None:
        number("min_vram_gib", min_vram_gib, low=0, low_open=True, unit="GiB", example="16")
    count("requests", requests, low=1, example="3")
    seconds("timeout_s", timeout_s, example="600")


def cost_inputs(**hours: Any) -> None:
    for field, value in hours.items():
        number(field, value, low=0, high=744, unit="hours a month", example="100")



_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")  # an HTTP field name (RFC 9110 token)
_BLOCK_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # Prefect block document names
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_RESERVED_HEADERS = {"authorization", "host", "content-length", "content-type", "transfer-encoding", "connection"}


def probe_auth(*, id_token: Any = False, id_token_audience: Any = None, api_key_header: Any = "X-API-Key",
               api_key_secret: Any = None, api_key_env: Any = None) -> None:
    """Where a probe's credentials are: names only (a Secret block, an env var), never a value."""
    if not isinstance(id_token, bool):
        raise bad("id_token", id_token, "is not true or false", "pass --id-token, or leave it out")
    if id_token_audience is not None and (not isinstance(id_token_audience, str) or not id_token_audience.strip()
                                          or any(c.isspace() for c in id_token_audience)):
        raise bad("id_token_audience", id_token_audience, "is not an audience",
                  "pass the service URL or a custom audience, e.g. --id-token-audience https://my-service.run.app")
    if not isinstance(api_key_header, str) or not _HEADER_NAME.match(api_key_header) \
            or api_key_header.lower() in _RESERVED_HEADERS:
        raise bad("api_key_header", api_key_header, "is not a header name a key can go in",
                  "pass e.g. --api-key-header X-API-Key (Authorization carries the ID token)")
    if api_key_secret is not None and (not isinstance(api_key_secret, str) or not _BLOCK_NAME.match(api_key_secret)):
        raise _bad_place("api_key_secret", "a Prefect block name",
                         "name the Secret block holding the key: lowercase letters, digits and hyphens, e.g. gpu-api-key")
    if api_key_env is not None and (not isinstance(api_key_env, str) or not _ENV_NAME.match(api_key_env)):
        raise _bad_place("api_key_env", "an environment variable name",
                         "name the variable holding the key, e.g. --api-key-env GPU_API_KEY")
    if api_key_secret and api_key_env:
        raise bad("api_key_env", api_key_env, f"is given with --api-key-secret {api_key_secret!r}",
                  "name one place for the key: a Secret block or an environment variable")


def _bad_place(field: str, what: str, fix: str) -> BadInput:
    # Not echoed: a value that is no name may be the key itself, pasted where its place belongs.
    return BadInput(f"{field} ({_flag(field)}) is not {what} (the value is not shown: it may be the key "
                    f"itself, and only its place belongs here): {fix}.")


MAX_JOB_ARGS, MAX_JOB_ARG_CHARS = 1000, 4096
MAX_JOB_WAIT_S = 7 * 86400  # Cloud Run's longest task timeout (168 h)


def job_args(field: str, value: Any) -> list[str] | None:
    """Args a job execution runs with (an override of the container's args); None keeps the job's own."""
    if value is None:
        return None
    fix = f"pass a list of strings, e.g. {_flag(field)} --job --steps 2000"
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise bad(field, value, "is not a list of arguments", fix)
    if len(value) > MAX_JOB_ARGS:
        raise bad(field, f"<{len(value)} args>", f"holds more than {MAX_JOB_ARGS} arguments", fix)
    for arg in value:
        if not isinstance(arg, str) or "\x00" in arg or len(arg) > MAX_JOB_ARG_CHARS:
            raise bad(field, arg, f"is not an argument (a string without NUL, at most {MAX_JOB_ARG_CHARS} "
                                  "characters)", fix)
    return list(value)


def run_job(*, job: Any, args: Any = None, timeout_s: Any = 1800, log_lines: Any = 20) -> dict:
    """run-job's whole request (project and region are checked with the target)."""
    return {
        "job": resource_name("job", job),
        "args": job_args("args", args),
        "timeout_s": seconds("timeout_s", timeout_s, high=MAX_JOB_WAIT_S, example="1800"),
        "log_lines": count("log_lines", log_lines, low=0, high=1000, example="20"),
    }


# --- the build -> run -> publish pipeline --------------------------------------------------

RUNTIMES = ("source", "container")
MAX_PIPELINE_WAIT_S = 7 * 86400
_GIT_REF = re.compile(r"^(?!/)(?!.*(\.\.|//|@\{|\\))[A-Za-z0-9._/@+-]{1,255}(?<![./])$")
_HF_REPO = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,95}/[A-Za-z0-9][-A-Za-z0-9_.]{0,95}$")
_COMPUTE_CAP = re.compile(r"^\d{1,2}\.\d$")


def pipeline(*, repo: Any, ref: Any, sha: Any, runtime: Any = "source", hf_repo: Any = None,
             hf_revision: Any = "main", app_command: Any = None, output_dir: Any = "output",
             need_vram_gib: Any = None, min_compute_cap: Any = "7.0", run_timeout_s: Any = 3600) -> dict:
    """build-run-publish's whole request, checked before its first write."""
    from gpuops.job_status import check_job_id

    return {
        "repo": git_repo("repo", repo),
        "ref": git_ref("ref", ref),
        "sha": check_job_id(sha),
        "runtime": choice("runtime", runtime, RUNTIMES),
        "hf_repo": hf_repo_id("hf_repo", hf_repo),
        "hf_revision": git_ref("hf_revision", hf_revision),
        "app_command": job_args("app_command", app_command),
        "output_dir": relative_dir("output_dir", output_dir),
        "need_vram_gib": None if need_vram_gib is None else float(
            number("need_vram_gib", need_vram_gib, low=0, low_open=True, high=1024, unit="GiB", example="16")),
        "min_compute_cap": compute_cap("min_compute_cap", min_compute_cap),
        "run_timeout_s": seconds("run_timeout_s", run_timeout_s, high=MAX_PIPELINE_WAIT_S, example="3600"),
    }


def git_repo(field: str, value: Any) -> str:
    """A clone URL (https/ssh/file) or a local path; never one carrying a password."""
    from urllib.parse import urlsplit

    fix = "pass a clone URL such as https://github.com/owner/app.git, or a local repository's path"
    if not isinstance(value, str) or not value.strip() or value.startswith("-") or "\x00" in value:
        raise bad(field, value, "is not a git repository", fix)
    parts = urlsplit(value) if "://" in value else None
    # https://TOKEN@host puts a token where a user name goes: refuse any credential in an http(s) URL.
    if parts and (parts.password or (parts.username and parts.scheme in ("http", "https"))):
        raise BadInput(f"{field} ({_flag(field)}) holds a credential in its URL (not shown): it would be stored in "
                       "status.json and the flow run: use a credential helper or a deploy key instead.")
    return value.strip()


def git_ref(field: str, value: Any) -> str:
    if not isinstance(value, str) or not _GIT_REF.match(value):
        raise bad(field, value, "is not a git ref name", f"pass e.g. {_flag(field)} main")
    return value


def hf_repo_id(field: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _HF_REPO.match(value) or ".." in value:
        raise bad(field, value, "is not a Hugging Face repo id", f"pass e.g. {_flag(field)} my-org/my-model")
    return value


def relative_dir(field: str, value: Any) -> str:
    """A folder inside the checkout: relative, without `..`."""
    from pathlib import PurePosixPath

    path = PurePosixPath(value) if isinstance(value, str) and value else None
    if path is None or path.is_absolute() or ".." in path.parts or "\x00" in value:
        raise bad(field, value, "is not a folder inside the checkout", f"pass e.g. {_flag(field)} output")
    return str(path)


def compute_cap(field: str, value: Any) -> str:
    if not isinstance(value, str) or not _COMPUTE_CAP.match(value):
        raise bad(field, value, "is not a CUDA compute capability", f"pass e.g. {_flag(field)} 7.0 (sm_70)")
    return value
