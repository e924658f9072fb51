"""`servescope overhead` (default method): what tracing costs a user, measured the plain way.

Each arm is one fresh process tree running a plain vLLM script (``user_scripts/offline.py`` or
``user_scripts/served.py``, which import nothing of servescope) in vLLM's default process layout:

- **off**: vLLM untouched. ``VLLM_PLUGINS`` lists every installed vLLM plugin but servescope, so no
  process loads it; an import sentinel (``sentinel/sitecustomize.py``, on PYTHONPATH in both arms)
  notes every process that imports any servescope module, and the arm is refused unless none did.
- **on**: the same command under ``servescope run`` with the recording parts asked for (by default
  what a user gets by default). The run directory is checked afterwards: its recorded output tokens
  must equal the tokens the script received, so the arm is known to have traced what it measured.
- **subset** (only with ``subset_parts`` or ``subset_env``): traced as "on" but recording only those parts, or with
  those environment variables set (e.g. ``SERVESCOPE_HELD_UPDATES=1``: a way of recording against the default).
  Interleaved with the other two kinds in one lease, it measures the share of what it changes (on against subset)
  beside the whole cost (on against off), against the same untraced arms.

Arms run in a balanced (off on on off ...) or seeded random order; warm-up is excluded inside each
arm; every arm's per-batch and per-arm values are kept. The change of each metric and its 95%
interval come from ``stats.relative_change`` (over arms), with the verdict read from the interval.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

from servescope.overhead.stats import arm_order, relative_change
from servescope.run.machine import machine_facts

SCRIPTS = Path(__file__).parent / "user_scripts"
SENTINEL = Path(__file__).parent / "sentinel"
ARM_TIMEOUT_S = 1800
# the goal of docs/overhead.md: throughput and P50/P99 TBT within 0.5%, the interval's worse end within 1%
GOAL_METRICS = ("output_tokens_per_s", "tbt_per_chunk_p50_s", "tbt_per_chunk_p99_s")
GOAL_POINT, GOAL_BOUND = 0.005, 0.01
LATENCY_METRICS = ("ttft", "tbt_per_chunk", "e2e")


class OverheadError(RuntimeError):
    """An arm failed or could not be trusted; the message says which and why."""


@dataclass
class UserPaysSpec:
    """What to measure: the model, the load and its shape, the arms and the recording parts."""

    model: str
    engine: str = "vllm"  # vllm | transformers (offline only: generate_batch)
    load: str = "offline"  # offline | served
    arms: int = 4  # per side
    order: str = "balanced"
    seed: int = 0
    parts: str = "default"
    subset_parts: str | None = None  # a third kind of arm, traced with only these parts (None: two kinds)
    subset_env: dict = field(default_factory=dict)  # ... or traced with these environment variables set
    engine_args: dict = field(default_factory=dict)
    num_requests: int = 256  # offline: per batch; served: per arm
    prompt_len: int = 512
    output_len: int = 128
    batches: int = 6  # offline
    warmup_batches: int = 1  # offline
    prompts: str = "repeated"  # offline: repeated (every batch the same prompts) | fresh (new ones per batch)
    outputs: str = "final"  # offline vLLM: final (LLM.generate's way: e2e only) | delta (every step's tokens: TTFT, TBT)
    rate: float = 16.0  # served, requests/s
    warmup_requests: int = 64  # served
    goal: float = GOAL_BOUND

    def arm_kinds(self) -> tuple[str, ...]:
        """Return the kinds of arm this comparison runs: off and on, and subset when subset_parts or subset_env is given."""
        return ("off", "on", "subset") if self.subset_parts or self.subset_env else ("off", "on")

    def traced_parts(self, arm: str) -> str | None:
        """Return the recording parts of a kind of arm (None: untraced)."""
        return {"on": self.parts, "subset": self.subset_parts or self.parts}.get(arm)

    def arm_variables(self, arm: str) -> dict[str, str]:
        """Return the environment variables a kind of arm sets beyond the common ones (subset_env for subset)."""
        return self.subset_env if arm == "subset" else {}

    def expected_tokens_all(self) -> int:
        """Return the output tokens one arm generates, warm-up included (each request runs to output_len)."""
        if self.load == "offline":
            return (self.warmup_batches + self.batches) * self.num_requests * self.output_len
        return (self.warmup_requests + self.num_requests) * self.output_len

    def script_args(self, result_path: Path) -> list[str]:
        """Return the plain script's command line for one arm."""
        common = ["--num-requests", str(self.num_requests), "--prompt-len", str(self.prompt_len),
                  "--output-len", str(self.output_len), "--engine-args", json.dumps(self.engine_args),
                  "--seed", str(self.seed)]
        if self.load == "offline":
            script = "offline.py" if self.engine == "vllm" else "transformers_offline.py"
            prompts = ["--prompts", self.prompts] + (["--outputs", self.outputs] if self.engine == "vllm" else [])
            return [sys.executable, str(SCRIPTS / script), self.model, str(result_path), *common, *prompts,
                    "--batches", str(self.batches), "--warmup-batches", str(self.warmup_batches)]
        if self.engine != "vllm":
            raise ValueError(f"the served load runs vLLM's AsyncLLM; {self.engine}: offline only")
        if self.load == "served":
            return [sys.executable, str(SCRIPTS / "served.py"), self.model, str(result_path), *common,
                    "--rate", str(self.rate), "--warmup-requests", str(self.warmup_requests)]
        raise ValueError(f"load is 'offline' or 'served', not {self.load!r}")


