import numpy as np
import pytest

from servescope.analysis.checklist import AuditedRun, audit

PARAMS = {
    "max_num_batched_tokens": 8192,
    "max_num_seqs": 256,
    "enable_chunked_prefill": True,
    "tensor_parallel_size": 1,
    "gpu_memory_utilization": 0.9,
}


def manifest(engine="vllm", version="0.26.0", params=None, attention="GQA", moe=False, size=8.0e9, workload="sharegpt"):
    m = {
        "engine": {"name": engine, "version": version, "parameters": dict(PARAMS if params is None else params)},
        "model": {"architecture": "LlamaForCausalLM", "attention": attention, "moe": moe, "num_parameters": size},
        "servescope": {"version": "0.1.0"},
    }
    if workload is not None:
        m["workload"] = {"name": workload}
    return m


def samples(n=500, seed=0, sched_scale=0.01, norm_scale=0.02, ttft_scale=0.2, tbt_scale=0.02, tpot_scale=0.02):
    rng = np.random.default_rng(seed)
    return dict(
        ttft_s=rng.exponential(ttft_scale, n),
        tbt_s=rng.exponential(tbt_scale, n * 20),
        e2e_s=rng.exponential(2.0, n),
        tpot_s=rng.exponential(tpot_scale, n),
        scheduling_delay_s=rng.exponential(sched_scale, n),
        normalized_latency_s=rng.exponential(norm_scale, n),
        prompt_tokens=rng.integers(10, 2000, n),
        output_tokens=rng.integers(2, 500, n),
    )


def by_item(results):
    return {r.item: r for r in results}


def test_clean_comparison_passes_what_it_can_and_warns_on_coverage():
    runs = [
        AuditedRun("A", manifest(), "baseline", **samples(seed=1)),
        AuditedRun("B", manifest(), "treatment", **samples(seed=2)),
    ]
    res = by_item(audit(runs, slos={"ttft_s": 5.0, "tbt_s": 1.0}))
    assert [r.item for r in audit(runs)] == list(range(1, 9))
    assert res[1].status == "pass" and "all runs on vllm 0.26.0" in res[1].evidence
    assert res[2].status == "pass" and "engine parameters identical on both sides" in res[2].evidence
    assert res[3].status == "warn"
    assert "only one attention type (GQA)" in res[3].evidence and "dense models only" in res[3].evidence
    assert res[4].status == "warn" and "one workload only (sharegpt)" in res[4].evidence
    assert res[5].status == "pass"
    assert res[6].status == "pass"
    assert res[8].status == "pass"


def test_different_engines_fail_unless_the_split_is_reported():
    runs = [AuditedRun("A", manifest(), "baseline"), AuditedRun("B", manifest("sglang", "0.4.1"), "treatment")]
    assert by_item(audit(runs))[1].status == "fail"
    split = by_item(audit(runs, split_reported=True))[1]
    assert split.status == "warn" and "sglang 0.4.1" in split.evidence[0]
    same_name_other_version = [
        AuditedRun("A", manifest(), "baseline"),
        AuditedRun("B", manifest(version="0.27.0"), "treatment"),
    ]
    assert by_item(audit(same_name_other_version))[1].status == "fail"


def test_defaulted_baseline_parameter_fails_and_value_differences_warn():
    base = {k: v for k, v in PARAMS.items() if k != "max_num_batched_tokens"}
    treat = dict(PARAMS, max_num_seqs=512)
    runs = [AuditedRun("A", manifest(params=base), "baseline"), AuditedRun("B", manifest(params=treat), "treatment")]
    item = by_item(audit(runs))[2]
    assert item.status == "fail"
    assert "baseline ran with default max_num_batched_tokens while treatment set it (8192)" in item.evidence
    assert "max_num_seqs: baseline 256, treatment 512" in item.evidence
    only_values = [AuditedRun("A", manifest(), "baseline"), AuditedRun("B", manifest(params=treat), "treatment")]
    assert by_item(audit(only_values))[2].status == "warn"


