"""vast.ai offers judged by a declarative filter and ranked (pure): every rejection lists each rule it failed."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from gpuops import host_rules
from gpuops.errors import BadInput
from gpuops.gpu import MIB_PER_GIB, PYTORCH2_MIN_COMPUTE_CAP, cap_tuple, vram_need_gib
from gpuops.host_rules import DEFAULT_BLOCKED_COUNTRIES, DEFAULT_MIN_RELIABILITY, Verdict

# Fields an offer must carry to be judged at all (vast.ai's raw search results always have them).
REQUIRED_OFFER_FIELDS = ("id", "gpu_name", "num_gpus", "gpu_ram", "dph_total")
# Fields read as numbers (when present): anything else there makes the record unjudgeable.
NUMERIC_OFFER_FIELDS = ("num_gpus", "gpu_ram", "dph_total", "inet_down", "reliability", "reliability2")
# Score weights (sum 100): price first, then host quality. See _score.
WEIGHTS = {"price": 40.0, "reliability": 25.0, "verified": 15.0, "datacenter": 10.0, "bandwidth": 10.0}
FULL_BANDWIDTH_MBPS = 1000.0  # 1 Gbps down gets the bandwidth part in full
# The filter's fields that `gpuops offers rank` sets from a flag, so an error names both.
FLAGS = {"gpu_name": "--gpu-name", "need_vram_gib": "--need-vram-gib", "max_dph": "--max-dph",
         "min_reliability": "--min-reliability", "blocked_countries": "--country-blocklist",
         "allow_default_blocked_countries": "--allow-blocked-country"}


@dataclass(frozen=True)
class OfferFilter:
    """What an offer must be. GPU names match exactly (case and spacing aside): "RTX 5090" never matches
    "RTX 5090 D" nor "RTX PRO 6000". VRAM is per GPU, as vast.ai's `gpu_ram` (MiB) lists it."""

    gpu_names: tuple[str, ...] = ()  # empty: any card that meets the other rules
    num_gpus: int | None = 1
    need_vram_gib: float | None = None
    max_vram_gib: float | None = None
    min_compute_cap: str = PYTORCH2_MIN_COMPUTE_CAP
    min_reliability: float = DEFAULT_MIN_RELIABILITY  # an offer must be strictly above it
    # Added to DEFAULT_BLOCKED_COUNTRIES, never instead of them (runbook 004: CN is always excluded) ...
    blocked_countries: tuple[str, ...] = DEFAULT_BLOCKED_COUNTRIES
    # ... unless a default entry is lifted here, by name; `warnings` then says so.
    allow_default_blocked_countries: tuple[str, ...] = ()
    allowed_countries: tuple[str, ...] | None = None
    min_inet_down_mbps: float | None = None
    max_dph: float | None = None  # USD per hour, vast.ai's dph_total (GPU + storage)
    verified_only: bool = True  # as vast.ai's own search does by default
    prefer_verified: bool = True  # counts when verified_only is false
    prefer_datacenter: bool = True
    _names: frozenset = field(default=frozenset(), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_names", frozenset(host_rules.normalize_gpu_name(n) for n in self.gpu_names))
        floor = tuple(c for c in DEFAULT_BLOCKED_COUNTRIES if c not in self.allow_default_blocked_countries)
        object.__setattr__(self, "blocked_countries", tuple(dict.fromkeys(floor + tuple(self.blocked_countries))))

    @property
    def warnings(self) -> list[str]:
        """A lifted default block, stated wherever the ranking is shown."""
        lifted = [c for c in self.allow_default_blocked_countries if c not in self.blocked_countries]
        return [f"default country block lifted for {', '.join(lifted)} (allow_default_blocked_countries / "
                "--allow-blocked-country): runbook 004 excludes it; its hosts may be ranked and rented."] \
            if lifted else []

    def as_dict(self) -> dict:
        data = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        data["gpu_name"] = list(data.pop("gpu_names"))
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}


# ---------------------------------------------------------------- parsing a filter


