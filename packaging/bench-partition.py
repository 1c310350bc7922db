#!/usr/bin/env python3
"""Several models on one node, end to end through the spool: open-loop Poisson arrivals per
model whose rates shift between phases, the same arrivals for every system, systems
interleaved in ABBA blocks.

Systems (the agent's `partition`):
  joint     cores follow the models' loads (the default)
  equal     a fixed equal part of the cores each
  overlap   every model plans over every core (packrat before the joint partition)

  real      this host's cores, real engines: ResNet-18 and MobileNet-v2 (built-ins), A at 70 %
            and B at 15 % of what each serves alone on every core (--fractions), swapped
            half-way
  replay    REPLAYED, not measured: 16 virtual cores, four of the Packrat authors' 16-core
            profiles (ResNet-50, Inception-v3, BERT, GPT-2) on the replay engine, rates
            rotating between the models every phase (fractions of each model's predicted
            capacity on 16 cores)

Latency is per job from its rename into incoming/ to its output being visible. Every job is
accounted for: outputs seen once, none failed, none left over (a duplicate would be).

Usage: .venv/bin/python packaging/bench-partition.py real
       .venv/bin/python packaging/bench-partition.py replay
Needs target/release/packrat (cargo build --release) and numpy.
"""

import argparse
import importlib.util
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))


def _load(name, file):
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, file))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ba = _load("bench_adapt", "bench-adapt.py")
bs = _load("bench_serve", "bench-serve.py")
DATA = os.path.join(HERE, "..", "crates", "planner", "tests", "data")
MODES = ["joint", "equal", "overlap"]


class Node:
    """One agent serving several models, each with its own spool folder; the state folder
    (profile cache) is shared between runs."""

    def __init__(self, work, models, mode, max_batch):
        self.spool = os.path.join(work, "spool")
        self.state = os.path.join(work, "state")
        cfg = os.path.join(work, "packrat.toml")
        text = (f'spool = "{self.spool}"\nstate_dir = "{self.state}"\nrescan_interval_ms = 1000\n'
                f'partition = "{mode}"\n')
        for name, source in models:
            src = (f'engine = "replay"\nsource = "{source}"' if source.endswith(".json")
                   else f'source = "builtin:{source}"')
            text += (f'[[model]]\nname = "{name}"\n{src}\nmax_batch = {max_batch}\n'
                     f'profile_budget_s = 30\n')
        with open(cfg, "w") as f:
            f.write(text)
        self.status_path = os.path.join(self.state, "status.json")
        if os.path.exists(self.status_path):
            os.remove(self.status_path)
        self.log_path = os.path.join(work, "agent.log")
        self.log = open(self.log_path, "w")
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        self.proc = subprocess.Popen([ba.PACKRAT, "serve", "--config", cfg], stderr=self.log,
                                     env=env)
        t0 = time.time()
        while not os.path.exists(self.status_path):
            if self.proc.poll() is not None:
                sys.exit(f"agent exited: {open(self.log_path).read()}")
            if time.time() - t0 > 600:
                sys.exit("agent not ready in 600 s")
            time.sleep(0.05)

    def spool_of(self, name):
        return types.SimpleNamespace(mdir=os.path.join(self.spool, name))

    def status(self):
        with open(self.status_path) as f:
            return json.load(f)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait()
        self.log.close()
        shutil.rmtree(self.spool, ignore_errors=True)


def fresh_live(work, names):
    """Every run starts from the same profiles, not from what the last one learnt."""
    for n in names:
        p = os.path.join(work, "state", "profiles", f"{n}.live.json")
        if os.path.exists(p):
            os.remove(p)


def arrivals(phases, seed):
    """[(t, model)] sorted: Poisson per model per phase; phases = [(seconds, {model: jobs/s})]."""
    rng = random.Random(seed)
    out, start = [], 0.0
    for seconds, rates in phases:
        for name, rate in sorted(rates.items()):
            t = start
            while rate > 0:
                t += rng.expovariate(rate)
                if t - start > seconds:
                    break
                out.append((t, name))
        start += seconds
    return sorted(out)


