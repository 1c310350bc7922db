"""Measures version swaps under open-loop load, end to end through the spool (BENCHMARKS.md §9).

The agent serves a folder of versions of one TorchScript model. A client submits one-item jobs
at Poisson arrivals (fixed seed) for the whole run; every `--every` seconds a new version folder
is renamed into place (a copy of the same weights: the swap itself is what is measured). For each
job: submit time, the time its output appeared (an output watcher polls out/ every 2 ms) and the
version its output names (the `user.packrat.version` attribute). The agent's RSS is sampled
every 100 ms.

Reported: p50/p99 job latency in steady state (outside the 10 s after each swap) and in the 10 s
after each swap; the time from a folder's appearance to the first output of its version, against
the agent's own load-and-warm time (status: last_swap.load_ms) plus one batch; RSS before, peak
during and after each swap; jobs submitted, outputs, failures.

usage: .venv/bin/python packaging/bench-swap.py MODEL.pt [--rate 8] [--swaps 3] [--every 30]
       [--input 3,224,224] [--out bench-out/swap]
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("model")
ap.add_argument("--rate", type=float, default=8.0, help="jobs per second (one item each)")
ap.add_argument("--swaps", type=int, default=3)
ap.add_argument("--every", type=float, default=30.0, help="seconds between swaps")
ap.add_argument("--input", default="3,224,224")
ap.add_argument("--out", default="bench-out/swap")
ap.add_argument("--binary", default="target/release/packrat")
args = ap.parse_args()

shape = [int(d) for d in args.input.split(",")]
root = tempfile.mkdtemp(prefix="packrat-swap-")
versions = os.path.join(root, "versions")
spool = os.path.join(root, "spool")
state = os.path.join(root, "state")
os.makedirs(versions)


wall = {}  # version -> wall-clock time its folder appeared (to line up with the journal)


def publish(n):
    tmp = os.path.join(versions, f".{n}.tmp")
    os.makedirs(tmp)
    shutil.copyfile(args.model, os.path.join(tmp, "model.pt"))
    os.rename(tmp, os.path.join(versions, str(n)))
    wall[str(n)] = time.time()
    return time.monotonic()


publish(1)
cfg = os.path.join(root, "packrat.toml")
with open(cfg, "w") as f:
    f.write(
        f'spool = "{spool}"\nstate_dir = "{state}"\n[[model]]\nname = "m"\n'
        f'source = "{versions}"\ninput = {shape}\nmax_batch = 8\nplan = "auto"\n'
        f"profile_budget_s = 30\n"
    )
log = open(os.path.join(root, "agent.log"), "w")
agent = subprocess.Popen(
    [args.binary, "serve", "--config", cfg], stderr=log, env={**os.environ, "RUST_LOG": "info"}
)
status_path = os.path.join(state, "status.json")


def status():
    try:
        with open(status_path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


while status() is None:
    if agent.poll() is not None:
        sys.exit(f"agent exited: see {log.name}")
    time.sleep(0.1)
model_dir = os.path.join(spool, "m")
out_dir = os.path.join(model_dir, "out")

seen = {}  # job name -> (time its output appeared, version)
stop = threading.Event()


def watch_outputs():
    while not stop.is_set() or len(seen) < len(submitted):
        now = time.monotonic()
        for name in os.listdir(out_dir):
            if name not in seen and not name.startswith("."):
                try:
                    v = os.getxattr(os.path.join(out_dir, name), "user.packrat.version").decode()
                except OSError:
                    continue
                seen[name] = (now, v)
        time.sleep(0.002)
        if stop.is_set() and time.monotonic() - stopped_at > 120:
            break


rss = []  # (time, MiB)


def sample_rss():
    while not stop.is_set():
        try:
            with open(f"/proc/{agent.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss.append((time.monotonic(), int(line.split()[1]) / 1024))
        except OSError:
            pass
        time.sleep(0.1)


submitted = {}  # name -> submit time
stopped_at = 0.0
x = np.random.default_rng(0).standard_normal([1] + shape).astype(np.float32)
job_bytes = os.path.join(root, "job.npy")
np.save(job_bytes, x)

watcher = threading.Thread(target=watch_outputs)
sampler = threading.Thread(target=sample_rss)
watcher.start()
sampler.start()

rng = random.Random(1)
t0 = time.monotonic()
swaps = []  # (version, time its folder appeared)
next_swap = t0 + args.every
end = t0 + args.every * (args.swaps + 1)
i = 0
next_job = t0
while time.monotonic() < end:
    now = time.monotonic()
    if len(swaps) < args.swaps and now >= next_swap:
        n = len(swaps) + 2
        swaps.append((str(n), publish(n)))
        next_swap += args.every
    if now >= next_job:
        name = f"j{i:06}.npy"
        tmp = os.path.join(model_dir, "tmp", name)
        shutil.copyfile(job_bytes, tmp)
        os.rename(tmp, os.path.join(model_dir, "incoming", name))
        submitted[name] = time.monotonic()
        i += 1
        next_job += rng.expovariate(args.rate)
    time.sleep(max(0.0, min(next_job, next_swap) - time.monotonic()))
stopped_at = time.monotonic()
stop.set()
watcher.join()
sampler.join()
st = status()
agent.terminate()
agent.wait()

failed = os.listdir(os.path.join(model_dir, "failed"))


def pct(v, p):
    return float(np.percentile(v, p)) if v else float("nan")


lat = {n: (seen[n][0] - t) * 1e3 for n, t in submitted.items() if n in seen}
around = [(t, t + 10.0) for _, t in swaps]
in_swap = lambda t: any(a <= t < b for a, b in around)
steady = [l for n, l in lat.items() if not in_swap(submitted[n])]
result = {
    "cpu": open("/proc/cpuinfo").read().split("model name")[1].split(":")[1].split("\n")[0].strip(),
    "model": os.path.basename(args.model),
    "rate": args.rate,
    "submitted": len(submitted),
    "outputs": len(seen),
    "failed": len(failed),
    "steady_p50_ms": pct(steady, 50),
    "steady_p99_ms": pct(steady, 99),
    "swaps": [],
}
batch_ms = (st["models"][0]["batch_ms_sum"] / max(1, st["models"][0]["batches"])) if st else float("nan")
result["mean_batch_ms"] = batch_ms
steady_rss = [m for t, m in rss if t < swaps[0][1]] if swaps else []
for k, (v, t) in enumerate(swaps):
    win = [l for n, l in lat.items() if t <= submitted[n] < t + 10.0]
    first = min((s for s, ver in seen.values() if ver == v), default=float("nan"))
    after_end = swaps[k + 1][1] if k + 1 < len(swaps) else stopped_at
    result["swaps"].append(
        {
            "version": v,
            "p50_ms": pct(win, 50),
            "p99_ms": pct(win, 99),
            "p99_over_steady": pct(win, 99) / result["steady_p99_ms"],
            "first_output_s": first - t,
            "appeared_unix": wall.get(v),
            "rss_before_mib": float(np.median([m for s, m in rss if t - 10 <= s < t] or [np.nan])),
            "rss_peak_mib": max([m for s, m in rss if t <= s < t + 10] or [np.nan]),
            "rss_after_mib": float(np.median([m for s, m in rss if t + 15 <= s < after_end] or [np.nan])),
        }
    )
if st:
    result["last_swap_load_ms"] = st["models"][0]["versions"]["last_swap"]["load_ms"]
    result["versions"] = st["models"][0]["versions"]
result["steady_rss_mib"] = float(np.median(steady_rss)) if steady_rss else float("nan")
os.makedirs(args.out, exist_ok=True)
with open(os.path.join(args.out, "swap.json"), "w") as f:
    json.dump(result, f, indent=2)
print(json.dumps({k: v for k, v in result.items() if k != "versions"}, indent=2))
lost = len(submitted) - len(seen) - len(failed)
print(f"jobs: {len(submitted)} submitted, {len(seen)} outputs, {len(failed)} failed, {lost} lost")
shutil.copy(log.name, os.path.join(args.out, "agent.log"))
shutil.rmtree(root, ignore_errors=True)
