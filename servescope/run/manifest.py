"""manifest.json: one document that says what was run, on what, with which settings and clocks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from servescope import __version__
from servescope.run.directory import (RunDirError, ensure_run_id, read_engine_facts, read_json, read_processes,
                                      write_json)
from servescope.run.parts import manifest_part_entries


def _count(value) -> int:
    """Return a counter as an int (runs before servescope 0.2 kept per-table dicts)."""
    if isinstance(value, dict):
        return sum(int(v or 0) for v in value.values())
    return int(value or 0)


def health(processes: list[dict]) -> dict[str, Any]:
    """Return the run's recording health: what was lost, exactly, and how each process ended.

    Rows a process appended are in its spool and survive its end however it ended; the only rows
    lost are those never appended, each counted when it was dropped (rows_dropped), and the GPU
    times of regions still on the GPU when their process ended (regions_without_gpu_time: their
    host rows are kept, with null GPU times), and the engine steps held, not written yet, by a process
    recording with SERVESCOPE_HELD_UPDATES=1 that did not close (held_steps_lost)."""
    return {
        "rows_dropped": sum(_count(p.get("rows_dropped")) for p in processes),
        "regions_without_gpu_time": sum(_count(p.get("regions_without_gpu_time")) for p in processes),
        "held_steps_lost": sum(_count(p.get("held_steps_lost")) for p in processes),
        "internal_errors": sum(_count(p.get("internal_errors")) for p in processes),
        "processes_killed": [p["pid"] for p in processes if p.get("ended", "").startswith("killed")],
        "processes_running": [p["pid"] for p in processes if p.get("ended") == "running"],
    }


def build_manifest(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Return the manifest assembled from what every process of the run wrote."""
    run_dir = Path(run_dir)
    facts = read_engine_facts(run_dir)
    engines = [f for f in facts if "engine" in f]
    workers = [f for f in facts if "model_runner" in f]
    processes = read_processes(run_dir)
    manifest: dict[str, Any] = {
        "run_id": ensure_run_id(run_dir),
        "servescope": {"version": __version__},
        "engine": dict(engines[0]["engine"]) if engines else {},
        "model": engines[0]["model"] if engines else {},
        "host": engines[0]["host"] if engines else {},
        "model_runners": sorted({w["model_runner"] for w in workers}),
        "processes": [
            {k: p.get(k) for k in ("pid", "ppid", "role", "wall_ns", "monotonic_ns", "anchor_uncertainty_ns",
                                    "recording_parts", "ended", "closed", "rows_recorded", "rows_dropped",
                                    "regions_without_gpu_time", "held_steps_lost", "internal_errors",
                                    "hook_cost")}
            for p in processes
        ],
        "health": health(processes),
        "clocks": {
            "tables": "CLOCK_MONOTONIC ns (time.monotonic_ns), one clock for every process of the host",
            "wall_anchor": "processes[].wall_ns / monotonic_ns: wall = monotonic + (wall_ns - monotonic_ns)",
        },
    }
    if manifest["model_runners"]:
        manifest["engine"].setdefault("parameters", {})["model_runner"] = manifest["model_runners"][0]
    attention = sorted({w["attention_implementation"] for w in workers if w.get("attention_implementation")})
    if attention:  # vLLM's workers name the backend their layers use
        manifest["engine"].setdefault("parameters", {}).setdefault("attention_implementation", "|".join(attention))
    if "scheduler_class" in manifest["engine"]:  # vLLM's EngineCore writes it beside its parameters
        manifest["engine"].setdefault("parameters", {}).setdefault("scheduler_class",
                                                                   manifest["engine"]["scheduler_class"])
    for extra in ("workload", "command", "bench"):
        path = run_dir / f"{extra}.json"
        if path.exists():
            manifest[extra] = read_json(path)
    manifest["parts"] = manifest_part_entries(run_dir)  # every part with its rows and sha256 (parts.py)
    return manifest


def write_manifest(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Build manifest.json in run_dir and return it (run.compact.close_run compacts the spools first)."""
    manifest = build_manifest(run_dir)
    write_json(Path(run_dir) / "manifest.json", manifest)
    return manifest


def load_manifest(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Return manifest.json, building it from the process files when it was never written."""
    path = Path(run_dir) / "manifest.json"
    return read_json(path) if path.exists() else build_manifest(run_dir)


def read_manifest(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Return RUN/manifest.json as a dict ({} when there is none); raise RunDirError naming it when unreadable."""
    path = Path(run_dir) / "manifest.json"
    if not path.exists():
        return {}
    try:
        manifest = read_json(path)  # RunDirError naming the file, and the line of bad JSON
    except (OSError, RecursionError) as exc:
        raise RunDirError(f"{path}: unreadable manifest ({str(exc)[:120]})") from None
    if not isinstance(manifest, dict):
        raise RunDirError(f"{path}: manifest is not a JSON object")
    return manifest
