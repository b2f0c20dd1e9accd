"""Distillation losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from reid_core.config import DistillConfig
from reid_core.modeling.losses import ReidLoss
from reid_core.modeling.model import ReidModel, ReidOutput


def kd_logits(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) on temperature-softened logits, scaled by T² (Hinton et al. 2015)."""
    log_p_student = F.log_softmax(student / temperature, dim=1)
    p_teacher = F.softmax(teacher / temperature, dim=1)
    return F.kl_div(log_p_student, p_teacher, reduction="batchmean") * temperature**2


class DistillLoss:
    """The student's own re-id loss plus the teacher's soft targets on the same augmented batch.

    The teacher is frozen and kept in eval mode, so its BN statistics never drift.
    """

    def __init__(self, teacher: ReidModel, config: DistillConfig):
        self.teacher = teacher.eval().requires_grad_(False)
        self.reid = ReidLoss(config.loss)
        self.config = config

    def __call__(
        self, out: ReidOutput, labels: torch.Tensor, images: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        terms = self.reid(out, labels)
        if self.config.kd_weight > 0:
            self.teacher.eval()
            with torch.no_grad():
                teacher_logits = self.teacher.outputs(images).logits
            terms["loss_kd"] = self.config.kd_weight * kd_logits(
                out.logits, teacher_logits, self.config.temperature
            )
        return terms
