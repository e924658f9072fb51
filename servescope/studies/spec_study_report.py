"""The speculative-decoding study's own figures and tables, from one or more study directories.

    python -m servescope.studies.spec_study_report STUDY_DIR[@TAG] [STUDY_DIR[@TAG] ...] --out DIR

Each STUDY_DIR is an ``--out`` of ``servescope.studies.spec_study`` (one per device call when
configurations were run separately). Their points are merged, the aggregate over repeats and
the speedups / crossover loads are recomputed (spec_study.aggregate and speedups), and DIR gets:

- ``study.json``: the merged study;
- ``tables.md``: per configuration and load, medians with the range over repeats; speedups and
  crossover loads against both baselines; per-step region times; acceptance checks;
- ``latency-vs-load.png``: e2e, TPOT and TTFT medians against the arrival rate (range over repeats);
- ``speedup.png``: speedup of the median e2e latency over each baseline, the crossover at 1;
- ``step-times.png``: per engine step, the median GPU time of each worker region and the host time
  of the proposer, per configuration, at one load;
- ``tpot-p50-p99.png``: TPOT at P50 and P99 per configuration and load (what a mean would hide).

The paper's per-run views (TBT CDFs per token and per chunk, fluidity, TTFT against prompt length)
come from ``servescope report`` over the phase runs (STUDY_DIR/runs/<config>/<phase>).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from servescope.analysis.checklist import nested_get
from servescope.report.figures import RUN_COLORS, new_figure, style_axes
from servescope.studies.spec_study import BASELINES, aggregate, ratios, speedups

MS = 1e3
TABLE_METRICS = (("e2e_p50_s", "e2e P50"), ("tpot_p50_s", "TPOT P50"), ("tpot_p99_s", "TPOT P99"),
                 ("ttft_p50_s", "TTFT P50"), ("ttft_p99_s", "TTFT P99"), ("tbt_chunk_p99_s", "TBT/chunk P99"))
REGIONS = ("forward", "draft", "sample", "bookkeep")


def merge(study_dirs: list[str]) -> dict:
    """Return the merged study: every point of every directory, aggregated again.

    A directory given as DIR@TAG has its configurations renamed <config>@TAG: the same
    configuration measured twice (another engine start, another machine) stays apart.
    """
    points, rates, setups = {}, set(), []
    for arg in study_dirs:
        d, _, tag = str(arg).partition("@")
        d = Path(d)
        study = json.loads((d / "study.json").read_text())
        for key, point in study["points"].items():
            local = d / "runs" / key
            if tag:
                config = f"{point['config']}@{tag}"
                key = f"{config}/{key.split('/', 1)[1]}"
                point = {**point, "config": config}
            if key in points:
                raise ValueError(f"{d}: point {key} is also in another study directory (tell them apart: DIR@TAG)")
            points[key] = {**point, "run_dir": str(local) if local.exists() else point.get("run_dir")}
        rates.update(study["setup"]["rates"])
        setups.append({"dir": str(d), **study["setup"]})
    rates = sorted(rates)
    agg = aggregate(points)
    return {"setups": setups, "rates": rates, "points": points, "aggregate": agg, "speedup": speedups(agg, rates),
            "lease_to_lease": lease_to_lease(agg, rates)}


def lease_to_lease(agg: dict, rates: list[float]) -> dict:
    """Return <config>@TAG -> the untagged <config>'s e2e P50 median / this one's, per rate, and whether
    the repeats' ranges are apart: the same configuration on another machine lease (engine start)."""
    out = {}
    for config, loads in agg.items():
        name, _, tag = config.partition("@")
        if tag and name in agg:
            ratio, resolved = ratios(agg[name], loads, "e2e_p50_s", rates)
            out[config] = {"reference": name, "rates": rates, "ratio": ratio, "resolved": resolved}
    return out


def loads_of(study: dict) -> list[str]:
    closed = sorted({p["load"] for p in study["points"].values() if p.get("load", "").startswith("c")})
    return [f"r{r:g}" for r in study["rates"]] + closed


