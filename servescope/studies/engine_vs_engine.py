"""Engine against engine: vLLM and transformers' continuous batching on the same model and workload.

One command runs every arm, each a user's program recorded by servescope as a user would record it:

* offline: ``servescope run -- python offline.py | transformers_offline.py MODEL OUT ...``, the
  offline user scripts of ``servescope overhead`` (servescope/overhead/user_scripts/), with the same
  prompts for both engines (--requests x --prompt random ids drawn afresh for each batch from one
  seed, --output tokens, EOS off, sampling at temperature 1); the first batches warm up, the last one
  is measured (its requests and the steps from its first arrival on are cut into a run directory of
  their own);
* served: each engine's OpenAI-compatible server recorded by ``servescope run``, then
  ``servescope bench --endpoint ... --server-run ...`` at each rate (Poisson arrivals, prompts sent
  as text so both servers tokenize them alike, BOS included) after a short warm-up load; each bench
  call draws its own prompts (bench_seed: one seed per call, the same call on both engines the same
  seed), so no call repeats another's prompts, which an engine's prefix cache could serve.

--skip-offline or --skip-served leaves one half out (a later lease runs the other: each half's
comparison needs both engines' runs of that half in one OUT).

Both engines load the same weights (random, from a fixed seed, written once by model_kit) with the
same token budget; what else differs is recorded in each run's manifest and named by the audit.
Each measured pair is compared with ``servescope compare`` (latency and throughput differences with
intervals, the per-step split into GPU time, host time and idle time) and audited. Everything
lands in OUT: ``engine-vs-engine.json`` (rewritten after each stage, so a run cut short keeps what
it finished), ``runs.tar.gz`` (every run directory) and ``report-<pair>/`` (servescope report).

    python -m servescope.studies.engine_vs_engine --arch tiny --out OUT            # the CPU version
    python -m servescope.studies.engine_vs_engine --arch llama3-8b --out OUT --device cuda ...
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pyarrow.compute as pc

from servescope.bench.load.process_tree import descendants
from servescope.bench.load.server import answers_health, free_port
from servescope.run.directory import write_json
from servescope.run.tables import read_table
from servescope.run.machine import machine_facts
from servescope.run.names import RequestEvent, Table
from servescope.run.phases import begin_slice, finish_slice, window_mask, write_table_part

ENGINES = ("vllm", "transformers")
USER_SCRIPTS = Path(__file__).resolve().parents[1] / "overhead" / "user_scripts"
HOST = "127.0.0.1"


def _log(message: str) -> None:
    print(f"[engine-vs-engine {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _run(command: list[str], env: dict, timeout_s: float) -> subprocess.CompletedProcess:
    """Run command in its own process group; past timeout_s kill the whole group (an engine's children too)."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=max(timeout_s, 1))
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        err += f"\nkilled after {timeout_s:.0f} s"
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


# --------------------------------------------------------------------------- the model


def prepare_model(arch: str, model_dir: Path, device: str) -> Path:
    """Return a model directory with config, synthetic tokenizer and random weights both engines load (no EOS stop).

    The weights are built in a child process: memory the model took goes back to the device when the child
    exits. Built in the study's own process on the H200, 16 GB of llama3-8b stayed in torch's cache, and vLLM
    refused to start (free 123.6 of 139.8 GiB, less than its 0.92 share; 2026-12-02)."""
    from servescope.bench.model_kit import init_model_dir, stop_only_at_max_tokens

    if not any(model_dir.glob("*.safetensors")):
        init_model_dir(model_dir, arch)
        build = ("import sys; from servescope.bench.model_kit import write_random_weights; "
                 "write_random_weights(sys.argv[1], seed=0, device=sys.argv[2])")
        done = subprocess.run([sys.executable, "-c", build, str(model_dir), device], capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"building random weights in {model_dir} failed (exit {done.returncode}): {last}")
    return stop_only_at_max_tokens(model_dir)


# --------------------------------------------------------------------------- offline


OFFLINE_SCRIPTS = {"vllm": "offline.py", "transformers": "transformers_offline.py"}


def offline_script_args(engine: str, args) -> list[str]:
    """Return the arguments of the engine's offline user script for the study's workload: args.batches batches
    of the same fresh-per-batch prompts on both engines (the same seed and lengths draw the same ids), every
    batch reported (the first ones warm up; the last is measured), the study's token budget and batch size."""
    if engine == "vllm":  # the study's weights (skip_tokenizer_init: prompts are ids), seed 0
        engine_args = {"load_format": "auto", "max_model_len": args.max_model_len, "seed": 0,
                       "max_num_batched_tokens": args.token_budget, "max_num_seqs": args.offline_max_seqs}
    else:
        engine_args = {"attn_implementation": args.attn, "max_batch_tokens": args.token_budget,
                       "max_requests_per_batch": args.offline_max_seqs}
        if args.num_blocks:
            engine_args["num_blocks"] = args.num_blocks
    return ["--batches", str(args.batches), "--warmup-batches", "0", "--num-requests", str(args.requests),
            "--prompt-len", str(args.prompt), "--output-len", str(args.output), "--seed", "0", "--prompts", "fresh",
            "--engine-args", json.dumps(engine_args)]


def run_offline(engine: str, model_dir: Path, run_dir: Path, env: dict, args, timeout_s: float) -> dict:
    """Run the engine's offline user script (servescope/overhead/user_scripts/) under servescope run; return its
    batch times (s) and exit status."""
    result_path = run_dir.parent / f"{run_dir.name}.json"
    command = [sys.executable, "-m", "servescope", "run", "--out", str(run_dir), "--no-export", "--",
               sys.executable, str(USER_SCRIPTS / OFFLINE_SCRIPTS[engine]), str(model_dir), str(result_path),
               *offline_script_args(engine, args)]
    started = time.monotonic()
    proc = _run(command, env, timeout_s)
    (run_dir.parent / f"{run_dir.name}.log").write_text(proc.stdout + proc.stderr)
    batches = json.loads(result_path.read_text())["batches"] if proc.returncode == 0 and result_path.exists() else None
    return {"returncode": proc.returncode, "batch_times_s": [b["wall_ns"] / 1e9 for b in batches] if batches else None,
            "wall_s": time.monotonic() - started, "command": command}


def measured_window(run_dir: Path, dest: Path, num_requests: int) -> Path:
    """Write the last num_requests requests (by arrival) and the steps from their first arrival on into dest, a
    run of its own (run/phases.py's slices: its own run id and parts, the parent's process and engine records)."""
    events = read_table(run_dir, Table.REQUEST_EVENTS)
    arrivals = events.filter(pc.equal(events["event"], RequestEvent.ARRIVAL)).sort_by("time_ns")
    last = arrivals.slice(max(0, arrivals.num_rows - num_requests))
    if last.num_rows == 0:
        raise RuntimeError(f"{run_dir}: no arrivals recorded")
    start = int(last["time_ns"][0].as_py())
    ids = last["request_id"].combine_chunks()
    run_id = begin_slice(run_dir, dest)
    for name in (Table.REQUEST_EVENTS, Table.TOKEN_EMISSIONS):
        table = read_table(run_dir, name)
        write_table_part(dest, name, table.filter(pc.is_in(table["request_id"], value_set=ids)), "window")
    steps = read_table(run_dir, Table.STEPS)
    steps = steps.filter(pc.fill_null(window_mask(steps, "schedule_start_ns", start, 2**62), False))
    write_table_part(dest, Table.STEPS, steps, "window")
    regions = read_table(run_dir, Table.WORKER_REGIONS)
    kept = pc.is_in(regions["step_id"], value_set=steps["step_id"].combine_chunks())
    write_table_part(dest, Table.WORKER_REGIONS, regions.filter(pc.fill_null(kept, False)), "window")
    samples = read_table(run_dir, Table.GPU_SAMPLES)
    write_table_part(dest, Table.GPU_SAMPLES,
                     samples.filter(pc.fill_null(window_mask(samples, "time_ns", start, 2**62), False)), "window")
    finish_slice(run_dir, dest, run_id, window={"parent_run_dir": str(run_dir), "last_requests": num_requests,
                                                "start_ns": start})
    return dest


# --------------------------------------------------------------------------- served


def server_command(engine: str, model_dir: Path, port: int, args) -> list[str]:
    """Return the argv of the engine's OpenAI-compatible server on HOST:port with the study's shared settings."""
    if engine == "vllm":
        return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir), "--host", HOST,
                "--port", str(port), "--max-model-len", str(args.max_model_len), "--max-num-batched-tokens",
                str(args.token_budget), "--max-num-seqs", str(min(args.served_max_seqs, args.token_budget)),
                "--seed", "0",
                *args.vllm_serve_args.split()]
    command = [sys.executable, "-c", "from transformers.cli.transformers import main; main()", "serve",
               str(model_dir), "--continuous-batching", "--attn-implementation", args.attn, "--device", args.device,
               "--host", HOST, "--port", str(port), "--cb-max-batch-tokens", str(args.token_budget),
               "--log-level", "warning"]
    if args.num_blocks:
        command += ["--cb-num-blocks", str(args.num_blocks)]
    return command + args.transformers_serve_args.split()