def test_studied_parameters_are_the_treatment_and_repeats_are_summarised():
    spec = dict(PARAMS, speculative_method="draft_model", num_speculative_tokens=4)
    runs = [AuditedRun(f"A{i}", manifest(), "baseline") for i in range(3)] + \
        [AuditedRun(f"B{i}", manifest(params=spec), "treatment") for i in range(3)]
    unstudied = by_item(audit(runs))[2]
    assert unstudied.status == "warn"  # treatment-only parameters, none performance-critical
    assert unstudied.evidence.count("baseline ran with default speculative_method while treatment set it "
                                    "('draft_model')") == 1  # once, not once per pair of runs
    assert sum(e.endswith("parameters recorded") or "not recorded:" in e for e in unstudied.evidence) == 1
    studied = by_item(audit(runs, studied=["speculative", "num_speculative_tokens"]))[2]
    assert studied.status == "pass"
    assert "studied: speculative_method: baseline None, treatment 'draft_model'" in studied.evidence
    mixed = runs + [AuditedRun("B9", manifest(params=dict(spec, max_num_seqs=512)), "treatment")]
    assert by_item(audit(mixed, studied=["speculative", "num_speculative_tokens"]))[2].status == "warn"


def test_absent_fields_warn_as_not_recorded():
    bare = {"servescope": {"version": "0.1.0"}}
    res = by_item(audit([AuditedRun("X", bare)]))
    assert res[1].status == "warn" and "X: engine name/version not recorded" in res[1].evidence
    assert res[2].status == "warn" and "X: engine parameters not recorded" in res[2].evidence
    assert res[3].status == "warn" and "X: model not recorded" in res[3].evidence
    assert res[4].status == "warn" and "X: workload not recorded" in res[4].evidence
    assert res[5].status == "warn"  # no SLO
    assert res[6].status == "warn" and "X: request metrics not computed" in res[6].evidence
    partial = manifest(workload=None)
    del partial["model"]["attention"]
    res = by_item(audit([AuditedRun("Y", partial)]))
    assert "Y: model attention not recorded" in res[3].evidence and "Y: workload not recorded" in res[4].evidence


def test_model_and_workload_coverage_pass_when_diverse():
    runs = [
        AuditedRun("a", manifest(attention="GQA", moe=False, workload="sharegpt")),
        AuditedRun("b", manifest(attention="MLA", moe=True, size=671e9, workload="arxiv-summarization")),
        AuditedRun("c", manifest(attention="MHA", moe=False, workload="code")),
    ]
    res = by_item(audit(runs))
    assert res[3].status == "pass" and "attention types: GQA, MHA, MLA" in res[3].evidence
    assert res[4].status == "pass"


def test_normalized_latency_hiding_a_scheduling_delay_is_flagged():
    # B has the better normalized latency but a 4x worse P99 scheduling delay
    a = samples(seed=3, sched_scale=0.05, norm_scale=0.04)
    b = samples(seed=3, sched_scale=0.2, norm_scale=0.02)
    runs = [AuditedRun("A", manifest(), "baseline", **a), AuditedRun("B", manifest(), "treatment", **b)]
    item = by_item(audit(runs))[8]
    assert item.status == "warn"
    assert any(
        e.startswith("normalized latency ranks treatment first but treatment's P99 scheduling delay is 4.0x baseline's")
        for e in item.evidence
    )
    tpot = samples(seed=4, tpot_scale=0.01, tbt_scale=0.08)
    runs = [
        AuditedRun("A", manifest(), "baseline", **samples(seed=4)),
        AuditedRun("B", manifest(), "treatment", **tpot),
    ]
    item = by_item(audit(runs))[8]
    assert item.status == "warn" and any(
        e.startswith("TPOT ranks treatment first but treatment's P99 TBT") for e in item.evidence
    )


def test_latency_bounds_against_slos():
    runs = [
        AuditedRun("A", manifest(), "baseline", **samples(ttft_scale=0.2)),
        AuditedRun("B", manifest(), "treatment", **samples(ttft_scale=10.0)),
    ]
    item = by_item(audit(runs, slos={"ttft_s": 2.0, "tbt_s": 1.0}))[5]
    assert item.status == "warn"
    assert any(e.startswith("B: TTFT P99") and "exceeds SLO 2.00 s" in e for e in item.evidence)
    assert any(e.startswith("A: TTFT P99") and "meets" in e for e in item.evidence)


def test_distribution_item_flags_few_requests_and_percentile_order_flips():
    small = AuditedRun("tiny", manifest(), **samples(n=37))
    assert by_item(audit([small]))[7].status == "warn"
    rng = np.random.default_rng(0)
    base = samples(n=2000, seed=5)
    treat = dict(base)
    base["ttft_s"] = rng.normal(1.0, 0.05, 2000)  # narrow
    treat["ttft_s"] = rng.normal(0.8, 0.5, 2000)  # lower median, heavier tail
    runs = [AuditedRun("A", manifest(), "baseline", **base), AuditedRun("B", manifest(), "treatment", **treat)]
    item = by_item(audit(runs))[7]
    assert item.status == "warn" and any(e.startswith("TTFT: the order flips") for e in item.evidence)