def parse_filter(data: Any) -> OfferFilter:
    """An OfferFilter from a dict (a --filter file, flow parameters). Every bad field is named with its fix,
    all at once; unknown keys are refused. `model_gib` (+ `second_model_gib`, `headroom`) sets the need as
    gpu.vram_need_gib does: (weights + second model) x 1.2."""
    if not isinstance(data, dict):
        raise BadInput(f"offer filter: expected a JSON object of fields, got {type(data).__name__}; e.g. "
                       '{"gpu_name": "RTX 3060", "need_vram_gib": 12}.')
    known = set(_PARSERS) | set(_NEED_FIELDS)
    unknown = sorted(set(data) - known)
    errors = [f"unknown field(s) {', '.join(map(repr, unknown))}: the filter takes {', '.join(sorted(known))}."] \
        if unknown else []
    values: dict[str, Any] = {}
    for key, parse in _PARSERS.items():
        if data.get(key) is None:
            continue
        try:
            values[key] = parse(data[key])
        except (TypeError, ValueError) as exc:
            errors.append(f"{_field(key)} {data[key]!r}: {exc}")
    errors += _need(data, values)
    if not errors:
        errors += _cross_checks(values)
    if errors:
        raise BadInput("offer filter: " + " ".join(errors))
    names = values.pop("gpu_name", ())
    return OfferFilter(gpu_names=names, **values)


def _field(key: str) -> str:
    return f"{key} ({FLAGS[key]})" if key in FLAGS else key


def _gpu_names(value: Any) -> tuple[str, ...]:
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError("give one exact GPU name or a list of them, e.g. \"RTX 3060\".")
    unknown = [n for n in names if host_rules.capability_by_name(n) is None]
    if unknown:
        raise ValueError(f"{', '.join(map(repr, unknown))} is not a GPU name gpuops knows; names match exactly "
                         "(never by part): use the name vast.ai lists, e.g. 'RTX 5090', 'RTX PRO 6000 WS', "
                         "'Tesla T4', or add the card to gpuops/data/gpu_capabilities.json.")
    return tuple(" ".join(n.replace("_", " ").split()) for n in names)


def _number(value: Any, low: float = 0.0, high: float = math.inf, what: str = "a number") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"not a number; give {what}.")
    if not math.isfinite(value):
        raise ValueError(f"not a finite number; give {what}.")
    if not low <= value <= high:
        raise ValueError(f"out of range; give {what} from {low:g}" + (f" to {high:g}." if high < math.inf else " up."))
    return float(value)


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("give a whole number of GPUs, 1 or more.")
    return value


def _compute_cap(value: Any) -> str:
    text = f"{value:.1f}" if isinstance(value, float) else str(value)
    cap_tuple(text)
    if cap_tuple(text) < cap_tuple(PYTORCH2_MIN_COMPUTE_CAP):
        raise ValueError(f"below {PYTORCH2_MIN_COMPUTE_CAP}, PyTorch 2.x's minimum (sm_70): give "
                         f"{PYTORCH2_MIN_COMPUTE_CAP} or more.")
    return text


def _reliability(value: Any) -> float:
    number = _number(value, 0.0, 1.0, "a fraction")
    if number < DEFAULT_MIN_RELIABILITY:
        raise ValueError(f"below the guardrail's {DEFAULT_MIN_RELIABILITY} (runbook 004: reliability > 0.99); "
                         f"give {DEFAULT_MIN_RELIABILITY} or more.")
    return number


def _countries(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(c, str) for c in items):
        raise ValueError("give two-letter country codes, e.g. [\"CN\"] or \"CN,RU\".")
    codes = tuple(c.strip().upper() for c in items if c.strip())
    bad = [c for c in codes if not (len(c) == 2 and c.isalpha() and c.isascii())]
    if bad:
        raise ValueError(f"{', '.join(bad)} not two-letter country code(s) as vast.ai lists them ('Texas, US').")
    return codes


def _default_countries(value: Any) -> tuple[str, ...]:
    codes = _countries(value)
    stray = [c for c in codes if c not in DEFAULT_BLOCKED_COUNTRIES]
    if stray:
        raise ValueError(f"{', '.join(stray)} not blocked by default ({', '.join(DEFAULT_BLOCKED_COUNTRIES)}): "
                         "this field only lifts a default block; leave it out.")
    return codes


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("give true or false.")
    return value


