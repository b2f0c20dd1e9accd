import pytest

from reid_core.tracking.promotion import Candidate, Policy, decide


def cand(version, mAP, rank1=0.5, eval_hash="set-a", parity=True, latency=2.0):
    return Candidate(version, mAP, rank1, eval_hash, parity, latency)


def failed(decision):
    return [c.name for c in decision.checks if not c.passed]


def test_first_model_becomes_champion():
    decision = decide(cand(1, 0.3), None, Policy())
    assert decision.promote and "no champion on evaluation set" in decision.summary()


def test_better_model_on_the_same_set_is_promoted_with_its_gain():
    decision = decide(cand(2, 0.40), cand(1, 0.30), Policy(min_map_gain=0.05))
    assert decision.promote and failed(decision) == []
    assert any("+0.1000" in reason for reason in decision.reasons)


@pytest.mark.parametrize("mAP, margin", [(0.32, 0.05), (0.30, 0.0), (0.35, 0.05)])
def test_not_better_by_more_than_the_margin_is_refused(mAP, margin):
    decision = decide(cand(2, mAP), cand(1, 0.30), Policy(min_map_gain=margin))
    assert not decision.promote and failed(decision) == ["mAP gain"]
    assert decision.reasons[0].startswith("FAIL mAP gain")


def test_a_rank1_drop_beyond_the_tolerance_is_refused_despite_a_better_map():
    policy = Policy(max_rank1_drop=0.02)
    assert decide(cand(2, 0.40, rank1=0.49), cand(1, 0.30, rank1=0.50), policy).promote
    refused = decide(cand(2, 0.40, rank1=0.47), cand(1, 0.30, rank1=0.50), policy)
    assert not refused.promote and failed(refused) == ["rank-1 drop"]


def test_latency_over_budget_or_unknown_is_refused_only_with_a_budget():
    assert decide(cand(2, 0.4, latency=9.0), cand(1, 0.3), Policy()).promote
    slow = decide(cand(2, 0.4, latency=9.0), cand(1, 0.3), Policy(max_latency_ms=5))
    assert not slow.promote and failed(slow) == ["latency"]
    unknown = decide(cand(1, 0.4, latency=None), None, Policy(max_latency_ms=5))
    assert not unknown.promote and failed(unknown) == ["latency"]


def test_different_evaluation_sets_are_not_compared():
    decision = decide(cand(2, 0.9, eval_hash="set-b"), cand(1, 0.1), Policy())
    assert not decision.promote and failed(decision) == ["same evaluation set"]
    assert "not comparable" in decision.reasons[0]
    assert [c.name for c in decision.checks] == ["export parity", "same evaluation set"]


def test_failed_parity_is_never_promoted():
    decision = decide(cand(2, 0.9, parity=False), None, Policy())
    assert not decision.promote and failed(decision) == ["export parity"]


def test_every_failed_check_is_reported_at_once():
    policy = Policy(max_rank1_drop=0.0, max_latency_ms=1.0)
    decision = decide(cand(2, 0.2, rank1=0.4, parity=False), cand(1, 0.3), policy)
    assert failed(decision) == ["export parity", "latency", "mAP gain", "rank-1 drop"]
    assert len(decision.reasons) == 4


def test_markdown_report_shows_both_models_and_every_check():
    challenger, champion = cand(2, 0.40, rank1=0.60), cand(1, 0.30, rank1=0.55, latency=3.5)
    decision = decide(challenger, champion, Policy(max_latency_ms=10))
    text = decision.markdown("reid", challenger, champion)
    assert text.startswith("# Promotion of reid v2: **promoted** to champion")
    assert "| mAP | 40.00 % | 30.00 % |" in text
    assert "| latency (ms, batch 1) | 2.00 | 3.50 |" in text
    for check in ("export parity", "latency", "same evaluation set", "mAP gain", "rank-1 drop"):
        assert f"| {check} | pass |" in text
