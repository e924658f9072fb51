"""A run directory as OpenTelemetry spans: one span per request, one per engine step.

Request spans follow the OpenTelemetry GenAI semantic conventions (gen_ai.*); the measurements
those conventions have no attribute for are ``servescope.*``. Step spans (``servescope.step``)
carry the step's phases as child spans and link to the request spans whose tokens the step
emitted. docs/opentelemetry.md lists every span, attribute and its source.

Ids are derived from the run id and the record's key (SHA-256), so exporting a run twice sends
the same trace and span ids. Times: the tables' CLOCK_MONOTONIC ns plus the offset of the clock
anchor in processes/<pid>.json (the EngineCore's, else any: one clock per host).

Privacy: by default no request id leaves the run. vLLM builds its engine request ids from the
client's ``X-Request-Id`` (``cmpl-<client id>-0-…``), so every id counts as client-supplied:
``servescope.request_id`` and ``gen_ai.response.id`` are left out, and a request span's ids are
derived from the request's position in the run (``request-<n>``) instead of its id.
``include_request_ids=True`` puts them back. The tables hold no prompt text and no token ids.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from opentelemetry.sdk.resources import OTELResourceDetector, Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from servescope import __version__
from servescope.run.directory import RunDirError, check_run_dir, read_engine_facts, read_processes
from servescope.run.tables import report_warnings
from servescope.run.manifest import read_manifest
from servescope.run.names import RequestEvent, StepPhase, Table

DEFAULT_MAX_LINKS_PER_STEP = 128
GEN_AI_PROVIDER = "vllm"  # gen_ai.provider.name and service.name when a run names no engine (runs before 0.2)
GEN_AI_OPERATION = "text_completion"  # the engine turns a prompt into tokens; it never sees chat roles
STEP_SPAN_NAME = "servescope.step"
STEP_PHASES = StepPhase.ALL  # span names; steps.<phase>_start_ns .. <phase>_end_ns
STEP_BATCH_COLUMNS = (
    "total_scheduled_tokens",
    "num_prefill_reqs",
    "num_prefill_tokens",
    "num_decode_reqs",
    "num_decode_tokens",
    "num_spec_tokens",
    "num_running_reqs",
    "num_waiting_reqs",
    "kv_cache_usage",
    "num_preempted_reqs",
    "num_emitted_tokens",
    "num_finished_reqs",
)
REQUEST_EVENT_NAMES = (RequestEvent.QUEUED, RequestEvent.SCHEDULED, RequestEvent.PREEMPTED)  # first_token is added
ERROR_FINISH_REASONS = ("error",)
SCOPE = InstrumentationScope("servescope", __version__)


# ---- ids -------------------------------------------------------------------------------------
def _digest(*parts: object) -> bytes:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()


def _nonzero(value: int) -> int:
    return value or 1  # an all-zero id is invalid in OpenTelemetry


def request_span_context(run_id: str, request_key: str) -> SpanContext:
    """Return the (deterministic) trace and span id of one request's span (key: its id, or request-<n>)."""
    d = _digest("servescope", run_id, "request", request_key)
    return SpanContext(_nonzero(int.from_bytes(d[:16], "big")), _nonzero(int.from_bytes(d[16:24], "big")),
                       is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))


def step_span_context(run_id: str, pid: int | None, step_id: int, phase: str | None = None) -> SpanContext:
    """Return the (deterministic) trace and span id of one engine step's span, or of one of its phases."""
    trace = _digest("servescope", run_id, "step", pid, step_id)
    span = trace if phase is None else _digest("servescope", run_id, "step", pid, step_id, phase)
    return SpanContext(_nonzero(int.from_bytes(trace[:16], "big")), _nonzero(int.from_bytes(span[16:24], "big")),
                       is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))


def run_id_of(run_dir: str | os.PathLike) -> str:
    """Return the run's id: manifest.json's run_id, else a digest of its processes' clock anchors."""
    manifest = _read_manifest(Path(run_dir))
    if manifest.get("run_id"):
        return str(manifest["run_id"])
    anchors = sorted((p.get("pid"), p.get("wall_ns"), p.get("monotonic_ns")) for p in _anchored_processes(run_dir))
    if not anchors:
        raise RunDirError(f"{run_dir}: no run_id in manifest.json and no processes/*.json to derive one from")
    return _digest(*anchors).hex()[:32]


