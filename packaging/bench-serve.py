#!/usr/bin/env python3
"""Serving under load, end to end through the spool: open-loop Poisson arrivals, the same
arrivals for every system, systems interleaved in ABBA blocks at each rate.

  rates     p50/p99 job latency (renamed into incoming/ -> output visible) and throughput at
            fractions of this host's capacity, for
              one-at-a-time  concurrent_batches = 1 (packrat before several batches in flight)
              auto           concurrent_batches = "auto" (the default)
              lanes-N        concurrent_batches = <every core>: N workers of 1 thread, each with
                             its own batch (the layout a tuned TorchServe runs on 2 cores)
  goodput   deadline_ms = 500 with on_deadline = "fail" against "run", at 1.3x the capacity:
            jobs/s finished within 500 ms, jobs shed, none lost
  replay    REPLAYED, not measured: a profile of the Packrat authors' (--profile, 16 or 18
            cores) on the replay engine, packrat (plan and lanes "auto") against fixed stream
            counts k x T/k, each stream one instance with its own batch (plan = "baseline",
            concurrent_batches = k: OpenVINO's LATENCY hint for k = 1, THROUGHPUT for k > 1),
            at fractions of the best fixed count's predicted capacity (--rates)
  replay-goodput  REPLAYED: goodput as above, at 1.3x the best fixed stream count's predicted
            capacity, packrat auto with deadline_ms = 500, "fail" against "run"

Capacity: jobs/s the one-at-a-time agent sustains closed-loop (8 jobs in flight), measured
first. Jobs are 1 item (ResNet-18 by default), as in the serving issue's table.

Usage: .venv/bin/python packaging/bench-serve.py rates --model resnet18
Needs target/release/packrat (cargo build --release) and numpy.
"""

import argparse
import importlib.util
import json
import os
import random
import statistics
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("bench_adapt", os.path.join(HERE, "bench-adapt.py"))
ba = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ba)

SYSTEMS = {
    "one-at-a-time": "concurrent_batches = 1",
    "auto": 'concurrent_batches = "auto"',
}


def lanes_system():
    n = len(os.sched_getaffinity(0))
    return f"lanes-{n}", f"concurrent_batches = {n}"


def capacity(work, model, max_batch, shape, seconds):
    a = ba.Agent(work, model, max_batch, SYSTEMS["one-at-a-time"])
    c = ba.Client(a, shape)
    rate = closed_loop(c, seconds, 1)
    c.close()
    a.stop()
    return rate


