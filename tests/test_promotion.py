from reid_core.tracking.promotion import Candidate, decide


def cand(version, mAP, eval_hash="set-a", parity=True):
    return Candidate(version, mAP, rank1=0.5, eval_set_hash=eval_hash, parity_passed=parity)


def test_first_model_becomes_champion():
    decision = decide(cand(1, 0.3), None, 0.0)
    assert decision.promote and "no current champion" in decision.reasons[0]


def test_better_model_on_the_same_set_is_promoted_with_its_gain():
    decision = decide(cand(2, 0.40), cand(1, 0.30), 0.05)
    assert decision.promote and "+0.1000" in decision.reasons[0]


def test_not_better_by_the_margin_is_refused():
    assert not decide(cand(2, 0.32), cand(1, 0.30), 0.05).promote
    assert not decide(cand(2, 0.30), cand(1, 0.30), 0.0).promote


def test_different_evaluation_sets_are_not_compared():
    decision = decide(cand(2, 0.9, "set-b"), cand(1, 0.1, "set-a"), 0.0)
    assert not decision.promote and "not comparable" in decision.reasons[0]


def test_failed_parity_is_never_promoted():
    decision = decide(cand(2, 0.9, parity=False), None, 0.0)
    assert not decision.promote and "parity" in decision.reasons[0]
