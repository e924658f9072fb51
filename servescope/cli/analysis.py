"""Analysis commands: `analyze`, `calibrate-prefill`, `compare` and `audit` (the paper's checklist)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from servescope.cli.errors import CommandError
from servescope.cli.options import non_negative, one_of, output_file, positive
from servescope.cli.run_warnings import STRICT_HELP, echo_run_warnings

STATUS_STYLE = {"pass": "green", "warn": "yellow", "fail": "red"}


def register(app: typer.Typer) -> None:
    """Add `analyze`, `calibrate-prefill`, `compare` and `audit` to the servescope command line."""
    app.command()(analyze)
    app.command("calibrate-prefill")(calibrate_prefill)
    app.command()(compare)
    app.command()(audit)


def _json_default(value):
    try:
        return float(value)
    except Exception:
        return str(value)


def analyze(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document {requests, summary}."),
    tbt_slo: Optional[float] = typer.Option(None, "--tbt-slo", callback=positive,
                                            help="TBT deadline in seconds (adds fluidity)."),
    ttft_slo: Optional[float] = typer.Option(None, "--ttft-slo", callback=positive,
                                             help="TTFT deadline in seconds for fluidity."),
    prefill_model: Optional[Path] = typer.Option(None, "--prefill-model",
                                                 help="Fluidity's TTFT deadline = predicted prefill (servescope "
                                                      "calibrate-prefill) + --ttft-slack."),
    ttft_slack: float = typer.Option(0.0, "--ttft-slack", callback=non_negative,
                                     help="Slack added to the predicted prefill, seconds."),
    observer: Optional[str] = typer.Option(None, "--observer", callback=one_of("engine", "client"),
                                           help="engine | client: whose record to analyse (default: the engine's "
                                                "when recorded, else the client's)."),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP),
) -> None:
    """Print the run's per-request metrics and their distributions (a client-only run: as the client saw them)."""
    from servescope.analysis.summary import analyze_run, summary_text

    model = None
    if prefill_model is not None:
        from servescope.analysis.prefill_calibration import load_prefill_model

        model = load_prefill_model(prefill_model)
    result = analyze_run(run_dir, tbt_slo_s=tbt_slo, ttft_slo_s=ttft_slo, include_requests=as_json,
                         prefill_model=model, ttft_slack_s=ttft_slack, observer=observer, strict=strict)
    echo_run_warnings(result["run"]["warnings"])
    if as_json:
        json.dump(result, sys.stdout, allow_nan=False)
        sys.stdout.write("\n")
    else:
        typer.echo(summary_text(result))


def calibrate_prefill(
    runs: List[Path] = typer.Argument(..., help="Calibration runs (e.g. servescope bench --concurrency 1)."),
    out: Path = typer.Option(..., "--out", "-o", callback=output_file, help="JSON file to write the prefill model to."),
) -> None:
    """Fit the isolated-prefill time model (fluidity's first-token deadline) on recorded runs."""
    from servescope.analysis.prefill_calibration import calibrate_prefill as fit, save_prefill_model

    model = fit([str(r) for r in runs])
    save_prefill_model(model, out)
    c0, c1, c2 = model.coefficients_s
    typer.echo(f"servescope: prefill_s = {c0:.4g} + {c1:.4g} * L + {c2:.4g} * L^2 from {model.num_samples} isolated "
               f"prefills (rms residual {model.rms_residual_s * 1e3:.3g} ms); wrote {out}")