def closed_loop(c, seconds, items, inflight=8):
    """Keeps `inflight` jobs of `items` items submitted for `seconds`; jobs/s finished."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        with c.lock:
            n = len(c.pending)
        if n < inflight:
            c.submit(items)
        else:
            time.sleep(0.002)
    c.drain()
    return len(c.done) / (time.monotonic() - t0)


def segment(work, model, max_batch, shape, extra, rate, seconds, seed, deadline_ms=None):
    # Every segment starts from the same profile, not from what the last one learnt.
    ba.fresh_live(work)
    a = ba.Agent(work, model, max_batch, extra)
    c = ba.Client(a, shape)
    # Warm the lanes and the rate estimate a little before timing.
    ba.open_loop(c, rate, 2.0, [1], seed + 1000)
    n0 = len(c.done)
    f0 = c.failed
    r = ba.open_loop(c, rate, seconds, [1], seed)
    lat = [x[1] * 1e3 for x in c.done[n0:]]
    r["failed"] = c.failed - f0
    if deadline_ms is not None:
        r["on_time_per_s"] = sum(1 for x in lat if x <= deadline_ms) / seconds
    st = a.status()
    r["lane_batches"] = st.get("concurrency", {}).get("lane_batches", 0)
    r["switches"] = st.get("concurrency", {}).get("switches", 0)
    r["jobs_done"] = st["jobs_done"]
    r["jobs_failed"] = st["jobs_failed"]
    c.close()
    a.stop()
    return r


def abba(names, rounds):
    order = []
    for k in range(rounds):
        order += names if k % 2 == 0 else list(reversed(names))
    return order


def sweep(work, model, max_batch, shape, systems, cap, args, header=""):
    """Every system at each of args.rates (fractions of cap), ABBA; prints each segment and
    the table of medians; returns the results by rate and system."""
    results = {}
    for frac in [float(x) for x in args.rates.split(",")]:
        rate = frac * cap
        for k, sysname in enumerate(abba(list(systems), args.rounds)):
            r = segment(work, model, max_batch, shape, systems[sysname], rate,
                        args.seconds, seed=int(frac * 1000) + (k // len(systems)))
            results.setdefault(f"{frac}", {}).setdefault(sysname, []).append(r)
            print(f"{frac:.2f}x ({rate:.1f} jobs/s) {sysname}: p50 {r['p50_ms']:.0f} ms, p99 "
                  f"{r['p99_ms']:.0f} ms, {r['jobs_per_s']:.2f} jobs/s, {r['lane_batches']} lane "
                  f"batches, {r['switches']} switches, failed {r['failed']}", flush=True)
    print(f"\n{header}| load | system | p50 ms | p99 ms | jobs/s | rounds |")
    print("|---|---|---|---|---|---|")
    for frac, by in results.items():
        for sysname, rs in by.items():
            med = lambda k: statistics.median(r[k] for r in rs)
            print(f"| {float(frac):.2f}x ({float(frac) * cap:.1f}/s) | {sysname} | {med('p50_ms'):.0f} | "
                  f"{med('p99_ms'):.0f} | {med('jobs_per_s'):.2f} | {len(rs)} |")
    return results


def rates(args):
    work = tempfile.mkdtemp(prefix="bench-serve-")
    shape = ba.SHAPES[args.model]
    systems = dict(SYSTEMS)
    name, extra = lanes_system()
    systems[name] = extra
    cap = capacity(work, args.model, args.max_batch, shape, 20)
    print(f"capacity (one at a time, closed loop): {cap:.2f} jobs/s", flush=True)
    results = sweep(work, args.model, args.max_batch, shape, systems, cap, args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"capacity": cap, "results": results}, f, indent=1)


DEADLINE_SYSTEMS = {
    "fail": 'deadline_ms = 500\non_deadline = "fail"',
    "run": 'deadline_ms = 500\non_deadline = "run"',
}


def deadline_rounds(work, model, max_batch, shape, rate, cap, args):
    """on_deadline "fail" against "run" at `rate`, ABBA; prints each segment's goodput. With
    --compare BIN, "fail" is also run on that build (another commit's target/release/packrat)."""
    systems = {k: (v, None) for k, v in DEADLINE_SYSTEMS.items()}
    if getattr(args, "compare", None):
        systems = {"fail": systems["fail"],
                   "fail (compared build)": (DEADLINE_SYSTEMS["fail"], args.compare)}
    own = ba.PACKRAT
    out = {}
    for k, sysname in enumerate(abba(list(systems), args.rounds)):
        extra, binary = systems[sysname]
        ba.PACKRAT = binary or own
        r = segment(work, model, max_batch, shape, extra, rate, args.seconds,
                    seed=7 + k // len(systems), deadline_ms=500)
        ba.PACKRAT = own
        out.setdefault(sysname, []).append(r)
        print(f"{sysname}: {r['on_time_per_s']:.2f} on time/s ({r['on_time_per_s'] / cap:.2f}x "
              f"capacity), {r['failed']} shed, p50 {r['p50_ms']:.0f} p99 {r['p99_ms']:.0f} ms, "
              f"done {r['jobs_done']} failed {r['jobs_failed']}, {r['jobs']} outputs", flush=True)
    return out


def goodput(args):
    work = tempfile.mkdtemp(prefix="bench-serve-")
    shape = ba.SHAPES[args.model]
    cap = capacity(work, args.model, args.max_batch, shape, 20)
    rate = 1.3 * cap
    print(f"capacity {cap:.2f} jobs/s; load {rate:.2f} jobs/s", flush=True)
    out = deadline_rounds(work, args.model, args.max_batch, shape, rate, cap, args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"capacity": cap, "rate": rate, "results": out}, f, indent=1)


def fixed_capacity(profile, max_batch):
    """Jobs/s (1 item each) the best k x T/k stream count sustains at max_batch, from the
    profile: k streams of T/k threads each finish max_batch items per latency(T/k, max_batch)."""
    pf = json.load(open(profile))
    lat = {(p["threads"], p["batch"]): p["latency_ms"] for p in pf["points"]}
    cores = pf["cores"]
    best = 0.0
    for k in range(1, cores + 1):
        if cores % k:
            continue
        t = cores // k
        b = max_batch if (t, max_batch) in lat else max(bb for (tt, bb) in lat if tt == t and bb <= max_batch)
        best = max(best, k * b / lat[(t, b)] * 1e3)
    return cores, best


def replay(args):
    work = tempfile.mkdtemp(prefix="bench-replay-")
    profile = os.path.abspath(args.profile)
    cores, cap = fixed_capacity(profile, args.max_batch)
    print(f"REPLAYED on {cores} virtual cores from {os.path.basename(profile)}; best fixed stream "
          f"count's capacity at max_batch {args.max_batch}: {cap:.1f} jobs/s (predicted)", flush=True)
    systems = {"packrat auto": 'concurrent_batches = "auto"'}
    for k in [int(x) for x in args.streams.split(",")]:
        if cores % k == 0:
            systems[f"{k} x {cores // k}"] = f'plan = "baseline"\nconcurrent_batches = {k}'
    results = sweep(work, profile, args.max_batch, (1,), systems, cap, args,
                    header="REPLAYED (not measured on this host)\n")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"replayed": True, "profile": profile, "capacity": cap,
                       "results": results}, f, indent=1)


def replay_goodput(args):
    work = tempfile.mkdtemp(prefix="bench-replay-")
    profile = os.path.abspath(args.profile)
    cores, cap = fixed_capacity(profile, args.max_batch)
    rate = args.load * cap
    print(f"REPLAYED on {cores} virtual cores from {os.path.basename(profile)}; best fixed "
          f"capacity {cap:.1f} jobs/s (predicted); load {rate:.1f} jobs/s", flush=True)
    out = deadline_rounds(work, profile, args.max_batch, (1,), rate, cap, args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"replayed": True, "capacity": cap, "rate": rate, "results": out}, f,
                      indent=1)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["rates", "goodput", "replay", "replay-goodput"])
    p.add_argument("--profile", default=os.path.join(HERE, "..", "crates", "planner", "tests",
                                                     "data", "resnet_cloudlab16.json"))
    p.add_argument("--streams", default="1,2,4,8,16", help="replay: fixed stream counts k")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--rates", default="0.15,0.45,0.9,1.05",
                   help="fractions of the one-at-a-time capacity")
    p.add_argument("--seconds", type=float, default=20)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--load", type=float, default=1.3,
                   help="replay-goodput: the load, a fraction of the best fixed capacity")
    p.add_argument("--compare", help="goodput, replay-goodput: also run \"fail\" on this binary")
    p.add_argument("--out")
    args = p.parse_args()
    random.seed(1)
    {"rates": rates, "goodput": goodput, "replay": replay,
     "replay-goodput": replay_goodput}[args.what](args)


if __name__ == "__main__":
    main()