class RecordedEngineServer:
    """An engine server under `servescope run --out run_dir`, in its own process group; stop() ends it cleanly."""

    def __init__(self, engine: str, model_dir: Path, run_dir: Path, env: dict, args) -> None:
        self.port = free_port(HOST)
        self.url = f"http://{HOST}:{self.port}"
        self.run_dir = run_dir
        argv = server_command(engine, model_dir, self.port, args)
        self.log = open(run_dir.parent / f"{run_dir.name}.log", "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "servescope", "run", "--out", str(run_dir), "--no-export",
                                      "--", *argv], env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}); see {self.log.name}")
            if answers_health(self.url, timeout_s=5):
                return
            time.sleep(1)
        raise RuntimeError(f"server not healthy within {timeout_s:.0f} s; see {self.log.name}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop the server through servescope run, which passes each SIGINT on (the second as SIGTERM, the third as
        SIGKILL) and then writes the run's manifest. One is not always enough: after serving, transformers serve
        ends its HTTP server on the first SIGINT but not its process (transformers 5.19 on the CPU). Only if servescope run
        itself does not end is everything killed."""
        for _ in range(3):
            if self.proc.poll() is not None:
                break
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                continue
        if self.proc.poll() is None:
            for pid in [*descendants(self.proc.pid), self.proc.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait()
        self.log.close()


def bench_seed(call: int) -> int:
    """The seed of a server's call-th bench call (0: the warm-up, k: the k-th rate): bench draws a request's prompt
    from (seed, request index), so calls with one seed send the same prompts, and an engine with a prefix cache
    (vLLM's is on by default) would serve a later call's prompts from it. With one seed for every call (the H200
    run of 2026-12-02, whose vLLM server log shows the prefix cache's hits: runs/vllm-server.log in
    benchmarks/results/h200-engine-vs-engine-1/runs.tar.gz) every prompt of the second rate and the warm-up's
    prompts at the start of the first had been sent before."""
    return call


def run_bench(engine: str, url: str, model_dir: Path, server_run: Path, out: Path, trace: Path, *, rate: float,
              count: int, seed: int, env: dict, timeout_s: float) -> dict:
    """Run servescope bench against a recorded server at rate (req/s); return its exit status and bench.json.

    Both servers get the prompts as text; vLLM with its ignore_eos, transformers serve (standard OpenAI
    fields only) with no EOS in the model's generation config."""
    command = [sys.executable, "-m", "servescope", "bench", "--workload", str(trace), "--rate", str(rate),
               "--count", str(count), "--seed", str(seed), "--endpoint", url, "--server-run", str(server_run),
               "--model", str(model_dir), "--text-prompts", "--api", "vllm" if engine == "vllm" else "openai",
               "--no-progress", "--out", str(out)]
    proc = _run(command, env, timeout_s)
    (out.parent / f"{out.name}.log").write_text(proc.stdout + proc.stderr)
    facts = json.loads((out / "bench.json").read_text()) if (out / "bench.json").exists() else {}
    return {"returncode": proc.returncode, "results": facts.get("results"), "status": facts.get("status"),
            "elapsed_s": facts.get("elapsed_s"), "command": command}


def write_trace(path: Path, count: int, prompt: int, output: int) -> Path:
    """Write a CSV trace of count requests of fixed lengths (tokens); --rate gives the arrivals."""
    path.write_text("arrival_s,prompt_tokens,output_tokens\n" + f"0,{prompt},{output}\n" * count)
    return path


# --------------------------------------------------------------------------- reading the runs


def run_summary(run_dir: Path) -> dict:
    """Return a run's latency percentiles (s), throughput and per-step breakdown (s), from servescope analyze."""
    proc = subprocess.run([sys.executable, "-m", "servescope", "analyze", str(run_dir), "--json"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr[-2000:]}
    result = json.loads(proc.stdout)
    keep = ("count", "mean", "p50", "p90", "p99")
    return {
        "run": result["run"],
        "latency_s": {k: {q: v.get(q) for q in keep} for k, v in result["summary"].items() if isinstance(v, dict)},
        "iterations": {"steps": result["iterations"].get("steps"),
                       "gpu_time_source": result["iterations"].get("gpu_time_source"),
                       "all": result["iterations"].get("all"), "by_kind": result["iterations"].get("by_kind")},
    }


def compare_pair(baseline: Path, treatment: Path) -> dict:
    """Return servescope compare of two runs (JSON-ready) and the audit's verdicts."""
    from servescope.analysis.checklist import audit_run_dirs
    from servescope.analysis.compare import compare_run_dirs

    comparison = compare_run_dirs([str(baseline)], [str(treatment)])
    audit = [r.to_dict() for r in audit_run_dirs([str(baseline)], [str(treatment)], split_reported=True)]
    return {"compare": json.loads(json.dumps(comparison, default=float)), "audit": audit}


# --------------------------------------------------------------------------- the study


class Study:
    """The stages, each recorded in OUT/engine-vs-engine.json as it ends; later stages skip when time runs out."""

    def __init__(self, args) -> None:
        self.args = args
        self.out = Path(args.out).absolute()
        self.runs = self.out / "runs"
        self.runs.mkdir(parents=True, exist_ok=True)
        self.deadline = time.monotonic() + args.budget_s
        self.result = {"machine": machine_facts(), "settings": vars(args), "stages": {}}

    def left_s(self) -> float:
        return self.deadline - time.monotonic()

    def stage(self, name: str, needs_s: float, work) -> None:
        if self.left_s() < needs_s:
            self.result["stages"][name] = {"skipped": f"{self.left_s():.0f} s left, stage needs ~{needs_s:.0f} s"}
            _log(f"{name}: skipped ({self.left_s():.0f} s left)")
        else:
            _log(f"{name} ...")
            started = time.monotonic()
            try:
                self.result["stages"][name] = {**work(), "stage_s": time.monotonic() - started}
            except Exception as exc:
                self.result["stages"][name] = {"error": f"{type(exc).__name__}: {exc}", "stage_s": time.monotonic() - started}
                _log(f"{name}: {type(exc).__name__}: {exc}")
        write_json(self.out / "engine-vs-engine.json", self.result)

    def env(self) -> dict:
        env = dict(os.environ)
        env.pop("SERVESCOPE_RUN_DIR", None)
        a = self.args
        env.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
        if a.device == "cpu":
            env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB; vLLM's CPU build would take far more
        hub = self.out.parent / f".{self.out.name}-hf-cache"  # transformers serve's /v1/models needs one
        hub.mkdir(exist_ok=True)
        env["HF_HUB_CACHE"] = str(hub)
        return env

    def offline(self, engine: str) -> dict:
        run_dir = self.runs / f"{engine}-offline"
        facts = run_offline(engine, self.model, run_dir, self.env(), self.args, self.left_s())
        if facts["returncode"] == 0:
            window = measured_window(run_dir, self.runs / f"{engine}-offline-measured", self.args.requests)
            facts["measured"] = run_summary(window)
        return facts

    def served(self, engine: str) -> dict:
        args, env = self.args, self.env()
        trace = write_trace(self.out / "trace.csv", max(args.served_requests, args.warmup_requests),
                            args.served_prompt, args.output)
        server = RecordedEngineServer(engine, self.model, self.runs / f"{engine}-server", env, args)
        facts: dict = {"server": {"url": server.url}, "rates": {}}
        try:
            server.wait_healthy(min(args.server_start_s, self.left_s()))
            facts["warmup"] = run_bench(engine, server.url, self.model, server.run_dir,
                                        self.runs / f"{engine}-warmup", trace, rate=min(args.rates),
                                        count=args.warmup_requests, seed=bench_seed(0), env=env,
                                        timeout_s=self.left_s())
            for call, rate in enumerate(args.rates, 1):
                out = self.runs / f"{engine}-rate{rate:g}"
                facts["rates"][f"{rate:g}"] = bench = run_bench(
                    engine, server.url, self.model, server.run_dir, out, trace, rate=rate, count=args.served_requests,
                    seed=bench_seed(call), env=env, timeout_s=self.left_s())
                if bench["returncode"] == 0:
                    bench["summary"] = run_summary(out)
        finally:
            server.stop()
        return facts

    def compare(self, name: str, vllm_run: Path, hf_run: Path) -> dict:
        if not (vllm_run / "tables").is_dir() or not (hf_run / "tables").is_dir():
            return {"skipped": "a side did not run"}
        pair = compare_pair(vllm_run, hf_run)
        report = self.out / f"report-{name}"
        proc = subprocess.run([sys.executable, "-m", "servescope", "report", str(vllm_run), str(hf_run), "--out",
                               str(report)], capture_output=True, text=True)
        pair["report"] = str(report) if proc.returncode == 0 else proc.stderr[-2000:]
        return pair

    def run(self) -> dict:
        a = self.args
        self.stage("model", 0, lambda: {"model_dir": str(prepare_model(a.arch, Path(a.model_dir), a.device))})
        self.model = Path(a.model_dir)
        if a.skip_offline:
            self.result["stages"]["compare-offline"] = {"skipped": "--skip-offline: no offline runs"}
        else:
            for engine in a.engines:
                self.stage(f"offline-{engine}", a.offline_needs_s, lambda e=engine: self.offline(e))
            self.stage("compare-offline", 30, lambda: self.compare(
                "offline", self.runs / "vllm-offline-measured", self.runs / "transformers-offline-measured"))
        if not a.skip_served:
            for engine in a.engines:
                self.stage(f"served-{engine}", a.served_needs_s, lambda e=engine: self.served(e))
            for rate in a.rates:
                self.stage(f"compare-rate{rate:g}", 30, lambda r=rate: self.compare(
                    f"rate{r:g}", self.runs / f"vllm-rate{r:g}", self.runs / f"transformers-rate{r:g}"))
        with tarfile.open(self.out / "runs.tar.gz", "w:gz") as tar:
            tar.add(self.runs, arcname="runs")
        shutil.rmtree(self.runs)
        write_json(self.out / "engine-vs-engine.json", self.result)
        return self.result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", default="tiny", help="model_kit architecture (tiny, llama3-8b, ...)")
    p.add_argument("--out", required=True, help="directory for engine-vs-engine.json, runs.tar.gz and reports")
    p.add_argument("--model-dir", default=None, help="where the model with weights is written (default OUT/../.model)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--engines", default=",".join(ENGINES), type=lambda s: [e for e in s.split(",") if e])
    p.add_argument("--attn", default="sdpa", help="transformers' attention implementation")
    p.add_argument("--requests", type=int, default=64, help="offline: requests per batch")
    p.add_argument("--prompt", type=int, default=64, help="offline: prompt tokens")
    p.add_argument("--output", type=int, default=16, help="output tokens (offline and served)")
    p.add_argument("--batches", type=int, default=2, help="offline: batches (the last one is measured)")
    p.add_argument("--token-budget", type=int, default=512, help="tokens per step, both engines")
    p.add_argument("--offline-max-seqs", type=int, default=64, help="offline: requests per step, both engines")
    p.add_argument("--served-max-seqs", type=int, default=1024,
                   help="served: vLLM's max_num_seqs, at most the token budget (transformers serve has no flag: its "
                        "default is 1024, and a step holds at most the token budget)")
    p.add_argument("--num-blocks", type=int, default=None, help="transformers' KV-cache blocks (needed on the CPU)")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--rates", default="2,8", type=lambda s: [float(r) for r in s.split(",")], help="served: req/s")
    p.add_argument("--served-requests", type=int, default=48, help="served: requests per rate")
    p.add_argument("--served-prompt", type=int, default=63, help="served: prompt tokens (+1 BOS the server adds)")
    p.add_argument("--warmup-requests", type=int, default=8)
    p.add_argument("--skip-offline", action="store_true", help="run no offline arm (compare-offline is skipped)")
    p.add_argument("--skip-served", action="store_true", help="run no served arm")
    p.add_argument("--vllm-serve-args", default="", help="extra vLLM server flags")
    p.add_argument("--transformers-serve-args", default="", help="extra transformers serve flags")
    p.add_argument("--server-start-s", type=float, default=300.0)
    p.add_argument("--offline-needs-s", type=float, default=60.0, help="skip an offline arm with less time left")
    p.add_argument("--served-needs-s", type=float, default=90.0, help="skip a served arm with less time left")
    p.add_argument("--budget-s", type=float, default=3600.0, help="the whole study's time limit")
    args = p.parse_args(argv)
    args.model_dir = args.model_dir or str(Path(args.out).absolute().parent / f".{Path(args.out).name}-model")
    return args


if __name__ == "__main__":
    result = Study(parse_args()).run()
    print(json.dumps({name: sorted(stage) for name, stage in result["stages"].items()}))
