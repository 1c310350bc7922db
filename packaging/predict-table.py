#!/usr/bin/env python3
"""What the planner predicts on the authors' profiles: speedup of the plan over ⟨1,N,B⟩ and
over the reference semantics, from `packrat plan --sweep`.
Usage: packaging/predict-table.py CORES PROFILE.json..."""
import math
import subprocess
import sys

cores = sys.argv[1]
print(f"| profile ({cores} cores) | B=1 | B=2 | B=4 | B=8 | B=16 | B=32 | B=64 | B=128 | geomean B=1..128 vs ⟨1,{cores},B⟩ | geomean vs reference | max vs reference |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
for path in sys.argv[2:]:
    out = subprocess.run(["target/release/packrat", "plan", "--profile", path, "--cores", cores, "--batch", "128", "--sweep"],
                         capture_output=True, text=True, check=True).stdout
    rows = [l.split() for l in out.splitlines()[1:]]
    vb = {int(r[0]): float(r[4][:-1]) for r in rows if r[4] != "-"}
    vr = {int(r[0]): float(r[5][:-1]) for r in rows if r[5] != "-"}
    geo = lambda v: math.exp(sum(map(math.log, v.values())) / len(v))
    cells = " | ".join(f"{vb[b]:.2f}×" for b in [1, 2, 4, 8, 16, 32, 64, 128])
    name = path.rsplit("/", 1)[-1].removesuffix(".json")
    print(f"| {name} | {cells} | {geo(vb):.2f}× | {geo(vr):.3f}× | {max(vr.values()):.2f}× |")