def compare(
    runs: List[Path] = typer.Argument(None, help="BASE TREAT (one run each), or use --base/--treat."),
    base: Optional[List[Path]] = typer.Option(None, "--base", help="Baseline run (repeatable: repeats)."),
    treat: Optional[List[Path]] = typer.Option(None, "--treat", help="Treatment run (repeatable: repeats)."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
    observer: Optional[str] = typer.Option(
        None, "--observer", callback=one_of("engine", "client"),
        help="engine | client: whose record to compare (default: the engine's where every run has one, else the "
             "client's, e.g. two client-only runs of servescope bench --endpoint)."),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP),
) -> None:
    """Split the difference between two runs (or sets of repeats) into scheduling, prefill, decode,
    GPU time, CPU overhead and idle, with confidence intervals and configuration differences
    (client-only runs: what the client sees, with the same intervals)."""
    from servescope.analysis.compare import compare_run_dirs

    base_dirs, treat_dirs = list(base or []), list(treat or [])
    if runs:
        if len(runs) != 2 or base_dirs or treat_dirs:
            raise CommandError("compare: give exactly BASE TREAT, or --base/--treat (repeatable)")
        base_dirs, treat_dirs = [runs[0]], [runs[1]]
    if not base_dirs or not treat_dirs:
        raise CommandError("compare: needs a baseline and a treatment run (BASE TREAT, or --base/--treat)")
    result = compare_run_dirs([str(d) for d in base_dirs], [str(d) for d in treat_dirs], observer=observer,
                              strict=strict)
    echo_run_warnings(result["run_warnings"])
    if as_json:
        json.dump(result, sys.stdout, default=_json_default, indent=1)
        sys.stdout.write("\n")
        return
    _print_comparison(result)


def audit(
    runs: List[Path] = typer.Argument(..., help="Run directories (the baseline side, or all runs)."),
    treat: Optional[List[Path]] = typer.Option(None, "--treat", help="Treatment runs, if comparing."),
    ttft_slo: Optional[float] = typer.Option(None, "--ttft-slo", callback=positive,
                                             help="P99 TTFT bound of the application, s."),
    tbt_slo: Optional[float] = typer.Option(None, "--tbt-slo", callback=positive,
                                            help="P99 TBT bound of the application, s."),
    studied: Optional[List[str]] = typer.Option(
        None, "--studied", help="An engine parameter (or name prefix) the comparison is about, e.g. speculative: "
        "its difference is the treatment, not untuned baseline (repeatable)."),
    as_json: bool = typer.Option(False, "--json", help="Print {items: the verdicts, run_warnings} as JSON."),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP),
) -> None:
    """Audit runs against the eight-item checklist of 'On Evaluating Performance of LLM Inference Systems'."""
    from servescope.analysis.checklist import audit_run_dirs

    slos = {k: v for k, v in (("ttft_s", ttft_slo), ("tbt_s", tbt_slo)) if v is not None} or None
    run_warnings: dict[str, list[str]] = {}
    results = audit_run_dirs([str(r) for r in runs], [str(t) for t in (treat or [])], slos=slos,
                             studied=studied or (), strict=strict, run_warnings=run_warnings)
    echo_run_warnings(run_warnings)
    if as_json:
        json.dump({"items": [r.to_dict() for r in results], "run_warnings": run_warnings}, sys.stdout, indent=1,
                  default=_json_default)
        sys.stdout.write("\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Evaluation checklist (Agrawal et al., 2025)")
    table.add_column("#")
    table.add_column("item")
    table.add_column("verdict")
    table.add_column("evidence")
    for r in results:
        status = str(getattr(r.status, "value", r.status))
        table.add_row(str(r.item), r.title, f"[{STATUS_STYLE.get(status, 'white')}]{status}[/]",
                      "\n".join(r.evidence))
    Console().print(table)


def _print_comparison(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="Treatment vs baseline")
    for col in ("metric", "baseline", "treatment", "difference", "95% CI"):
        table.add_column(col)
    rows = [(f"{metric} {stat} (s)", v) for metric, stats in result.get("latency", {}).items()
            for stat, v in stats.items()]
    rows += [(f"{name}", v) for name, v in result.get("throughput", {}).items()]
    for name, v in rows:
        if isinstance(v, dict) and "baseline" in v:
            ci = v.get("ci") or (None, None)
            table.add_row(name, _fmt(v.get("baseline")), _fmt(v.get("treatment")), _fmt(v.get("diff")),
                          f"[{_fmt(ci[0])}, {_fmt(ci[1])}]")
    console.print(table)
    for d in result.get("configuration", {}).get("parameter_differences", []):
        console.print(f"config differs: {d.get('name')}: {d.get('baseline')} -> {d.get('treatment')}")
    if result.get("statement"):
        console.print(result["statement"])


def _fmt(v) -> str:
    try:
        return f"{float(v):.4g}"
    except (TypeError, ValueError):
        return "-"
