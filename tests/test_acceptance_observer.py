"""The second observer of accepted draft tokens (studies/acceptance_observer.py) on constructed
deliveries and emission rows with known answers; the real engine is tests/test_spec_decode_cpu.py."""

from types import SimpleNamespace

from servescope.studies.acceptance_observer import (
    Delivery,
    DeliveryObserver,
    by_engine_id,
    chunks_against_emissions,
    compare_deliveries,
    served_comparison,
)


def output(request_id, n):
    """A RequestOutput as LLMEngine.step() returns it with RequestOutputKind.DELTA: only the new tokens."""
    return SimpleNamespace(request_id=request_id, outputs=[SimpleNamespace(token_ids=list(range(n)))])


def row(rid, step, n, accepted=None, drafted=None):
    return {"request_id": rid, "step_id": step, "num_tokens": n, "num_accepted_tokens": accepted,
            "num_draft_tokens": drafted}


def test_the_observer_counts_each_steps_delivery_and_marks_the_one_that_reaches_max_tokens():
    obs = DeliveryObserver(max_tokens={"a": 6})
    obs.observe([output("a", 1)])  # prefill: the first token
    obs.observe([])  # a step with nothing for the caller
    obs.observe([output("a", 3)])  # 2 accepted + 1
    obs.observe([output("a", 2)])  # reaches 6: may be cut short
    assert [(d.num_tokens, d.call, d.capped) for d in obs.deliveries["a"]] == [(1, 0, False), (3, 2, False),
                                                                               (2, 3, True)]


def test_deliveries_and_emissions_agree_per_step_and_per_request():
    deliveries = {"a": [Delivery(1, 0, False), Delivery(3, 1, False), Delivery(1, 2, False)],
                  "b": [Delivery(1, 1, False), Delivery(4, 2, False)]}
    rows = [row("a", 0, 1), row("a", 1, 3, 2, 3), row("a", 2, 1, 0, 3), row("b", 1, 1), row("b", 2, 4, 3, 3)]
    result = compare_deliveries(deliveries, rows)
    assert result["agree"] and result["requests_agreeing"] == 2 and result["steps_exact"] == 5
    assert result["accepted_seen_by_caller"] == result["accepted_recorded"] == 5
    assert result["per_request"]["b"]["accepted_seen_by_caller"] == 3 and result["step_totals_equal"]


def test_a_recorded_acceptance_the_caller_did_not_get_is_a_mismatch():
    deliveries = {"a": [Delivery(1, 0, False), Delivery(2, 1, False)]}
    rows = [row("a", 0, 1), row("a", 1, 2, 3, 3)]  # recorded 3 accepted, the caller got 2 tokens (1 accepted)
    result = compare_deliveries(deliveries, rows)
    assert not result["agree"] and result["requests_agreeing"] == 0
    assert "delivery 1 (step 1): the caller got 2 tokens (1 accepted), token_emissions says 3" in result["mismatches"][0]


def test_the_last_delivery_cut_at_max_tokens_is_a_bound_and_its_undelivered_tokens_are_counted():
    deliveries = {"a": [Delivery(1, 0, False), Delivery(2, 1, True)]}  # 2 of the step's 4 tokens were wanted
    rows = [row("a", 0, 1), row("a", 1, 2, 3, 3)]
    result = compare_deliveries(deliveries, rows)
    assert result["agree"] and result["steps_cut_at_max_tokens"] == 1
    assert result["accepted_not_delivered"] == 2 and result["per_request"]["a"]["accepted_recorded"] == 3
    below = compare_deliveries({"a": [Delivery(1, 0, False), Delivery(3, 1, True)]}, [row("a", 0, 1), row("a", 1, 3, 1, 3)])
    assert not below["agree"]  # fewer recorded than the caller got is never a cut


def test_a_missing_emission_row_is_named():
    result = compare_deliveries({"a": [Delivery(1, 0, False), Delivery(1, 1, False)]}, [row("a", 0, 1)])
    assert not result["agree"] and "2 deliveries seen by the caller, 1 emission rows" in result["mismatches"][0]


def test_caller_ids_are_mapped_to_engine_ids_through_the_arrival_event():
    events = [{"request_id": "x-0-abc", "event": "arrival", "detail": "x-0"},
              {"request_id": "x-0-abc", "event": "queued", "detail": None}]
    assert set(by_engine_id({"x-0": [Delivery(1, 0, False)]}, events)) == {"x-0-abc"}


def test_streamed_chunks_match_steps_and_merged_chunks_are_counted_not_compared():
    rows = [row("e", 0, 1), row("e", 1, 3, 2, 3), row("e", 2, 1, 0, 3), row("e", 3, 2, 1, 3), row("e", 4, 4, 3, 3)]
    # chunks: step 0, step 1, steps 2+3 merged (1 + 2 = 3 tokens: looks like one step with 2 accepted), step 4
    result = chunks_against_emissions([1, 3, 3, 4], rows, num_speculative_tokens=3)
    assert result["agree"] and result["merged_chunks"] == 1 and result["compared"] == 3 and result["exact"] == 3
    assert result["certainly_merged"] == 0  # 3 tokens fit one step of k = 3: only the engine rows reveal it
    big = chunks_against_emissions([1, 3, 1, 6], rows, num_speculative_tokens=3)  # steps 3+4: 6 > k + 1
    assert big["merged_chunks"] == 1 and big["certainly_merged"] == 1 and big["agree"]
    torn = chunks_against_emissions([2, 2, 7], rows, num_speculative_tokens=3)  # a boundary inside step 1
    assert not torn["agree"] and torn["misaligned"] == 1


def test_served_comparison_joins_client_and_engine_ids():
    chunks = [{"client_request_id": "c1", "time_ns": t, "num_tokens": n} for t, n in ((1, 1), (3, 2), (2, 3))]
    rows = [row("e1", 0, 1), row("e1", 1, 3, 2, 3), row("e1", 2, 2, 1, 3)]
    result = served_comparison(chunks, rows, {"c1": "e1"}, 3)  # chunks sorted by time: 1, 3, 2 tokens
    assert result["agree"] and result["requests"] == 1 and result["exact"] == 3


def test_served_acceptance_joins_a_client_run_to_the_servers_records(tmp_path):
    from runbuilder import RunBuilder

    from servescope.studies.acceptance_observer import served_acceptance

    server = RunBuilder(tmp_path, "server")
    server.event("e1", "arrival", 1, detail="cmpl-c1-0")
    for r in (row("e1", 0, 1), row("e1", 1, 3, 2, 3), row("e1", 2, 2, 1, 3), row("e1", 3, 2, 1, 3)):
        server.row("token_emissions", time_ns=10 + r["step_id"], **r)
    client = RunBuilder(tmp_path, "client")
    client.row("client_requests", client_request_id="c1", engine_request_id="cmpl-c1", status="ok")
    for t, n in ((1, 1), (2, 3), (3, 4)):  # the last chunk merges steps 2 and 3
        client.row("client_chunks", client_request_id="c1", time_ns=t, num_tokens=n)
    result = served_acceptance(server.write(), [client.write()])
    assert result["agree"] and result["num_speculative_tokens"] == 3 and result["requests"] == 1
    assert (result["compared"], result["merged_chunks"], result["requests_with_merged_chunks"]) == (2, 1, 1)
    plain = RunBuilder(tmp_path, "plain")
    plain.row("token_emissions", request_id="x", step_id=0, time_ns=1, num_tokens=1)
    assert served_acceptance(plain.write(), []) is None  # no speculation: nothing to observe
