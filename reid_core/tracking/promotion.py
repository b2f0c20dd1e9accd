"""Promotion policy: when a challenger may replace the champion, with the reasons why."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Candidate:
    """What the policy needs to know of a model version."""

    version: int
    mAP: float
    rank1: float
    eval_set_hash: str
    parity_passed: bool


@dataclass
class Decision:
    promote: bool
    reasons: list[str] = field(default_factory=list)


def decide(challenger: Candidate, champion: Candidate | None, min_map_gain: float) -> Decision:
    """Promote only a model that passed export parity and beats the champion on the same set."""
    if not challenger.parity_passed:
        return Decision(False, ["export parity gate did not pass"])
    if champion is None:
        return Decision(True, ["no current champion"])
    if champion.eval_set_hash != challenger.eval_set_hash:
        return Decision(
            False,
            [
                f"evaluated on a different set ({challenger.eval_set_hash[:12]}) than champion "
                f"v{champion.version} ({champion.eval_set_hash[:12]}): not comparable"
            ],
        )
    gain = challenger.mAP - champion.mAP
    if gain > min_map_gain or (min_map_gain == 0 and gain > 0):
        return Decision(
            True,
            [
                f"mAP {challenger.mAP:.4f} beats champion v{champion.version} ({champion.mAP:.4f}) "
                f"by {gain:+.4f} (needed > {min_map_gain})"
            ],
        )
    return Decision(
        False,
        [
            f"mAP {challenger.mAP:.4f} does not beat champion v{champion.version} "
            f"({champion.mAP:.4f}) by more than {min_map_gain}"
        ],
    )
