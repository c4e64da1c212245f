"""Guardrails for renting a GPU host, as pure verdicts: each names its rule, the measured value and the fix."""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from importlib import resources
from typing import Any, Iterable

from gpuops.gpu import MIB_PER_GIB, PYTORCH2_MIN_COMPUTE_CAP, VRAM_VARIANTS, cap_tuple

DEFAULT_BLOCKED_COUNTRIES = ("CN",)  # runbook 004 §2: the Great Firewall throttles Docker Hub, HF Hub, PyPI
DEFAULT_MIN_RELIABILITY = 0.99  # runbook 004 §2: `reliability > 0.99`
GB = 1000**3  # registries and Docker Hub state image sizes in decimal GB
IMAGE_WARN_BYTES = 20 * GB  # runbook 004 §4: over 20 GB, slow pulls and cache misses on P2P hosts
IMAGE_REFUSE_BYTES = 100 * GB  # over 100 GB: the pull stalls or fails (the runbook's 173 GB image)
# A reading may differ a little from the listed size (vast.ai hosts report non-standard sizes;
# gpuhunt allows x0.93-x1.07 when matching, shared/FACTS.md); past that it is another card.
VRAM_MATCH_TOLERANCE = 0.07
RUNTIME_IMAGE_EXAMPLE = "nvidia/cuda:12.4.1-runtime-ubuntu22.04"


@dataclass(frozen=True)
class Verdict:
    """One rule judged on one measured value. `warn` marks a pass that still needs a look.

    (gpu_rules.Violation lists failures of a plan's fields; a verdict also carries passes and the value
    measured, which a ranking reports.)
    """

    rule: str
    ok: bool
    value: Any
    message: str
    fix: str = ""
    warn: bool = False

    def __str__(self) -> str:
        return f"[{self.rule}] {self.message}" + (f" Fix: {self.fix}" if self.fix else "")

    def as_dict(self) -> dict:
        return {"rule": self.rule, "ok": self.ok, "warn": self.warn, "value": self.value,
                "message": self.message, "fix": self.fix}


def passed(rule: str, value: Any, message: str = "") -> Verdict:
    return Verdict(rule, True, value, message)


def failed(rule: str, value: Any, message: str, fix: str) -> Verdict:
    return Verdict(rule, False, value, message, fix)


def warned(rule: str, value: Any, message: str, fix: str) -> Verdict:
    return Verdict(rule, True, value, message, fix, warn=True)


# ---------------------------------------------------------------- GPU names and compute capability


def normalize_gpu_name(name: str) -> str:
    """Case and spacing only (vast.ai's query syntax writes spaces as '_'): never a partial match."""
    return " ".join(name.replace("_", " ").split()).casefold()


@lru_cache(maxsize=1)
def capability_table() -> dict[str, str]:
    """Normalized GPU name -> compute capability, from gpuops/data/gpu_capabilities.json."""
    data = json.loads(resources.files("gpuops.data").joinpath("gpu_capabilities.json").read_text())
    table: dict[str, str] = {}
    for cap, names in data["capabilities"].items():
        cap_tuple(cap)  # a malformed capability in the data fails loudly here
        for name in names:
            key = normalize_gpu_name(name)
            if key in table:
                raise ValueError(f"gpu_capabilities.json lists {name!r} twice ({table[key]} and {cap})")
            table[key] = cap
    return table


def capability_by_name(name: str) -> str | None:
    """The compute capability of a GPU by its exact name (vast.ai's or nvidia-smi's), None if unknown."""
    return capability_table().get(normalize_gpu_name(name))