def _gib(value: Any) -> float:
    return _number(value, 0, what="a size in GiB (1 GiB = 1024 MiB)")


_PARSERS: dict[str, Callable[[Any], Any]] = {
    "gpu_name": _gpu_names, "num_gpus": _positive_int, "need_vram_gib": _gib, "max_vram_gib": _gib,
    "min_compute_cap": _compute_cap, "min_reliability": _reliability,
    "blocked_countries": _countries, "allowed_countries": _countries,
    "allow_default_blocked_countries": _default_countries,
    "min_inet_down_mbps": lambda v: _number(v, 0, what="Mbps"), "max_dph": lambda v: _number(v, 0, what="USD per hour"),
    "verified_only": _flag, "prefer_verified": _flag, "prefer_datacenter": _flag,
}
_NEED_FIELDS = ("model_gib", "second_model_gib", "headroom")


def _need(data: dict, values: dict) -> list[str]:
    """need_vram_gib from the model sizes; an explicit need_vram_gib beside them is refused (neither wins silently)."""
    if data.get("model_gib") is not None and data.get("need_vram_gib") is not None:
        return [f"model_gib {data['model_gib']!r} and {_field('need_vram_gib')} {data['need_vram_gib']!r} are both "
                "given: give model_gib (the need is then (weights + second) x 1.2) or need_vram_gib, not both."]
    if data.get("model_gib") is None:
        stray = [k for k in _NEED_FIELDS[1:] if data.get(k) is not None]
        return [f"{', '.join(stray)} given without model_gib: give model_gib (the weights in GiB) too."] \
            if stray else []
    sizes, errors = {}, []
    for key in _NEED_FIELDS:
        if data.get(key) is not None:
            try:
                sizes[key] = _number(data[key], 0, what="GiB" if key != "headroom" else "a fraction like 0.2")
            except ValueError as exc:
                errors.append(f"{key} {data[key]!r}: {exc}")
    if errors:
        return errors
    need = vram_need_gib(sizes["model_gib"], sizes.get("second_model_gib", 0), sizes.get("headroom", 0.2))
    values["need_vram_gib"] = need
    return []


def _cross_checks(values: dict) -> list[str]:
    errors = []
    need, most = values.get("need_vram_gib"), values.get("max_vram_gib")
    if need is not None and most is not None and most < need:
        errors.append(f"max_vram_gib {most:g} is below need_vram_gib {need:g}: raise max_vram_gib or drop it.")
    allowed, given = set(values.get("allowed_countries") or ()), set(values.get("blocked_countries", ()))
    both = sorted(allowed & given)
    if both:
        errors.append(f"allowed_countries and blocked_countries both name {', '.join(both)}: remove it from one.")
    floor = sorted((allowed - given) & (set(DEFAULT_BLOCKED_COUNTRIES) - set(values.get(
        "allow_default_blocked_countries", ()))))
    if floor:
        errors.append(f"allowed_countries names {', '.join(floor)}, blocked by default (runbook 004): remove it, or "
                      f"lift the default with allow_default_blocked_countries (--allow-blocked-country "
                      f"{floor[0]}) if it is really wanted.")
    return errors


# ---------------------------------------------------------------- judging one offer


def offer_vram_mib(offer: dict) -> int:
    """VRAM per GPU of an offer: vast.ai's `gpu_ram`, nvidia-smi's memory.total in MiB (its docs say MB; its
    query syntax multiplies GB by 1000, its values are the MiB a card reads: 24564 for an RTX 4090)."""
    value = offer.get("gpu_ram")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"offer {offer.get('id')!r}: gpu_ram {value!r} is not a size in MiB")
    return int(value)


def is_verified(offer: dict) -> bool:
    """vast.ai says it as `verification: "verified"` (unverified, deverified otherwise) or `verified: true`."""
    return offer.get("verified") is True or offer.get("verification") == "verified"


def is_datacenter(offer: dict) -> bool:
    """`hosting_type` 1 (vast.ai's certified data centers; 0 is a home host) or a `datacenter` record."""
    return offer.get("hosting_type") in (1, "datacenter") or bool(offer.get("datacenter"))


