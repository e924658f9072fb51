"""The served half's figures of docs/case-studies/engine-vs-engine.md, made again from the H200 run's tarball.

The device machine's report-rate4/ and report-rate16/ came back without their figures folders. For each compared
rate this runs the study's own report call on the pair (`servescope report VLLM_RUN TRANSFORMERS_RUN`, as
`Study.compare` does) on the run directories in benchmarks/results/h200-engine-vs-engine-2/runs.tar.gz, and copies
its TTFT and TBT CDFs into docs/case-studies/engine-vs-engine-figures/ as h200-served-rate{R}-{ttft,tbt}-cdf.png.

    python benchmarks/engine_vs_engine_figures.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARBALL = ROOT / "benchmarks" / "results" / "h200-engine-vs-engine-2" / "runs.tar.gz"
FIGURES = ROOT / "docs" / "case-studies" / "engine-vs-engine-figures"
RATES = ("4", "16")
KEPT = ("ttft-cdf", "tbt-cdf")  # report's figures are numbered 01-ttft-cdf.png, 02-tbt-cdf.png, ...
MAX_BYTES = 200_000


def main() -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    with tempfile.TemporaryDirectory() as tmp:
        runs = [f"{engine}-rate{rate}" for rate in RATES for engine in ("vllm", "transformers")]
        with tarfile.open(TARBALL) as tar:
            tar.extractall(tmp, members=[m for m in tar.getmembers()
                                         if any(m.name.startswith(f"runs/{run}/") for run in runs)], filter="data")
        for rate in RATES:
            report = Path(tmp) / f"report-rate{rate}"
            subprocess.run([sys.executable, "-m", "servescope", "report", f"runs/vllm-rate{rate}",
                            f"runs/transformers-rate{rate}", "--out", str(report)], cwd=tmp, env=env, check=True)
            for kind in KEPT:
                (source,) = (report / "figures").glob(f"[0-9][0-9]-{kind}.png")
                dest = FIGURES / f"h200-served-rate{rate}-{kind}.png"
                if source.stat().st_size > MAX_BYTES:
                    print(f"{source.name}: {source.stat().st_size} bytes, over {MAX_BYTES}", file=sys.stderr)
                    return 1
                shutil.copyfile(source, dest)
                print(f"wrote {dest.relative_to(ROOT)} ({dest.stat().st_size // 1000} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