def configs_of(study: dict) -> list[str]:
    """Return the configurations grouped by tag (untagged first), baselines first within a tag."""
    def order(config: str):
        name, _, tag = config.partition("@")
        return (tag, BASELINES.index(name) if name in BASELINES else len(BASELINES), name)

    return sorted(study["aggregate"], key=order)


def tables_markdown(study: dict) -> str:
    """Return the study's tables as Markdown (times in ms)."""
    agg, loads, configs = study["aggregate"], loads_of(study), configs_of(study)
    out = ["Medians over repeats, [min, max] in brackets; times in ms.", ""]
    for metric, title in TABLE_METRICS:
        out += [f"### {title}", "", "| configuration | " + " | ".join(loads) + " |",
                "|---|" + "---|" * len(loads)]
        for c in configs:
            cells = [_cell(agg[c].get(load, {}).get(metric), MS) for load in loads]
            out.append(f"| {c} | " + " | ".join(cells) + " |")
        out.append("")
    out += ["### Output tokens/s", "", "| configuration | " + " | ".join(loads) + " |", "|---|" + "---|" * len(loads)]
    for c in configs:
        out.append(f"| {c} | " + " | ".join(_cell(agg[c].get(load, {}).get("output_tokens_per_s"), 1, ".0f")
                                           for load in loads) + " |")
    out += ["", "### Speedup of the median (baseline / configuration; > 1: speculation helps) and crossover rate", "",
            "~: not resolved (the two configurations' ranges over repeats overlap).", "",
            "| configuration | baseline | metric | " + " | ".join(f"r{r:g}" for r in study["rates"])
            + " | crossover (req/s) |",
            "|---|---|---|" + "---|" * (len(study["rates"]) + 1)]
    for c, by_base in study["speedup"].items():
        for base, by_metric in by_base.items():
            for metric, s in by_metric.items():
                cells = ["-" if v is None else f"{v:.2f}" + ("" if ok else "~")
                         for v, ok in zip(s["speedup"], s.get("resolved", [True] * len(s["speedup"])))]
                cross = s["crossover_rate"]
                cross = f"{cross:.2g}" if isinstance(cross, float) else str(cross)
                out.append(f"| {c} | {base} | {metric.removesuffix('_s')} | " + " | ".join(cells) + f" | {cross} |")
    out += ["", "A configuration tagged @TAG is compared with the baselines of its own tag where that lease ran "
            "them, else with the untagged ones (another lease)."]
    if study.get("lease_to_lease"):
        out += ["", "### The same configuration on another lease: e2e P50 of the untagged run / this run", "",
                "| configuration | reference | " + " | ".join(f"r{r:g}" for r in study["rates"]) + " |",
                "|---|---|" + "---|" * len(study["rates"])]
        for c, s in study["lease_to_lease"].items():
            cells = ["-" if v is None else f"{v:.2f}" + ("" if ok else "~") for v, ok in zip(s["ratio"], s["resolved"])]
            out.append(f"| {c} | {s['reference']} | " + " | ".join(cells) + " |")
    out += ["", "### Per engine step (median over the steps of the first repeat): region GPU time, proposer host time "
            "and the worker thread's CPU time in it, EngineCore CPU", "",
            "| configuration | load | " + " | ".join(f"{r} GPU" for r in REGIONS)
            + " | draft host | draft on CPU | EngineCore CPU |", "|---|---|" + "---|" * (len(REGIONS) + 3)]
    for c in configs:
        for load in loads:
            p = study["points"].get(f"{c}/{load}-rep0")
            if not p or "gpu_ms" not in p:
                continue
            cells = [_p50(p["gpu_ms"], r) for r in REGIONS] + [_p50(p["host_ms"], "draft"),
                                                               _p50(p.get("host_cpu_ms", {}), "draft")]
            cpu = p.get("engine_cpu_ms_per_step_p50")
            out.append(f"| {c} | {load} | " + " | ".join(cells) + f" | {'-' if cpu is None else f'{cpu:.2f}'} |")
    out += ["", "### Acceptance: servescope's records against vLLM's counters over the same phase", "",
            "| configuration | phases | all equal | mean acceptance length (range) | per position (first phase) | "
            "decode steps with a draft (range) |", "|---|---|---|---|---|---|"]
    for c in configs:
        acc = [p["acceptance"] for p in study["points"].values() if p.get("config") == c and p.get("acceptance")]
        if not acc:
            continue
        lengths = [a["mean_length"] for a in acc]
        shares = [a["proposal_share"] for a in acc if a.get("proposal_share") is not None]
        equal = all(a["agrees_with_vllm"]["equal"] for a in acc)
        out.append(f"| {c} | {len(acc)} | {'yes' if equal else 'NO'} | {np.median(lengths):.2f} "
                   f"({min(lengths):.2f}-{max(lengths):.2f}) | {', '.join(f'{x:.2f}' for x in acc[0]['per_position'])}"
                   f" | {min(shares):.2f}-{max(shares):.2f} |")
    return "\n".join(out) + "\n"


