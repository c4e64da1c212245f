"""`gpuops offers rank` (the guardrails over a saved vast.ai offer list) and `gpuops offers check-image`."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from gpuops.errors import BadInput

EXIT_OK, EXIT_FAIL = 0, 1
DEFAULT_LIMIT = 10
GPU_NAME_HELP = ("GPU name as vast.ai lists it, e.g. 'RTX 3060': exact apart from case and spacing, never a partial "
                 "match ('RTX 5090' is not 'RTX 5090 D'); repeatable")


def register(subparsers) -> None:
    offers = subparsers.add_parser("offers", help="vast.ai offers against the guardrails: rank a saved offer list, "
                                                  "check an image's size and trust")
    commands = offers.add_subparsers(dest="offers_command", required=True, metavar="OFFERS_COMMAND")
    # allow_abbrev=False: `--gpu RTX` is not taken for --gpu-name (on these parsers only).
    p = commands.add_parser("rank", allow_abbrev=False, help="judge and rank a saved offer list (vastai search offers --raw): exact GPU "
                                         "name, VRAM, compute capability, country, reliability, price")
    p.add_argument("--file", required=True, metavar="OFFERS.json",
                   help="a JSON list of offers as vast.ai returns them (or {\"offers\": [...]}); '-' reads stdin")
    p.add_argument("--filter", metavar="FILTER.json", help="the filter as a JSON object (gpuops.offers.parse_filter "
                                                           "fields); the flags below override its fields")
    p.add_argument("--gpu-name", action="append", metavar="NAME",
                   help=GPU_NAME_HELP)
    p.add_argument("--need-vram-gib", type=float, metavar="N", help="VRAM per GPU the job needs, in GiB")
    p.add_argument("--max-dph", type=float, metavar="USD", help="price cap in USD per hour (dph_total)")
    p.add_argument("--min-reliability", type=float, metavar="R",
                   help="host reliability must be above this (default and lowest 0.99)")
    country_args(p)
    p.add_argument("--limit", type=int, default=DEFAULT_LIMIT, metavar="N",
                   help=f"print the best N (default {DEFAULT_LIMIT}; 0 for all)")
    p.add_argument("--rejected", action="store_true", help="also list every rejected offer with its reasons")
    _common(p)
    p.set_defaults(run=_rank)

    p = commands.add_parser("check-image", allow_abbrev=False, help="an image's pull size (registry manifest), devel tag and trust "
                                                "(Docker Hub pulls, stars, last update)")
    p.add_argument("image", metavar="IMAGE", help="e.g. nvidia/cuda:12.4.1-runtime-ubuntu22.04")
    p.add_argument("--training", action="store_true", help="a training or build host: devel images are fine")
    _common(p)
    p.set_defaults(run=_check_image)


def country_args(p) -> None:
    """The blocklist flags: the operator's countries add to the default block, never replace it."""
    p.add_argument("--country-blocklist", metavar="CC,...",
                   help="countries to block in addition to the default CN (runbook 004), e.g. RU,BY")
    p.add_argument("--allow-blocked-country", action="append", metavar="CC",
                   help="lift a default block (CN) for this run; stated as a warning in the result (repeatable)")


def _common(p) -> None:
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    # cli.py adds --verbose to top-level commands only; a nested one needs its own.
    p.add_argument("--verbose", action="store_true", help="show the traceback of an internal error")


# ---------------------------------------------------------------- rank


def _rank(args) -> tuple[dict | None, int]:
    from gpuops.offers import parse_filter, rank

    if args.limit < 0:
        raise BadInput(f"limit (--limit) {args.limit}: give 0 (all) or more.")
    flt = parse_filter(filter_fields(args))
    offers = read_offers(args.file)
    ranking = rank(offers, flt)
    code = EXIT_OK if ranking.chosen else EXIT_FAIL
    result = ranking.as_dict(limit=args.limit or None)
    if args.json:
        return result, code
    print_ranking(result, args.rejected)
    return None, code