# ---- clock -----------------------------------------------------------------------------------
def _anchored_processes(run_dir: str | os.PathLike) -> list[dict]:
    """The process records with a clock anchor: processes/*.json, else the copies in manifest.json."""
    records = read_processes(run_dir) or _read_manifest(Path(run_dir)).get("processes") or []
    return [p for p in records if isinstance(p, dict) and p.get("wall_ns") is not None
            and p.get("monotonic_ns") is not None]


def epoch_offset_ns(run_dir: str | os.PathLike) -> int:
    """Return wall_ns - monotonic_ns of the EngineCore's clock anchor (else of any process's).

    Anchors come from processes/<pid>.json, or from manifest.json's copy of them when the
    process files are gone.
    """
    anchored = _anchored_processes(run_dir)
    if not anchored:
        raise RunDirError(f"{run_dir}: no processes/<pid>.json with a clock anchor (wall_ns, monotonic_ns); "
                          "cannot place the tables' monotonic times on the wall clock")
    engine = [p for p in anchored if str(p.get("role", "")).startswith("EngineCore")]
    chosen = (engine or anchored)[0]
    return int(chosen["wall_ns"]) - int(chosen["monotonic_ns"])


# ---- run facts -------------------------------------------------------------------------------
def _read_manifest(run_dir: Path) -> dict:
    return read_manifest(run_dir)  # RunDirError naming the file when it is unreadable


def model_name(manifest: dict, engine_facts: list[dict]) -> str | None:
    """Return the served model's name from the manifest (else from the engine facts), or None."""
    candidates: list[Any] = [manifest.get("served_model_name"), manifest.get("model")]
    engine = manifest.get("engine")
    if isinstance(engine, dict):
        candidates.append(engine.get("model"))
    candidates += [facts.get("model") for facts in engine_facts]
    for value in candidates:
        if isinstance(value, str) and value:
            return value
        if isinstance(value, dict):
            for key in ("served_model_name", "name", "path", "model"):
                if isinstance(value.get(key), str) and value[key]:
                    return value[key]
    return None


def engine_name(manifest: dict, engine_facts: list[dict]) -> str:
    """Return the engine that recorded the run (manifest, else engine facts; 'vllm' when neither says)."""
    for engine in [manifest.get("engine")] + [f.get("engine") for f in engine_facts]:
        if isinstance(engine, dict) and engine.get("name"):
            return str(engine["name"])
    return GEN_AI_PROVIDER


def _engine_version(manifest: dict, engine_facts: list[dict]) -> str | None:
    for engine in [manifest.get("engine")] + [f.get("engine") for f in engine_facts]:
        if isinstance(engine, dict) and engine.get("version"):
            return str(engine["version"])
    return None


def run_resource(run_dir: str | os.PathLike) -> Resource:
    """Return the Resource of a run's spans (service.name: the engine, e.g. 'vllm'; OTEL_SERVICE_NAME,
    OTEL_RESOURCE_ATTRIBUTES win)."""
    manifest = _read_manifest(Path(run_dir))
    facts = read_engine_facts(run_dir)
    attributes: dict[str, Any] = {
        "service.name": engine_name(manifest, facts),
        "servescope.run_id": run_id_of(run_dir),
        "servescope.version": __version__,
    }
    version = _engine_version(manifest, facts)
    if version:
        attributes["service.version"] = version
    hosts = [f.get("host", {}).get("hostname") for f in facts if isinstance(f.get("host"), dict)]
    if any(hosts):
        attributes["host.name"] = next(h for h in hosts if h)
    return Resource(attributes).merge(OTELResourceDetector().detect())


