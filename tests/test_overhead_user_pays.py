"""`servescope overhead`'s arms: the untraced arm runs vLLM with no servescope code in any process (checked by
an import sentinel, which itself is checked here), the traced arm records exactly what its script generated."""

import json
import subprocess
import sys
import textwrap

import pytest

from servescope.overhead.user_pays import (OverheadError, UserPaysSpec, arm_environment, compare_arms, run_arm,
                                           servescope_imports)


def _python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_sentinel_sees_every_process_that_imports_servescope(tmp_path):
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    env = arm_environment("off", sentinel)
    assert _python("import json, email.parser", env).returncode == 0
    assert servescope_imports(sentinel) == {}
    script = tmp_path / "spawns.py"
    script.write_text(textwrap.dedent("""
        import multiprocessing as mp
        def child():
            import servescope.run.names
        if __name__ == "__main__":
            p = mp.get_context("spawn").Process(target=child)
            p.start(); p.join()
            assert p.exitcode == 0
    """))
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    imports = servescope_imports(sentinel)
    assert len(imports) == 1 and "servescope.run.names" in next(iter(imports.values()))


def test_the_sentinel_hands_over_to_an_existing_sitecustomize(tmp_path):
    sentinel, other = tmp_path / "sentinel", tmp_path / "other"
    sentinel.mkdir()
    other.mkdir()
    (other / "sitecustomize.py").write_text("import os\nos.environ['OTHER_SITECUSTOMIZE_RAN'] = '1'\n")
    env = arm_environment("off", sentinel, base={"PYTHONPATH": str(other), "PATH": "/usr/bin:/bin"})
    proc = _python("import os; print(os.environ.get('OTHER_SITECUSTOMIZE_RAN'))", env)
    assert proc.stdout.strip() == "1", proc.stderr


def test_the_untraced_arm_does_not_load_the_servescope_plugin(tmp_path):
    pytest.importorskip("vllm")
    env = arm_environment("off", tmp_path)
    proc = _python("import vllm.plugins as p; print(sorted(p.load_plugins_by_group('vllm.general_plugins')))", env)
    assert proc.returncode == 0, proc.stderr
    assert "servescope" not in proc.stdout
    on = arm_environment("on", tmp_path)
    proc = _python("import vllm.plugins as p; print(sorted(p.load_plugins_by_group('vllm.general_plugins')))", on)
    assert "servescope" in proc.stdout


@pytest.mark.engine
def test_one_untraced_and_one_traced_arm_on_the_cpu_engine(tmp_path, tiny_model_dir):
    spec = UserPaysSpec(model=str(tiny_model_dir), arms=2, num_requests=6, prompt_len=32, output_len=8, batches=2,
                        warmup_batches=1, engine_args={"max_model_len": 256})
    from engine_fixtures import engine_env

    env = engine_env()
    off = run_arm(spec, "off", 0, tmp_path, env)
    on = run_arm(spec, "on", 1, tmp_path, env)
    assert off["processes_that_imported_servescope"] == 0
    assert on["processes_that_imported_servescope"] >= 3  # servescope run, the script's process, its EngineCore
    assert on["recording"]["complete"] and on["recording"]["tokens_recorded"] == 3 * 6 * 8
    for arm in (off, on):
        assert arm["output_tokens"] == 2 * 6 * 8 and len(arm["batches"]) == 2
        assert arm["output_tokens_per_s"] > 0 and 0 < arm["e2e_p50_s"] <= arm["e2e_p99_s"]
        # final outputs (LLM.generate's way): the caller sees each request's end, not its first token
        assert arm["ttft_p50_s"] is None and arm["tbt_per_chunk_p50_s"] is None
    comparison = compare_arms([off, dict(off, index=2), on, dict(on, index=3)], goal=0.01)
    assert set(comparison["changes"]) == {"output_tokens_per_s", "e2e_p50_s", "e2e_p99_s"}
    json.dumps(comparison)


@pytest.mark.engine
def test_delta_outputs_let_the_arms_see_ttft_and_tbt(tmp_path, tiny_model_dir):
    """--outputs delta: every step's new tokens reach the script, so TTFT and TBT per chunk are measured too."""
    from engine_fixtures import engine_env

    spec = UserPaysSpec(model=str(tiny_model_dir), arms=2, num_requests=6, prompt_len=32, output_len=8, batches=2,
                        warmup_batches=1, engine_args={"max_model_len": 256}, outputs="delta")
    assert spec.script_args(tmp_path / "r.json")[-6:-4] == ["--outputs", "delta"]
    arm = run_arm(spec, "off", 0, tmp_path, engine_env())
    assert arm["output_tokens"] == 2 * 6 * 8
    assert 0 < arm["ttft_p50_s"] <= arm["ttft_p99_s"] and 0 < arm["tbt_per_chunk_p50_s"] <= arm["tbt_per_chunk_p99_s"]