def run(work, models, mode, max_batch, shape, items, phases, seed):
    """One system on one arrival sequence; per model the latencies (by phase) and the
    accounting, and the cores timeline from status."""
    names = [n for n, _ in models]
    fresh_live(work, names)
    node = Node(work, models, mode, max_batch)
    clients = {n: ba.Client(node.spool_of(n), shape) for n in names}
    # Warm up: a few seconds at the first phase's rates (not timed).
    warm = arrivals([(3.0, phases[0][1])], seed + 1000)
    timeline, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            try:
                st = node.status()
                # None: every core (sharing them, or alone).
                cores = {m["name"]: (m.get("share") or {}).get("cores") for m in st["models"]}
                timeline.append((time.monotonic(), {n: "*" if c is None else len(c)
                                                    for n, c in cores.items()}))
            except (OSError, ValueError):
                pass
            time.sleep(0.5)

    def feed(seq, t0):
        for t, name in seq:
            d = t0 + t - time.monotonic()
            if d > 0:
                time.sleep(d)
            clients[name].submit(items)

    feed(warm, time.monotonic())
    for c in clients.values():
        c.drain(300)
    first = {n: len(c.done) for n, c in clients.items()}
    seq = arrivals(phases, seed)
    w = threading.Thread(target=watch, daemon=True)
    w.start()
    t0 = time.monotonic()
    feed(seq, t0)
    for c in clients.values():
        c.drain(600)
    wall = time.monotonic() - t0
    stop.set()
    w.join()
    time.sleep(0.5)
    bounds = [0.0]
    for seconds, _ in phases:
        bounds.append(bounds[-1] + seconds)
    res = {"jobs": len(seq), "wall_s": wall, "jobs_per_s": len(seq) / wall, "models": {}}
    warm_jobs = {n: sum(1 for _, m in warm if m == n) for n in names}
    st = node.status()
    for n, c in clients.items():
        done = c.done[first[n]:]
        lat = [x[1] * 1e3 for x in done]
        by_phase = []
        for k in range(len(phases)):
            lo, hi = t0 + bounds[k], t0 + bounds[k + 1]
            v = [x[1] * 1e3 for x in done if lo <= x[0] < hi]
            by_phase.append({"jobs": len(v), "p50_ms": ba.pct(v, 50), "p99_ms": ba.pct(v, 99)})
        left = os.listdir(os.path.join(node.spool, n, "out"))
        ms = next(m for m in st["models"] if m["name"] == n)
        res["models"][n] = {
            "submitted": sum(1 for _, m in seq if m == n), "outputs": len(done),
            "failed": c.failed, "left_over": len(left),
            # The agent's own count, the warm-up's jobs taken off: above submitted = run twice.
            "jobs_done": ms["jobs_done"] - warm_jobs[n],
            "jobs_failed": ms["jobs_failed"], "p50_ms": ba.pct(lat, 50), "p99_ms": ba.pct(lat, 99),
            "phases": by_phase,
        }
        c.close()
    res["switches"] = st.get("partition", {}).get("switches", 0)
    # Cores per model over the run, sampled from status (joint: they follow the loads).
    res["cores"] = [(max(0.0, round(t - t0, 1)), c) for t, c in timeline]
    node.stop()
    # Each run's journal, kept beside the next.
    shutil.copy(node.log_path, os.path.join(work, f"agent-{mode}-{seed}.log"))
    return res


def capacity_alone(work, name, source, max_batch, shape, items, seconds):
    """Jobs/s one model sustains alone on every core (closed loop, 8 jobs in flight)."""
    fresh_live(work, [name])
    node = Node(work, [(name, source)], "joint", max_batch)
    c = ba.Client(node.spool_of(name), shape)
    rate = bs.closed_loop(c, seconds, items)
    c.close()
    node.stop()
    return rate