def judge_offer(offer: Any, flt: OfferFilter) -> list[Verdict]:
    """Every failed verdict of one offer (empty: it passes). A malformed record fails the `offer-record` rule."""
    try:
        missing = _record_problem(offer)
        if missing:
            return [host_rules.failed("offer-record", None, missing, "drop the record or search again; vast.ai's "
                                                                     "raw search results carry these fields.")]
        return [v for v in _verdicts(offer, flt) if not v.ok]
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        return [host_rules.failed("offer-record", None, f"offer {_id(offer)!r} cannot be judged: {exc}.",
                                  "drop the record or search again.")]


def _record_problem(offer: Any) -> str | None:
    if not isinstance(offer, dict):
        return f"an offer is a JSON object, got {type(offer).__name__}."
    missing = [k for k in REQUIRED_OFFER_FIELDS if offer.get(k) is None]
    if missing:
        return f"offer {offer.get('id')!r} lacks {', '.join(missing)}."
    if not isinstance(offer["gpu_name"], str):
        return f"offer {offer['id']!r}: gpu_name {offer['gpu_name']!r} is not a name."
    bad = [f"{k} {offer[k]!r}" for k in NUMERIC_OFFER_FIELDS if offer.get(k) is not None
           and (isinstance(offer[k], bool) or not isinstance(offer[k], (int, float)) or offer[k] < 0)]
    if bad:
        return f"offer {offer['id']!r}: {', '.join(bad)} not a number."
    return None


def _verdicts(offer: dict, flt: OfferFilter) -> list[Verdict]:
    name = offer["gpu_name"]
    verdicts = [_name_verdict(name, flt)] if flt._names else []
    if flt.num_gpus is not None and offer["num_gpus"] != flt.num_gpus:
        verdicts.append(host_rules.failed("num-gpus", offer["num_gpus"], f"{offer['num_gpus']} GPUs; the filter asks "
                                                                         f"for {flt.num_gpus}.",
                                          f"choose an offer with num_gpus = {flt.num_gpus}."))
    verdicts += [
        host_rules.compute_capability_verdict(name, offer.get("compute_cap"), flt.min_compute_cap),
        host_rules.vram_verdict(name, offer_vram_mib(offer), flt.need_vram_gib, flt.max_vram_gib),
        host_rules.region_verdict(offer.get("geolocation"), flt.blocked_countries, flt.allowed_countries),
        host_rules.reliability_verdict(host_rules.offer_reliability(offer), flt.min_reliability),
    ]
    return verdicts + _market_verdicts(offer, flt)


def _name_verdict(name: str, flt: OfferFilter) -> Verdict:
    if host_rules.normalize_gpu_name(name) in flt._names:
        return host_rules.passed("gpu-name", name)
    return host_rules.failed("gpu-name", name, f"{name!r} is not {' or '.join(map(repr, flt.gpu_names))} (names "
                                               "match exactly: a similar name is another card).",
                             "add the exact name to gpu_name if this card is wanted.")


def _market_verdicts(offer: dict, flt: OfferFilter) -> list[Verdict]:
    verdicts = []
    down = offer.get("inet_down")
    if flt.min_inet_down_mbps is not None and (down is None or down < flt.min_inet_down_mbps):
        verdicts.append(host_rules.failed("bandwidth", down, f"download {down} Mbps is below "
                                          f"{flt.min_inet_down_mbps:g} Mbps (image and model pulls).",
                                          f"choose a host with inet_down of at least {flt.min_inet_down_mbps:g}."))
    price = offer["dph_total"]
    if flt.max_dph is not None and price > flt.max_dph:
        verdicts.append(host_rules.failed("price", price, f"${price:.4f}/h is above the ${flt.max_dph:g}/h cap.",
                                          "raise max_dph or choose a cheaper offer."))
    if flt.verified_only and not is_verified(offer):
        state = offer.get("verification") or ("verified" if offer.get("verified") else "unverified")
        verdicts.append(host_rules.failed("verified", state, f"host is {state}, the filter takes verified hosts only.",
                                          "choose a verified host, or set verified_only to false."))
    return verdicts