# ---- value helpers ---------------------------------------------------------------------------
def _seconds(value: Any) -> float | None:
    """A number read from a table or metrics array, or None where it is missing or not finite."""
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _ns(value: Any) -> int | None:
    """A time or count read from a table or metrics array, or None where it is missing."""
    f = _seconds(value)
    return None if f is None or f < 0 else int(value)


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or str(value) == "":
        return None
    return str(value)


def _put(attributes: dict, key: str, value: Any) -> None:
    """Set an attribute, as a plain Python value, unless it is missing."""
    if value is None:
        return
    if isinstance(value, float) and not math.isfinite(value):
        return
    attributes[key] = value


# ---- request spans ---------------------------------------------------------------------------
def _request_rows(request_events: pa.Table) -> dict[str, list[tuple]]:
    """Return each request's lifecycle rows, (time_ns, event, step_id, max_tokens, output_tokens, detail)."""
    cols = {c: request_events.column(c).to_pylist()
            for c in ("request_id", "event", "time_ns", "step_id", "max_tokens", "output_tokens", "detail")}
    rows: dict[str, list[tuple]] = defaultdict(list)
    for rid, event, t, step, max_tokens, out, detail in zip(
            cols["request_id"], cols["event"], cols["time_ns"], cols["step_id"], cols["max_tokens"],
            cols["output_tokens"], cols["detail"]):
        rows[rid].append((t if t is not None else -1, event, step, max_tokens, out, detail))
    for r in rows.values():
        r.sort(key=lambda row: row[0])
    return rows


def _metric(metrics: Any, name: str, i: int) -> Any:
    column = getattr(metrics, name, None)
    if column is None:
        return None
    value = column[i]
    return value.item() if hasattr(value, "item") else value


def _request_attributes(metrics: Any, i: int, rid: str, lifecycle: list[tuple], model: str | None,
                        include_request_ids: bool, provider: str = GEN_AI_PROVIDER) -> dict:
    """The GenAI and servescope attributes of request i (its ids only when include_request_ids)."""
    max_tokens = next((row[3] for row in lifecycle if row[3] is not None), None)
    finish_reason = _text(_metric(metrics, "finish_reason", i))
    attributes: dict[str, Any] = {
        "gen_ai.operation.name": GEN_AI_OPERATION,
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,  # deprecated for gen_ai.provider.name; older backends key on it
    }
    if include_request_ids:
        response_id = next((row[5] for row in lifecycle if row[1] == RequestEvent.ARRIVAL and row[5]), None) or rid
        attributes["gen_ai.response.id"] = str(response_id)
        attributes["servescope.request_id"] = rid
    _put(attributes, "gen_ai.request.model", model)
    _put(attributes, "gen_ai.request.max_tokens", _ns(max_tokens))
    if finish_reason:
        attributes["gen_ai.response.finish_reasons"] = [finish_reason]
    _put(attributes, "gen_ai.usage.input_tokens", _ns(_metric(metrics, "prompt_tokens", i)))
    _put(attributes, "gen_ai.usage.output_tokens", _ns(_metric(metrics, "output_tokens", i)))
    _put(attributes, "gen_ai.server.time_to_first_token", _seconds(_metric(metrics, "ttft_s", i)))
    _put(attributes, "gen_ai.server.time_per_output_token", _seconds(_metric(metrics, "tpot_s", i)))
    for key in ("scheduling_delay_s", "prefill_s", "decode_s", "e2e_s", "preempted_s"):
        _put(attributes, f"servescope.{key}", _seconds(_metric(metrics, key, i)))
    _put(attributes, "servescope.preemptions", _ns(_metric(metrics, "preemptions", i)))
    if _ns(_metric(metrics, "finished_ns", i)) is None:
        attributes["servescope.unfinished"] = True
    if finish_reason in ERROR_FINISH_REASONS:
        attributes["error.type"] = finish_reason
    return attributes