def cap_from_vast(value: Any) -> str | None:
    """vast.ai's compute_cap (an int: 860 is 8.6, 1200 is 12.0) as '8.6'; a '8.6' string passes through."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise ValueError(f"compute_cap {value!r} is not a capability")
    if isinstance(value, int) or (isinstance(value, float) and value >= 100):
        number = int(value)
        if number < 100:
            raise ValueError(f"compute_cap {value!r} is not a capability like 860")
        return f"{number // 100}.{number % 100 // 10}"
    text = str(value)
    cap_tuple(text)
    return text


def effective_capability(name: str, reported: Any = None) -> tuple[str | None, str]:
    """The lower of the name table's capability and the reported one (vast.ai's may be missing or wrong),
    and where it came from."""
    by_name, by_host = capability_by_name(name), cap_from_vast(reported)
    if by_name is None or by_host is None:
        cap = by_name or by_host
        return cap, ("name table" if by_name else "the host's report" if by_host else "unknown")
    if cap_tuple(by_host) < cap_tuple(by_name):
        return by_host, f"the host's report; the name table says {by_name}"
    return by_name, "name table" + ("" if by_host == by_name else f"; the host reported {by_host}")


def compute_capability_verdict(name: str, reported: Any = None,
                               min_cap: str = PYTORCH2_MIN_COMPUTE_CAP) -> Verdict:
    """Compute capability at least `min_cap`; PyTorch 2.x needs 7.0 (sm_70), runbook 004 §1."""
    if isinstance(reported, (list, dict, set)):
        raise ValueError(f"compute_cap {reported!r} is not a capability")
    return _capability_verdict(name, reported, min_cap)


# Pure and asked again for every offer of the same card: a ranking of thousands judges a few dozen pairs.
@lru_cache(maxsize=4096)
def _capability_verdict(name: str, reported: Any, min_cap: str) -> Verdict:
    rule = "compute-capability"
    cap, source = effective_capability(name, reported)
    if cap is None:
        return failed(rule, None, f"{name!r}: compute capability unknown (not in the name table, none reported).",
                      "add the card to gpuops/data/gpu_capabilities.json with its capability from NVIDIA's "
                      "CUDA GPUs page, or choose a listed card.")
    if cap_tuple(cap) >= cap_tuple(min_cap):
        return passed(rule, cap, f"{name}: compute capability {cap} ({source}).")
    why = (f"; PyTorch 2.x wheels need {PYTORCH2_MIN_COMPUTE_CAP}+ (sm_70)"
           if cap_tuple(cap) < cap_tuple(PYTORCH2_MIN_COMPUTE_CAP) else "")
    return failed(rule, cap, f"{name}: compute capability {cap} (sm_{cap.replace('.', '')}, {source}) is below "
                             f"{min_cap}{why}.",
                  "choose a newer card (T4 7.5, A10/RTX 30xx 8.6, L4/RTX 40xx 8.9, A100 8.0, H100 9.0).")


# ---------------------------------------------------------------- VRAM


def vram_variant_note(name: str) -> str:
    sizes = next((s for pattern, s in VRAM_VARIANTS if pattern.search(name)), None)
    return f" This card is sold as {sizes} under one name: trust the reading, not the name." if sizes else ""


def vram_verdict(name: str, have_mib: float, need_gib: float | None, max_gib: float | None = None) -> Verdict:
    """A card's VRAM (per GPU, MiB as nvidia-smi reads it) against the need (gpu.vram_need_gib) and an optional
    upper bound of the band."""
    rule = "vram"
    if need_gib is not None and have_mib < need_gib * MIB_PER_GIB:
        need_mib = need_gib * MIB_PER_GIB
        return failed(rule, have_mib, f"{name}: {have_mib:g} MiB ({have_mib / MIB_PER_GIB:.1f} GiB) of VRAM; the job "
                                      f"needs {need_gib:g} GiB ({need_mib:.0f} MiB).{vram_variant_note(name)}",
                      f"choose a card with at least {need_mib:.0f} MiB per GPU, or a smaller model (quantized, or one "
                      "model at a time).")
    if max_gib is not None and have_mib > max_gib * MIB_PER_GIB:
        return failed(rule, have_mib, f"{name}: {have_mib / MIB_PER_GIB:.1f} GiB of VRAM is above the band's "
                                      f"{max_gib:g} GiB maximum.",
                      "raise max_vram_gib, or choose a smaller card (the band keeps large cards for large jobs).")
    return passed(rule, have_mib)


def vram_matches_offer(offer_mib: float, gpus: list[dict], name: str = "") -> Verdict:
    """After renting: the nvidia-smi reading (gpu.parse_smi_csv) against the VRAM the offer listed.

    A card reading more than 7% under the listing is not the card paid for (runbook 004 case 7: an
    "RTX 3060" with 8 GB instead of 12); the caller destroys that fresh instance. An empty reading proves
    nothing about the listing, so it is never a reason to destroy.
    """
    rule = "vram-matches-offer"
    if not gpus:  # no reading is no proof of a lie: the caller keeps the instance, for an approved release
        return failed(rule, None, f"no GPU in the reading; the offer listed {offer_mib:g} MiB.",
                      "read the host's log (a driver that failed, nvidia-smi missing); try the next offer.")
    lowest = min(gpu["memory_total_mib"] for gpu in gpus)
    if lowest < offer_mib * (1 - VRAM_MATCH_TOLERANCE):
        card = name or gpus[0]["name"]
        return failed(rule, lowest, f"{card}: nvidia-smi reads {lowest} MiB, the offer listed {offer_mib:g} MiB "
                                    f"(more than {VRAM_MATCH_TOLERANCE:.0%} less).{vram_variant_note(card)}",
                      "destroy this fresh instance and try the next offer (nothing was set up on it).")
    return passed(rule, lowest, f"nvidia-smi reads {lowest} MiB; the offer listed {offer_mib:g} MiB.")


# ---------------------------------------------------------------- host: region, reliability


def country_of(geolocation: str) -> str | None:
    """vast.ai's 'Guangdong, CN' / 'Texas, US' / 'US' -> 'CN' / 'US'; None when no code can be read."""
    code = geolocation.rsplit(",", 1)[-1].strip().upper()
    return code if re.fullmatch(r"[A-Z]{2}", code) else None


