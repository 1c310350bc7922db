"""What the DP's mixed splits add over equal streams (OpenVINO's NUM_STREAMS = k: k instances of
T/k threads, the batch split evenly), predicted from latency profiles on a T-core host.

usage: python3 packaging/predict-streams.py CORES MAX_BATCH PROFILE.json...
Prints, per profile, the geometric mean over B = 1…MAX_BATCH of the DP plan's predicted latency
over (a) the best equal-stream count for each B and (b) the best single stream count for all B.
"""
import json
import math
import subprocess
import sys

cores, max_batch, files = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]


def curve(points):
    """latency(t, b), piecewise linear in b and non-decreasing, as packrat's planner models it."""
    rows = {}
    for p in points:
        rows.setdefault(p["threads"], []).append((p["batch"], p["latency_ms"]))
    for t, r in rows.items():
        r.sort()
        for i in range(1, len(r)):
            r[i] = (r[i][0], max(r[i][1], r[i - 1][1]))

    def lat(t, b):
        r = rows[t]
        if len(r) == 1:
            return r[0][1] * b
        for (b0, l0), (b1, l1) in zip(r, r[1:]):
            if b <= b1:
                return l0 + (l1 - l0) * (b - b0) / (b1 - b0)
        (b0, l0), (b1, l1) = r[-2], r[-1]
        return l1 + (l1 - l0) * (b - b1) / (b1 - b0)

    return rows, lat


def geomean(xs):
    return math.exp(sum(map(math.log, xs)) / len(xs))


print(f"{'profile':<28} {'DP / best streams per B':>24} {'DP / best single streams':>25}  best single k")
for f in files:
    prof = json.load(open(f))
    rows, lat = curve(prof["points"])
    ks = [k for k in range(1, cores + 1) if cores % k == 0 and cores // k in rows]
    dp, streams = [], {k: [] for k in ks}
    for b in range(1, max_batch + 1):
        out = subprocess.run(
            ["./target/release/packrat", "plan", "--profile", f, "--cores", str(cores), "--batch", str(b), "--json"],
            check=True, capture_output=True, text=True,
        ).stdout
        dp.append(json.loads(out)["predicted_latency_ms"])
        for k in ks:
            streams[k].append(lat(cores // k, math.ceil(b / k)))
    per_b = geomean([d / min(streams[k][i] for k in ks) for i, d in enumerate(dp)])
    best_k = min(ks, key=lambda k: geomean(streams[k]))
    single = geomean([d / s for d, s in zip(dp, streams[best_k])])
    print(f"{f.rsplit('/', 1)[-1]:<28} {per_b:>24.3f} {single:>25.3f}  {best_k}")
