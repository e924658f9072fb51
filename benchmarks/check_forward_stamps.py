import sys
from collections import defaultdict
import numpy as np
from servescope.run.tables import read_table
rows = read_table(sys.argv[1], "worker_regions").to_pylist()
by = defaultdict(dict)
for r in rows:
    if r["step_id"] is not None:
        by[r["step_id"]].setdefault(r["region"], []).append(r)
fg = [r for r in rows if r["region"] == "forward_gpu"]
print("forward_gpu rows", len(fg), "with gpu start/end", sum(r["gpu_start_ns"] is not None for r in fg))
print("regions with gpu_start", sum(r["gpu_start_ns"] is not None for r in rows), "of", len(rows))
d = []
for sid, regs in by.items():
    if "forward_gpu" in regs and "forward" in regs and len(regs["forward_gpu"]) == 1 and len(regs["forward"]) == 1:
        a, b = regs["forward_gpu"][0]["gpu_ns"], regs["forward"][0]["gpu_ns"]
        if a is not None and b is not None:
            d.append((b - a) / 1e3)
d = np.array(d)
if d.size:
    print("steps with both:", d.size, "events-around minus stamps-inside (us): p50 %.1f p90 %.1f min %.1f max %.1f" % (np.median(d), np.percentile(d, 90), d.min(), d.max()))
ex = [r for r in rows if r["region"] == "execute_model" and r["gpu_start_ns"] is not None]
if ex:
    lag = np.array([(r["gpu_start_ns"] - r["host_start_ns"]) / 1e3 for r in ex])
    print("execute_model: GPU start minus host start (us) p50 %.1f p90 %.1f" % (np.median(lag), np.percentile(lag, 90)))