def region_verdict(geolocation: Any, blocked: Iterable[str] = DEFAULT_BLOCKED_COUNTRIES,
                   allowed: Iterable[str] | None = None) -> Verdict:
    """The host's country is not blocked (CN by default: runbook 004 §2) and, when a list is given, allowed."""
    if geolocation is not None and not isinstance(geolocation, str):
        return failed("region", geolocation, f"geolocation {geolocation!r} is not a place.",
                      "choose a host whose geolocation ends with a country code, e.g. 'Texas, US'.")
    return _region_verdict(geolocation, tuple(blocked), None if allowed is None else tuple(allowed))


@lru_cache(maxsize=4096)
def _region_verdict(geolocation: str | None, blocked: tuple[str, ...], allowed: tuple[str, ...] | None) -> Verdict:
    rule = "region"
    country = country_of(geolocation) if geolocation is not None else None
    if country is None:
        return failed(rule, geolocation, f"geolocation {geolocation!r} names no country: it cannot be checked "
                                         "against the blocklist.", "choose a host whose geolocation ends with a "
                                                                   "country code, e.g. 'Texas, US'.")
    if country in blocked:
        return failed(rule, geolocation, f"host in {geolocation} ({country}) is in a blocked country "
                                         f"({', '.join(blocked)}); behind the Great Firewall Docker Hub, Hugging Face "
                                         "and PyPI are throttled or cut." if country == "CN" else
                      f"host in {geolocation} ({country}) is in a blocked country ({', '.join(blocked)}).",
                      "choose a host outside the blocked countries (e.g. US, CA, DE, NL, SE, FI, JP).")
    if allowed is not None and country not in allowed:
        return failed(rule, geolocation, f"host in {geolocation} ({country}) is not in the allowed countries "
                                         f"({', '.join(allowed)}).",
                      "choose a host in an allowed country, or add the country to allowed_countries.")
    return passed(rule, country)


def offer_reliability(offer: dict) -> float | None:
    """The lower of vast.ai's `reliability` and `reliability2` where both are given."""
    values = [offer[k] for k in ("reliability", "reliability2") if offer.get(k) is not None]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        raise ValueError(f"reliability {values!r} is not a number between 0 and 1")
    return min(values) if values else None


def reliability_verdict(value: float | None, minimum: float = DEFAULT_MIN_RELIABILITY) -> Verdict:
    """Host reliability strictly above `minimum` (runbook 004 §2: `reliability > 0.99`)."""
    rule = "reliability"
    if value is None:
        return failed(rule, None, "the host's reliability is not given.", "choose a host with a reliability record.")
    if value > minimum:
        return passed(rule, value)
    return failed(rule, value, f"host reliability {value:.4f} is not above {minimum:g}: P2P hosts vary, and an "
                               "unreliable one drops SSH and loses the instance.",
                  f"choose a host with reliability above {minimum:g} (prefer certified data centers).")


# ---------------------------------------------------------------- images: size, devel tags


def size_text(size_bytes: float) -> str:
    """Decimal GB as registries state sizes; MB below 1 GB (a 30 MB image is not "0.0 GB")."""
    return f"{size_bytes / GB:.1f} GB" if size_bytes >= GB else f"{size_bytes / 1000**2:.0f} MB"


def image_size_verdict(image: str, size_bytes: int) -> Verdict:
    """Bands from runbook 004 §4: about 4 GB fine, over 20 GB warn, over 100 GB refuse (sizes as pulled,
    i.e. the compressed config + layers the registry lists, decimal GB)."""
    rule, size = "image-size", size_text(size_bytes)
    fix = (f"use the project's official instructions on a runtime base image (e.g. {RUNTIME_IMAGE_EXAMPLE}, "
           "about 4 GB) with git clone + uv sync, instead of a large all-in-one image.")
    if size_bytes > IMAGE_REFUSE_BYTES:
        return failed(rule, size_bytes, f"{image} is {size}: over {IMAGE_REFUSE_BYTES / GB:.0f} GB a pull on a "
                                        "P2P host stalls or fails (runbook 004: a 173 GB image never finished).", fix)
    if size_bytes > IMAGE_WARN_BYTES:
        return warned(rule, size_bytes, f"{image} is {size}: over {IMAGE_WARN_BYTES / GB:.0f} GB, pulls take 15 "
                                        "minutes or more and miss the host's cache.", fix)
    return passed(rule, size_bytes, f"{image} is {size}.")


