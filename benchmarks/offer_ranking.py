"""Offer ranking's time and peak memory for 1,000, 10,000 and 50,000 offers, side by side, in one run.

The offers are generated from gpuops/data/vast_offers_sample.json's records (every field of vast.ai's raw
search results): each is a sample record with a new id, machine and host, its price and reliability moved
by up to +-20% and +-0.01 (capped at 1), one in ten hosts moved to another country of the sample, and one
record in a hundred damaged (gpu_ram dropped), as a ranking must survive. Generating is not timed.

Each size runs in a fresh Python process (so its peak RSS is its own): `rank()` with the runbook's filter
(need 12 GiB; the default guardrails) timed `--repeat` times (median and best shown), then the JSON the CLI
prints (`Ranking.as_dict()` + json.dumps) timed once, then `rank()` once more under tracemalloc for the peak of
Python allocations during ranking (beyond the offers already held). Peak RSS is VmHWM after all of it.

  python benchmarks/offer_ranking.py [--sizes 1000,10000,50000] [--repeat 5]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NEED = {"need_vram_gib": 12}


def generate(size: int, seed: int = 11) -> list[dict]:
    """`size` offers shaped like the sample's (see the module docstring)."""
    sample = json.loads(resources.files("gpuops.data").joinpath("vast_offers_sample.json").read_text())
    places = sorted({o["geolocation"] for o in sample})
    rng = random.Random(seed)
    offers = []
    for i in range(size):
        offer = dict(rng.choice(sample))
        reliability = min(1.0, offer["reliability2"] + rng.uniform(-0.01, 0.01))
        offer.update(id=30_000_000 + i, ask_contract_id=30_000_000 + i, machine_id=40_000 + i, host_id=200_000 + i,
                     dph_total=offer["dph_total"] * rng.uniform(0.8, 1.2), reliability=reliability,
                     reliability2=reliability)
        if rng.random() < 0.1:
            offer["geolocation"] = rng.choice(places)
        if rng.random() < 0.01:
            offer.pop("gpu_ram")
        offers.append(offer)
    return offers


def _rss_mib() -> float:
    """This process's peak resident set size (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(size: int, repeat: int) -> dict:
    """In the child: generate, then time and trace the ranking."""
    import tracemalloc

    from gpuops.offers import parse_filter, rank

    offers = generate(size)
    flt = parse_filter(NEED)
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        ranking = rank(offers, flt)
        times.append(time.perf_counter() - began)
    began = time.perf_counter()
    printed = json.dumps(ranking.as_dict(limit=10), default=str)
    json_s = time.perf_counter() - began
    tracemalloc.start()
    rank(offers, flt)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    damaged = sum(1 for r in ranking.rejected if r["verdicts"][0]["rule"] == "offer-record")
    return {"size": size, "chosen": len(ranking.chosen), "rejected": len(ranking.rejected), "damaged": damaged,
            "median_s": statistics.median(times), "best_s": min(times), "json_s": json_s,
            "json_kib": len(printed) / 1024, "trace_peak_mib": peak / 2**20, "rss_peak_mib": _rss_mib()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,50000", help="offers per ranking, comma-separated")
    parser.add_argument("--repeat", type=int, default=5, help="timed rankings per size (default 5)")
    parser.add_argument("--measure", type=int, help=argparse.SUPPRESS)  # the child's part
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.repeat)))
        return 0
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        child = subprocess.run([sys.executable, __file__, "--measure", str(size), "--repeat", str(args.repeat)],
                               cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                               timeout=1800)
        if child.returncode != 0:
            print(child.stderr[-3000:], file=sys.stderr)
            return 1
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
    print(f"gpuops.offers.rank, filter {NEED} + default guardrails; Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; {args.repeat} timed runs per size")
    header = ("offers", "chosen", "rejected", "damaged", "rank median s", "rank best s", "us/offer",
              "JSON out s", "tracemalloc peak MiB", "peak RSS MiB")
    print(" | ".join(header))
    for r in rows:
        print(" | ".join((f"{r['size']:,}", f"{r['chosen']:,}", f"{r['rejected']:,}", f"{r['damaged']:,}",
                          f"{r['median_s']:.3f}", f"{r['best_s']:.3f}", f"{r['median_s'] / r['size'] * 1e6:.1f}",
                          f"{r['json_s']:.3f}", f"{r['trace_peak_mib']:.1f}", f"{r['rss_peak_mib']:.0f}")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