def rounds(work, models, max_batch, shape, items, phases, args, header):
    results = {}
    modes = args.modes.split(",")
    for k, mode in enumerate(bs.abba(modes, args.rounds)):
        r = run(work, models, mode, max_batch, shape, items, phases, seed=11 + k // len(modes))
        results.setdefault(mode, []).append(r)
        acc = ", ".join(f"{n} {m['outputs']}/{m['submitted']} out, {m['failed']} failed, "
                        f"{m['left_over']} extra" for n, m in r["models"].items())
        lat = ", ".join(f"{n} p50 {m['p50_ms']:.0f} p99 {m['p99_ms']:.0f}"
                        for n, m in r["models"].items())
        print(f"{mode}: {lat} ms; {r['jobs_per_s']:.2f} jobs/s; {r['switches']} switches; {acc}",
              flush=True)
        if mode == "joint":
            print("  cores over time:", " ".join(
                f"{t:.0f}s:" + "/".join(str(c.get(n, "?")) for n, _ in models)
                for t, c in r["cores"][::4]), flush=True)
    names = [n for n, _ in models]
    print(f"\n{header}| model | phase | " + " | ".join(f"{m} p50 / p99 ms" for m in modes) +
          " | joint p99 / best other |")
    print("|---|---|" + "---|" * (len(modes) + 1))
    med = lambda rs, f: statistics.median(f(r) for r in rs)
    for n in names:
        for k in list(range(len(phases))) + [None]:
            get = (lambda key: (lambda r: r["models"][n][key])) if k is None else \
                (lambda key: (lambda r: r["models"][n]["phases"][k][key]))
            cells, p99 = [], {}
            for mode in modes:
                p50 = med(results[mode], get("p50_ms"))
                p99[mode] = med(results[mode], get("p99_ms"))
                cells.append(f"{p50:.0f} / {p99[mode]:.0f}")
            others = [p99[m] for m in ("equal", "overlap") if m in p99]
            ratio = f"{p99['joint'] / min(others):.2f}" if "joint" in p99 and others else "-"
            ph = "all" if k is None else str(k + 1)
            print(f"| {n} | {ph} | " + " | ".join(cells) + f" | {ratio} |")
    print("\n| system | jobs/s (median) | lost | duplicated | rounds |")
    print("|---|---|---|---|---|")
    for mode in modes:
        rs = results[mode]
        lost = sum(m["submitted"] - m["outputs"] for r in rs for m in r["models"].values())
        dup = sum(m["left_over"] + max(0, m["jobs_done"] - m["submitted"])
                  for r in rs for m in r["models"].values())
        print(f"| {mode} | {med(rs, lambda r: r['jobs_per_s']):.2f} | {lost} | {dup} | {len(rs)} |")
    return results


def real(args):
    work = tempfile.mkdtemp(prefix="bench-partition-")
    models = [("a", args.model_a), ("b", args.model_b)]
    shape = ba.SHAPES[args.model_a]
    assert ba.SHAPES[args.model_b] == shape, "both models take the same input here"
    cap = {n: capacity_alone(work, n, src, args.max_batch, shape, 1, 20) for n, src in models}
    print("alone on every core (closed loop): " +
          ", ".join(f"{n} ({src}) {cap[n]:.1f} jobs/s" for n, src in models), flush=True)
    half = args.seconds / 2
    hot, light = (float(x) for x in args.fractions.split(","))
    phases = [(half, {"a": hot * cap["a"], "b": light * cap["b"]}),
              (half, {"a": light * cap["a"], "b": hot * cap["b"]})]
    print("phases: " + "; ".join(", ".join(f"{n} {r:.1f}/s" for n, r in p.items())
                                   for _, p in phases), flush=True)
    results = rounds(work, models, args.max_batch, shape, 1, phases, args,
                     f"{len(os.sched_getaffinity(0))} cores, real engines\n")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"capacity": cap, "phases": phases, "results": results}, f, indent=1)


def replay(args):
    work = tempfile.mkdtemp(prefix="bench-partition-")
    names = ["resnet", "inception", "bert", "gpt2"]
    models = [(n, os.path.abspath(os.path.join(DATA, f"{n}_cloudlab16.json"))) for n in names]
    # Predicted capacity in jobs/s on 16 cores: the best fixed stream count at max_batch.
    cap = {n: bs.fixed_capacity(src, args.max_batch)[1] / args.job_items for n, src in models}
    print("REPLAYED on 16 virtual cores; predicted capacity alone: " +
          ", ".join(f"{n} {c:.1f} jobs/s" for n, c in cap.items()), flush=True)
    # Each phase one model is hot, one warm, two light; the roles rotate.
    shares = [args.scale * f for f in (0.45, 0.2, 0.1, 0.05)]
    phases = []
    for p in range(args.phases):
        rates = {names[(i + p) % 4]: shares[i] * cap[names[(i + p) % 4]] for i in range(4)}
        phases.append((args.seconds / args.phases, rates))
    print("phases: " + "; ".join(", ".join(f"{n} {r:.1f}/s" for n, r in p.items())
                                   for _, p in phases), flush=True)
    results = rounds(work, models, args.max_batch, (1,), args.job_items, phases, args,
                     "REPLAYED (not measured on this host): 16 virtual cores\n")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"replayed": True, "capacity": cap, "phases": phases,
                       "results": results}, f, indent=1)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["real", "replay"])
    p.add_argument("--model-a", default="resnet18")
    p.add_argument("--model-b", default="mobilenet_v2")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--fractions", default="0.7,0.15",
                   help="real: the hot and the light model's rate, fractions of its capacity")
    p.add_argument("--job-items", type=int, default=4, help="replay: items per job")
    p.add_argument("--phases", type=int, default=4, help="replay: rate phases")
    p.add_argument("--scale", type=float, default=0.75,
                   help="replay: the hot/warm/light/lighter fractions 0.45/0.2/0.1/0.05 of "
                        "each model's capacity, times this")
    p.add_argument("--seconds", type=float, default=40, help="timed seconds per run")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--modes", default=",".join(MODES), help="systems, in ABBA order")
    p.add_argument("--out")
    args = p.parse_args()
    random.seed(1)
    {"real": real, "replay": replay}[args.what](args)


if __name__ == "__main__":
    main()
