#!/usr/bin/env python3
"""Benchmarks of online adaptation, driving the real agent through its spool.

  e2e         open-loop (Poisson) arrivals at several rates, plan = "auto" against
              plan = "baseline", interleaved in rounds: p50/p99 end-to-end latency (renamed
              into incoming/ -> output visible) and throughput, with an SVG plot
  probe-cost  Poisson arrivals at half the agent's capacity, the agent re-profiling in idle
              gaps all the time (reprofile_interval_s = 1) against not at all (adapt = false),
              interleaved: p99 with against p99 without, and the delay bound
  shift       a batch-size shift (all B=1, then all B=32, then mixed 1..32), one job at a time:
              the first batch after each shift against that size's steady state, and the
              instance sets started on the dispatch path
  explore-cost  a correct profile, open-loop arrivals at 30/60/90 % of capacity: adapt = true
              (idle-gap probes and exploration under load, each run from a fresh live profile:
              the worst case, everything still to measure) against the same without exploring
              (explore_budget_pct = 0) and adapt = false, interleaved in rounds: p50/p99 and
              the exploration batches run
  converge    the 1-thread points of a fresh profile told 3x slower, open-loop arrivals at 60 %
              and 90 % of capacity: the time until every 1-thread grid point is measured back
              (> 3 samples, within 35 % of the fresh value) with the plan using 1-thread
              instances again, and each point's final error

Usage: .venv/bin/python packaging/bench-adapt.py e2e --model resnet18 --out docs/bench/e2e-resnet18
Needs target/release/packrat (cargo build --release) and numpy.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKRAT = os.path.join(ROOT, "target", "release", "packrat")
SHAPES = {"resnet18": (3, 224, 224), "resnet50": (3, 224, 224), "mobilenet_v2": (3, 224, 224),
          "tiny_cnn": (3, 32, 32), "inception_v3": (3, 299, 299)}


def pct(v, p):
    if not v:
        return float("nan")
    s = sorted(v)
    k = max(1, int(-(-p / 100.0 * len(s) // 1)))
    return s[min(k, len(s)) - 1]


class Agent:
    """One agent process on a spool; state_dir is shared between runs (profile cache)."""

    def __init__(self, work, model, max_batch, extra, env=None):
        self.work = work
        self.spool = os.path.join(work, "spool")
        self.state = os.path.join(work, "state")
        self.mdir = os.path.join(self.spool, "m")
        self.log_path = os.path.join(work, "agent.log")
        cfg = os.path.join(work, "packrat.toml")
        # A path is a latency profile, replayed on its virtual cores; else a built-in.
        source = (f'engine = "replay"\nsource = "{model}"' if model.endswith(".json")
                  else f'source = "builtin:{model}"')
        with open(cfg, "w") as f:
            f.write(f'spool = "{self.spool}"\nstate_dir = "{self.state}"\nrescan_interval_ms = 1000\n'
                    f'[[model]]\nname = "m"\n{source}\nmax_batch = {max_batch}\n'
                    f'profile_budget_s = 30\n{extra}\n')
        status = os.path.join(self.state, "status.json")
        if os.path.exists(status):
            os.remove(status)
        e = dict(os.environ)
        e.setdefault("RUST_LOG", "info")
        e.update(env or {})
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen([PACKRAT, "serve", "--config", cfg], stderr=self.log, env=e)
        t0 = time.time()
        while not os.path.exists(status):
            if self.proc.poll() is not None:
                sys.exit(f"agent exited: {open(self.log_path).read()}")
            if time.time() - t0 > 300:
                sys.exit("agent not ready in 300 s")
            time.sleep(0.05)

    def status(self):
        with open(os.path.join(self.state, "status.json")) as f:
            return json.load(f)["models"][0]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait()
        self.log.close()
        # A clean spool for the next run (the profile cache stays in state/).
        shutil.rmtree(self.spool, ignore_errors=True)


class Client:
    """Submits jobs by the spool protocol and times each until its output is visible."""

    def __init__(self, agent, shape):
        self.a = agent
        self.payload = {}
        self.shape = shape
        self.pending = {}
        self.done = []  # (submitted, latency_s, items)
        self.failed = 0
        self.lock = threading.Lock()
        self.stop_flag = False
        self.n = 0
        self.watch = threading.Thread(target=self._watch, daemon=True)
        self.watch.start()

    def _bytes(self, b):
        if b not in self.payload:
            import io
            buf = io.BytesIO()
            np.save(buf, np.random.default_rng(b).standard_normal((b,) + self.shape).astype(np.float32))
            self.payload[b] = buf.getvalue()
        return self.payload[b]

    def submit(self, b):
        self.n += 1
        name = f"j{self.n:06d}-{random.getrandbits(32):08x}.npy"
        tmp = os.path.join(self.a.mdir, "tmp", name)
        with open(tmp, "wb") as f:
            f.write(self._bytes(b))
        with self.lock:
            t0 = time.monotonic()
            self.pending[name] = (t0, b)
        os.rename(tmp, os.path.join(self.a.mdir, "incoming", name))
        return name

    def _watch(self):
        out = os.path.join(self.a.mdir, "out")
        failed = os.path.join(self.a.mdir, "failed")
        while not self.stop_flag:
            try:
                names = set(os.listdir(out))
                bad = set(os.listdir(failed))
            except FileNotFoundError:
                time.sleep(0.01)
                continue
            now = time.monotonic()
            with self.lock:
                for name in list(self.pending):
                    if name in names:
                        t0, b = self.pending.pop(name)
                        self.done.append((t0, now - t0, b))
                        os.remove(os.path.join(out, name))
                    elif name in bad:
                        self.pending.pop(name)
                        self.failed += 1
            time.sleep(0.002)

    def drain(self, timeout=120):
        t0 = time.time()
        while True:
            with self.lock:
                if not self.pending:
                    return
            if time.time() - t0 > timeout:
                sys.exit(f"{len(self.pending)} jobs never finished")
            time.sleep(0.01)

    def close(self):
        self.stop_flag = True
        self.watch.join()


def open_loop(client, rate, seconds, sizes, seed):
    """Poisson arrivals at `rate` jobs/s for `seconds`; returns the segment's results."""
    rng = random.Random(seed)
    start = time.monotonic()
    nxt = start
    first = len(client.done)
    items = 0
    while True:
        nxt += rng.expovariate(rate)
        if nxt - start > seconds:
            break
        d = nxt - time.monotonic()
        if d > 0:
            time.sleep(d)
        b = rng.choice(sizes)
        items += b
        client.submit(b)
    client.drain()
    wall = time.monotonic() - start
    lat = [x[1] * 1e3 for x in client.done[first:]]
    return {"jobs": len(lat), "items": items, "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
            "jobs_per_s": len(lat) / wall, "items_per_s": items / wall}