def _request_events(lifecycle: list[tuple], first_token: int | None, offset_ns: int) -> list[Event]:
    """The queued / scheduled / preempted rows and the first token, as span events in time order."""
    events = []
    for t, event, step, _max_tokens, out, _detail in lifecycle:
        if event in REQUEST_EVENT_NAMES and t >= 0:
            attributes: dict[str, Any] = {}
            _put(attributes, "servescope.step_id", step)
            if event == RequestEvent.PREEMPTED:
                _put(attributes, "servescope.output_tokens", out)
            events.append(Event(event, attributes, t + offset_ns))
    if first_token is not None:
        events.append(Event("first_token", {}, first_token + offset_ns))
    events.sort(key=lambda e: e.timestamp)
    return events


def request_span_keys(metrics: Any, include_request_ids: bool) -> dict[str, str]:
    """Return request id -> the key its span ids derive from: the id itself, or request-<n> (its position, from 0)."""
    ids = [str(v) for v in metrics.request_id]
    return {rid: (rid if include_request_ids else f"request-{i}") for i, rid in enumerate(ids)}


def request_spans(run, metrics, *, run_id: str, offset_ns: int, resource: Resource,
                  model: str | None, include_request_ids: bool = False,
                  provider: str = GEN_AI_PROVIDER) -> Iterator[ReadableSpan]:
    """Yield one SERVER span per request of compute_request_metrics(run), with its lifecycle as events
    (provider: the engine, gen_ai.provider.name)."""
    rows = _request_rows(run.request_events)
    keys = request_span_keys(metrics, include_request_ids)
    name = f"{GEN_AI_OPERATION} {model}" if model else GEN_AI_OPERATION
    for i in range(len(metrics.request_id)):
        rid = str(_metric(metrics, "request_id", i))
        lifecycle = rows.get(rid, [])
        times = {k: _ns(_metric(metrics, k, i)) for k in
                 ("arrival_ns", "queued_ns", "first_scheduled_ns", "first_token_ns", "last_token_ns", "finished_ns")}
        start = next((times[k] for k in ("arrival_ns", "queued_ns", "first_scheduled_ns", "first_token_ns")
                      if times[k] is not None), None)
        if start is None:
            start = next((row[0] for row in lifecycle if row[0] >= 0), None)
        if start is None:
            continue  # no time at all: nothing to place on a timeline
        end = next((times[k] for k in ("finished_ns", "last_token_ns") if times[k] is not None), None)
        end = max(start, end if end is not None else max([start] + [row[0] for row in lifecycle]))

        attributes = _request_attributes(metrics, i, rid, lifecycle, model, include_request_ids, provider)
        status = Status(StatusCode.UNSET)
        if "error.type" in attributes:
            status = Status(StatusCode.ERROR, f"request finished with reason '{attributes['error.type']}'")
        yield ReadableSpan(
            name=name,
            context=request_span_context(run_id, keys[rid]),
            parent=None,
            resource=resource,
            attributes=attributes,
            events=_request_events(lifecycle, times["first_token_ns"], offset_ns),
            links=(),
            kind=SpanKind.SERVER,
            status=status,
            start_time=start + offset_ns,
            end_time=end + offset_ns,
            instrumentation_scope=SCOPE,
        )


# ---- step spans ------------------------------------------------------------------------------
def _pid_of_part(part: Path) -> int | None:
    """The writing process's pid from a part's name, <role>-<pid>-<seq>.parquet."""
    pieces = part.stem.rsplit("-", 2)
    try:
        return int(pieces[-2]) if len(pieces) == 3 else None
    except ValueError:
        return None


def rows_by_process(run, table: str) -> dict[int | None, pa.Table]:
    """Return one loaded table's rows grouped by the pid that wrote them (steps of two EngineCores share step ids)."""
    parts: dict[int | None, list[pa.Table]] = defaultdict(list)
    for span, rows in run.rows_by_part(table):
        parts[_pid_of_part(Path(span.file))].append(rows)
    return {pid: pa.concat_tables(tables) for pid, tables in parts.items()}


