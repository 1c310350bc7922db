#!/usr/bin/env python3
"""Turns `packrat bench` JSON files into the Markdown tables of BENCHMARKS.md.
Usage: packaging/bench-table.py bench-out/*.json"""
import json
import math
import re
import sys


def is_baseline(plan, cores):
    """True when the plan is one instance with every core: the baseline configuration itself."""
    m = re.fullmatch(r"(\d+)t×\d+b@\S+", plan)
    return bool(m) and int(m.group(1)) == cores

for path in sys.argv[1:]:
    d = json.load(open(path))
    rows = d["rows"]
    used = d.get("rounds_used")
    rounds = f"{min(used)}–{max(used)}" if used else str(d["rounds"])
    print(f"### {d['model']} — {d['cores']} cores, {rounds} interleaved rounds per batch\n")
    print("| B | baseline ⟨1,T,B⟩ ms | planned ms | speedup | predicted ms | error | drift-corrected error | T1 ms | efficiency | plan |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    f = lambda x, fmt: (fmt % x) if x is not None else "–"
    for r in rows:
        print(
            f"| {r['batch']} | {r['baseline_median_ms']:.1f} | {r['planned_median_ms']:.1f} | {r['speedup']:.3f}× "
            f"| {f(r['predicted_ms'], '%.1f')} | {f(r['prediction_error_pct'], '%+.1f%%')} "
            f"| {f(r.get('drift_corrected_error_pct'), '%+.1f%%')} | {f(r['t1_median_ms'], '%.0f')} "
            f"| {f(r['parallel_efficiency'], '%.2f')} | `{r['plan']}`{' (= baseline)' if is_baseline(r['plan'], d['cores']) else ''} |"
        )
    sp = [r["speedup"] for r in rows if r["batch"] >= 2]
    errs = [abs(r["prediction_error_pct"]) for r in rows if r["prediction_error_pct"] is not None]
    adj = [abs(r["drift_corrected_error_pct"]) for r in rows if r.get("drift_corrected_error_pct") is not None]
    geo = math.exp(sum(map(math.log, sp)) / len(sp)) if sp else float("nan")
    distinct = [r["speedup"] for r in rows if not is_baseline(r["plan"], d["cores"])]
    print(
        f"\ngeometric-mean speedup over B ≥ 2: **{geo:.3f}×**, lowest {min(r['speedup'] for r in rows):.3f}× "
        f"(lowest where the plan differs from the baseline: {min(distinct):.3f}×); "
        f"|prediction error| median {sorted(errs)[len(errs) // 2]:.1f}%, max {max(errs):.1f}%"
        + (f"; drift-corrected median {sorted(adj)[len(adj) // 2]:.1f}%, max {max(adj):.1f}%" if adj else "")
        + "\n"
    )