def test_the_second_engine_has_the_same_arms(tmp_path, tiny_model_dir):
    """transformers' continuous batching: off = no servescope in any process, on = servescope run (reached through
    its sitecustomize), the traced arm recording every token the script generated; throughput only."""
    pytest.importorskip("transformers")
    from engine_fixtures import engine_env

    spec = UserPaysSpec(model=str(tiny_model_dir), engine="transformers", arms=2, num_requests=4, prompt_len=16,
                        output_len=6, batches=2, warmup_batches=1, engine_args={"num_blocks": 64})
    off = run_arm(spec, "off", 0, tmp_path, engine_env())
    on = run_arm(spec, "on", 1, tmp_path, engine_env())
    assert off["processes_that_imported_servescope"] == 0 and on["processes_that_imported_servescope"] >= 1
    assert on["recording"]["complete"] and on["recording"]["tokens_recorded"] == 3 * 4 * 6
    for arm in (off, on):
        assert arm["output_tokens"] == 2 * 4 * 6 and arm["output_tokens_per_s"] > 0
        assert arm["ttft_p50_s"] is None  # generate_batch shows the caller whole batches only


def test_a_subset_arm_is_traced_with_only_its_parts(tmp_path, tiny_model_dir):
    """--subset-parts: the third kind of arm runs under servescope run recording only those parts (every process
    says so in the manifest), and still records every token its script generated."""
    pytest.importorskip("transformers")
    from engine_fixtures import engine_env
    from servescope.run.manifest import load_manifest

    spec = UserPaysSpec(model=str(tiny_model_dir), engine="transformers", arms=2, num_requests=4, prompt_len=16,
                        output_len=6, batches=2, warmup_batches=1, engine_args={"num_blocks": 64}, subset_parts="tokens")
    assert spec.arm_kinds() == ("off", "on", "subset")
    subset = run_arm(spec, "subset", 2, tmp_path, engine_env())
    assert subset["processes_that_imported_servescope"] >= 1
    assert subset["recording"]["complete"] and subset["recording"]["tokens_recorded"] == 3 * 4 * 6
    processes = load_manifest(tmp_path / "arms" / "02-subset" / "run")["processes"]
    assert processes and all(p["recording_parts"] == ["tokens"] for p in processes)


def test_a_subset_arm_runs_with_its_environment_variables_and_no_other_arm_does(tmp_path, tiny_model_dir):
    """--subset-env: the third kind of arm is traced with the default parts and these variables set; the caller's
    own SERVESCOPE_ variables reach no arm. SERVESCOPE_INJECT_FAULTS=1 shows where it was set: every record of that
    arm raises inside servescope (counted, the engine unaffected), so the arm records no token and is refused, while
    the traced arm beside it, whose caller set the same variable, records every token."""
    pytest.importorskip("transformers")
    from engine_fixtures import engine_env
    from servescope.run.manifest import load_manifest

    spec = UserPaysSpec(model=str(tiny_model_dir), engine="transformers", arms=2, num_requests=4, prompt_len=16,
                        output_len=6, batches=2, warmup_batches=1, engine_args={"num_blocks": 64},
                        subset_env={"SERVESCOPE_INJECT_FAULTS": "1"})
    assert spec.arm_kinds() == ("off", "on", "subset") and spec.traced_parts("subset") == "default"
    caller = {**engine_env(), "SERVESCOPE_INJECT_FAULTS": "1"}
    on = run_arm(spec, "on", 1, tmp_path, caller)
    assert on["recording"]["complete"] and on["recording"]["health"]["internal_errors"] == 0
    with pytest.raises(OverheadError, match="did not record what it measured"):
        run_arm(spec, "subset", 2, tmp_path, caller)
    health = load_manifest(tmp_path / "arms" / "02-subset" / "run")["health"]
    assert health["internal_errors"] > 0, health


@pytest.mark.engine
def test_served_arms_stream_every_request_and_the_traced_one_records_every_token(tmp_path, tiny_model_dir):
    """--load served (AsyncLLM, Poisson arrivals, DELTA outputs): what `h200_overhead.sh served` runs, at a tiny
    size. The caller sees TTFT, TBT and e2e of every request; the traced arm records every token generated."""
    from engine_fixtures import engine_env

    spec = UserPaysSpec(model=str(tiny_model_dir), load="served", arms=2, num_requests=8, rate=4.0, warmup_requests=2,
                        prompt_len=32, output_len=8, engine_args={"max_model_len": 256})
    env = engine_env()
    off = run_arm(spec, "off", 0, tmp_path, env)
    on = run_arm(spec, "on", 1, tmp_path, env)
    assert off["processes_that_imported_servescope"] == 0 and on["processes_that_imported_servescope"] >= 3
    assert on["recording"]["complete"] and on["recording"]["tokens_recorded"] == (2 + 8) * 8
    for arm in (off, on):
        assert arm["requests"] == 8 and arm["output_tokens"] == 8 * 8 and arm["offered_rate"] == 4.0
        assert 0 < arm["busy_fraction"] <= 1 and arm["achieved_rate"] > 0
        assert 0 < arm["ttft_p50_s"] <= arm["ttft_p99_s"] and 0 < arm["tbt_per_chunk_p50_s"] <= arm["tbt_per_chunk_p99_s"]
        assert arm["ttft_p50_s"] < arm["e2e_p50_s"]


