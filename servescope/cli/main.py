"""The servescope command line. `servescope --help` lists the commands; docs/cli.md explains them."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    name="servescope",
    help="Measure LLM serving engines from the inside: record every request, token and engine step, "
    "then evaluate them as 'On Evaluating Performance of LLM Inference Systems' asks.",
    no_args_is_help=True,
    add_completion=False,
)


def _fail(message: str) -> None:
    typer.secho(f"servescope: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", "-o", help="Run directory to record into (created)."),
    export_spans: bool = typer.Option(True, "--export/--no-export",
                                      help="Afterwards, export OpenTelemetry spans (OTEL_EXPORTER_OTLP_* endpoint, "
                                           "else OTLP-JSON lines in RUN/otlp/)."),
) -> None:
    """Run COMMAND (after --) and record every engine process it starts (vLLM, transformers) into the run directory."""
    command = list(ctx.args)
    if not command:
        _fail("no command given: servescope run --out RUN -- python script.py")
    from servescope.record.launcher import run_command

    code = run_command(command, out, export_spans=export_spans)
    typer.echo(f"servescope: recorded into {out} (command exit code {code}); next: servescope analyze {out}",
               err=True)
    raise typer.Exit(code)


@app.command()
def analyze(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON document {requests, summary}."),
    tbt_slo: Optional[float] = typer.Option(None, "--tbt-slo", help="TBT deadline in seconds (adds fluidity)."),
    ttft_slo: Optional[float] = typer.Option(None, "--ttft-slo", help="TTFT deadline in seconds for fluidity."),
    prefill_model: Optional[Path] = typer.Option(None, "--prefill-model",
                                                 help="Fluidity's TTFT deadline = predicted prefill (servescope "
                                                      "calibrate-prefill) + --ttft-slack."),
    ttft_slack: float = typer.Option(0.0, "--ttft-slack", help="Slack added to the predicted prefill, seconds."),
) -> None:
    """Print the run's per-request metrics and their distributions."""
    from servescope.analysis.summary import analyze_run, summary_text
    from servescope.run.directory import RunDirError

    try:
        model = None
        if prefill_model is not None:
            from servescope.analysis.prefill_calibration import load_prefill_model

            model = load_prefill_model(prefill_model)
        result = analyze_run(run_dir, tbt_slo_s=tbt_slo, ttft_slo_s=ttft_slo, include_requests=as_json,
                             prefill_model=model, ttft_slack_s=ttft_slack)
    except (RunDirError, ValueError) as exc:
        _fail(str(exc))
    if as_json:
        json.dump(result, sys.stdout, allow_nan=False)
        sys.stdout.write("\n")
    else:
        typer.echo(summary_text(result))


@app.command("calibrate-prefill")
def calibrate_prefill_command(
    runs: List[Path] = typer.Argument(..., help="Calibration runs (e.g. servescope bench --concurrency 1)."),
    out: Path = typer.Option(..., "--out", "-o", help="JSON file to write the prefill model to."),
) -> None:
    """Fit the isolated-prefill time model (fluidity's first-token deadline) on recorded runs."""
    from servescope.analysis.prefill_calibration import calibrate_prefill, save_prefill_model
    from servescope.run.directory import RunDirError

    try:
        model = calibrate_prefill([str(r) for r in runs])
    except (RunDirError, ValueError) as exc:
        _fail(str(exc))
    save_prefill_model(model, out)
    c0, c1, c2 = model.coefficients_s
    typer.echo(f"servescope: prefill_s = {c0:.4g} + {c1:.4g} * L + {c2:.4g} * L^2 from {model.num_samples} isolated "
               f"prefills (rms residual {model.rms_residual_s * 1e3:.3g} ms); wrote {out}")


@app.command()
def export(
    run_dir: Path = typer.Argument(..., help="A run directory."),
    otlp: Optional[str] = typer.Option(None, "--otlp", help="OTLP endpoint, e.g. http://127.0.0.1:4318"),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="http/protobuf (default) or grpc"),
    perfetto: Optional[Path] = typer.Option(None, "--perfetto", help="Write a Perfetto/Chrome trace JSON file."),
) -> None:
    """Export a finished run as OpenTelemetry spans (OTLP, or OTLP-JSON lines in RUN) or a Perfetto trace."""
    from servescope.run.directory import RunDirError, check_run_dir

    try:
        check_run_dir(run_dir)
        if perfetto is not None:
            from servescope.export.perfetto import write_perfetto_trace

            n = write_perfetto_trace(run_dir, perfetto)
            typer.echo(f"servescope: wrote {n} trace events to {perfetto} (open it at ui.perfetto.dev)")
        if perfetto is None or otlp is not None:
            from servescope.export.otel_export import export_run

            n = export_run(run_dir, endpoint=otlp, protocol=protocol)
            where = otlp or str(Path(run_dir) / "otlp" / "spans.jsonl")
            typer.echo(f"servescope: exported {n} spans to {where}")
    except RunDirError as exc:
        _fail(str(exc))


