"""servescope's analysis, as users import it: ``from servescope.analysis import fluidity_index``.

Every name below is the public Python API of the analysis (docs/analysis.md, "Python API", lists
the same names with what each returns). They are pure functions of a loaded run (``RunData``) or
of numpy arrays; nothing here records or patches anything. Names are resolved on first use, so
importing one submodule (as the engine-side code never does, and the CLI does per command) does
not import the others.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module (under servescope.analysis) that defines it
PUBLIC_API: dict[str, str] = {
    # a whole run
    "analyze_run": "summary",
    "summary_text": "summary",
    "compute_request_metrics": "request_metrics",
    "RequestMetrics": "request_metrics",
    # distributions
    "summarize": "distributions",
    "percentile": "distributions",
    "bootstrap_ci": "distributions",
    "cdf": "distributions",
    # the fluidity index (deadline-based, Etalon)
    "fluidity_index": "fluidity",
    "fluidity_batch": "fluidity",
    "fluidity_for_requests": "fluidity",
    "service_level_miss_rate": "fluidity",
    "miss_rate_percentile": "fluidity",
    "min_tbt_deadline": "fluidity",
    "min_tbt_deadlines": "fluidity",
    "deadline_based_token_rate": "fluidity",
    "fluid_token_generation_rate": "fluidity",
    "PrefillModel": "fluidity",
    "fit_prefill_model": "fluidity",
    "calibrate_prefill": "prefill_calibration",
    # stalls
    "find_stalls": "stalls",
    "Stalls": "stalls",
    # SLOs, goodput, capacity
    "LatencySLO": "slo",
    "FluiditySLO": "slo",
    "evaluate_slos": "slo",
    "search_capacity": "capacity_search",
    # iterations: CPU overhead vs GPU time, speculative decoding
    "iteration_summary": "iterations",
    "speculative_summary": "iterations",
    "region_times_ms": "iterations",
    # kernel time by region and step (a profile window joined to the run)
    "kernel_attribution_summary": "kernel_attribution",
    "attribute_kernels": "kernel_attribution",
    # comparing runs (compare() itself is servescope.analysis.compare.compare: the module has its name)
    "compare_run_dirs": "compare",
    "run_samples": "compare",
    "audit": "checklist",
    "audit_run_dirs": "checklist",
}

__all__ = sorted(PUBLIC_API)


def __getattr__(name: str) -> Any:
    module = PUBLIC_API.get(name)
    if module is None:
        raise AttributeError(f"module 'servescope.analysis' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"servescope.analysis.{module}"), name)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