# ---------------------------------------------------------------- ranking


@dataclass
class Ranking:
    """`chosen`: passing offers best first, each the offer's own dict plus `score` (0-100; vast.ai's own score,
    if any, moves to `vast_score`) and `reasons`;
    `rejected`: `id`, `gpu_name`, `reasons` (one line per failed rule) and `verdicts`."""

    chosen: list[dict]
    rejected: list[dict]
    filter: OfferFilter

    def as_dict(self, limit: int | None = None) -> dict:
        by_rule = Counter(v["rule"] for r in self.rejected for v in r["verdicts"])
        return {
            "filter": self.filter.as_dict(),
            "warnings": self.filter.warnings,
            "offers": len(self.chosen) + len(self.rejected),
            "chosen_count": len(self.chosen),
            "rejected_count": len(self.rejected),
            "rejected_by_rule": dict(sorted(by_rule.items())),
            "chosen": self.chosen[:limit] if limit is not None else list(self.chosen),
            "rejected": list(self.rejected),
        }


def rank(offers: list[dict], flt: OfferFilter) -> Ranking:
    """Judge every offer; rank the passing ones by score (ties: cheaper, then lower id)."""
    passing, rejected = [], []
    for offer in offers:
        failures = judge_offer(offer, flt)
        if failures:
            rejected.append({"id": _id(offer), "gpu_name": offer.get("gpu_name") if isinstance(offer, dict) else None,
                             "reasons": [str(v) for v in failures], "verdicts": [v.as_dict() for v in failures]})
        else:
            passing.append(offer)
    cheapest = min((o["dph_total"] for o in passing), default=0.0)
    chosen = [_scored(o, flt, cheapest) for o in passing]
    chosen.sort(key=lambda o: (-o["score"], o["dph_total"], str(o["id"])))
    return Ranking(chosen=chosen, rejected=rejected, filter=flt)


def _id(offer: Any) -> Any:
    return offer.get("id") if isinstance(offer, dict) else None


def _score(offer: dict, flt: OfferFilter, cheapest: float) -> tuple[float, list[str]]:
    """price 40 x (cheapest passing $/h / this $/h); reliability 25 x how far above the minimum toward 1;
    verified 15 and data center 10 when preferred; bandwidth 10 x download / 1 Gbps (capped)."""
    price = offer["dph_total"]
    reliability = host_rules.offer_reliability(offer)
    down = offer.get("inet_down") or 0.0
    parts = {
        "price": cheapest / price if price > 0 else 1.0,
        "reliability": max(0.0, min(1.0, (reliability - flt.min_reliability) / (1 - flt.min_reliability)))
        if flt.min_reliability < 1 else 1.0,
        "verified": 1.0 if flt.prefer_verified and is_verified(offer) else 0.0,
        "datacenter": 1.0 if flt.prefer_datacenter and is_datacenter(offer) else 0.0,
        "bandwidth": min(1.0, down / FULL_BANDWIDTH_MBPS),
    }
    reasons = [
        f"price ${price:.4f}/h: {WEIGHTS['price'] * parts['price']:.1f}/{WEIGHTS['price']:g} "
        f"(cheapest passing ${cheapest:.4f}/h)",
        f"reliability {reliability:.4f}: "
        f"{WEIGHTS['reliability'] * parts['reliability']:.1f}/{WEIGHTS['reliability']:g}",
        f"{'verified' if is_verified(offer) else 'not verified'}: "
        f"{WEIGHTS['verified'] * parts['verified']:.0f}/{WEIGHTS['verified']:g}",
        f"{'data center' if is_datacenter(offer) else 'not a data center'}: "
        f"{WEIGHTS['datacenter'] * parts['datacenter']:.0f}/{WEIGHTS['datacenter']:g}",
        f"download {down:g} Mbps: {WEIGHTS['bandwidth'] * parts['bandwidth']:.1f}/{WEIGHTS['bandwidth']:g}",
    ]
    return round(sum(WEIGHTS[k] * v for k, v in parts.items()), 2), reasons


