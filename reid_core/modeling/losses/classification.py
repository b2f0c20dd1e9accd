"""Identity classification losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.1, over: str = "all"
) -> torch.Tensor:
    """Cross-entropy with label smoothing (Szegedy et al. 2016), which curbs overconfident ids.

    `over="all"` spreads ε over all C classes (the target keeps 1 − ε + ε/C, torch's form);
    `over="others"` gives the target 1 − ε and each other class ε/(C − 1) (FastReID's form).
    """
    if over == "all":
        return F.cross_entropy(logits, labels, label_smoothing=smoothing)
    if over != "others":
        raise ValueError(f"label smoothing is spread over 'all' or 'others', not {over!r}")
    log_probs = F.log_softmax(logits.float(), dim=1)
    off_target = smoothing / max(logits.shape[1] - 1, 1)
    targets = torch.full_like(log_probs, off_target)
    targets.scatter_(1, labels[:, None], 1 - smoothing)
    return -(targets * log_probs).sum(dim=1).mean()