def test_a_comparison_cut_by_its_budget_is_finished_by_resume_and_never_overwritten(tmp_path, tiny_model_dir):
    """--budget-s stops before an arm that would not end in time (exit 3, overhead.json incomplete); --resume runs
    the rest with the recorded arms kept as they were; an --out holding a comparison is refused without --resume,
    or with other options; an arm begun and never recorded is moved aside, not deleted."""
    pytest.importorskip("transformers")
    from typer.testing import CliRunner

    from engine_fixtures import engine_env
    from servescope.cli.main import app

    out = tmp_path / "oh"
    command = transformers_overhead_command(tiny_model_dir, out)
    runner = CliRunner()

    def invoke(*extra):
        return runner.invoke(app, [*command, *extra], env=engine_env(), catch_exceptions=False)

    cut = invoke("--budget-s", "0.001")  # the first arm's duration alone exceeds it: one arm, then stop
    assert cut.exit_code == 3, cut.output
    first = json.loads((out / "overhead.json").read_text())
    assert not first["complete"] and len(first["arms"]) == 1 and "--resume" in cut.output
    refused = invoke()
    assert refused.exit_code != 0 and "--resume" in refused.output and "holds an earlier comparison" in refused.output
    other = invoke("--resume", "--output-len", "7")
    assert other.exit_code != 0 and "output_len" in other.output
    begun = out / "arms" / "01-on"  # as a call killed in its second arm leaves it
    begun.mkdir()
    (begun / "log.txt").write_text("cut")
    done = invoke("--resume")
    assert done.exit_code == 0, done.output
    final = json.loads((out / "overhead.json").read_text())
    assert final["complete"] and len(final["arms"]) == 4 and final["arms"][0] == first["arms"][0]
    assert [a["arm"] for a in final["arms"]] == final["order"] and "output_tokens_per_s" in final["changes"]
    (aside,) = (out / "unfinished-arms").iterdir()
    assert aside.name.startswith("01-on-") and (aside / "log.txt").read_text() == "cut"


def test_a_comparison_with_a_subset_kind_reports_the_left_out_parts_share(tmp_path, tiny_model_dir):
    """--subset-parts on the command line: 2 arms of each of three kinds in the balanced order, the usual table
    and the two subset tables printed, both pairs' changes in overhead.json; a subset equal to --parts refused."""
    pytest.importorskip("transformers")
    from typer.testing import CliRunner

    from engine_fixtures import engine_env
    from servescope.cli.main import app

    out = tmp_path / "oh"
    command = transformers_overhead_command(tiny_model_dir, out)
    runner = CliRunner()
    same = runner.invoke(app, [*command, "--subset-parts", "default"], env=engine_env(), catch_exceptions=False)
    assert same.exit_code != 0 and "--subset-parts default" in same.output and not out.exists()
    done = runner.invoke(app, [*command, "--subset-parts", "tokens"], env=engine_env(), catch_exceptions=False)
    assert done.exit_code == 0, done.output
    report = json.loads((out / "overhead.json").read_text())
    assert report["order"] == ["off", "on", "subset", "subset", "on", "off"]
    assert [a["arm"] for a in report["arms"]] == report["order"] and report["complete"]
    assert set(report["subset_changes"]) == {"subset_vs_off", "on_vs_subset"}
    assert "output_tokens_per_s" in report["subset_changes"]["on_vs_subset"]
    assert "Tracing parts tokens" in done.output and "What the subset changes: parts default against parts tokens" in done.output
    for bad in ("SERVESCOPE_HELD_UPDATES", "1X=2", "=1"):  # no '=', or a name no shell could set: refused, nothing run
        refused = runner.invoke(app, [*command, "--out", str(tmp_path / "bad"), "--subset-env", bad], env=engine_env())
        assert refused.exit_code != 0 and "--subset-env" in refused.output and not (tmp_path / "bad").exists()


def transformers_overhead_command(model_dir, out) -> list[str]:
    """`servescope overhead` on the second engine at a size that runs in seconds: 2 arms of each kind."""
    return ["overhead", "--engine", "transformers", "--model", str(model_dir), "--out", str(out), "--arms", "2",
            "--num-requests", "4", "--prompt-len", "16", "--output-len", "6", "--batches", "2",
            "--engine-args", '{"num_blocks": 64}']
