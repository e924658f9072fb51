"""`servescope demo`: the main job on an embedded default, end to end on one machine.

A tiny dummy-weight Llama (shipped in the package) served by vLLM in this process, the Azure
2023 conversation trace replayed at its own arrival times (time-scaled so the CPU engine keeps
up, lengths capped to the model), everything recorded, analysed, audited and drawn:

    RUN/                    the run directory (tables, manifest)
    RUN/model/              the model directory the engine served
    RUN/report/index.html   the report
"""

from __future__ import annotations

from pathlib import Path

DEMO_WORKLOAD = "azure-conv-2023"
MAX_MODEL_LEN = 1024


def demo_spec(model_dir: Path, *, requests: int, rate_per_s: float, max_prompt_tokens: int,
              max_output_tokens: int):
    """Return the BenchSpec of the demo: the trace's first requests, replayed time-scaled to rate_per_s."""
    from servescope.bench.run import BenchSpec
    from servescope.bench.workloads.catalog import load_workload

    workload = load_workload(DEMO_WORKLOAD).first(requests)
    span_s = float(workload.arrival_s[-1] - workload.arrival_s[0])
    native_rate = (len(workload) - 1) / span_s if span_s > 0 else rate_per_s
    return BenchSpec(
        workload=DEMO_WORKLOAD, count=requests, time_scale=native_rate / rate_per_s,
        max_prompt_tokens=max_prompt_tokens, max_output_tokens=max_output_tokens,
        engine_args=("--model", str(model_dir), "--load-format", "dummy", "--max-model-len", str(MAX_MODEL_LEN),
                     "--max-num-seqs", "32"),
        in_process=True, extra={"demo": {"native_rate_per_s": native_rate, "target_rate_per_s": rate_per_s}})


def run_demo(out: str | Path, *, requests: int = 200, rate_per_s: float = 3.0, max_prompt_tokens: int = 512,
             max_output_tokens: int = 128, tbt_slo_s: float = 0.1, echo=print) -> Path:
    """Record, analyse and report the demo into out; return the report's index.html."""
    import os

    from servescope.analysis.checklist import audit_run_dirs
    from servescope.analysis.summary import analyze_run, summary_text
    from servescope.bench.model_kit import init_model_dir
    from servescope.bench.run import bench_report, refuse_recorded_run, run_bench
    from servescope.report.build import write_report

    out = Path(out)
    refuse_recorded_run(out, starts_engine=True)  # a second demo into the same directory overwrites nothing
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model_dir = init_model_dir(out / "model", "tiny")
    spec = demo_spec(model_dir, requests=requests, rate_per_s=rate_per_s, max_prompt_tokens=max_prompt_tokens,
                     max_output_tokens=max_output_tokens)
    echo(f"servescope demo: replaying the first {requests} requests of {DEMO_WORKLOAD} at ~{rate_per_s} req/s "
         f"(trace time x{spec.time_scale:.2f}) against vLLM with a tiny dummy-weight Llama; recording into {out}")
    run_bench(spec, out, echo=echo)
    echo(bench_report(out))
    echo(summary_text(analyze_run(out, tbt_slo_s=tbt_slo_s, include_requests=False)))
    for item in audit_run_dirs([str(out)]):
        status = getattr(item.status, "value", item.status)
        echo(f"checklist {item.item} {item.title}: {status}" + (f" ({item.evidence[0]})" if item.evidence else ""))
    index = write_report([out], out / "report", tbt_slo_s=tbt_slo_s)
    echo(f"servescope demo: report at {index}")
    return index