def test_repeats_with_the_same_evidence_share_one_line():
    repeats = [AuditedRun(f"rep{i}", manifest(), **samples(n=37)) for i in range(4)] + \
        [AuditedRun("other", manifest(), **samples(n=37, seed=1))]
    res = by_item(audit(repeats))
    assert res[7].evidence[0] == "5 runs (rep0, rep1, rep2, ...): only 37 requests: its P99 is nearly its maximum"
    prompt_lines = [e for e in res[4].evidence if "prompt tokens" in e]
    assert prompt_lines[0].startswith("4 runs (rep0, rep1, rep2, ...): prompt tokens")
    assert prompt_lines[1].startswith("other: prompt tokens")


def test_missing_tbt_with_multi_token_outputs_fails_metric_selection():
    s = samples()
    s["tbt_s"] = np.zeros(0)
    item = by_item(audit([AuditedRun("A", manifest(), **s)]))[6]
    assert item.status == "fail"


def test_no_runs_is_an_error():
    with pytest.raises(ValueError):
        audit([])


def test_audit_run_dirs_reads_manifests_and_metrics(tmp_path):
    from runbuilder import RunBuilder

    from servescope.analysis.checklist import audit_run_dirs

    dirs = []
    for name, params in (("base", {"max_num_seqs": 8}), ("treat", {"max_num_seqs": 8, "max_num_batched_tokens": 4096})):
        b = RunBuilder(tmp_path, name, manifest(params=params))
        for i in range(3):
            b.request(
                f"r{i}",
                arrival_ns=0,
                scheduled_ns=1000,
                prompt_tokens=16,
                emissions=[(k, 10_000 * (k + 1), 1) for k in range(5)],
                finished_ns=50_000,
            )
        dirs.append(b.write())
    res = by_item(audit_run_dirs([dirs[0]], [dirs[1]]))
    assert res[2].status == "fail"
    assert "baseline ran with default max_num_batched_tokens while treatment set it (4096)" in res[2].evidence
    assert res[6].status == "pass"
    assert any("only 3 requests" in e for e in res[7].evidence)


def test_one_switch_under_two_engines_names_is_set_side_by_side():
    """vLLM's cudagraph_mode / compilation_mode and transformers' cuda_graphs / torch_compile name the same switches:
    items 1 and 2 set their values side by side instead of listing each as a setting only one engine has."""
    vllm = dict(PARAMS, cudagraph_mode="FULL_AND_PIECEWISE", compilation_mode=3, enforce_eager=False)
    hf = dict(PARAMS, cuda_graphs="off", torch_compile={"decode": False, "varlen": False}, enforce_eager=True,
              safety_margin=0.15)
    runs = [AuditedRun("V", manifest("vllm", "0.26.0", vllm), "baseline"),
            AuditedRun("T", manifest("transformers", "5.17.0", hf), "treatment")]
    res = by_item(audit(runs, split_reported=True))
    fairness, tuning = " ".join(res[1].evidence), res[2].evidence
    assert "cudagraph_mode / cuda_graphs (one switch): 'FULL_AND_PIECEWISE' vs 'off'" in fairness
    assert "compilation_mode / torch_compile (one switch): 3 vs {'decode': False, 'varlen': False}" in fairness
    assert "'not recorded'" not in fairness
    assert "cudagraph_mode / cuda_graphs (one switch): baseline 'FULL_AND_PIECEWISE', treatment 'off'" in tuning
    assert not any(line.startswith(("only vllm has cudagraph_mode", "only transformers has cuda_graphs",
                                    "only transformers has torch_compile")) for line in tuning)
    assert "only transformers has safety_margin (0.15)" in tuning  # a setting with no counterpart stays as it was
    assert "enforce_eager: baseline False, treatment True" in tuning
    reverse = by_item(audit([AuditedRun("T", manifest("transformers", "5.17.0", hf), "baseline"),
                             AuditedRun("V", manifest("vllm", "0.26.0", vllm), "treatment")], split_reported=True))
    assert "cuda_graphs / cudagraph_mode (one switch): 'off' vs 'FULL_AND_PIECEWISE'" in " ".join(reverse[1].evidence)
    assert "cuda_graphs / cudagraph_mode (one switch): baseline 'off', treatment 'FULL_AND_PIECEWISE'" in reverse[2].evidence