@app.command()
def split(
    run_dir: Path = typer.Argument(..., help="A run directory whose driver recorded phases (RUN/phases.json)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where the phase runs go (default RUN/phases/)."),
) -> None:
    """Cut a run recorded in phases (a warm-up, several loads on one engine) into one run directory per phase."""
    from servescope.run.phases import split_run
    from servescope.run.directory import RunDirError

    try:
        paths = split_run(run_dir, out)
    except RunDirError as exc:
        _fail(str(exc))
    for name, path in paths.items():
        typer.echo(f"{name}: {path}")


model_app = typer.Typer(help="Dummy-weight models for engines without a model hub.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("init")
def model_init(
    directory: Path = typer.Argument(..., help="Directory to write (config.json + tokenizer)."),
    arch: str = typer.Option("tiny", "--arch", help="tiny | llama3-8b | llama2-7b | olmoe-1b-7b | llama3-1b"),
    no_tokenizer: bool = typer.Option(False, "--no-tokenizer", help="Write config.json only."),
) -> None:
    """Write a model directory that vLLM serves with --load-format dummy, no hub needed."""
    from servescope.bench.model_kit import ARCHS, init_model_dir

    if arch not in ARCHS:
        _fail(f"unknown --arch {arch!r}; choose from {', '.join(ARCHS)}")
    path = init_model_dir(directory, arch, with_tokenizer=not no_tokenizer)
    typer.echo(f"servescope: wrote {arch} to {path} (serve it with --load-format dummy)")


@app.command()
def overhead(
    model: Path = typer.Option(..., "--model", help="Model directory (servescope model init)."),
    out: Path = typer.Option(..., "--out", "-o", help="Directory for overhead.json and the traced runs."),
    load: str = typer.Option("offline", "--load", help="offline (one batch) or served (Poisson arrivals)."),
    method: str = typer.Option("toggle", "--method",
                               help="toggle: one engine, tracing switched off/on (offline); restart: an engine per arm."),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Repeats of each arm (alternating off, on)."),
    num_requests: int = typer.Option(64, "--num-requests", min=1),
    prompt_len: int = typer.Option(256, "--prompt-len", min=1),
    output_len: int = typer.Option(64, "--output-len", min=1),
    rate: float = typer.Option(4.0, "--rate", help="Requests/s for --load served."),
    engine_args: str = typer.Option("{}", "--engine-args", help="JSON dict of vLLM engine arguments."),
) -> None:
    """Measure what tracing costs: the same workload with tracing off and on, alternating."""
    from servescope.overhead.harness import run_overhead

    try:
        args = json.loads(engine_args)
    except json.JSONDecodeError as exc:
        _fail(f"--engine-args is not JSON: {exc}")
    if load == "served" and method == "toggle":
        method = "restart"
    report = run_overhead(str(model), engine_args=args, load=load, method=method, repeats=repeats,
                          num_requests=num_requests, prompt_len=prompt_len, output_len=output_len, rate=rate,
                          out_dir=out)
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Tracing off vs on ({load}, {method}, {repeats} repeats each; medians)")
    for col in ("metric", "off", "on", "change", "off spread"):
        table.add_column(col)
    for k, v in report["change"].items():
        table.add_row(k, f"{v['off_median']:.4g}", f"{v['on_median']:.4g}",
                      f"{100 * (v['relative_change'] or 0):+.2f}%", f"{100 * (v['off_spread'] or 0):.2f}%")
    Console().print(table)
    typer.echo(f"servescope: wrote {out / 'overhead.json'}")


@app.command()
def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", "-o", help="Run directory to record into (created)."),
    requests: int = typer.Option(200, "--requests", min=1, help="Requests from the start of the trace."),
    rate: float = typer.Option(3.0, "--rate", help="Replay rate, requests/s (the trace's gaps are scaled)."),
    tbt_slo: float = typer.Option(0.1, "--tbt-slo", help="TBT deadline for the fluidity index, seconds."),
) -> None:
    """The main job: replay the Azure 2023 conversation trace against vLLM (CPU build, tiny dummy model),
    record it, analyse it, audit it and write the report."""
    from servescope.demo import run_demo

    run_demo(out, requests=requests, rate_per_s=rate, tbt_slo_s=tbt_slo, echo=typer.echo)


def _register_subcommands() -> None:
    from servescope.cli import analysis as analysis_commands

    analysis_commands.register(app)
    for module in ("servescope.cli.report", "servescope.cli.bench"):
        try:
            __import__(module, fromlist=["register"]).register(app)
        except ImportError:  # not built yet in this checkout
            pass


_register_subcommands()


def main() -> None:
    """Entry point of the `servescope` console script."""
    app()