def capacity(agent, shape, sizes, seconds=15):
    """Closed loop with 4 jobs in flight: jobs/s the agent sustains."""
    c = Client(agent, shape)
    rng = random.Random(1)
    t0 = time.monotonic()
    done0 = 0
    while time.monotonic() - t0 < seconds:
        with c.lock:
            inflight = len(c.pending)
        if inflight < 4:
            c.submit(rng.choice(sizes))
        else:
            time.sleep(0.002)
    c.drain()
    n = len(c.done) - done0
    c.close()
    return n / (time.monotonic() - t0)


def svg_plot(path, title, series, xlabel, ylabel):
    """A small line plot: series = {label: [(x, y), ...]}."""
    w, h, m = 640, 400, 60
    xs = [x for s in series.values() for x, _ in s]
    ys = [y for s in series.values() for _, y in s if y == y]
    x0, x1 = min(xs), max(xs)
    y1 = max(ys) * 1.1
    sx = lambda x: m + (x - x0) / ((x1 - x0) or 1) * (w - 2 * m)
    sy = lambda y: h - m - y / y1 * (h - 2 * m)
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>',
           f'<text x="{w/2}" y="20" text-anchor="middle" font-size="14">{title}</text>',
           f'<line x1="{m}" y1="{h-m}" x2="{w-m}" y2="{h-m}" stroke="black"/>',
           f'<line x1="{m}" y1="{m}" x2="{m}" y2="{h-m}" stroke="black"/>',
           f'<text x="{w/2}" y="{h-15}" text-anchor="middle">{xlabel}</text>',
           f'<text x="15" y="{h/2}" transform="rotate(-90 15 {h/2})" text-anchor="middle">{ylabel}</text>']
    for k in range(6):
        y = y1 * k / 5
        out.append(f'<text x="{m-5}" y="{sy(y)+4}" text-anchor="end">{y:.0f}</text>')
        out.append(f'<line x1="{m}" y1="{sy(y)}" x2="{w-m}" y2="{sy(y)}" stroke="#eee"/>')
    for x in sorted(set(xs)):
        out.append(f'<text x="{sx(x)}" y="{h-m+15}" text-anchor="middle">{x:.1f}</text>')
    for i, (label, pts) in enumerate(series.items()):
        c = colors[i % len(colors)]
        dash = ' stroke-dasharray="5,4"' if "p50" in label else ""
        pts = sorted(pts)
        out.append(f'<polyline fill="none" stroke="{c}" stroke-width="2"{dash} points="'
                   + " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts) + '"/>')
        for x, y in pts:
            out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{c}"/>')
        out.append(f'<text x="{w-m-150}" y="{m+18*i}" fill="{c}">{label}</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out))


def e2e(args):
    work = tempfile.mkdtemp(prefix="bench-adapt-")
    shape = SHAPES[args.model]
    sizes = [int(x) for x in args.sizes.split(",")]
    modes = {"auto": 'plan = "auto"', "baseline": 'plan = "baseline"'}
    # Profile (and cache) first, then measure the baseline's capacity.
    a = Agent(work, args.model, args.max_batch, modes["auto"])
    a.stop()
    a = Agent(work, args.model, args.max_batch, modes["baseline"])
    cap = capacity(a, shape, sizes)
    a.stop()
    rates = [float(f) * cap for f in args.rates.split(",")]
    print(f"{args.model}: baseline capacity {cap:.2f} jobs/s; rates {', '.join(f'{r:.2f}' for r in rates)}")
    results = {m: {r: [] for r in rates} for m in modes}
    for rnd in range(args.rounds):
        order = list(modes) if rnd % 2 == 0 else list(reversed(modes))
        for mode in order:
            a = Agent(work, args.model, args.max_batch, modes[mode])
            c = Client(a, shape)
            # Warm up at the middle rate, then every rate in turn.
            open_loop(c, rates[len(rates) // 2], 5, sizes, seed=999 + rnd)
            for k, r in enumerate(rates):
                res = open_loop(c, r, args.seconds, sizes, seed=1000 * rnd + k)
                results[mode][r].append(res)
                print(f"round {rnd+1} {mode:8} rate {r:5.2f}/s: p50 {res['p50_ms']:7.1f} ms  p99 {res['p99_ms']:7.1f} ms  "
                      f"{res['jobs_per_s']:.2f} jobs/s ({res['jobs']} jobs)", flush=True)
            st = a.status()
            c.close()
            a.stop()
            if mode == "auto":
                print(f"  auto: re-plans {st.get('adapt', {}).get('replans')}, sets started on dispatch "
                      f"{st['instance_sets_started']['on_dispatch']}, |prediction error| {st.get('prediction_abs_error_pct')}")
    rows = []
    for r in rates:
        med = lambda m, key: statistics.median(x[key] for x in results[m][r])
        rows.append({"rate": r, "load": r / cap,
                     **{f"{m}_{k}": med(m, k) for m in modes for k in ("p50_ms", "p99_ms", "jobs_per_s")}})
    print(f"\n| load | rate (jobs/s) | auto p50 | auto p99 | baseline p50 | baseline p99 | p50 auto/base | p99 auto/base | throughput auto / base (jobs/s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for x in rows:
        print(f"| {x['load']:.2f} | {x['rate']:.2f} | {x['auto_p50_ms']:.1f} | {x['auto_p99_ms']:.1f} | {x['baseline_p50_ms']:.1f} | "
              f"{x['baseline_p99_ms']:.1f} | {x['auto_p50_ms']/x['baseline_p50_ms']:.2f} | {x['auto_p99_ms']/x['baseline_p99_ms']:.2f} | "
              f"{x['auto_jobs_per_s']:.2f} / {x['baseline_jobs_per_s']:.2f} |")
    if args.out:
        with open(args.out + ".json", "w") as f:
            json.dump({"model": args.model, "capacity_jobs_per_s": cap, "sizes": sizes, "rows": rows,
                       "raw": {m: {str(r): v for r, v in d.items()} for m, d in results.items()}}, f, indent=1)
        svg_plot(args.out + ".svg", f"{args.model}: end-to-end latency under Poisson load (2 cores)",
                 {"auto p99": [(x["rate"], x["auto_p99_ms"]) for x in rows],
                  "baseline p99": [(x["rate"], x["baseline_p99_ms"]) for x in rows],
                  "auto p50": [(x["rate"], x["auto_p50_ms"]) for x in rows],
                  "baseline p50": [(x["rate"], x["baseline_p50_ms"]) for x in rows]},
                 "arrival rate (jobs/s)", "latency (ms)")
    shutil.rmtree(work, ignore_errors=True)


def probe_cost(args):
    work = tempfile.mkdtemp(prefix="bench-probe-")
    shape = SHAPES[args.model]
    sizes = [int(x) for x in args.sizes.split(",")]
    modes = {"re-profiling": "adapt = true\nreprofile_interval_s = 1",
             "not re-profiling": "adapt = false"}
    a = Agent(work, args.model, args.max_batch, modes["not re-profiling"])
    cap = capacity(a, shape, sizes)
    a.stop()
    rate = cap / 2
    print(f"{args.model}: capacity {cap:.2f} jobs/s; Poisson at {rate:.2f} jobs/s")
    p99 = {m: [] for m in modes}
    p50 = {m: [] for m in modes}
    bound = None
    for rnd in range(args.rounds):
        order = list(modes) if rnd % 2 == 0 else list(reversed(modes))
        for mode in order:
            a = Agent(work, args.model, args.max_batch, modes[mode])
            c = Client(a, shape)
            res = open_loop(c, rate, args.seconds, sizes, seed=rnd)
            st = a.status()
            c.close()
            a.stop()
            p99[mode].append(res["p99_ms"])
            p50[mode].append(res["p50_ms"])
            extra = ""
            if "adapt" in st and st["adapt"]:
                bound = st["adapt"]["probe_bound_ms"]
                extra = f"; idle-gap samples {st['adapt']['live']['active_samples']}, bound {bound:.1f} ms"
            print(f"round {rnd+1} {mode:17}: p50 {res['p50_ms']:6.1f} ms p99 {res['p99_ms']:6.1f} ms ({res['jobs']} jobs{extra})", flush=True)
    m99 = {m: statistics.median(v) for m, v in p99.items()}
    m50 = {m: statistics.median(v) for m, v in p50.items()}
    print(f"\nmedian over rounds: p99 re-profiling {m99['re-profiling']:.1f} ms, not {m99['not re-profiling']:.1f} ms "
          f"(+{m99['re-profiling'] - m99['not re-profiling']:.1f} ms; bound {bound:.1f} ms); "
          f"p50 {m50['re-profiling']:.1f} vs {m50['not re-profiling']:.1f} ms")
    shutil.rmtree(work, ignore_errors=True)


def shift(args):
    work = tempfile.mkdtemp(prefix="bench-shift-")
    shape = SHAPES[args.model]
    a = Agent(work, args.model, 32, 'plan = "auto"', env={"RUST_LOG": "debug"})
    c = Client(a, shape)
    rng = random.Random(5)
    phases = [("B=1", [1] * 40), ("B=32", [32] * 30), ("mixed 1..32", [rng.randint(1, 32) for _ in range(80)])]
    for _, seq in phases:
        for b in seq:
            c.submit(b)
            c.drain()
    st = a.status()
    c.close()
    a.stop()
    pat = re.compile(r"batch of (\d+) ran in ([\d.]+) ms")
    batches = [(int(m.group(1)), float(m.group(2))) for m in pat.finditer(open(a.log_path).read())]
    assert len(batches) == sum(len(s) for _, s in phases), (len(batches), "one batch per job")
    by_size = {}
    for b, ms in batches:
        by_size.setdefault(b, []).append(ms)
    k = 0
    print(f"{args.model}: re-plans {st.get('adapt', {}).get('replans')}, instance sets started on the dispatch path: "
          f"{st['instance_sets_started']['on_dispatch']} (ahead of use: {st['instance_sets_started']['ahead']})")
    for name, seq in phases:
        b, ms = batches[k]
        steady = statistics.median(by_size[b][1:]) if len(by_size[b]) > 1 else float("nan")
        print(f"first batch of phase {name:12} (B={b:2}): {ms:7.2f} ms; steady state of B={b}: {steady:7.2f} ms; ratio {ms/steady:.2f}")
        k += len(seq)
    # In the mixed phase: each size's first batch there against its steady state.
    mixed = batches[-len(phases[2][1]):]
    seen, ratios = set(), []
    for b, ms in mixed:
        if b not in seen and len(by_size[b]) > 2:
            seen.add(b)
            ratios.append(ms / statistics.median(by_size[b]))
    print(f"mixed phase, each size's first batch / its median: median {statistics.median(ratios):.2f}, max {max(ratios):.2f} over {len(ratios)} sizes")
    shutil.rmtree(work, ignore_errors=True)


def fresh_live(work):
    """Forgets what earlier runs learnt (the profile cache stays)."""
    live = os.path.join(work, "state", "profiles", "m.live.json")
    if os.path.exists(live):
        os.remove(live)


def explore_cost(args):
    work = tempfile.mkdtemp(prefix="bench-explore-")
    shape = SHAPES[args.model]
    sizes = [int(x) for x in args.sizes.split(",")]
    modes = {"adapt": "adapt = true", "no exploring": "adapt = true\nexplore_budget_pct = 0",
             "adapt = false": "adapt = false"}
    a = Agent(work, args.model, args.max_batch, modes["adapt = false"])
    cap = capacity(a, shape, sizes)
    a.stop()
    rates = [float(f) * cap for f in args.rates.split(",")]
    print(f"{args.model}: capacity {cap:.2f} jobs/s (closed loop, 4 in flight); rates {', '.join(f'{r:.2f}' for r in rates)}")
    res = {m: {r: [] for r in rates} for m in modes}
    for rnd in range(args.rounds):
        for k, r in enumerate(rates):
            order = list(modes) if (rnd + k) % 2 == 0 else list(reversed(list(modes)))
            for mode in order:
                fresh_live(work)
                a = Agent(work, args.model, args.max_batch, modes[mode])
                c = Client(a, shape)
                out = open_loop(c, r, args.seconds, sizes, seed=1000 * rnd + k)
                st = a.status()
                c.close()
                a.stop()
                x = (st.get("adapt") or {}).get("explore") or {}
                live = (st.get("adapt") or {}).get("live") or {}
                out["explore_batches"] = x.get("batches", 0)
                out["spent_pct"] = x.get("spent_pct", 0.0)
                out["idle_samples"] = live.get("active_samples", 0)
                res[mode][r].append(out)
                print(f"round {rnd+1} rate {r:5.2f}/s {mode:14}: p50 {out['p50_ms']:7.1f} ms p99 {out['p99_ms']:7.1f} ms "
                      f"({out['jobs']} jobs; exploration batches {out['explore_batches']}, {out['spent_pct']:.2f} % spent; "
                      f"idle-gap samples {out['idle_samples']})", flush=True)
    print(f"\n| load | rate (jobs/s) | adapt p50 / p99 (ms) | no exploring p50 / p99 | adapt = false p50 / p99 | "
          f"p50 / p99 adapt : adapt = false | p50 / p99 adapt : no exploring | exploration batches per run | spent |")
    print("|---|---|---|---|---|---|---|---|---|")
    for f, r in zip(args.rates.split(","), rates):
        med = lambda m, key: statistics.median(x[key] for x in res[m][r])
        ratio = lambda a, b: f"{med(a, 'p50_ms') / med(b, 'p50_ms'):.3f} / {med(a, 'p99_ms') / med(b, 'p99_ms'):.3f}"
        cell = lambda m: f"{med(m, 'p50_ms'):.1f} / {med(m, 'p99_ms'):.1f}"
        print(f"| {float(f):.0%} | {r:.2f} | {cell('adapt')} | {cell('no exploring')} | {cell('adapt = false')} | "
              f"{ratio('adapt', 'adapt = false')} | {ratio('adapt', 'no exploring')} | "
              f"{med('adapt', 'explore_batches'):.0f} | {med('adapt', 'spent_pct'):.2f} % |")
    shutil.rmtree(work, ignore_errors=True)


def converge(args):
    work = tempfile.mkdtemp(prefix="bench-converge-")
    shape = SHAPES[args.model]
    sizes = [int(x) for x in args.sizes.split(",")]
    a = Agent(work, args.model, args.max_batch, "adapt = false")
    cap = capacity(a, shape, sizes)
    a.stop()
    prof_path = os.path.join(work, "state", "profiles", "m.json")
    with open(prof_path) as f:
        fresh = json.load(f)
    truth = {(p["threads"], p["batch"]): p["latency_ms"] for p in fresh["points"]}
    grid = sorted(b for (t, b) in truth if t == 1)
    print(f"{args.model}: capacity {cap:.2f} jobs/s; 1-thread grid points {grid}")
    for f in args.rates.split(","):
        rate = float(f) * cap
        for rnd in range(args.rounds):
            wrong = json.loads(json.dumps(fresh))
            for p in wrong["points"]:
                if p["threads"] == 1:
                    p["latency_ms"] *= 3.0
            with open(prof_path, "w") as fh:
                json.dump(wrong, fh)
            fresh_live(work)
            a = Agent(work, args.model, args.max_batch, "adapt = true")
            c = Client(a, shape)
            done = {"t": None}
            stop = threading.Event()

            def watch():
                t0 = time.monotonic()
                while not stop.is_set():
                    try:
                        st = a.status()
                    except (OSError, ValueError):
                        time.sleep(0.2)
                        continue
                    pts = {(q["threads"], q["batch"]): q for q in st["adapt"]["points"]}
                    back = all(pts.get((1, b), {}).get("samples", 0) > 3 and
                               abs(pts[(1, b)]["estimate_ms"] / truth[(1, b)] - 1) < 0.35 for b in grid)
                    uses1 = any(i["threads"] == 1 for p in st["plan_table"] for i in p["instances"])
                    if back and uses1 and done["t"] is None:
                        done["t"] = time.monotonic() - t0
                        done["st"] = st
                    time.sleep(1.0)

            w = threading.Thread(target=watch, daemon=True)
            w.start()
            out = open_loop(c, rate, args.seconds, sizes, seed=7 + rnd)
            stop.set()
            w.join()
            st = done.get("st") or a.status()
            c.close()
            a.stop()
            pts = {(q["threads"], q["batch"]): q for q in st["adapt"]["points"]}
            errs = ", ".join(f"(1,{b}) {pts[(1, b)]['estimate_ms'] / truth[(1, b)] - 1:+.0%} ({pts[(1, b)]['samples']} samples)"
                             for b in grid if (1, b) in pts)
            x = st["adapt"]["explore"]
            t = f"{done['t']:.0f} s" if done["t"] is not None else f"not within {args.seconds:.0f} s"
            print(f"load {float(f):.0%} ({rate:.2f} jobs/s) run {rnd+1}: converged {t}; exploration batches {x['batches']}, "
                  f"{x['spent_pct']:.2f} % spent; idle-gap samples {st['adapt']['live']['active_samples']}; "
                  f"re-plans {st['adapt']['replans']}; B={args.max_batch} runs {st['plan_table'][-1]['instances'] and ' + '.join(str(i['threads']) + 't' for i in st['plan_table'][-1]['instances'])}; "
                  f"p50/p99 {out['p50_ms']:.0f}/{out['p99_ms']:.0f} ms; errors: {errs}", flush=True)
    with open(prof_path, "w") as fh:
        json.dump(fresh, fh)
    shutil.rmtree(work, ignore_errors=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["e2e", "probe-cost", "shift", "explore-cost", "converge"])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--sizes", default="1,2,4,8")
    p.add_argument("--rates", default="0.3,0.6,0.9", help="fractions of the baseline's capacity")
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out")
    args = p.parse_args()
    {"e2e": e2e, "probe-cost": probe_cost, "shift": shift, "explore-cost": explore_cost,
     "converge": converge}[args.what](args)


if __name__ == "__main__":
    main()
