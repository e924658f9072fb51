"""The `servescope overhead` command: what tracing costs a user, measured against vLLM untouched (docs/overhead.md)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import typer

from servescope.cli.errors import CommandError
from servescope.cli.options import (any_finite, at_least_two, environment_variables, json_object, non_negative, one_of,
                                    output_dir, output_file, positive)
from servescope.cli.record import PARTS_HELP, recording_parts


def register(app: typer.Typer) -> None:
    """Add the `overhead` command to the servescope command line."""
    app.command()(overhead)


def overhead(
    model: Path = typer.Option(..., "--model", help="Model directory (servescope model init)."),
    out: Path = typer.Option(..., "--out", "-o", callback=output_dir,
                             help="Directory for overhead.json, the arms' logs and traced runs."),
    engine: str = typer.Option("vllm", "--engine", callback=one_of("vllm", "transformers"),
                               help="vllm, or transformers (continuous batching, offline load only: batch throughput)."),
    load: str = typer.Option("offline", "--load", callback=one_of("offline", "served"),
                             help="offline (batches through vllm.LLM) or served (AsyncLLM, Poisson arrivals)."),
    method: str = typer.Option("user", "--method", callback=one_of("user", "toggle"),
                               help="user: a fresh process per arm, vLLM untouched vs `servescope run` (what a user "
                                    "pays). toggle: a diagnostic, one engine in one process with the hooks switched "
                                    "off and on between batches (patches stay in both arms)."),
    arms: int = typer.Option(4, "--arms", callback=at_least_two,
                             help="Arms per side (untraced and traced); an interval needs at least 2."),
    order: str = typer.Option("balanced", "--order", callback=one_of("balanced", "random"),
                              help="balanced (off on on off ...) or random (seeded by --seed)."),
    seed: int = typer.Option(0, "--seed", callback=any_finite,
                             help="Seed of the prompts, the arrivals and a random order."),
    parts: str = typer.Option("default", "--parts", callback=recording_parts,
                              help="The traced arms' recording parts; measure one part's cost by leaving it out. "
                                   + PARTS_HELP),
    subset_parts: Optional[str] = typer.Option(None, "--subset-parts", callback=recording_parts,
                                               help="Add a third kind of arm, traced with only these parts, interleaved "
                                                    "with the other two: the parts it leaves out get their own share "
                                                    "(traced against subset) beside the whole cost, in one comparison."),
    subset_env: Optional[list[str]] = typer.Option(None, "--subset-env", callback=environment_variables,
                                                   help="NAME=VALUE (repeatable): the third kind of arm is traced with "
                                                        "these environment variables set (with --parts, or with "
                                                        "--subset-parts if given), e.g. SERVESCOPE_HELD_UPDATES=1."),
    num_requests: int = typer.Option(256, "--num-requests", callback=positive,
                                     help="offline: requests per batch; served: requests per arm."),
    prompt_len: int = typer.Option(512, "--prompt-len", callback=positive, help="Prompt tokens per request."),
    output_len: int = typer.Option(128, "--output-len", callback=positive, help="Output tokens per request."),
    batches: int = typer.Option(6, "--batches", callback=positive, help="offline: measured batches per arm."),
    warmup_batches: int = typer.Option(1, "--warmup-batches", callback=non_negative,
                                       help="offline: warm-up batches per arm."),
    prompts: str = typer.Option("repeated", "--prompts", callback=one_of("repeated", "fresh"),
                                help="offline vLLM: repeated (the same prompts every batch: vLLM's prefix cache serves "
                                     "their prefill, batches are decode-bound, where tracing costs most) or fresh "
                                     "(new prompts per batch: prefill-bound)."),
    outputs: str = typer.Option("final", "--outputs", callback=one_of("final", "delta"),
                                help="offline vLLM: final (one output per request, as LLM.generate delivers: end-to-end "
                                     "only) or delta (every step's new tokens: TTFT and TBT per chunk too)."),
    rate: float = typer.Option(16.0, "--rate", callback=positive, help="served: requests/s (Poisson)."),
    warmup_requests: int = typer.Option(64, "--warmup-requests", callback=non_negative,
                                        help="served: warm-up requests per arm."),
    goal: float = typer.Option(1.0, "--goal", callback=positive,
                               help="The cost (percent) a 'cost below' verdict may state."),
    engine_args: str = typer.Option("{}", "--engine-args", callback=json_object,
                                    help="JSON object of vLLM engine arguments, e.g. '{\"max_model_len\": 2048}'."),
    summary_to: Optional[Path] = typer.Option(None, "--summary-to", callback=output_file,
                                              help="Also write overhead.json here after every arm."),
    resume: bool = typer.Option(False, "--resume",
                                help="Finish the comparison an earlier call left in --out (the same options); its "
                                     "arms are kept. Without it, an --out holding a comparison is refused."),
    budget_s: Optional[float] = typer.Option(None, "--budget-s", callback=positive,
                                             help="Start no arm that would end after this many seconds (judged by "
                                                  "the slowest arm so far); --resume finishes the rest later."),
) -> None:
    """Measure what tracing costs: the same plain vLLM script untraced and under `servescope run`."""
    if not model.is_dir():
        raise CommandError(f"--model {model}: no such model directory")
    if method == "toggle":
        _toggle(model, out, load, arms, num_requests, prompt_len, output_len, rate, engine_args)
        return
    from servescope.overhead.user_pays import OverheadError, UserPaysSpec, run_user_pays

    if subset_parts is not None and subset_parts == parts and not subset_env:
        raise CommandError(f"--subset-parts {subset_parts}: the same as --parts; a subset leaves some part out")
    if engine == "transformers" and (load != "offline" or method != "user"):
        raise CommandError("--engine transformers measures the offline load with --method user only")
    spec = UserPaysSpec(model=str(model.absolute()), engine=engine, load=load, arms=arms, order=order, seed=seed, parts=parts,
                        subset_parts=subset_parts, subset_env=subset_env or {}, engine_args=engine_args, num_requests=num_requests, prompt_len=prompt_len,
                        output_len=output_len, batches=batches, warmup_batches=warmup_batches, prompts=prompts, outputs=outputs,
                        rate=rate,
                        warmup_requests=warmup_requests, goal=goal / 100.0)

    total_arms = arms * len(spec.arm_kinds())

    def progress(arm: dict) -> None:
        tbt = arm.get("tbt_per_chunk_p50_s")
        typer.echo(f"servescope: arm {arm['index'] + 1}/{total_arms} ({arm['arm']}): "
                   f"{arm['output_tokens_per_s']:.1f} output tokens/s"
                   + (f", TBT P50 {1e3 * tbt:.3f} ms" if tbt else "") + f" ({arm['elapsed_s']:.0f} s)", err=True)

    try:
        report = run_user_pays(spec, out, on_arm=progress, summary_to=summary_to, resume=resume, budget_s=budget_s)
    except OverheadError as exc:
        raise CommandError(str(exc).splitlines()[0] + f" (see {out}/arms/)", exit_code=1) from exc
    if not report["complete"]:
        typer.echo(f"servescope: {len(report['arms'])} of {total_arms} arms within --budget-s; wrote "
                   f"{out / 'overhead.json'}; the same command with --resume runs the rest", err=True)
        raise typer.Exit(3)
    print_report(report)
    typer.echo(f"servescope: wrote {out / 'overhead.json'}")


def print_report(report: dict) -> None:
    """Print the change of every metric with its interval and verdict (and each subset pair's, if any)."""
    spec = report["spec"]
    arms = f"{spec['arms']} fresh-process arms of each kind"
    _print_changes(report["changes"], f"What tracing costs ({spec['load']}, {arms}, parts {spec['parts']}; 95% "
                                      "intervals over arms)", "untraced (geo. mean)", "traced")
    from servescope.overhead.user_pays import subset_label

    subset = report.get("subset_changes", {})
    label = subset_label(spec)
    if "subset_vs_off" in subset:
        _print_changes(subset["subset_vs_off"], f"Tracing {label} ({arms})", "untraced (geo. mean)", "subset")
    if "on_vs_subset" in subset:
        _print_changes(subset["on_vs_subset"], f"What the subset changes: parts {spec['parts']} against {label} "
                                               f"({arms})", "subset (geo. mean)", "traced")
    goal = report["goal"]
    typer.echo(f"goal ({goal['statement']}): {'met' if goal['met'] else 'not met'}")


def _print_changes(changes: dict, title: str, base: str, new: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for col in ("metric", base, new, "change", "95% interval", "verdict"):
        table.add_column(col)
    for name, c in changes.items():
        table.add_row(name, f"{_geomean(c['off']):.5g}", f"{_geomean(c['on']):.5g}", f"{100 * c['change']:+.2f}%",
                      f"{100 * c['ci_low']:+.2f}% .. {100 * c['ci_high']:+.2f}%", c["verdict"])
    Console(width=200).print(table)


def _geomean(values) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _toggle(model, out, load, arms, num_requests, prompt_len, output_len, rate, engine_args) -> None:
    from servescope.overhead.toggle import run_overhead

    if load != "offline":
        raise CommandError("--method toggle measures the offline load only")
    report = run_overhead(str(model), engine_args=engine_args, load=load, method="toggle", repeats=arms,
                          num_requests=num_requests, prompt_len=prompt_len, output_len=output_len, rate=rate,
                          out_dir=out)
    for k, v in report["change"].items():
        typer.echo(f"{k}: off {v['off_median']:.4g} on {v['on_median']:.4g} change "
                   f"{100 * (v['relative_change'] or 0):+.2f}%")
    typer.echo(f"servescope: wrote {out / 'overhead.json'} (toggle is a diagnostic: patches stay installed in its "
               "off arms and front end, EngineCore and worker share one process; not what a user pays)")