def filter_fields(args) -> dict:
    """The --filter file's fields, then each flag given over them."""
    fields = _read_json(args.filter, "filter (--filter)") if args.filter else {}
    if not isinstance(fields, dict):
        raise BadInput(f"filter (--filter) {args.filter}: expected a JSON object of filter fields, e.g. "
                       '{"gpu_name": "RTX 3060", "need_vram_gib": 12}.')
    flags = {"gpu_name": args.gpu_name, "need_vram_gib": args.need_vram_gib, "max_dph": args.max_dph,
             "min_reliability": args.min_reliability, "blocked_countries": args.country_blocklist,
             "allow_default_blocked_countries": args.allow_blocked_country}
    return {**fields, **{k: v for k, v in flags.items() if v is not None}}


def read_offers(path: str) -> list:
    data = _read_json(path, "offers (--file)")
    offers = data.get("offers") if isinstance(data, dict) else data
    if not isinstance(offers, list):
        raise BadInput(f"offers (--file) {path}: expected a JSON list of offers (vastai search offers --raw) or "
                       '{"offers": [...]} as the API answers.')
    return offers


def _read_json(path: str, label: str):
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        return json.loads(text)
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"{label} {path}: cannot read it ({exc.__class__.__name__}: {exc}).") from None
    except ValueError as exc:
        raise BadInput(f"{label} {path}: not JSON ({exc}).") from None


COLUMNS = (("#", 3), ("id", 10), ("gpu", 16), ("n", 2), ("VRAM GiB", 8), ("$/h", 8), ("reliab", 7),
           ("where", 18), ("verified", 8), ("dc", 3), ("down", 7), ("score", 6))


def print_ranking(result: dict, show_rejected: bool) -> None:
    from gpuops.host_rules import offer_reliability

    for warning in result.get("warnings") or []:
        print(f"WARNING: {warning}")
    print("  ".join(name.ljust(width) for name, width in COLUMNS).rstrip())
    for n, offer in enumerate(result["chosen"], start=1):
        cells = (n, offer["id"], offer["gpu_name"], offer["num_gpus"], f"{offer['gpu_ram'] / 1024:.1f}",
                 f"{offer['dph_total']:.4f}", f"{offer_reliability(offer):.4f}",
                 str(offer.get("geolocation"))[:18], offer.get("verification", offer.get("verified")),
                 "yes" if offer.get("hosting_type") == 1 else "no", f"{offer.get('inet_down') or 0:.0f}",
                 f"{offer['score']:.1f}")
        print("  ".join(str(c).ljust(width) for c, (_, width) in zip(cells, COLUMNS)).rstrip())
    by_rule = ", ".join(f"{rule} {count}" for rule, count in result["rejected_by_rule"].items())
    print(f"chosen {result['chosen_count']} of {result['offers']} offers (showing {len(result['chosen'])}); "
          f"rejected {result['rejected_count']}" + (f" (failed rules: {by_rule})" if by_rule else ""))
    if result["chosen"]:
        print(f"best: {result['chosen'][0]['id']}: " + "; ".join(result["chosen"][0]["reasons"]))
    if show_rejected:
        for entry in result["rejected"]:
            print(f"- {entry['id']} {entry['gpu_name']}:")
            for reason in entry["reasons"]:
                print(f"    {reason}")
    elif result["rejected"]:
        print("--rejected (or --json) lists every rejected offer with its reasons")


# ---------------------------------------------------------------- check-image


def _check_image(args) -> tuple[dict | None, int]:
    from gpuops import host_rules, registry

    checked = registry.check_image(args.image, inference=not args.training)
    size, source, verdicts = checked.size, checked.source, checked.verdicts
    verdict = "fail" if any(not v.ok for v in verdicts) else "warn" if any(v.warn for v in verdicts) else "pass"
    result = {"image": checked.image, "verdict": verdict, "size": size.as_dict(),
              "source": None if source is None else {**source.__dict__, "trust_score": host_rules.trust_score(source)},
              "verdicts": [v.as_dict() for v in verdicts], "reasons": [str(v) for v in verdicts if not v.ok or v.warn]}
    code = EXIT_FAIL if verdict == "fail" else EXIT_OK
    if args.json:
        return result, code
    print(f"{result['image']}: {host_rules.size_text(size.total_bytes)} for {size.platform} "
          f"({size.layers} layers), verdict {verdict}")
    for v in verdicts:
        mark = "FAIL" if not v.ok else "warn" if v.warn else "ok  "
        print(f"{mark} {v}" if not v.ok or v.warn else f"{mark} [{v.rule}] {v.message or v.value}")
    return None, code
