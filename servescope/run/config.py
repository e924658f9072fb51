"""One frozen recording configuration, built once from arguments and the environment, the same in
every process of a run.

``servescope run`` and ``servescope.instrument(run_dir, ...)`` build a ``Config`` and export it
(``Config.environment()``: ``SERVESCOPE_RUN_DIR`` plus ``SERVESCOPE_CONFIG``, one JSON document),
so every process the engine starts — EngineCore, workers — records with exactly the options the
user gave. ``Config.from_environment()`` reads it back in those processes. The older single
variables (``SERVESCOPE_THREAD_USAGE``, ``SERVESCOPE_GPU_STAMPS``, ``SERVESCOPE_NVML_INTERVAL_S``,
``SERVESCOPE_INJECT_FAULTS``, ``SERVESCOPE_FORCE_UNSUPPORTED_VLLM``, ``SERVESCOPE_PROFILE_STEPS``)
are read here too, and nowhere else.

Recording parts (each can be switched off on its own; docs/overhead.md measures each one's cost):

========== ==================================================================== =========
part       what it records                                                      default
========== ==================================================================== =========
frontend   arrivals (request_events 'arrival') and frontend_steps               on
scheduler  queued / scheduled / preempted / finished events and the steps table on
tokens     token_emissions (one row per step and request that got tokens)       on
regions    worker_regions on the host clock                                     on
gpu_events CUDA-event GPU time of every worker region (needs regions)           on
nvml       gpu_samples from NVML (rank 0, every nvml_interval_s)                on
thread     the worker thread's CPU time and context switches per region        off
gpu_stamps globaltimer stamps (GPU start/end of regions, inside CUDA graphs)    off
collectives region ``collective`` per all-reduce / all-gather / reduce-scatter   off
           (vLLM workers, outside CUDA graphs; docs/multi-gpu.md)
========== ==================================================================== =========
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from typing import Mapping

RUN_DIR_ENV = "SERVESCOPE_RUN_DIR"
CONFIG_ENV = "SERVESCOPE_CONFIG"

PARTS = ("frontend", "scheduler", "tokens", "regions", "gpu_events", "nvml", "thread", "gpu_stamps", "collectives")
DEFAULT_PARTS = frozenset(("frontend", "scheduler", "tokens", "regions", "gpu_events", "nvml"))

DEFAULT_SEGMENT_BYTES = 32 << 20


class ConfigError(ValueError):
    """A recording option that cannot be used; the message names it."""


@dataclass(frozen=True)
class Config:
    """How one run records: where, which parts, and the few knobs each part has."""

    run_dir: str
    parts: frozenset = DEFAULT_PARTS
    segment_bytes: int = DEFAULT_SEGMENT_BYTES  # one spool segment per process (memory-mapped file)
    nvml_interval_s: float = 0.1
    profile_steps: tuple[int, int] | None = None  # (first step, count): a torch.profiler window
    inject_faults: bool = False  # every append raises: proves faults stay inside servescope
    force_unsupported: bool = False  # patch an engine version outside the supported range
    self_timing: bool = False  # diagnostic: time servescope's own hook bodies (adds two clock reads each)
    extra: Mapping[str, str] = field(default_factory=dict)  # free-form facts for the manifest

    def __post_init__(self) -> None:
        unknown = set(self.parts) - set(PARTS)
        if unknown:
            raise ConfigError(f"unknown recording part(s) {', '.join(sorted(unknown))}; known: {', '.join(PARTS)}")
        if self.segment_bytes < (1 << 16):
            raise ConfigError(f"segment_bytes must be at least 65536, got {self.segment_bytes}")
        if not (self.nvml_interval_s >= 0) or self.nvml_interval_s == float("inf"):
            raise ConfigError(f"nvml_interval_s must be a finite number >= 0, got {self.nvml_interval_s}")
        if self.profile_steps is not None:
            first, count = self.profile_steps
            if first < 0 or count < 1:
                raise ConfigError(f"profile_steps must be FIRST:COUNT with FIRST >= 0 and COUNT >= 1, got {first}:{count}")

    def records(self, part: str) -> bool:
        """Return True if this part is recorded."""
        return part in self.parts

    def with_parts(self, parts) -> "Config":
        """Return a copy recording exactly these parts."""
        return replace(self, parts=frozenset(parts))

    def environment(self) -> dict[str, str]:
        """Return the environment variables that give a child process this configuration."""
        doc = asdict(self)
        doc["parts"] = sorted(self.parts)
        doc["extra"] = dict(self.extra)
        return {RUN_DIR_ENV: self.run_dir, CONFIG_ENV: json.dumps(doc, sort_keys=True)}

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> "Config | None":
        """Return the configuration exported to this process, or None when nothing is to be recorded."""
        env = os.environ if environ is None else environ
        run_dir = env.get(RUN_DIR_ENV)
        if not run_dir:
            return None
        doc = env.get(CONFIG_ENV)
        if doc:
            try:
                values = json.loads(doc)
                values["run_dir"] = run_dir
                values["parts"] = frozenset(values.get("parts", DEFAULT_PARTS))
                if values.get("profile_steps") is not None:
                    values["profile_steps"] = tuple(values["profile_steps"])
                return cls(**values)
            except (ValueError, TypeError) as exc:
                raise ConfigError(f"{CONFIG_ENV}: unreadable ({exc})") from exc
        return cls.from_options(run_dir, environ=env)

    @classmethod
    def from_options(cls, run_dir: str, *, parts=None, environ: Mapping[str, str] | None = None,
                     **options) -> "Config":
        """Return a configuration from explicit options, completed from the single SERVESCOPE_* variables."""
        env = os.environ if environ is None else environ
        chosen = set(DEFAULT_PARTS if parts is None else parse_parts(parts))
        if parts is None:
            if env.get("SERVESCOPE_THREAD_USAGE") == "1":
                chosen.add("thread")
            if env.get("SERVESCOPE_GPU_STAMPS") == "1":
                chosen.add("gpu_stamps")
        if "nvml_interval_s" not in options and env.get("SERVESCOPE_NVML_INTERVAL_S"):
            options["nvml_interval_s"] = _float_option("SERVESCOPE_NVML_INTERVAL_S", env["SERVESCOPE_NVML_INTERVAL_S"])
        if options.get("nvml_interval_s") == 0:
            chosen.discard("nvml")
        if "profile_steps" not in options and env.get("SERVESCOPE_PROFILE_STEPS"):
            options["profile_steps"] = parse_profile_steps(env["SERVESCOPE_PROFILE_STEPS"])
        options.setdefault("inject_faults", bool(env.get("SERVESCOPE_INJECT_FAULTS")))
        options.setdefault("force_unsupported", bool(env.get("SERVESCOPE_FORCE_UNSUPPORTED_VLLM")))
        options.setdefault("self_timing", env.get("SERVESCOPE_SELF_TIMING") == "1")
        return cls(run_dir=str(run_dir), parts=frozenset(chosen), **options)


def parse_parts(spec) -> frozenset:
    """Return the parts named by a comma list ('default', 'all', 'none', names, '-name' to remove)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    chosen: set[str] = set()
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        if item == "default":
            chosen |= DEFAULT_PARTS
        elif item == "all":
            chosen |= set(PARTS)
        elif item == "none":
            chosen.clear()
        elif item.startswith("-"):
            if item[1:] not in PARTS:
                raise ConfigError(f"unknown recording part {item[1:]!r}; known: {', '.join(PARTS)}")
            if not chosen and items and items[0].strip().startswith("-"):
                chosen |= DEFAULT_PARTS
            chosen.discard(item[1:])
        elif item in PARTS:
            chosen.add(item)
        else:
            raise ConfigError(f"unknown recording part {item!r}; known: {', '.join(PARTS)}")
    return frozenset(chosen)


def parse_profile_steps(text: str) -> tuple[int, int]:
    """Return (first step, number of steps) from 'FIRST:COUNT' (SERVESCOPE_PROFILE_STEPS), a step id >= 0 and >= 1 step."""
    try:
        first, count = (int(x) for x in text.split(":"))
    except ValueError:
        first = count = None
    if first is None or first < 0 or count < 1:
        raise ConfigError(f"SERVESCOPE_PROFILE_STEPS={text!r}: expected FIRST:COUNT, a step id >= 0 and a number of "
                          "steps >= 1 (e.g. SERVESCOPE_PROFILE_STEPS=100:8)")
    return first, count


def _float_option(name: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {text!r}") from None