def _scored(offer: dict, flt: OfferFilter, cheapest: float) -> dict:
    score, reasons = _score(offer, flt, cheapest)
    note = host_rules.vram_variant_note(offer["gpu_name"])
    if note:
        reasons.append(f"after renting, compare nvidia-smi with the listed {offer_vram_mib(offer)} MiB:{note}")
    scored = {**offer, "score": score, "reasons": reasons}
    if "score" in offer:
        scored["vast_score"] = offer["score"]  # vast.ai's own (DLPerf per dollar), kept beside ours
    return scored


# ---------------------------------------------------------------- the same filter, server side


def vast_query(flt: OfferFilter) -> dict:
    """The filter as vast.ai's search query dict (vastai.api.offers.search_offers(query=...)): a coarse
    pre-filter so that fewer offers come back; `rank` still judges each one, so the query is never stricter
    than `rank`. gpu_ram is in the SDK's units (GB x 1000), a little looser than the need in MiB, on purpose.
    No compute_cap filter: an offer listing none is judged by the name table (a Tesla T4 often lists none),
    and vast.ai's `gte` would drop it unseen."""
    query: dict[str, dict] = {}
    if flt.gpu_names:
        query["gpu_name"] = {"in": list(flt.gpu_names)} if len(flt.gpu_names) > 1 else {"eq": flt.gpu_names[0]}
    if flt.num_gpus is not None:
        query["num_gpus"] = {"eq": flt.num_gpus}
    if flt.need_vram_gib is not None:
        query["gpu_ram"] = {"gte": math.floor(flt.need_vram_gib * 1000)}
    query["reliability"] = {"gt": flt.min_reliability}
    geo: dict[str, list[str]] = {}
    if flt.blocked_countries:
        geo["notin"] = list(flt.blocked_countries)
    if flt.allowed_countries:
        geo["in"] = list(flt.allowed_countries)
    if geo:
        query["geolocation"] = geo
    if flt.min_inet_down_mbps is not None:
        query["inet_down"] = {"gte": flt.min_inet_down_mbps}
    if flt.max_dph is not None:
        query["dph_total"] = {"lte": flt.max_dph}
    if flt.verified_only:
        query["verified"] = {"eq": True}
    return query



def no_offers_message(flt: OfferFilter, where: str) -> str:
    """Why an empty search came back: the query's constraining fields, tightest first, each with how to loosen it."""
    parts = []
    if flt.gpu_names:
        parts.append(f"gpu_name {' or '.join(map(repr, flt.gpu_names))} (--gpu-name: add another exact name, or "
                     "leave it out for any card meeting the rest)")
    if flt.need_vram_gib is not None:
        parts.append(f"VRAM per GPU at least {flt.need_vram_gib * MIB_PER_GIB:.0f} MiB ({flt.need_vram_gib:g} GiB; "
                     "a smaller or quantized model needs less)")
    if flt.max_dph is not None:
        parts.append(f"dph_total at most ${flt.max_dph:g}/h (--max-dph: raise it)")
    if flt.min_reliability > DEFAULT_MIN_RELIABILITY:
        parts.append(f"reliability above {flt.min_reliability:g} (--min-reliability: lower it, to "
                     f"{DEFAULT_MIN_RELIABILITY} at least)")
    if flt.allowed_countries:
        parts.append(f"allowed_countries {', '.join(flt.allowed_countries)} (add countries or leave it out)")
    extra = [c for c in flt.blocked_countries if c not in DEFAULT_BLOCKED_COUNTRIES]
    if extra:
        parts.append(f"blocked countries {', '.join(extra)} beyond the default (--country-blocklist)")
    if flt.min_inet_down_mbps is not None:
        parts.append(f"inet_down at least {flt.min_inet_down_mbps:g} Mbps (min_inet_down_mbps: lower it)")
    if flt.num_gpus is not None and flt.num_gpus > 1:
        parts.append(f"num_gpus {flt.num_gpus}")
    constraints = "; ".join(parts) or "only the guardrails' own (verified host, reliability, country)"
    return (f"the vast.ai search at the {where} returned no offers for the query, so nothing was ranked or rented. "
            f"It asked for: {constraints}. Fix: loosen one of these and run again.")
