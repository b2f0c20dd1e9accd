"""Distillation losses: on logits, on feature similarity distributions (PKT), on feature maps.

Functions take the student's and one teacher's tensors; `DistillLoss` adds the configured,
weighted terms of every teacher (averaged over teachers) to the student's own re-id loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from reid_core.distill.features import FeatureTap
from reid_core.modeling.losses import ReidLoss
from reid_core.modeling.model import ReidModel, ReidOutput
from reid_core.options import DistillConfig


def kl_logits(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) on temperature-softened logits, scaled by T² (Hinton et al. 2015)."""
    log_p_student = F.log_softmax(student / temperature, dim=1)
    log_p_teacher = F.log_softmax(teacher / temperature, dim=1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def symmetric_kl_logits(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Mean of KL(teacher ‖ student) and KL(student ‖ teacher), T²-scaled: the student is also
    pulled away from classes the teacher rules out, not only towards the teacher's mode."""
    forward = kl_logits(student, teacher, temperature)
    backward = kl_logits(teacher, student, temperature)
    return (forward + backward) / 2


def l1_logits(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the raw logits (the FastReID paper's logit term)."""
    return F.l1_loss(student, teacher)


def pkt(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018).

    Each sample's cosine similarities to the others in the batch, shifted to [0, 1] and
    normalised, form a distribution; the loss is KL(teacher ‖ student) averaged over samples.
    It compares geometry, not coordinates, so student and teacher widths may differ.
    """
    s = F.normalize(student, dim=1)
    t = F.normalize(teacher, dim=1)
    p_s = (s @ s.T + 1) / 2
    p_t = (t @ t.T + 1) / 2
    p_s = p_s / p_s.sum(1, keepdim=True)
    p_t = p_t / p_t.sum(1, keepdim=True)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).sum(1).mean()


def partial_l2(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Feature-map distance of Heo et al. (ICCV 2019, 'overhaul'), on element means.

    Where the teacher's response is not positive and the student's is already below it, the
    difference is ignored: the following ReLU would erase it anyway.
    """
    mask = (student > teacher) | (teacher > 0)
    return ((student - teacher).pow(2) * mask).mean()


class Connector(nn.Sequential):
    """1×1 convolution + BN from the student's channels to the teacher's (trained, then
    discarded: the served student does not contain it)."""

    def __init__(self, in_channels: int, out_channels: int):
        conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        super().__init__(conv, nn.BatchNorm2d(out_channels))


def feature_distance(student: torch.Tensor, teacher: torch.Tensor, connector: Connector):
    """partial_l2 between the connected student map and the teacher's, at the teacher's size."""
    connected = connector(student)
    if connected.shape[-2:] != teacher.shape[-2:]:
        connected = F.interpolate(
            connected, size=teacher.shape[-2:], mode="bilinear", align_corners=False
        )
    return partial_l2(connected, teacher)


class DistillLoss(nn.Module):
    """The student's own re-id loss plus what one or more frozen teachers say about the batch.

    Terms (weights from `DistillConfig`, each averaged over the teachers):
    `loss_logits` (L1, KL or symmetric KL), `loss_pkt` on the pooled features and
    `loss_feature` on backbone feature maps through trained connectors. Teachers stay frozen
    and in eval mode whatever mode the trainer sets, so their BN statistics never drift.
    The connectors are this module's parameters: the trainer optimises and checkpoints them.
    """

    def __init__(
        self,
        student: ReidModel,
        teachers: Sequence[ReidModel],
        config: DistillConfig,
        image_size: tuple[int, int],
    ):
        super().__init__()
        if not teachers:
            raise ValueError("distillation needs at least one teacher")
        # a plain tuple: teachers are not this module's parameters, state or optimizer groups
        self.teachers = tuple(t.eval().requires_grad_(False) for t in teachers)
        self.config = config
        self.reid = ReidLoss(config.loss)
        self.connectors = nn.ModuleList()
        self.student_tap: FeatureTap | None = None
        self.teacher_taps: list[FeatureTap] = []
        if config.feature_weight > 0:
            names = [pair[0] for pair in config.feature_layers]
            self.student_tap = FeatureTap(student, names)
            self.teacher_taps = [
                FeatureTap(t, [pair[1] for pair in config.feature_layers]) for t in self.teachers
            ]
            s_channels = self.student_tap.channels(image_size)
            for tap in self.teacher_taps:
                t_channels = tap.channels(image_size)
                self.connectors.append(
                    nn.ModuleList(
                        Connector(s, t) for s, t in zip(s_channels, t_channels, strict=True)
                    )
                )

    def forward(
        self, out: ReidOutput, labels: torch.Tensor, images: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        cfg = self.config
        terms = self.reid(out, labels)
        student_maps = self.student_tap.outputs() if self.student_tap is not None else []
        logits, similarity, feature = [], [], []
        for i, teacher in enumerate(self.teachers):
            teacher.eval()
            with torch.no_grad():
                t_out = teacher.outputs(images)
            if cfg.logit_weight > 0:
                logits.append(self._logit_term(out.logits, t_out.logits))
            if cfg.pkt_weight > 0:
                similarity.append(pkt(out.features, t_out.features))
            if cfg.feature_weight > 0:
                t_maps = self.teacher_taps[i].outputs()
                pairs = zip(student_maps, t_maps, self.connectors[i], strict=True)
                feature.append(sum(feature_distance(s, t, c) for s, t, c in pairs))
        for name, weight, values in (
            ("loss_logits", cfg.logit_weight, logits),
            ("loss_pkt", cfg.pkt_weight, similarity),
            ("loss_feature", cfg.feature_weight, feature),
        ):
            if values:
                terms[name] = weight * torch.stack(values).mean()
        return terms

    def _logit_term(self, student: torch.Tensor | None, teacher: torch.Tensor | None):
        if student is None or teacher is None:
            raise ValueError("logit distillation needs classifiers on the student and teachers")
        kind = self.config.logit_loss
        if kind == "l1":
            return l1_logits(student, teacher)
        if kind == "kl":
            return kl_logits(student, teacher, self.config.temperature)
        return symmetric_kl_logits(student, teacher, self.config.temperature)

    def close(self) -> None:
        """Remove the feature taps' hooks from the student and the teachers."""
        for tap in [self.student_tap, *self.teacher_taps]:
            if tap is not None:
                tap.close()