def other_vllm_plugins() -> list[str]:
    """Return the names of every installed vLLM plugin (any vllm.* entry point group) except servescope's."""
    names = set()
    for dist in metadata.distributions():
        for ep in dist.entry_points:
            if ep.group.startswith("vllm.") and ep.name != "servescope":
                names.add(ep.name)
    return sorted(names)


def arm_environment(arm: str, sentinel_dir: Path, base: dict[str, str] | None = None,
                    variables: dict[str, str] | None = None) -> dict[str, str]:
    """Return the environment of one arm: servescope unloadable when off; the import sentinel in both; the arm's own
    variables (a subset arm's) set after every SERVESCOPE_ variable of the caller's environment is left out.

    VLLM_PLUGINS is part of vLLM's compile-cache key (vllm.envs.compile_factors): the untraced arms, which set it,
    and the traced ones, which do not (as a user's plain run and `servescope run` do not), keep separate compile
    caches, and the first arm of each kind compiles (engine start only; docs/overhead.md)."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if not k.startswith("SERVESCOPE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(SENTINEL)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["SERVESCOPE_SENTINEL_DIR"] = str(sentinel_dir)
    if arm == "off":
        env["VLLM_PLUGINS"] = ",".join(other_vllm_plugins())
    else:
        env.pop("VLLM_PLUGINS", None)
    env.update(variables or {})
    return env


def servescope_imports(sentinel_dir: Path) -> dict[int, list[str]]:
    """Return {pid: servescope modules it imported} as the import sentinel noted them."""
    found = {}
    for path in sorted(sentinel_dir.glob("*")):
        try:
            found[int(path.name)] = sorted(set(path.read_text().split()))
        except (ValueError, OSError):
            continue
    return found


def run_arm(spec: UserPaysSpec, arm: str, index: int, out_dir: Path, env: dict[str, str] | None = None) -> dict:
    """Run one arm in fresh processes; return its metrics (raise OverheadError if it cannot be trusted)."""
    arm_dir = out_dir / "arms" / f"{index:02d}-{arm}"
    arm_dir.mkdir(parents=True, exist_ok=True)
    sentinel_dir = arm_dir / "sentinel"
    sentinel_dir.mkdir(exist_ok=True)
    result_path = arm_dir / "result.json"
    command = spec.script_args(result_path)
    run_dir = arm_dir / "run"
    parts = spec.traced_parts(arm)
    if parts is not None:
        command = [sys.executable, "-m", "servescope", "run", "--out", str(run_dir), "--no-export",
                   "--parts", parts, "--"] + command
    started = time.monotonic()
    with open(arm_dir / "log.txt", "wb") as log:
        proc = subprocess.run(command, env=arm_environment(arm, sentinel_dir, env, spec.arm_variables(arm)), stdout=log,
                              stderr=subprocess.STDOUT, timeout=ARM_TIMEOUT_S)
    elapsed = time.monotonic() - started
    if proc.returncode != 0 or not result_path.exists():
        tail = (arm_dir / "log.txt").read_text(errors="replace")[-3000:]
        raise OverheadError(f"arm {index} ({arm}) exited with code {proc.returncode}; log {arm_dir / 'log.txt'}:\n{tail}")
    result = json.loads(result_path.read_text())
    imports = servescope_imports(sentinel_dir)
    if arm == "off" and (imports or result.get("servescope_in_this_process")):
        raise OverheadError(f"arm {index} (off) loaded servescope code ({imports}): the untraced arm is not untouched")
    metrics = offline_metrics(result) if result["load"] == "offline" else served_metrics(result)
    arm_record = {"arm": arm, "index": index, "elapsed_s": round(elapsed, 3), "engine_start_s": result.get("engine_start_s"),
                  "processes_that_imported_servescope": len(imports), **metrics}
    if parts is not None:
        arm_record["recording"] = recording_check(run_dir, spec.expected_tokens_all())
        if not arm_record["recording"]["complete"]:
            raise OverheadError(f"arm {index} ({arm}) did not record what it measured: {arm_record['recording']}")
    return arm_record


def recording_check(run_dir: Path, expected_tokens: int) -> dict:
    """Return what the traced arm recorded against the tokens its script generated (warm-up included)."""
    from servescope.run.tables import read_table
    from servescope.run.manifest import load_manifest

    emissions = read_table(run_dir, "token_emissions")
    recorded = int(np.asarray(emissions.column("num_tokens").to_numpy(zero_copy_only=False)).sum()) if len(emissions) else 0
    health = load_manifest(run_dir).get("health", {})
    return {"tokens_generated": expected_tokens, "tokens_recorded": recorded, "health": health,
            "complete": recorded == expected_tokens and not health.get("rows_dropped")}


def _percentiles(values, prefix: str) -> dict:
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return {f"{prefix}_p50_s": None, f"{prefix}_p99_s": None}
    return {f"{prefix}_p50_s": float(np.percentile(arr, 50)), f"{prefix}_p99_s": float(np.percentile(arr, 99))}


def _latencies(requests: list[tuple[int, list[int]]]) -> dict:
    """Return TTFT, TBT per chunk and e2e samples (s) from (sent_ns, chunk arrival ns) per request.

    An engine whose caller sees only whole batches (transformers' generate_batch) gives no requests:
    its latency percentiles are None and only throughput is compared."""
    ttft, tbt, e2e = [], [], []
    for sent, chunks in requests:
        if not chunks:
            continue
        ttft.append((chunks[0] - sent) / 1e9)
        e2e.append((chunks[-1] - sent) / 1e9)
        tbt.extend((np.diff(chunks) / 1e9).tolist())
    return {"ttft": ttft, "tbt_per_chunk": tbt, "e2e": e2e}


def _summary(samples: dict) -> dict:
    out = {}
    for name in LATENCY_METRICS:
        out.update(_percentiles(samples[name], name))
    return out


DISTRIBUTION_QUANTILES = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999)


def latency_distributions(samples: dict) -> dict:
    """Return each latency's sample count and quantiles (s): where in the distribution two arms differ (a shift of
    every step, or a tail only) is read from these, the verdicts only from the P50 / P99 over arms."""
    out = {}
    for name in LATENCY_METRICS:
        arr = np.asarray(samples[name], dtype=float)
        if arr.size:
            out[name] = {"count": int(arr.size), "quantiles": list(DISTRIBUTION_QUANTILES),
                         "values_s": [float(v) for v in np.quantile(arr, DISTRIBUTION_QUANTILES)]}
    return out


def offline_metrics(result: dict) -> dict:
    """Return an offline arm's throughput and latency percentiles, pooled over its measured batches, and per batch.

    With final outputs (LLM.generate's way) a request's one output marks its end: only e2e is seen."""
    per_batch, pooled = [], {name: [] for name in LATENCY_METRICS}
    tokens = wall = 0
    final = result.get("outputs") == "final"
    for b in result["batches"]:
        samples = _latencies([(0, chunks) for chunks in b["requests"]])
        if final:
            samples["ttft"], samples["tbt_per_chunk"] = [], []
        for name in LATENCY_METRICS:
            pooled[name].extend(samples[name])
        tokens += b["output_tokens"]
        wall += b["wall_ns"]
        per_batch.append({"wall_s": b["wall_ns"] / 1e9, "output_tokens": b["output_tokens"],
                          "output_tokens_per_s": b["output_tokens"] / (b["wall_ns"] / 1e9), **_summary(samples)})
    return {"output_tokens": tokens, "output_tokens_per_s": tokens / (wall / 1e9),
            "batch_s_median": float(np.median([b["wall_s"] for b in per_batch])), **_summary(pooled),
            "batches": per_batch, "distributions": latency_distributions(pooled)}


def served_metrics(result: dict) -> dict:
    """Return a served arm's throughput, latency percentiles, achieved rate and busy fraction."""
    reqs = result["requests"]
    samples = _latencies([(r["sent_ns"], r["chunks"]) for r in reqs])
    tokens = sum(sum(r["tokens_per_chunk"]) for r in reqs)
    wall = result["wall_ns"] / 1e9
    intervals = sorted((r["sent_ns"], r["chunks"][-1]) for r in reqs if r["chunks"])
    busy, end = 0, None
    for s, e in intervals:  # union of the times with at least one request in flight
        if end is None or s > end:
            busy += e - s
            end = e
        elif e > end:
            busy += e - end
            end = e
    return {"output_tokens": tokens, "output_tokens_per_s": tokens / wall, "requests": len(reqs),
            "offered_rate": result["rate"], "achieved_rate": len(reqs) / wall,
            "busy_fraction": busy / 1e9 / wall, **_summary(samples), "distributions": latency_distributions(samples)}


CHANGE_METRICS = ("output_tokens_per_s", *(f"{m}_{q}_s" for m in LATENCY_METRICS for q in ("p50", "p99")))


# with a subset kind: the subset's own cost, and the share of the parts it leaves out (the full trace against it)
SUBSET_PAIRS = {"subset_vs_off": ("off", "subset"), "on_vs_subset": ("subset", "on")}


def subset_label(spec: dict) -> str:
    """The third kind of arm of a comparison's spec in words: its parts, and the environment variables it sets."""
    variables = " ".join(f"{k}={v}" for k, v in (spec.get("subset_env") or {}).items())
    return f"parts {spec['subset_parts'] or spec['parts']}" + (f" with {variables}" if variables else "")


def changes_between(arms: list[dict], base: str, new: str, goal: float) -> dict:
    """Return the change of every metric from the base kind's arms to the new kind's (over arms), with interval and
    verdict ("off" / "on" in each change name the base and the new arms)."""
    changes = {}
    for metric in CHANGE_METRICS:
        base_values = [a[metric] for a in arms if a["arm"] == base and a.get(metric)]
        new_values = [a[metric] for a in arms if a["arm"] == new and a.get(metric)]
        if len(base_values) >= 2 and len(new_values) >= 2:
            changes[metric] = relative_change(metric, base_values, new_values, higher_is_better=metric.endswith("per_s"),
                                              goal=goal).as_dict()
    return changes


def compare_arms(arms: list[dict], goal: float) -> dict:
    """Return the change of every metric (over arms) with interval and verdict, and whether the goal is met; with
    subset arms, also the changes of SUBSET_PAIRS."""
    changes = changes_between(arms, "off", "on", goal)
    met = {m: (abs(changes[m]["change"]) <= GOAL_POINT and changes[m]["cost_ci"][1] <= GOAL_BOUND)
           for m in GOAL_METRICS if m in changes}
    subset = {}
    if any(a["arm"] == "subset" for a in arms):
        subset = {"subset_changes": {name: changes_between(arms, base, new, goal)
                                     for name, (base, new) in SUBSET_PAIRS.items()}}
    return {"changes": changes, **subset,
            "goal": {"statement": f"throughput and P50/P99 TBT change within {100 * GOAL_POINT:g}%, the 95% "
                                  f"interval's worse end within {100 * GOAL_BOUND:g}%",
                     "met": bool(met) and all(met.values()), "per_metric": met}}


def run_user_pays(spec: UserPaysSpec, out_dir: str | os.PathLike, *, env: dict[str, str] | None = None,
                  on_arm: Callable[[dict], None] | None = None, summary_to: str | os.PathLike | None = None,
                  resume: bool = False, budget_s: float | None = None) -> dict:
    """Run every arm of the comparison; write and return out_dir/overhead.json (also to summary_to, after
    every arm, so that a run cut short keeps the arms it finished).

    An out_dir that holds an earlier comparison is never overwritten: resume=True finishes it (the same spec,
    the arms it recorded kept as they are; an arm cut short is moved aside, not deleted), otherwise OverheadError.
    budget_s: start no arm that the slowest arm so far says would end after budget_s seconds; the document is
    then left incomplete, for a later call with resume=True (a lease of the GPU machine is 10 minutes a call)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    order = arm_order(spec.arms, spec.order, spec.seed, spec.arm_kinds())
    facts = machine_facts()
    arms = _earlier_arms(spec, out_dir, order, resume)
    started = time.monotonic()
    slowest = 0.0
    for i in range(len(arms), len(order)):
        if budget_s is not None and time.monotonic() - started + slowest > budget_s:
            break
        arm_started = time.monotonic()
        record = run_arm(spec, order[i], i, out_dir, env)
        slowest = max(slowest, time.monotonic() - arm_started)
        arms.append(record)
        if on_arm is not None:
            on_arm(record)
        _write([out_dir / "overhead.json", summary_to], spec, facts, order, arms, None)
    comparison = compare_arms(arms, spec.goal) if len(arms) == len(order) else None
    return _write([out_dir / "overhead.json", summary_to], spec, facts, order, arms, comparison)


def _earlier_arms(spec: UserPaysSpec, out_dir: Path, order: list[str], resume: bool) -> list[dict]:
    """Return the arms an earlier call recorded in out_dir (resume), after moving aside an arm it left unfinished;
    raise OverheadError where out_dir holds a comparison that is not to be resumed or is not this one."""
    path = out_dir / "overhead.json"
    arms_dir = out_dir / "arms"
    if not resume:
        if path.exists() or (arms_dir.is_dir() and any(arms_dir.iterdir())):
            raise OverheadError(f"{out_dir} holds an earlier comparison ({path.name}, arms/): give another --out, "
                                "or --resume to finish it")
        return []
    if not path.exists():
        raise OverheadError(f"--resume: {path} does not exist: nothing to resume")
    try:
        earlier = json.loads(path.read_text())
    except ValueError as exc:
        raise OverheadError(f"--resume: {path} is not readable JSON ({exc})") from None
    if earlier.get("complete"):
        raise OverheadError(f"--resume: {path} is complete: nothing to resume")
    differ = sorted(k for k in set(spec.__dict__) | set(earlier.get("spec", {}))
                    if spec.__dict__.get(k) != earlier.get("spec", {}).get(k))
    if differ or earlier.get("order") != order:
        raise OverheadError(f"--resume: {path} measured another comparison (differs in {', '.join(differ) or 'order'})")
    arms = earlier.get("arms", [])
    for leftover in sorted(arms_dir.glob("*")) if arms_dir.is_dir() else []:
        index = leftover.name.split("-", 1)[0]
        if index.isdigit() and int(index) >= len(arms):  # begun, never recorded: kept aside, not deleted
            aside = out_dir / "unfinished-arms" / f"{leftover.name}-{time.strftime('%Y%m%dT%H%M%S')}"
            aside.parent.mkdir(exist_ok=True)
            leftover.rename(aside)
    return arms


def _write(paths: list, spec: UserPaysSpec, facts: dict, order: list, arms: list, comparison: dict | None) -> dict:
    doc = {"method": "user-pays", "machine": facts, "spec": spec.__dict__, "order": order,
           "complete": comparison is not None, "arms": arms, **(comparison or {})}
    text = json.dumps(doc, indent=1, default=str)
    for path in paths:
        if path is None:
            continue
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return doc
