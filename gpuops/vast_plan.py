"""provision-vast's decisions (pure): the checked request, where an instance answers, what its log and probe say.

No I/O here: the flow (flows/provision_vast.py) reads the API and the host and asks these functions what
the answers mean. Every figure a report shows is measured by the flow or computed from stated inputs;
an estimate says so and from what.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from gpuops import host_rules, params
from gpuops.cost import HOURS_PER_MONTH
from gpuops.errors import BadInput
from gpuops.gpu import MIB_PER_GIB, SmiParseError, parse_smi_csv
from gpuops.markdown import cell
from gpuops.offers import OfferFilter, offer_vram_mib, parse_filter
from gpuops.sample_app import MAX_STEPS

SETUP_COMPLETE = "GPUOPS_SETUP_COMPLETE"
SETUP_FATAL = "GPUOPS_SETUP FATAL:"
SETUP_GPU = "GPUOPS_SETUP gpu: "
# `set -euo pipefail` (any order of the flags, `-eu -o pipefail` too)
FAIL_FAST = re.compile(r"^\s*set\s+-(?=[A-Za-z]*e)(?=[A-Za-z]*u)[A-Za-z]*(?:o|\s+-o)\s+pipefail\b", re.M)

# Outcomes of one offer's attempt.
READY = "ready"
REFUSED = "create refused"  # the offer was gone or refused: nothing rented
SKIPPED = "skipped"  # its host failed too often this run, or its machine lied about its card
ABANDONED = "abandoned"  # rented, never became usable: kept until an approver releases it
VRAM_MISMATCH = "destroyed: VRAM mismatch"  # the one automatic destroy
FAILED_AFTER_SETUP = "failed after set-up"  # kept, the run stops and says how to release it


@dataclass(frozen=True)
class Setup:
    """What the on-start script (deployments/vast_setup.sh) gets in the instance's environment."""

    model_dir: str
    model_min_mb: int
    model_fetch: str
    app_command: str
    app_port: int
    health_path: str

    def env(self) -> dict[str, str]:
        """The create's env: vast.ai maps `-p PORT:PORT`; the rest are the script's variables."""
        return {f"-p {self.app_port}:{self.app_port}": "1", "MODEL_DIR": self.model_dir,
                "MODEL_MIN_MB": str(self.model_min_mb), "MODEL_FETCH": self.model_fetch, "APP_CMD": self.app_command,
                "APP_PORT": str(self.app_port), "HEALTH_PATH": self.health_path}


@dataclass(frozen=True)
class Bounds:
    wait_s: float  # from `running` until the app answers: a host that does not is abandoned
    boot_timeout_s: float  # from the create until vast.ai reports `running` (the image pull)
    max_offers: int  # offers rented at most in one run
    host_failures: int  # a host failing this often is skipped for the rest of the run
    latency_target_ms: float
    approval_timeout_s: int


@dataclass(frozen=True)
class Request:
    """provision-vast's whole request, checked before anything is searched or rented."""

    filter: OfferFilter
    image: str
    disk_gb: float
    setup: Setup
    bounds: Bounds
    prompt: str
    steps: int
    api_key_secret: str | None

    @property
    def need_gib(self) -> float:
        return self.filter.need_vram_gib