def _cell(spread: dict | None, scale: float, fmt: str = ".1f") -> str:
    if not spread or spread.get("median") is None:
        return "-"
    return f"{spread['median'] * scale:{fmt}} [{spread['min'] * scale:{fmt}}, {spread['max'] * scale:{fmt}}]"


def _p50(times: dict, region: str) -> str:
    t = times.get(region)
    return "-" if not t else f"{t['p50']:.2f}"


def is_baseline(config: str) -> bool:
    return config.partition("@")[0] in BASELINES


def latency_vs_load_figure(study: dict, configs: list[str]):
    fig = new_figure(3.6)
    axes = fig.subplots(1, 3)
    rates = study["rates"]
    for i, c in enumerate(configs):
        for ax, (metric, title) in zip(axes, (("e2e_p50_s", "end-to-end latency P50"), ("tpot_p50_s", "TPOT P50"),
                                              ("ttft_p50_s", "TTFT P50"))):
            spreads = [study["aggregate"][c].get(f"r{r:g}", {}).get(metric) for r in rates]
            med = np.array([s["median"] * MS if s and s["median"] is not None else np.nan for s in spreads])
            lo = np.array([s["min"] * MS if s and s["min"] is not None else np.nan for s in spreads])
            hi = np.array([s["max"] * MS if s and s["max"] is not None else np.nan for s in spreads])
            ax.errorbar(rates, med, yerr=[med - lo, hi - med], marker="o", capsize=3, label=c,
                        color=RUN_COLORS[i % len(RUN_COLORS)], linestyle="--" if is_baseline(c) else "-")
            ax.set_xscale("log")
            style_axes(ax, "arrival rate (requests/s)", "ms", title)
    axes[0].legend(fontsize=8)
    return fig


def speedup_figure(study: dict, configs: list[str]):
    fig = new_figure(3.6)
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, ("e2e_p50_s", "tpot_p50_s")):
        for i, c in enumerate(c for c in configs if c in study["speedup"]):
            for base, by_metric in study["speedup"][c].items():
                s = by_metric.get(metric)
                if not s:
                    continue
                style = "-" if base.partition("@")[0] == BASELINES[0] else ":"
                y = [np.nan if v is None else v for v in s["speedup"]]
                ax.plot(s["rates"], y, marker="o", linestyle=style, color=RUN_COLORS[(i + 2) % len(RUN_COLORS)],
                        label=f"{c} vs {base}")
        ax.axhline(1.0, color="#444444", linewidth=1)
        ax.set_xscale("log")
        style_axes(ax, "arrival rate (requests/s)", "baseline / speculative",
                   f"speedup of the median {metric.removesuffix('_p50_s').upper()} (> 1: speculation helps)")
    axes[0].legend(fontsize=7)
    return fig


