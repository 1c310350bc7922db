"""Turns bench-out/peers/raw into the peers tables (markdown, to stdout) and one plot per
model (SVG): the median over rounds of each system's median batch latency.

usage: python table.py OUT_DIR
"""
import glob
import json
import os
import statistics
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

out = sys.argv[1]
# (model, system) -> batch -> [ms per round]
runs = defaultdict(lambda: defaultdict(list))
for path in glob.glob(f"{out}/raw/r*-*.json"):
    d = json.load(open(path))
    for b, ms in d["rows"].items():
        runs[(d["model"], d["system"])][int(b)].append(ms)
for path in glob.glob(f"{out}/raw/r*/*.json"):
    d = json.load(open(path))
    model, engine = d["model"].rsplit("-", 1)
    for row in d["rows"]:
        runs[(model, f"packrat-{engine} one instance")][row["batch"]].append(row["baseline_median_ms"])
        runs[(model, f"packrat-{engine} plan")][row["batch"]].append(row["planned_median_ms"])

# Every figure belongs to a CPU: the one packrat bench recorded (else this machine's).
cpus = set()
for path in glob.glob(f"{out}/raw/r*/*.json"):
    cpu = json.load(open(path)).get("cpu")
    if cpu:
        cpus.add((cpu["model"], cpu["vendor"], ",".join(cpu["features"]) or "none"))
if not cpus:
    flags, name = set(), "unknown"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name") and name == "unknown":
            name = line.split(":", 1)[1].strip()
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
    feats = [f for f in ["avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8"] if f in flags]
    cpus.add((name, "", ",".join(feats) or "none"))
BF16_UNITS = all("avx512_bf16" in f or "amx_bf16" in f for _, _, f in cpus)
for name, vendor, feats in sorted(cpus):
    print(f"CPU: {name} {vendor} ({feats}); {os.cpu_count()} cores; "
          + ("bf16 units present" if BF16_UNITS else "no bf16 units: the bf16 rows compute f32 here"))

# GFLOP per item, for achieved throughput (ResNet-50 at 224², BERT-base at sequence 128).
GFLOP = {"resnet50": 4.1, "bert_base": 22.3}
F32_PEERS = ["pytorch", "onnxruntime", "onnxruntime-2x1", "openvino-latency-f32",
             "openvino-2streams-f32", "openvino-throughput-f32"]
DEFAULT_PEERS = ["openvino-latency-default", "openvino-2streams-default", "openvino-throughput-default"]


def med(model, system, b):
    v = runs[(model, system)].get(b)
    return statistics.median(v) if v else None


def fmt(x):
    return "–" if x is None else f"{x:.1f}"


for model in sorted({m for m, _ in runs}):
    systems = sorted({s for m, s in runs if m == model})
    batches = sorted({b for (m, s), rows in runs.items() if m == model for b in rows})
    ours = [s for s in systems if s.startswith("packrat") and s.endswith("plan") and "bf16" not in s]
    rounds = max(len(v) for (m, s), rows in runs.items() if m == model for v in rows.values())
    print(f"\n### {model} (median ms of a whole batch; median over {rounds} interleaved rounds)\n")
    cols = [s for s in systems if s.startswith("packrat") and "bf16" not in s] + [p for p in F32_PEERS if p in systems]
    print("| B | " + " | ".join(cols) + " | best f32 peer | packrat best / best f32 peer | GFLOP/s packrat |")
    print("|---:|" + "---:|" * (len(cols) + 3))
    ratios = []
    for b in batches:
        best_peer = min((x for x in (med(model, p, b) for p in F32_PEERS) if x is not None), default=None)
        best_ours = min((x for x in (med(model, s, b) for s in ours) if x is not None), default=None)
        ratio = best_ours / best_peer if best_ours and best_peer else None
        if ratio and b >= 2:
            ratios.append(ratio)
        gflops = GFLOP.get(model, 0) * b / best_ours * 1e3 if best_ours else None
        print(f"| {b} | " + " | ".join(fmt(med(model, s, b)) for s in cols)
              + f" | {fmt(best_peer)} | {'–' if ratio is None else f'{ratio:.2f}'} | {fmt(gflops)} |")
    if ratios:
        geo = statistics.geometric_mean(ratios)
        print(f"\ngeometric mean over B ≥ 2 of packrat's best plan / the best f32 peer: **{geo:.3f}**")
    ov_peers = [p for p in DEFAULT_PEERS if p in systems]
    dflt = [s for s in systems if "bf16" in s] + ov_peers
    if dflt:
        where = ("this CPU has bf16 units" if BF16_UNITS
                 else "this CPU has no bf16 units, so these run in f32: OpenVINO's default is f32 here and packrat serves a bf16 request as f32")
        print(f"\n{model}, OpenVINO's default precision and packrat's bf16 request ({where}) — ms (GFLOP/s):\n")
        print("| B | " + " | ".join(dflt) + " | packrat plan / best OpenVINO config |")
        print("|---:|" + "---:|" * (len(dflt) + 1))
        bf16_plan = next((s for s in dflt if s.endswith("plan")), None)
        ours_all, theirs = [], defaultdict(list)
        for b in batches:
            cells = []
            for s in dflt:
                x = med(model, s, b)
                cells.append("–" if x is None else f"{x:.1f} ({GFLOP.get(model, 0) * b / x * 1e3:.0f})")
            best = min((x for x in (med(model, p, b) for p in ov_peers) if x is not None), default=None)
            mine = med(model, bf16_plan, b) if bf16_plan else None
            ratio = mine / best if mine and best else None
            if mine and b <= 16:
                ours_all.append(mine)
                for p in ov_peers:
                    if med(model, p, b):
                        theirs[p].append(med(model, p, b))
            print(f"| {b} | " + " | ".join(cells) + f" | {'–' if ratio is None else f'{ratio:.2f}'} |")
        full = {p: v for p, v in theirs.items() if len(v) == len(ours_all)}
        if ours_all and full:
            best_single = min(full, key=lambda p: statistics.geometric_mean(full[p]))
            geo = statistics.geometric_mean([a / b for a, b in zip(ours_all, full[best_single])])
            print(f"\ngeometric mean over B = 1…16 of packrat bf16 plan / the best single OpenVINO configuration ({best_single}): **{geo:.3f}**")
    fig, ax = plt.subplots(figsize=(8, 5))
    for s in systems:
        pts = [(b, med(model, s, b)) for b in batches if med(model, s, b)]
        style = "-o" if s.startswith("packrat") else "--."
        ax.plot([p[0] for p in pts], [p[1] for p in pts], style, label=s)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size B")
    ax.set_ylabel("median batch latency (ms)")
    ax.set_title(f"{model}: packrat vs peers on {os.cpu_count()} cores")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(f"{out}/{model}.svg")