def check_request(*, offer_filter: Any, model_gib: Any, second_model_gib: Any, image: Any, disk_gb: Any,
                  prompt: Any, steps: Any, api_key_secret: Any, model_dir: Any, model_min_mb: Any, model_fetch: Any,
                  app_command: Any, app_port: Any, health_path: Any, wait_s: Any, boot_timeout_s: Any,
                  max_offers: Any, host_failures: Any, latency_target_ms: Any, approval_timeout_s: Any) -> Request:
    """Every parameter of provision-vast (by its name) checked; all the problems are named at once, with fixes."""
    problems: list[str] = []

    def checked(fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except BadInput as exc:
            problems.append(str(exc))
            return None

    request = dict(
        filter=checked(_filter, offer_filter, model_gib, second_model_gib), image=checked(image_reference, image),
        disk_gb=checked(params.number, "disk_gb", disk_gb, low=1, high=10_000, unit="GB", example="40"),
        setup=checked(_setup, model_dir, model_min_mb, model_fetch, app_command, app_port, health_path),
        bounds=checked(_bounds, wait_s, boot_timeout_s, max_offers, host_failures, latency_target_ms,
                       approval_timeout_s),
        prompt=checked(_prompt, prompt),
        steps=checked(params.count, "steps", steps, low=1, high=MAX_STEPS, example="1000"),
        api_key_secret=checked(_secret_name, api_key_secret))
    if problems:
        raise BadInput(" ".join(problems))
    return Request(**request)


def _filter(offer_filter: Any, model_gib: Any, second_model_gib: Any) -> OfferFilter:
    data = dict(offer_filter or {}) if isinstance(offer_filter, dict) or offer_filter is None else offer_filter
    if model_gib is None and second_model_gib:
        raise BadInput("second_model_gib (--second-model-gib) is given without model_gib (--model-gib): give both.")
    if isinstance(data, dict) and model_gib is not None:
        if data.get("model_gib") is not None:
            raise BadInput("model_gib is given twice (as --model-gib and in the offer filter): give it once.")
        if data.get("need_vram_gib") is not None:
            # Two answers to one question: neither silently wins.
            raise BadInput(f"model_gib (--model-gib) {model_gib!r} and need_vram_gib (--need-vram-gib) "
                           f"{data['need_vram_gib']!r} are both given: give --model-gib (the need is then (weights + "
                           "second) x 1.2) or --need-vram-gib (the need itself), not both.")
        data.update(model_gib=params.number("model_gib", model_gib, low=0, low_open=True, unit="GiB", example="8"),
                    second_model_gib=params.number("second_model_gib", second_model_gib or 0, low=0, unit="GiB",
                                                   example="4") or None)
    flt = parse_filter(data)
    if flt.need_vram_gib is None:
        raise BadInput("model_gib (--model-gib) is missing: give the model's weights in GiB (and --second-model-gib "
                       "for a model loaded alongside) so the VRAM need is (weights + second) x 1.2, or need_vram_gib "
                       "in the offer filter.")
    return flt


def image_reference(image: Any) -> str:
    """`[registry/]name[:tag][@sha256:...]` as `docker pull` takes it (gpuops.registry's rules)."""
    from gpuops.registry import parse_image_ref

    parse_image_ref(image)  # BadInput naming the image and the form to give
    return image.strip()


def _setup(model_dir: Any, model_min_mb: Any, model_fetch: Any, app_command: Any, app_port: Any,
           health_path: Any) -> Setup:
    for name, value, example in (("model_dir", model_dir, "/models/my-model"), ("app_command", app_command,
                                                                                "'python server.py'")):
        if not isinstance(value, str) or not value.strip() or "\n" in value or "\x00" in value:
            raise params.bad(name, value, "is empty or not one line", f"pass e.g. --{name.replace('_', '-')} {example}")
    if not isinstance(model_fetch, str) or "\x00" in model_fetch:
        raise params.bad("model_fetch", model_fetch, "is not a shell command",
                         "pass e.g. --model-fetch 'hf download org/name --local-dir /models/name', or '' when the "
                         "image holds the model")
    if not isinstance(health_path, str) or not re.fullmatch(r"/[A-Za-z0-9._~/-]*", health_path):
        raise params.bad("health_path", health_path, "is not a URL path", "pass e.g. --health-path /healthz")
    return Setup(model_dir.strip(), params.count("model_min_mb", model_min_mb, low=1, example="7000"),
                 model_fetch.strip(), app_command.strip(),
                 params.count("app_port", app_port, low=1, high=65535, example="8000"), health_path)


def _bounds(wait_s: Any, boot_timeout_s: Any, max_offers: Any, host_failures: Any, latency_target_ms: Any,
            approval_timeout_s: Any) -> Bounds:
    """Every bound checked; all the bad ones named at once."""
    checks = {
        "wait_s": lambda: params.seconds("wait_s", wait_s, high=3600, example="30"),
        "boot_timeout_s": lambda: params.seconds("boot_timeout_s", boot_timeout_s, high=4 * 3600, example="600"),
        "max_offers": lambda: params.count("max_offers", max_offers, low=1, high=50, example="5"),
        "host_failures": lambda: params.count("host_failures", host_failures, low=1, high=10, example="3"),
        "latency_target_ms": lambda: float(params.number("latency_target_ms", latency_target_ms, low=0,
                                                         low_open=True, unit="ms", example="1000")),
        "approval_timeout_s": lambda: _approval_timeout(approval_timeout_s)}
    values, problems = {}, []
    for name, check in checks.items():
        try:
            values[name] = check()
        except BadInput as exc:
            problems.append(str(exc))
    if problems:
        raise BadInput(" ".join(problems))
    return Bounds(**values)


def _approval_timeout(value: Any) -> int:
    return params.count("approval_timeout_s", value, low=1, high=7 * 86400, example="3600")


def _prompt(prompt: Any) -> str:
    if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > 10_000:
        raise params.bad("prompt", prompt, "is not a test prompt", "pass e.g. --prompt 'a lighthouse at dawn'")
    return prompt


def _secret_name(name: Any) -> str | None:
    if name is not None:
        params.probe_auth(api_key_secret=name)
    return name


def check_release(instance_ids: Any, approval_timeout_s: Any, api_key_secret: Any) -> tuple[list[int], int, str | None]:
    """release-vast's request: instance ids (whole numbers, at least one), the approval's timeout, the key's place."""
    ids = instance_ids if isinstance(instance_ids, (list, tuple)) else [instance_ids]
    if not ids or any(isinstance(i, bool) or not isinstance(i, int) or i < 1 for i in ids):
        raise BadInput(f"instance_ids (--instance) {instance_ids!r} is not a list of vast.ai instance ids (whole "
                       "numbers from 1): pass e.g. --instance 9100001 (repeatable).")
    return list(dict.fromkeys(ids)), _approval_timeout(approval_timeout_s), _secret_name(api_key_secret)


def unlooked_image_verdicts(image: str) -> list[host_rules.Verdict]:
    """The image's guardrails when its registry is not asked (a private image): its tag, and a warning."""
    from gpuops.registry import parse_image_ref

    tag = parse_image_ref(image).tag
    return [host_rules.devel_tag_verdict(image, tag),
            host_rules.warned("image-size", None, f"{image}: size and trust not looked up (check_image is off).",
                              "check its size (under 20 GB; never over 100 GB) and its source by hand.")]


def check_setup_script(text: str, where: str) -> str:
    """A set-up script gpuops sends must fail fast (runbook 004 §5: `|| true` reported success without a model)."""
    if not text.strip():
        raise BadInput(f"setup_script (--setup-script) {where} is empty: give a script, or leave it out for "
                       "deployments/vast_setup.sh.")
    if not FAIL_FAST.search(text):
        raise BadInput(f"setup_script (--setup-script) {where} does not `set -euo pipefail`: a set-up that ignores "
                       "errors reports success without its model; add the line, or use deployments/vast_setup.sh.")
    return text


def without_comments(script: str) -> str:
    """The script minus comment-only and blank lines (the shebang stays): a shorter on-start request."""
    lines = script.splitlines()
    kept = [line for line in lines[1:] if line.strip() and not line.lstrip().startswith("#")]
    return "\n".join(lines[:1] + kept) + "\n"


# ---------------------------------------------------------------- one attempt


@dataclass
class Attempt:
    """One offer tried: what happened, why, and what was measured on the way (seconds, readings)."""

    offer_id: Any
    host_id: Any
    machine_id: Any
    gpu_name: str
    listed_vram_mib: int | None
    dph_total: float | None
    outcome: str = ""
    instance_id: int | None = None
    reasons: list[str] = field(default_factory=list)
    measured: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def attempt_for(offer: dict) -> Attempt:
    return Attempt(offer.get("id"), offer.get("host_id"), offer.get("machine_id"), str(offer.get("gpu_name")),
                   offer_vram_mib(offer), offer.get("dph_total"))


class Strikes:
    """Hosts that failed this run (3 strikes: skipped), and machines whose card was not the one listed."""

    def __init__(self, limit: int):
        self.limit = limit
        self.host_failures: dict[Any, int] = {}
        self.lying_machines: set[Any] = set()

    def fail(self, attempt: Attempt) -> None:
        self.host_failures[attempt.host_id] = self.host_failures.get(attempt.host_id, 0) + 1

    def skip_reason(self, offer: dict) -> str | None:
        failures = self.host_failures.get(offer.get("host_id"), 0)
        if failures >= self.limit:
            return (f"host {offer.get('host_id')} failed {failures} times in this run (limit {self.limit}): skipped "
                    "for the rest of it (runbook 004 §2).")
        if offer.get("machine_id") in self.lying_machines:
            return f"machine {offer.get('machine_id')} read less VRAM than it lists: another offer of it is skipped."
        return None


def instance_url(record: dict | None, app_port: int) -> str | None:
    """http://public_ipaddr:HostPort of the app's container port, once vast.ai reports the instance running."""
    if not record or record.get("actual_status") != "running" or not record.get("public_ipaddr"):
        return None
    mapped = (record.get("ports") or {}).get(f"{app_port}/tcp") or []
    port = mapped[0].get("HostPort") if mapped and isinstance(mapped[0], dict) else None
    return f"http://{record['public_ipaddr']}:{port}" if port else None


@dataclass(frozen=True)
class SetupResult:
    complete: bool
    fatal: tuple[str, ...]
    gpu_line: str | None

    @property
    def failed(self) -> bool:
        return bool(self.fatal)


def setup_result(log: str) -> SetupResult:
    """What the on-start script said in the instance's log: complete, the FATAL lines, the GPU it read."""
    lines = log.splitlines()
    fatal = tuple(line.split(SETUP_FATAL, 1)[1].strip() for line in lines if SETUP_FATAL in line)
    gpu = next((line.split(SETUP_GPU, 1)[1].strip() for line in lines if SETUP_GPU in line), None)
    return SetupResult(any(line.strip() == SETUP_COMPLETE for line in lines), fatal, gpu)


def gpus_from_setup_log(result: SetupResult) -> list[dict] | None:
    """The nvidia-smi reading the set-up script printed (`name, MiB, cap; ...`), for apps without /gpu-probe."""
    if not result.gpu_line:
        return None
    try:
        return parse_smi_csv("\n".join(part.strip() for part in result.gpu_line.split(";")))
    except SmiParseError:
        return None


def silence_reasons(bound_s: float, record: dict | None, log: str) -> list[str]:
    """Why a rented host is abandoned for not answering: the set-up's own failure when it logged one."""
    result = setup_result(log)
    status = (record or {}).get("actual_status")
    if result.fatal:
        return [f"set-up failed: {line}" for line in result.fatal]
    if status != "running":
        return [f"vast.ai did not report it running within {bound_s:g} s (actual_status {status!r}: the image "
                "pull or the host is stuck; runbook 004 case 5). Fix: a smaller image, or another host."]
    return [f"the app did not answer within {bound_s:g} s of the instance running" +
            (" and the host logged nothing" if not log.strip() else "") +
            " (runbook 004 §2: give up on a host within 30 s). Fix: none needed, the next offer is tried; raise "
            "--wait-s when the set-up downloads a large model."]


def listing_mismatch(offer: dict, gpus: list[dict]) -> host_rules.Verdict | None:
    """A card read on the host with less VRAM than the offer listed (the one reason to destroy a fresh
    instance), else None. An empty reading is no such proof: see card_unread."""
    if not gpus:
        return None
    verdict = host_rules.vram_matches_offer(offer_vram_mib(offer), gpus, str(offer.get("gpu_name")))
    return None if verdict.ok else verdict


def need_shortfall(offer: dict, gpus: list[dict], need_gib: float) -> host_rules.Verdict | None:
    """A card that is what was listed but holds less than the job needs, else None (the instance is kept:
    nothing lied, and what to do with it is the operator's call)."""
    if not gpus:
        return None
    lowest = min(gpu["memory_total_mib"] for gpu in gpus)
    verdict = host_rules.vram_verdict(str(offer.get("gpu_name")), lowest, need_gib)
    return None if verdict.ok else verdict


def card_unread(source: str, why: str | None, probe_reasons: list[str]) -> list[str]:
    """Why a host whose card could not be read is abandoned (kept, offered for release on approval)."""
    said = "; ".join(probe_reasons[:3])
    return [f"the card could not be read ({why or 'no GPU in the reading'}; {source})" + (f": {said}" if said else "")
            + ". Fix: read the instance's log (a driver that failed, nvidia-smi missing); the next offer is tried "
            "and this instance is kept until an approver releases it."]


# ---------------------------------------------------------------- what is reported


# Fields of `show instance --raw` the record artifact keeps: never extra_env or onstart (values set by the
# operator, tokens among them), nor jupyter_token / instance_api_key.
RECORD_FIELDS = ("id", "label", "actual_status", "machine_id", "host_id", "gpu_name", "num_gpus", "gpu_ram",
                 "dph_total", "dph_base", "storage_cost", "geolocation", "reliability2", "public_ipaddr", "ports",
                 "ssh_host", "ssh_port", "image_uuid", "disk_space", "start_date", "cuda_max_good", "driver_version")


def instance_record(record: dict) -> dict:
    return {k: record.get(k) for k in RECORD_FIELDS if k in record}


def monthly_estimate(dph_total: float | None) -> dict | None:
    if dph_total is None:
        return None
    return {"usd_per_month": round(dph_total * HOURS_PER_MONTH, 2),
            "label": f"estimate: the listed dph_total ${dph_total:.4f}/h x {HOURS_PER_MONTH} h (a month running); "
                     "not measured. vast.ai bills per second, storage on a stopped instance and bandwidth apart."}


def release_help(instance_ids: list[int]) -> str:
    ids = " ".join(f"--instance {i}" for i in instance_ids)
    return (f"release later with `gpuops release-vast {ids}` (it asks for approval: stop keeps the disk and can be "
            "started again, destroy deletes everything), or vast.ai's console.")


def measured_vram(gpus: list[dict]) -> dict:
    lowest = min(gpus, key=lambda g: g["memory_total_mib"])
    return {"gpu": lowest["name"], "memory_total_mib": lowest["memory_total_mib"],
            "memory_total_gib": round(lowest["memory_total_mib"] / MIB_PER_GIB, 2),
            "compute_cap": lowest.get("compute_cap"), "gpus": len(gpus)}


def ranking_markdown(ranking, where: str, shown: int = 20) -> str:
    """The ranking artifact: the chosen offers best first (score and why), every rejected one with its rules."""
    summary = ranking.as_dict(limit=0)
    lines = [f"# vast.ai offers ranked ({where})",
             f"{summary['offers']} offers searched: {summary['chosen_count']} passed every guardrail, "
             f"{summary['rejected_count']} rejected ({cell(summary['rejected_by_rule'])}).", "",
             *[f"**Warning:** {cell(w)}" for w in summary["warnings"]], *([""] if summary["warnings"] else []),
             f"## Chosen, best first (first {shown})", "",
             "| rank | offer | GPU | VRAM MiB (listed) | $/h | score | host | where | why |", "|---|---|---|---|---|---|---|---|---|"]
    for rank, offer in enumerate(ranking.chosen[:shown], start=1):
        lines.append(f"| {rank} | {offer['id']} | {cell(offer['gpu_name'])} | {offer['gpu_ram']} | "
                     f"{offer['dph_total']:.4f} | {offer['score']} | {cell(offer.get('host_id'))} | "
                     f"{cell(offer.get('geolocation'))} | {cell('; '.join(offer['reasons']))} |")
    lines += ["", "## Rejected", "", "| offer | GPU | reasons |", "|---|---|---|"]
    lines += [f"| {cell(r['id'])} | {cell(r['gpu_name'])} | {cell(' / '.join(r['reasons']))} |" for r in ranking.rejected]
    return "\n".join(lines)


def report_markdown(result: dict) -> str:
    """The run's report: what was tried and why it ended so, measured figures (and how), estimates labelled."""
    instance = result.get("instance") or {}
    lines = [f"# provision-vast: {result['outcome']}", f"API: {result['api']}", ""]
    lines += [f"**Warning:** {cell(w)}" for w in result.get("warnings") or []] + ([""] if result.get("warnings") else [])
    if instance:
        lines += [f"Instance **{instance.get('id')}** ({cell(instance.get('gpu_name'))}, listed "
                  f"${instance.get('dph_total')}/h) at {cell(result.get('url'))}, label `{instance.get('label')}`.", ""]
    lines += ["## Offers tried", "", "| offer | host | instance | outcome | reasons | measured |", "|---|---|---|---|---|---|"]
    lines += [f"| {cell(a['offer_id'])} | {cell(a['host_id'])} | {cell(a['instance_id'])} | {a['outcome']} | "
              f"{cell(' / '.join(a['reasons']))} | {cell(a['measured'])} |" for a in result["attempts"]]
    lines += ["", "## Measured", ""]
    lines += [f"- {name}: {cell(value)}" for name, value in (result.get("measured") or {}).items()] or ["- nothing"]
    lines += ["", "## Estimates (not measured)", ""]
    lines += [f"- {name}: {cell(value)}" for name, value in (result.get("estimates") or {}).items()] or ["- none"]
    if result.get("kept"):
        lines += ["", f"Kept and still billed: {', '.join(map(str, result['kept']))}. {release_help(result['kept'])}"]
    return "\n".join(lines)
