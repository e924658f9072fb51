"""The load commands `bench`, `capacity` and `sweep`: options in, the bench library (servescope/bench/) does the work.

Exit codes: 0 complete; 1 a run whose requests failed beyond --max-failed-fraction or whose
server went away mid-run (the run is kept and marked in bench.json); 2 bad input; 130 Ctrl-C.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from servescope.bench.load.client import DEFAULT_REQUEST_TIMEOUT_S
from servescope.bench.run import DEFAULT_MAX_FAILED_FRACTION
from servescope.cli.errors import EXIT_INTERRUPTED, EXIT_UNSOUND, EXIT_USAGE, CommandError
from servescope.cli.options import (
    engine_args as split_engine_args,
    fraction,
    key_value_pairs,
    non_negative,
    one_of,
    output_dir,
    percentile as a_percentile,
    positive,
)

WORKLOAD_HELP = "Workload name (servescope.bench.workloads.catalog) or trace file."
ENDPOINT_HELP = "Base URL of a running OpenAI-compatible server, e.g. http://127.0.0.1:8000."
ENGINE_ARGS_HELP = "vLLM engine arguments, quoted ('--model DIR --load-format dummy' or 'vllm serve DIR ...'): " \
                   "servescope starts a recorded server on 127.0.0.1."
MAX_FAILED_HELP = "Mark the run requests_failed and exit 1 when more than this fraction of the sent requests " \
                  "end in error or timeout (default 0: any failed request)."


def register(app: typer.Typer) -> None:
    """Add the bench, capacity and sweep commands to the servescope command line."""
    app.command("bench")(bench)
    app.command("capacity")(capacity)
    app.command("sweep")(sweep)


def _echo(message: str) -> None:
    typer.echo(message, err=True)


def _kept(exc: BaseException, out: Path) -> CommandError:
    """Return the failure as one line saying where the (kept) run directory is; bad input exits 2, the rest 1."""
    from servescope.cli.errors import describe

    message, code = describe(exc)
    return CommandError(f"{message} (kept: {out})", code if code == EXIT_USAGE else EXIT_UNSOUND)


def bench(
    workload: str = typer.Option(..., "--workload", "-w", help=WORKLOAD_HELP),
    out: Path = typer.Option(..., "--out", "-o", callback=output_dir,
                             help="Run directory to record into (created; never one that holds a bench run)."),
    rate: Optional[float] = typer.Option(None, "--rate", callback=positive, help="Open loop: mean arrival rate, requests/s."),
    cv: float = typer.Option(1.0, "--cv", callback=positive,
                             help="Coefficient of variation of arrival gaps (1: Poisson; gamma otherwise)."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", callback=positive,
                                              help="Closed loop: requests kept in flight."),
    duration: Optional[float] = typer.Option(None, "--duration", callback=positive,
                                             help="Send no request after this many seconds."),
    count: Optional[int] = typer.Option(None, "--count", "-n", callback=positive,
                                        help="Requests (presets: sampled, default 1000; traces: the first)."),
    time_scale: float = typer.Option(1.0, "--time-scale", callback=positive,
                                     help="Trace replay: multiply the trace's gaps by this."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help=ENDPOINT_HELP),
    model: Optional[str] = typer.Option(None, "--model", help="Model name to ask the endpoint for (default: its first)."),
    server_run: Optional[Path] = typer.Option(None, "--server-run", help="Run directory the endpoint's server records "
                                              "into; its records of this run's requests are copied into --out."),
    engine_args: Optional[str] = typer.Option(None, "--engine-args", callback=split_engine_args, help=ENGINE_ARGS_HELP),
    in_process: bool = typer.Option(False, "--in-process",
                                    help="With --engine-args: drive an AsyncLLM in this process (no HTTP)."),
    spelling: str = typer.Option("module", "--spelling", callback=one_of("module", "cli"),
                                 help="Start the server as 'module' (python -m ...) or 'cli' (vllm serve)."),
    server_env: Optional[List[str]] = typer.Option(None, "--server-env", callback=key_value_pairs,
                                                   help="KEY=VALUE for the server's environment (repeat)."),
    max_prompt_tokens: Optional[int] = typer.Option(None, "--max-prompt-tokens", callback=positive,
                                                    help="Cap prompt lengths (tokens)."),
    max_output_tokens: Optional[int] = typer.Option(None, "--max-output-tokens", callback=positive,
                                                    help="Cap output lengths (tokens)."),
    vocab_size: Optional[int] = typer.Option(None, "--vocab-size", callback=positive,
                                             help="Model vocabulary size (default: its config.json)."),
    seed: int = typer.Option(0, "--seed", callback=non_negative, help="Seed of lengths (presets), arrivals and prompt ids."),
    timeout: float = typer.Option(DEFAULT_REQUEST_TIMEOUT_S, "--timeout", callback=positive,
                                  help="Time limit of one request, seconds."),
    max_failed_fraction: float = typer.Option(DEFAULT_MAX_FAILED_FRACTION, "--max-failed-fraction", callback=fraction,
                                              help=MAX_FAILED_HELP),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Live progress (default: on a terminal)."),
    api: str = typer.Option("vllm", "--api", callback=one_of("vllm", "openai"),
                            help="vllm: token-id prompts with vLLM's ignore_eos and return_token_ids; openai: the "
                                 "standard fields only, prompts as text (servers that are not vLLM)."),
    extra_body: str = typer.Option("", "--extra-body", help="JSON object merged into every request body "
                                                            "(server-specific fields)."),
    text_prompts: bool = typer.Option(False, "--text-prompts", help="Send prompts as text (the synthetic tokenizer's "
                                                                    "words of their ids) to vLLM too, so that two "
                                                                    "engines compared tokenize alike."),
) -> None:
    """Send a workload to an OpenAI-compatible server (or an in-process vLLM engine) and record client and
    engine into one run (client only against a server servescope does not trace)."""
    from servescope.bench.run import COMPLETE, INTERRUPTED, BenchSpec, bench_report, check_spec, refuse_recorded_run, \
        run_bench

    spec = BenchSpec(workload, count=count, seed=seed, rate_per_s=rate, cv=cv, concurrency=concurrency,
                     duration_s=duration, time_scale=time_scale, max_prompt_tokens=max_prompt_tokens,
                     max_output_tokens=max_output_tokens, vocab_size=vocab_size, endpoint=endpoint, model=model,
                     server_run=None if server_run is None else str(server_run), engine_args=engine_args or (),
                     in_process=in_process, spelling=spelling, server_env=tuple(server_env or ()),
                     request_timeout_s=timeout, max_failed_fraction=max_failed_fraction, api=api,
                     extra_body=extra_body, text_prompts=text_prompts)
    check_spec(spec)  # contradictory options and an existing run: nothing is written
    refuse_recorded_run(out, starts_engine=bool(spec.engine_args))
    try:
        facts = run_bench(spec, out, progress=progress, echo=_echo)
    except Exception as exc:  # the run directory says how it ended (bench.json); say where it is
        raise _kept(exc, out) from exc
    typer.echo(bench_report(out))
    if facts["status"] == INTERRUPTED:
        raise typer.Exit(EXIT_INTERRUPTED)
    if facts["status"] != COMPLETE:
        raise CommandError(f"{facts['error']} (run marked {facts['status']} in {out / 'bench.json'})", EXIT_UNSOUND)


def capacity(
    workload: str = typer.Option(..., "--workload", "-w", help=WORKLOAD_HELP),
    out: Path = typer.Option(..., "--out", "-o", callback=output_dir,
                             help="Directory of the search: probes/<load key>/rate-R/ runs, capacity.json."),
    slo: str = typer.Option(..., "--slo", callback=one_of("fluidity", "tbt-ttft", "ttft-tpot"),
                            help="fluidity | tbt-ttft | ttft-tpot"),
    tbt: Optional[float] = typer.Option(None, "--tbt", callback=positive,
                                        help="TBT bound or fluidity decode deadline D_d, seconds."),
    ttft: Optional[float] = typer.Option(None, "--ttft", callback=positive,
                                         help="TTFT bound (fluidity: prefill deadline), seconds."),
    tpot: Optional[float] = typer.Option(None, "--tpot", callback=positive, help="TPOT bound, seconds."),
    percentile: float = typer.Option(99.0, "--percentile", callback=a_percentile,
                                     help="Percentile the bounds apply to."),
    min_fluidity: float = typer.Option(0.9, "--min-fluidity", callback=fraction,
                                       help="Fluidity SLO: minimum fluidity index."),
    tbt_convention: str = typer.Option("per_token", "--tbt-convention", callback=one_of("per_token", "per_chunk"),
                                       help="per_token | per_chunk"),
    start_rate: float = typer.Option(..., "--start-rate", callback=positive,
                                     help="First bracket is [0, 2 x this], requests/s."),
    granularity: float = typer.Option(0.1, "--granularity", callback=positive,
                                      help="Stop when the bracket is within this fraction."),
    max_probes: int = typer.Option(12, "--max-probes", callback=positive, help="At most this many probe runs."),
    min_rate: Optional[float] = typer.Option(None, "--min-rate", callback=positive,
                                             help="Stop if the capacity is below this, requests/s."),
    count: int = typer.Option(100, "--count", "-n", callback=positive, help="Requests per probe."),
    duration: Optional[float] = typer.Option(None, "--duration", callback=positive,
                                             help="Per probe: send no request after this many s."),
    cv: float = typer.Option(1.0, "--cv", callback=positive, help="Coefficient of variation of arrival gaps."),
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help=ENDPOINT_HELP),
    model: Optional[str] = typer.Option(None, "--model", help="Model name to ask the endpoint for."),
    server_run: Optional[Path] = typer.Option(None, "--server-run", help="Where the endpoint's server records "
                                              "(engine-side metrics); without it, client-side metrics are judged."),
    engine_args: Optional[str] = typer.Option(None, "--engine-args", callback=split_engine_args, help=ENGINE_ARGS_HELP),
    spelling: str = typer.Option("module", "--spelling", callback=one_of("module", "cli"), help="'module' or 'cli'."),
    server_env: Optional[List[str]] = typer.Option(None, "--server-env", callback=key_value_pairs,
                                                   help="KEY=VALUE for the server (repeat)."),
    measure: Optional[str] = typer.Option(None, "--measure", callback=one_of("engine", "client"),
                                          help="engine | client (default: engine when recorded)."),
    max_prompt_tokens: Optional[int] = typer.Option(None, "--max-prompt-tokens", callback=positive),
    max_output_tokens: Optional[int] = typer.Option(None, "--max-output-tokens", callback=positive),
    vocab_size: Optional[int] = typer.Option(None, "--vocab-size", callback=positive),
    seed: int = typer.Option(0, "--seed", callback=non_negative),
    timeout: float = typer.Option(DEFAULT_REQUEST_TIMEOUT_S, "--timeout", callback=positive,
                                  help="Time limit of one request, seconds."),
    max_failed_fraction: float = typer.Option(DEFAULT_MAX_FAILED_FRACTION, "--max-failed-fraction", callback=fraction,
                                              help="A probe whose failed fraction is above this fails the SLO."),
) -> None:
    """Search the highest request rate whose run meets the SLO; every probe is cached as a run."""
    from servescope.analysis.slo import build_slos
    from servescope.bench.capacity import capacity_text, run_capacity
    from servescope.bench.run import BenchSpec, load_spec_workload

    slos = build_slos(slo, tbt_s=tbt, ttft_s=ttft, tpot_s=tpot, percentile=percentile, min_fluidity=min_fluidity)
    if (endpoint is None) == (engine_args is None):
        raise CommandError("capacity: give --endpoint URL or --engine-args '...', exactly one")
    if measure is None:
        measure = "client" if endpoint is not None and server_run is None else "engine"
    if measure == "engine" and endpoint is not None and server_run is None:
        raise CommandError("capacity: engine-side metrics of an --endpoint need --server-run DIR (where its server "
                           "records), or --measure client")
    base = BenchSpec(workload, count=count, seed=seed, cv=cv, duration_s=duration, max_prompt_tokens=max_prompt_tokens,
                     max_output_tokens=max_output_tokens, vocab_size=vocab_size, endpoint=endpoint, model=model,
                     server_run=None if server_run is None else str(server_run), engine_args=engine_args or (),
                     spelling=spelling, server_env=tuple(server_env or ()), request_timeout_s=timeout,
                     max_failed_fraction=max_failed_fraction)
    load_spec_workload(base)  # a bad workload fails before anything starts
    try:
        summary = run_capacity(base, out, slos, start_rate=start_rate, measure=measure, tbt_convention=tbt_convention,
                               granularity=granularity, max_probes=max_probes, min_rate=min_rate, echo=_echo)
    except KeyboardInterrupt:
        raise CommandError(f"interrupted; finished probes are kept under {out / 'probes'} and reused next time",
                           EXIT_INTERRUPTED) from None
    except Exception as exc:
        raise _kept(exc, out) from exc
    typer.echo(capacity_text(summary))


def sweep(
    workload: str = typer.Option(..., "--workload", "-w", help=WORKLOAD_HELP),
    out: Path = typer.Option(..., "--out", "-o", callback=output_dir,
                             help="Directory of the sweep: one run per grid point, sweep.json."),
    engine_args: str = typer.Option(..., "--engine-args", callback=split_engine_args,
                                    help="Base vLLM engine arguments, quoted."),
    grid: List[str] = typer.Option(..., "--grid", help="NAME=V1,V2 (engine parameter and values; repeat)."),
    rate: Optional[float] = typer.Option(None, "--rate", callback=positive, help="Open loop rate, requests/s."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", callback=positive,
                                              help="Closed loop: requests in flight."),
    cv: float = typer.Option(1.0, "--cv", callback=positive),
    duration: Optional[float] = typer.Option(None, "--duration", callback=positive,
                                             help="Per point: send no request after this many s."),
    count: Optional[int] = typer.Option(None, "--count", "-n", callback=positive, help="Requests per point."),
    spelling: str = typer.Option("module", "--spelling", callback=one_of("module", "cli")),
    server_env: Optional[List[str]] = typer.Option(None, "--server-env", callback=key_value_pairs,
                                                   help="KEY=VALUE for the server (repeat)."),
    max_prompt_tokens: Optional[int] = typer.Option(None, "--max-prompt-tokens", callback=positive),
    max_output_tokens: Optional[int] = typer.Option(None, "--max-output-tokens", callback=positive),
    vocab_size: Optional[int] = typer.Option(None, "--vocab-size", callback=positive),
    seed: int = typer.Option(0, "--seed", callback=non_negative),
    timeout: float = typer.Option(DEFAULT_REQUEST_TIMEOUT_S, "--timeout", callback=positive),
    max_failed_fraction: float = typer.Option(DEFAULT_MAX_FAILED_FRACTION, "--max-failed-fraction", callback=fraction,
                                              help=MAX_FAILED_HELP),
) -> None:
    """Run one workload on every point of a grid of engine parameters (one recorded server per point)."""
    from servescope.bench.run import COMPLETE, BenchSpec, check_spec, load_spec_workload
    from servescope.bench.sweep import check_engine_args, grid_points, parse_grid, point_engine_args, run_sweep, \
        sweep_text

    base = BenchSpec(workload, count=count, seed=seed, rate_per_s=rate, cv=cv, concurrency=concurrency,
                     duration_s=duration, max_prompt_tokens=max_prompt_tokens, max_output_tokens=max_output_tokens,
                     vocab_size=vocab_size, engine_args=engine_args, spelling=spelling,
                     server_env=tuple(server_env or ()), request_timeout_s=timeout,
                     max_failed_fraction=max_failed_fraction)
    check_spec(base)
    parsed = parse_grid(grid)
    load_spec_workload(base)
    for point in grid_points(parsed):  # vLLM's parser checks every point before anything starts
        check_engine_args(point_engine_args(list(engine_args), point))
    try:
        rows = run_sweep(base, parsed, out, echo=_echo)
    except KeyboardInterrupt:
        raise CommandError(f"interrupted; finished points are kept under {out} and reused next time",
                           EXIT_INTERRUPTED) from None
    except Exception as exc:
        raise _kept(exc, out) from exc
    typer.echo(sweep_text(rows))
    unsound = [row["point_name"] for row in rows if row["status"] != COMPLETE]
    if unsound:
        raise CommandError(f"{len(unsound)} of {len(rows)} points did not complete ({', '.join(unsound)}): "
                           f"see their bench.json", EXIT_UNSOUND)
