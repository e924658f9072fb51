"""manifest.json: one document that says what was run, on what, with which settings and clocks."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from servescope import __version__
from servescope.run.directory import (RunDirError, ensure_run_id, read_engine_facts, read_json, read_processes,
                                      write_json)
from servescope.run.parts import manifest_part_entries


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
                                    "rows_written", "rows_dropped", "rows_buffered", "internal_errors", "closed")}
            for p in processes
        ],
        "health": {
            "rows_dropped": sum(sum(p.get("rows_dropped", {}).values()) for p in processes),
            "internal_errors": sum(p.get("internal_errors", 0) for p in processes),
            # killed at shutdown (vLLM SIGKILLs a slow EngineCore): rows buffered at its last write are lost
            "processes_not_closed": [p["pid"] for p in processes if not p.get("closed")],
            "rows_possibly_lost": sum(p.get("rows_buffered", 0) for p in processes if not p.get("closed")),
        },
        "clocks": {
            "tables": "CLOCK_MONOTONIC ns (time.monotonic_ns), one clock for every process of the host",
            "wall_anchor": "processes[].wall_ns / monotonic_ns: wall = monotonic + (wall_ns - monotonic_ns)",
        },
    }
    if manifest["model_runners"]:
        manifest["engine"].setdefault("parameters", {})["model_runner"] = manifest["model_runners"][0]
    for extra in ("workload", "command", "bench"):
        path = run_dir / f"{extra}.json"
        if path.exists():
            manifest[extra] = read_json(path)
    manifest["parts"] = manifest_part_entries(run_dir)  # every part with its rows and sha256 (parts.py)
    return manifest


def write_manifest(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Build manifest.json in run_dir and return it."""
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
        with open(path, "rb") as f:
            manifest = json.load(f)
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or not UTF-8
        raise RunDirError(f"{path}: unreadable manifest ({str(exc)[:120]})") from None
    if not isinstance(manifest, dict):
        raise RunDirError(f"{path}: manifest is not a JSON object")
    return manifest