class EmissionsByStep:
    """One EngineCore's token emissions sorted by (step_id, request_id), read one step at a time."""

    COLUMNS = ("request_id", "num_tokens", "num_draft_tokens", "num_accepted_tokens")

    def __init__(self, emissions: pa.Table | None) -> None:
        self._bounds: dict[int, tuple[int, int]] = {}
        if emissions is None or emissions.num_rows == 0:
            return
        emissions = emissions.filter(pc.and_(pc.is_valid(emissions["step_id"]), pc.is_valid(emissions["request_id"])))
        emissions = emissions.unify_dictionaries().combine_chunks()
        ids = emissions["request_id"].chunk(0) if emissions.num_rows else None
        if ids is None:
            return
        if pa.types.is_dictionary(ids.type):  # order by the id strings, not by dictionary position
            rank = np.empty(len(ids.dictionary), dtype=np.int64)
            rank[pc.array_sort_indices(ids.dictionary).to_numpy()] = np.arange(len(ids.dictionary))
            id_key = rank[ids.indices.to_numpy(zero_copy_only=False)]
        else:
            id_key = pc.rank(ids, sort_keys="ascending", tiebreaker="dense").to_numpy()
        steps = emissions["step_id"].to_numpy()
        order = np.lexsort((id_key, steps))
        self._table = emissions.select(list(self.COLUMNS)).take(pa.array(order))
        sorted_steps = steps[order]
        firsts, starts = np.unique(sorted_steps, return_index=True)
        ends = np.append(starts[1:], len(sorted_steps))
        self._bounds = {int(s): (int(lo), int(hi)) for s, lo, hi in zip(firsts, starts, ends)}

    def count(self, step_id: int) -> int:
        """Return how many requests the step emitted tokens for."""
        lo, hi = self._bounds.get(step_id, (0, 0))
        return hi - lo

    def first(self, step_id: int, limit: int) -> list[tuple]:
        """Return up to limit (request_id, num_tokens, num_draft_tokens, num_accepted_tokens) of the step."""
        lo, hi = self._bounds.get(step_id, (0, 0))
        if hi <= lo or limit <= 0:
            return []
        rows = self._table.slice(lo, min(hi - lo, limit))
        return list(zip(*(rows[c].to_pylist() for c in self.COLUMNS)))


def _step_links(run_id: str, emitted: list[tuple], total: int, cap: int, keys: dict[str, str]) -> BoundedList:
    links = BoundedList(cap)
    for rid, n, drafted, accepted in emitted[:cap]:
        if rid not in keys:  # a request the metrics do not know: no span to link to
            continue
        attributes: dict[str, Any] = {}
        _put(attributes, "servescope.num_tokens", n)
        _put(attributes, "servescope.num_draft_tokens", drafted)
        _put(attributes, "servescope.num_accepted_tokens", accepted)
        links.append(Link(request_span_context(run_id, keys[rid]), attributes))
    links.dropped = max(0, total - len(links))
    return links


