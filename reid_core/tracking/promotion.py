"""Promotion policy: when a challenger may replace the champion, with every reason why.

Each check gives one line; a model is promoted only when all of them pass, and the lines are
what the registry tag and the Markdown report show, so a refusal always says what failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Candidate:
    """What the policy needs to know of a model version (metrics as fractions)."""

    version: int
    mAP: float
    rank1: float
    eval_set_hash: str
    parity_passed: bool
    latency_ms: float | None = None  # ONNX Runtime CPU, batch 1, measured by export


@dataclass(frozen=True)
class Policy:
    """`min_map_gain`: mAP must beat the champion's by more than this (by anything at 0);
    `max_rank1_drop`: rank-1 may fall at most this much; `max_latency_ms`: budget (0: none)."""

    min_map_gain: float = 0.0
    max_rank1_drop: float = 0.0
    max_latency_ms: float = 0.0


@dataclass
class Check:
    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{'pass' if self.passed else 'FAIL'} {self.name}: {self.detail}"


@dataclass
class Decision:
    promote: bool
    checks: list[Check] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        """The failed checks when refused, every check when promoted."""
        failed = [c for c in self.checks if not c.passed]
        return [c.line() for c in (failed if failed else self.checks)]

    def summary(self) -> str:
        return ("promoted: " if self.promote else "refused: ") + "; ".join(self.reasons)

    def markdown(self, model_name: str, challenger: Candidate, champion: Candidate | None) -> str:
        """The decision as a Markdown report: verdict, figures side by side, every check."""
        verdict = "**promoted** to champion" if self.promote else "**refused**"
        rows = [
            ("mAP", _pct(challenger.mAP), _pct(champion.mAP) if champion else "—"),
            ("rank-1", _pct(challenger.rank1), _pct(champion.rank1) if champion else "—"),
            (
                "latency (ms, batch 1)",
                _ms(challenger.latency_ms),
                _ms(champion.latency_ms) if champion else "—",
            ),
            (
                "evaluation set",
                challenger.eval_set_hash[:12],
                champion.eval_set_hash[:12] if champion else "—",
            ),
            ("export parity", _ok(challenger.parity_passed), "—"),
        ]
        against = f"champion v{champion.version}" if champion else "no champion"
        lines = [
            f"# Promotion of {model_name} v{challenger.version}: {verdict}",
            "",
            f"Judged on evaluation set `{challenger.eval_set_hash[:12]}`, against that set's "
            "champion.",
            "",
            f"| | v{challenger.version} (challenger) | {against} |",
            "| --- | --- | --- |",
            *(f"| {name} | {new} | {old} |" for name, new, old in rows),
            "",
            "| check | result | detail |",
            "| --- | --- | --- |",
            *(f"| {c.name} | {_ok(c.passed)} | {c.detail} |" for c in self.checks),
            "",
        ]
        return "\n".join(lines)


def _pct(x: float) -> str:
    return f"{100 * x:.2f} %"


def _ms(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def _ok(passed: bool) -> str:
    return "pass" if passed else "FAIL"


def decide(challenger: Candidate, champion: Candidate | None, policy: Policy) -> Decision:
    """Check the challenger against the policy and the champion; promote iff every check passes."""
    checks = [Check("export parity", challenger.parity_passed, _parity(challenger))]
    if policy.max_latency_ms > 0:
        latency = challenger.latency_ms
        checks.append(
            Check(
                "latency",
                latency is not None and latency <= policy.max_latency_ms,
                f"{_ms(latency)} ms at batch 1, budget {policy.max_latency_ms} ms",
            )
        )
    if champion is None:
        checks.append(
            Check(
                "champion",
                True,
                f"no champion on evaluation set {challenger.eval_set_hash[:12]} yet",
            )
        )
        return Decision(all(c.passed for c in checks), checks)
    same_set = champion.eval_set_hash == challenger.eval_set_hash
    checks.append(
        Check(
            "same evaluation set",
            same_set,
            f"{challenger.eval_set_hash[:12]} vs champion v{champion.version}'s "
            f"{champion.eval_set_hash[:12]}" + ("" if same_set else ": not comparable"),
        )
    )
    if same_set:
        gain = challenger.mAP - champion.mAP
        beats = gain > policy.min_map_gain if policy.min_map_gain > 0 else gain > 0
        checks.append(
            Check(
                "mAP gain",
                beats,
                f"mAP {challenger.mAP:.4f} vs champion v{champion.version}'s {champion.mAP:.4f}: "
                f"{gain:+.4f} (needed > {policy.min_map_gain})",
            )
        )
        drop = champion.rank1 - challenger.rank1
        checks.append(
            Check(
                "rank-1 drop",
                drop <= policy.max_rank1_drop,
                f"rank-1 {challenger.rank1:.4f} vs {champion.rank1:.4f}: drop {drop:+.4f} "
                f"(allowed ≤ {policy.max_rank1_drop})",
            )
        )
    return Decision(all(c.passed for c in checks), checks)


def _parity(c: Candidate) -> str:
    return "ONNX Runtime matched PyTorch" if c.parity_passed else "the parity gate did not pass"
