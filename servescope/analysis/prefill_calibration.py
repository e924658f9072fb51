"""The prefill-time model behind the fluidity index's first-token deadline, fitted on isolated prefills.

A prefill is *isolated* when every engine step from the request's first scheduling up to the
step that emitted its first token computed that request's prompt and nothing else (one prefill
request, no decode, no preemption). A calibration run is any recorded run made of such
requests, e.g. ``servescope bench --concurrency 1`` over a spread of prompt lengths; requests of
ordinary runs that happened to run alone count too. The model is fitted by
fluidity.fit_prefill_model and stored as JSON for ``servescope analyze --prefill-model``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from servescope.analysis.fluidity import PrefillModel, fit_prefill_model
from servescope.analysis.request_metrics import MISSING_NS, RequestMetrics
from servescope.run.data import RunData


def isolated_prefills(run: RunData, metrics: RequestMetrics) -> tuple[np.ndarray, np.ndarray]:
    """Return (prompt_tokens, prefill_s) of the requests whose prefill ran alone on the engine."""
    steps = run.steps
    if steps.num_rows == 0 or len(metrics.prompt_tokens) == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    start = steps.column("schedule_start_ns").to_numpy(zero_copy_only=False)
    end = steps.column("update_end_ns").to_numpy(zero_copy_only=False)
    alone = ((steps.column("num_prefill_reqs").to_numpy(zero_copy_only=False) == 1)
             & (steps.column("num_decode_reqs").to_numpy(zero_copy_only=False) == 0))
    order = np.argsort(start, kind="stable")
    start, end, alone = start[order], end[order], alone[order]
    not_alone_before = np.concatenate([[0], np.cumsum(~alone)])
    s, t0 = metrics.first_scheduled_ns, metrics.first_token_ns
    recorded = (s != MISSING_NS) & (t0 != MISSING_NS) & (metrics.prompt_tokens > 0) & (metrics.preemptions == 0)
    first = np.searchsorted(start, s, side="left")  # the step that scheduled the request first
    last = np.searchsorted(end, t0, side="right")  # one past the step that emitted its first token
    spans_steps = last > first
    pure = not_alone_before[np.minimum(last, len(alone))] - not_alone_before[np.minimum(first, len(alone))] == 0
    keep = recorded & spans_steps & pure
    return metrics.prompt_tokens[keep], metrics.prefill_s[keep]


def calibrate_prefill(run_dirs: list[str | os.PathLike]) -> PrefillModel:
    """Return the prefill model fitted on the isolated prefills of these runs (raises if there are none)."""
    from servescope.analysis.request_metrics import compute_request_metrics
    from servescope.run.data import load_run

    lengths, times = [], []
    for run_dir in run_dirs:
        run = load_run(run_dir)
        length, prefill = isolated_prefills(run, compute_request_metrics(run))
        lengths.append(length)
        times.append(prefill)
    length, prefill = np.concatenate(lengths), np.concatenate(times)
    if length.size == 0:
        raise ValueError("no isolated prefills in these runs: record a calibration run with one request "
                         "in flight, e.g. servescope bench --concurrency 1")
    return fit_prefill_model(length, prefill)


def save_prefill_model(model: PrefillModel, path: str | os.PathLike) -> None:
    """Write the model as JSON (coefficients in s, s/token, s/token^2)."""
    Path(path).write_text(json.dumps({"coefficients_s": list(model.coefficients_s), "num_samples": model.num_samples,
                                      "rms_residual_s": model.rms_residual_s,
                                      "formula": "prefill_s = c0 + c1 * prompt_tokens + c2 * prompt_tokens**2"},
                                     indent=1))


def load_prefill_model(path: str | os.PathLike) -> PrefillModel:
    """Read a model written by save_prefill_model; a bad file raises ValueError naming it."""
    try:
        data = json.loads(Path(path).read_text())
        c0, c1, c2 = (float(c) for c in data["coefficients_s"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a servescope prefill model ({exc})") from exc
    return PrefillModel((c0, c1, c2), int(data.get("num_samples", 0)), float(data.get("rms_residual_s", "nan")))