_DEVEL = re.compile(r"(?<![a-z0-9])devel(?![a-z0-9])", re.I)


def devel_tag_verdict(image: str, tag: str, inference: bool = True) -> Verdict:
    """A `devel` tag carries compilers an inference host never uses (several GB more to pull)."""
    rule = "image-devel"
    if not inference or not _DEVEL.search(tag):
        return passed(rule, tag)
    runtime_tag = _DEVEL.sub("runtime", tag)
    return warned(rule, tag, f"{image} is a devel image: compilers and headers inference does not need.",
                  f"use the runtime tag {runtime_tag!r} (same CUDA, without the toolchain).")


# ---------------------------------------------------------------- trust in third-party sources


@dataclass(frozen=True)
class Popularity:
    """What a registry or forge says about a source. kind: 'docker-hub' or 'github'."""

    kind: str
    name: str
    pulls: int | None = None
    stars: int | None = None
    last_updated: datetime | None = None
    official: bool = False


# Runbook 004 §4's minimums: Docker Hub pulls > 1,000 and stars > 0; GitHub stars > 100.
TRUST_MINIMUMS = {"docker-hub": {"pulls": 1000, "stars": 0}, "github": {"stars": 100}}
STALE_DAYS = 365


def trust_score(source: Popularity, now: datetime | None = None) -> int:
    """0-100. An official source (a Docker Official Image, `library/`, or the project's own repository) is 100.

    Otherwise the sum of three parts, each on a log scale so that one huge number cannot buy trust alone:
    pulls 40 x min(1, log10(pulls + 1) / 6) (a million pulls is full marks, 1,000 is 20);
    stars 30 x min(1, log10(stars + 1) / 3) (999 stars is full marks, none is 0);
    freshness 30 if updated within 180 days, 15 within a year, else (or unknown) 0.
    The runbook's example, valyriantech/ace-step-1.5 (404 pulls, 0 stars), scores 17 plus freshness.
    """
    if source.official:
        return 100
    pulls = 40 * min(1.0, math.log10((source.pulls or 0) + 1) / 6)
    stars = 30 * min(1.0, math.log10((source.stars or 0) + 1) / 3)
    return round(pulls + stars + _freshness(source.last_updated, now))


def _freshness(updated: datetime | None, now: datetime | None) -> float:
    if updated is None:
        return 0.0
    age_days = ((now or datetime.now(timezone.utc)) - updated).days
    return 30.0 if age_days <= 180 else 15.0 if age_days <= STALE_DAYS else 0.0


def trust_verdict(source: Popularity, now: datetime | None = None) -> Verdict:
    """Refused under the runbook's minimums unless official ("an official source wins"); warned when stale."""
    rule, score = "trust", trust_score(source, now)
    figures = _figures(source)
    if source.official:
        return passed(rule, score, f"{source.name} is an official source ({figures}): trusted.")
    short = [f"{key} {getattr(source, key) or 0:,} (needs more than {floor:,})"
             for key, floor in TRUST_MINIMUMS.get(source.kind, {}).items() if (getattr(source, key) or 0) <= floor]
    if short:
        return failed(rule, score, f"{source.name}: {', '.join(short)}; trust score {score}/100 ({figures}).",
                      "follow the project's official README first (git clone + uv sync on a runtime image); use a "
                      "third-party source only when the official project recommends it.")
    if source.last_updated is None or _freshness(source.last_updated, now) == 0:
        return warned(rule, score, f"{source.name}: not updated for over {STALE_DAYS} days or date unknown; trust "
                                   f"score {score}/100 ({figures}).",
                      "check the official project for a maintained alternative before using it.")
    return passed(rule, score, f"{source.name}: trust score {score}/100 ({figures}).")


def _figures(source: Popularity) -> str:
    parts = [f"{key} {getattr(source, key):,}" for key in ("pulls", "stars") if getattr(source, key) is not None]
    if source.last_updated is not None:
        parts.append(f"last updated {source.last_updated:%Y-%m-%d}")
    return ", ".join(parts) or "no figures"


def image_verdicts(image: str, tag: str, size_bytes: int, source: Popularity | None, inference: bool = True,
                   now: datetime | None = None) -> list[Verdict]:
    """Size band, devel tag and trust of one image; a source with no figures (not on Docker Hub) is a warning."""
    verdicts = [image_size_verdict(image, size_bytes), devel_tag_verdict(image, tag, inference)]
    if source is not None:
        verdicts.append(trust_verdict(source, now))
    else:
        verdicts.append(warned("trust", None, f"{image}: no pull or star figures (not a Docker Hub image).",
                               "check that it comes from the project's official README or its vendor."))
    return verdicts