def step_times_figure(study: dict, configs: list[str], load: str):
    configs = [c for c in configs if f"{c}/{load}-rep0" in study["points"]]
    fig = new_figure(3.8)
    ax = fig.subplots(1, 1)
    x = np.arange(len(configs))
    bottom = np.zeros(len(configs))
    for j, region in enumerate(REGIONS):
        values = np.array([study["points"][f"{c}/{load}-rep0"]["gpu_ms"].get(region, {}).get("p50", 0.0)
                           for c in configs])
        ax.bar(x, values, bottom=bottom, label=f"{region} (GPU)", color=RUN_COLORS[j])
        bottom += values
    host = np.array([study["points"][f"{c}/{load}-rep0"]["host_ms"].get("draft", {}).get("p50", np.nan)
                     for c in configs])
    ax.scatter(x, host, marker="D", color="black", zorder=3, label="draft (host time)")
    on_cpu = np.array([study["points"][f"{c}/{load}-rep0"].get("host_cpu_ms", {}).get("draft", {}).get("p50", np.nan)
                       for c in configs])
    if np.isfinite(on_cpu).any():
        ax.scatter(x, on_cpu, marker="o", s=150, facecolors="none", edgecolors="black", linewidths=1.5, zorder=4,
                   label="draft (worker thread on the CPU)")
    ax.set_xticks(x, configs, fontsize=8)
    style_axes(ax, "", "ms per engine step (P50)", f"per-step time by worker region at {load}")
    ax.legend(fontsize=8)
    return fig


def tpot_figure(study: dict, configs: list[str]):
    loads = loads_of(study)
    fig = new_figure(3.6)
    ax = fig.subplots(1, 1)
    width = 0.8 / max(1, len(configs))
    for i, c in enumerate(configs):
        x = np.arange(len(loads)) + i * width
        p50 = [(nested_get(study["aggregate"], c, load, "tpot_p50_s", "median") or np.nan) * MS for load in loads]
        p99 = [(nested_get(study["aggregate"], c, load, "tpot_p99_s", "median") or np.nan) * MS for load in loads]
        color = RUN_COLORS[i % len(RUN_COLORS)]
        ax.bar(x, p99, width, color=color, alpha=0.35)
        ax.bar(x, p50, width, color=color, label=c)
    ax.set_xticks(np.arange(len(loads)) + 0.4 - width / 2, loads)
    style_axes(ax, "load (r: replay rate in req/s; c: closed loop concurrency)", "ms",
               "TPOT: P50 (solid) and P99 (light) per configuration")
    ax.legend(fontsize=8)
    return fig


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m servescope.studies.spec_study_report")
    ap.add_argument("study_dirs", nargs="+", help="study directories (DIR@TAG: rename its configurations <config>@TAG)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--step-load", default="r1", help="the load whose per-step times are drawn")
    ap.add_argument("--figure-configs", default=None,
                    help="comma-separated configurations to draw (default: all; the tables always hold all)")
    args = ap.parse_args(argv)
    study = merge(args.study_dirs)
    drawn = configs_of(study)
    if args.figure_configs:
        drawn = args.figure_configs.split(",")
        unknown = sorted(set(drawn) - set(study["aggregate"]))
        if unknown:
            ap.error(f"--figure-configs: no such configuration {', '.join(unknown)} "
                     f"(measured: {', '.join(configs_of(study))})")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "study.json").write_text(json.dumps(study, indent=1, default=str))
    (args.out / "tables.md").write_text(tables_markdown(study))
    for name, fig in (("latency-vs-load", latency_vs_load_figure(study, drawn)), ("speedup", speedup_figure(study, drawn)),
                      ("step-times", step_times_figure(study, drawn, args.step_load)),
                      ("tpot-p50-p99", tpot_figure(study, drawn))):
        fig.savefig(args.out / f"{name}.png", dpi=110, facecolor="white")
        print(args.out / f"{name}.png")


if __name__ == "__main__":
    main()
