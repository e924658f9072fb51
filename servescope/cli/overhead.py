"""`servescope overhead`: what tracing costs, measured against vLLM untouched (docs/overhead.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import typer


def _fail(message: str) -> None:
    typer.secho(f"servescope: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        _fail(f"{name} must be a positive finite number, got {value}")


def register(app: typer.Typer) -> None:
    """Add `overhead` to the servescope command line."""

    @app.command()
    def overhead(
        model: Path = typer.Option(..., "--model", help="Model directory (servescope model init)."),
        out: Path = typer.Option(..., "--out", "-o", help="Directory for overhead.json, the arms' logs and runs."),
        load: str = typer.Option("offline", "--load", help="offline (batches through vllm.LLM) or served "
                                                           "(AsyncLLM, Poisson arrivals)."),
        method: str = typer.Option("user", "--method",
                                   help="user: a fresh process per arm, vLLM untouched vs `servescope run` (what a "
                                        "user pays). toggle: a diagnostic, one engine in one process with the hooks "
                                        "switched off and on between batches (patches stay in both arms)."),
        arms: int = typer.Option(4, "--arms", help="Arms per side (untraced and traced)."),
        order: str = typer.Option("balanced", "--order", help="balanced (off on on off ...) or random (seeded)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the prompts, arrivals and a random order."),
        parts: str = typer.Option("default", "--parts", help="Recording parts of the traced arms (servescope run "
                                                             "--parts): measure one part's cost by leaving it out."),
        num_requests: int = typer.Option(256, "--num-requests", help="offline: requests per batch; served: per arm."),
        prompt_len: int = typer.Option(512, "--prompt-len", help="Prompt tokens per request."),
        output_len: int = typer.Option(128, "--output-len", help="Output tokens per request (ignore_eos)."),
        batches: int = typer.Option(6, "--batches", help="offline: measured batches per arm."),
        warmup_batches: int = typer.Option(1, "--warmup-batches", help="offline: warm-up batches per arm."),
        rate: float = typer.Option(16.0, "--rate", help="served: requests/s."),
        warmup_requests: int = typer.Option(64, "--warmup-requests", help="served: warm-up requests per arm."),
        goal: float = typer.Option(1.0, "--goal", help="The cost (percent) a 'cost below' verdict may state."),
        engine_args: str = typer.Option("{}", "--engine-args", help="JSON object of vLLM engine arguments."),
        summary_to: Path = typer.Option(None, "--summary-to", help="Also write overhead.json here after every arm."),
    ) -> None:
        """Measure what tracing costs: the same plain vLLM script untraced and under `servescope run`."""
        try:
            args = json.loads(engine_args)
        except json.JSONDecodeError as exc:
            _fail(f"--engine-args is not JSON: {exc}")
        if not isinstance(args, dict):
            _fail(f"--engine-args must be a JSON object of engine arguments, got {type(args).__name__}")
        if load not in ("offline", "served"):
            _fail(f"--load is offline or served, not {load!r}")
        if order not in ("balanced", "random"):
            _fail(f"--order is balanced or random, not {order!r}")
        for name, value in (("--arms", arms), ("--num-requests", num_requests), ("--prompt-len", prompt_len),
                            ("--output-len", output_len), ("--batches", batches), ("--rate", rate), ("--goal", goal)):
            _positive(name, value)
        if arms < 2:
            _fail("--arms must be at least 2 (an interval needs two arms a side)")
        if warmup_batches < 0 or warmup_requests < 0:
            _fail("--warmup-batches and --warmup-requests must be >= 0")
        if not model.is_dir():
            _fail(f"--model {model}: no such model directory")
        from servescope.run.config import ConfigError, parse_parts

        try:
            parse_parts(parts)
        except ConfigError as exc:
            _fail(f"--parts: {exc}")
        if method == "toggle":
            _toggle(model, out, load, arms, num_requests, prompt_len, output_len, rate, args)
            return
        if method != "user":
            _fail(f"--method is user or toggle, not {method!r}")
        from servescope.overhead.user_pays import OverheadError, UserPaysSpec, run_user_pays

        spec = UserPaysSpec(model=str(model.absolute()), load=load, arms=arms, order=order, seed=seed, parts=parts,
                            engine_args=args, num_requests=num_requests, prompt_len=prompt_len,
                            output_len=output_len, batches=batches, warmup_batches=warmup_batches, rate=rate,
                            warmup_requests=warmup_requests, goal=goal / 100.0)

        def progress(arm: dict) -> None:
            typer.echo(f"servescope: arm {arm['index'] + 1}/{2 * arms} ({arm['arm']}): "
                       f"{arm['output_tokens_per_s']:.1f} output tokens/s, TBT P50 "
                       f"{1e3 * (arm['tbt_per_chunk_p50_s'] or 0):.3f} ms ({arm['elapsed_s']:.0f} s)", err=True)

        try:
            report = run_user_pays(spec, out, on_arm=progress, summary_to=summary_to)
        except OverheadError as exc:
            _fail(str(exc))
        print_report(report)
        typer.echo(f"servescope: wrote {out / 'overhead.json'}")


def print_report(report: dict) -> None:
    """Print the change of every metric with its interval and verdict."""
    from rich.console import Console
    from rich.table import Table

    spec = report["spec"]
    table = Table(title=f"What tracing costs ({spec['load']}, {spec['arms']} + {spec['arms']} fresh-process arms, "
                        f"parts {spec['parts']}; 95% intervals over arms)")
    for col in ("metric", "untraced (geo. mean)", "traced", "change", "95% interval", "verdict"):
        table.add_column(col)
    for name, c in report["changes"].items():
        gm = lambda xs: math.exp(sum(math.log(x) for x in xs) / len(xs))  # noqa: E731
        table.add_row(name, f"{gm(c['off']):.5g}", f"{gm(c['on']):.5g}", f"{100 * c['change']:+.2f}%",
                      f"{100 * c['ci_low']:+.2f}% .. {100 * c['ci_high']:+.2f}%", c["verdict"])
    Console(width=200).print(table)
    goal = report["goal"]
    typer.echo(f"goal ({goal['statement']}): {'met' if goal['met'] else 'not met'}")


def _toggle(model, out, load, arms, num_requests, prompt_len, output_len, rate, args) -> None:
    from servescope.overhead.toggle import run_overhead

    if load != "offline":
        _fail("--method toggle measures the offline load only")
    report = run_overhead(str(model), engine_args=args, load=load, method="toggle", repeats=arms,
                          num_requests=num_requests, prompt_len=prompt_len, output_len=output_len, rate=rate,
                          out_dir=out)
    for k, v in report["change"].items():
        typer.echo(f"{k}: off {v['off_median']:.4g} on {v['on_median']:.4g} change {100 * (v['relative_change'] or 0):+.2f}%")
    typer.echo(f"servescope: wrote {out / 'overhead.json'} (toggle: a diagnostic; patches stay installed in its "
               "off arms and front end, EngineCore and worker share one process: not what a user pays)")