def step_spans(run, *, run_id: str, offset_ns: int, resource: Resource, request_keys: dict[str, str],
               max_links_per_step: int = DEFAULT_MAX_LINKS_PER_STEP) -> Iterator[ReadableSpan]:
    """Yield one servescope.step span per engine step of a loaded run, then its phase spans, linked to the
    requests it emitted for (request_keys: request_span_keys())."""
    if max_links_per_step < 0:
        raise ValueError("max_links_per_step must be >= 0")
    emissions = rows_by_process(run, Table.TOKEN_EMISSIONS)
    by_pid = rows_by_process(run, Table.STEPS)
    for pid, steps in sorted(by_pid.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
        emitted = EmissionsByStep(emissions.pop(pid, None))
        for row in steps.to_pylist():
            yield from _one_step(row, pid, emitted, run_id=run_id, offset_ns=offset_ns, resource=resource,
                                 cap=max_links_per_step, keys=request_keys)


def _one_step(row: dict, pid: int | None, emitted: EmissionsByStep, *, run_id: str, offset_ns: int,
              resource: Resource, cap: int, keys: dict[str, str]) -> Iterable[ReadableSpan]:
    step_id = row["step_id"]
    phases = {p: tuple(row[c] for c in StepPhase.columns(p)) for p in STEP_PHASES}
    times = [t for pair in phases.values() for t in pair if t is not None]
    if step_id is None or not times:
        return ()
    start = row["schedule_start_ns"] if row["schedule_start_ns"] is not None else min(times)
    end = max(start, row["update_end_ns"] if row["update_end_ns"] is not None else max(times))

    attributes: dict[str, Any] = {"servescope.step.step_id": step_id, "servescope.step.duration_s": (end - start) / 1e9}
    _put(attributes, "servescope.step.engine_index", row["engine_index"])
    _put(attributes, "servescope.step.engine_pid", pid)
    for phase, (t0, t1) in phases.items():
        if t0 is not None and t1 is not None:
            attributes[f"servescope.step.{phase}_s"] = (t1 - t0) / 1e9
    for column in STEP_BATCH_COLUMNS:
        _put(attributes, f"servescope.step.{column}", row[column])
    total = emitted.count(step_id)
    links = _step_links(run_id, emitted.first(step_id, cap), total, cap, keys)
    attributes["servescope.step.linked_requests"] = total
    attributes["servescope.step.links_dropped"] = links.dropped

    context = step_span_context(run_id, pid, step_id)
    spans = [ReadableSpan(name=STEP_SPAN_NAME, context=context, parent=None, resource=resource,
                          attributes=attributes, links=links, kind=SpanKind.INTERNAL,
                          start_time=start + offset_ns, end_time=end + offset_ns, instrumentation_scope=SCOPE)]
    for phase, (t0, t1) in phases.items():
        if t0 is None or t1 is None:
            continue
        spans.append(ReadableSpan(
            name=f"{STEP_SPAN_NAME}.{phase}", context=step_span_context(run_id, pid, step_id, phase),
            parent=context, resource=resource, attributes={"servescope.step.step_id": step_id},
            kind=SpanKind.INTERNAL, start_time=t0 + offset_ns, end_time=max(t0, t1) + offset_ns,
            instrumentation_scope=SCOPE))
    return spans


# ---- the whole run ---------------------------------------------------------------------------
def iter_run_spans(run_dir: str | os.PathLike, *, max_links_per_step: int = DEFAULT_MAX_LINKS_PER_STEP,
                   include_request_ids: bool = False, strict: bool = False,
                   warnings: list[str] | None = None) -> Iterator[ReadableSpan]:
    """Return an iterator over every span of a run: request spans, then each step span and its phases.

    The run is read and checked before this returns (a bad run directory raises here; with strict,
    also a damaged one); its warnings (load_run's) are appended to warnings. Spans are built as the
    iterator is consumed, so a long run is never held in memory as spans at once. Request ids are
    left out unless include_request_ids (see the module's docstring).
    """
    from servescope.analysis.request_metrics import compute_request_metrics
    from servescope.run.data import load_run

    if max_links_per_step < 0:
        raise ValueError("max_links_per_step must be >= 0")
    run_dir = check_run_dir(run_dir)
    run_id = run_id_of(run_dir)
    offset = epoch_offset_ns(run_dir)
    resource = run_resource(run_dir)
    run = load_run(run_dir, strict=strict)
    report_warnings(run.warnings, warnings)
    manifest = getattr(run, "manifest", None) or _read_manifest(run_dir)
    facts = read_engine_facts(run_dir)
    model = model_name(manifest, facts)
    metrics = compute_request_metrics(run)
    keys = request_span_keys(metrics, include_request_ids)
    return itertools.chain(
        request_spans(run, metrics, run_id=run_id, offset_ns=offset, resource=resource, model=model,
                      include_request_ids=include_request_ids, provider=engine_name(manifest, facts)),
        step_spans(run, run_id=run_id, offset_ns=offset, resource=resource, request_keys=keys,
                   max_links_per_step=max_links_per_step),
    )


def build_run_spans(run_dir: str | os.PathLike, *, max_links_per_step: int = DEFAULT_MAX_LINKS_PER_STEP,
                    include_request_ids: bool = False) -> list[ReadableSpan]:
    """Return every span of a run as a list (iter_run_spans, materialized)."""
    return list(iter_run_spans(run_dir, max_links_per_step=max_links_per_step,
                               include_request_ids=include_request_ids))
