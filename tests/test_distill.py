"""Distillation: the loss terms against their definitions, frozen teachers, trained connectors."""

import math

import numpy as np
import pytest
import torch

from reid_core.config import AugmentConfig, DistillConfig, ModelConfig, SolverConfig
from reid_core.distill.features import FeatureTap
from reid_core.distill.losses import (
    DistillLoss,
    kl_logits,
    l1_logits,
    partial_l2,
    pkt,
    symmetric_kl_logits,
)
from reid_core.engine.trainer import TrainData, Trainer
from reid_core.modeling import create_model

IMAGE = (64, 32)
LABELS = torch.tensor([0, 0, 1, 1, 2, 2])


def images(seed=0):
    return torch.rand(6, 3, *IMAGE, generator=torch.Generator().manual_seed(seed)) * 255


def tiny(backbone="resnet18", classes=3):
    width = {"base_width": 8} if backbone.startswith("resnet") else {}
    return create_model(ModelConfig(backbone=backbone, **width), classes)


def test_logit_losses_vanish_for_identical_logits_and_grow_otherwise():
    torch.manual_seed(0)
    a, b = torch.randn(4, 6), torch.randn(4, 6)
    for loss in (lambda s, t: kl_logits(s, t, 4.0), lambda s, t: symmetric_kl_logits(s, t, 4.0)):
        assert loss(a, a).item() == pytest.approx(0.0, abs=1e-5)
        assert loss(a, b).item() > 0
    assert l1_logits(a, a).item() == 0
    assert l1_logits(a, b).item() == pytest.approx((a - b).abs().mean().item())


def test_kl_matches_its_definition_and_symmetric_kl_is_symmetric():
    torch.manual_seed(1)
    s, t, temp = torch.randn(5, 7), torch.randn(5, 7), 3.0
    p_s, p_t = (torch.softmax(x / temp, 1) for x in (s, t))
    by_hand = (p_t * (p_t / p_s).log()).sum(1).mean() * temp**2
    assert kl_logits(s, t, temp).item() == pytest.approx(by_hand.item(), rel=1e-5)
    reverse = (p_s * (p_s / p_t).log()).sum(1).mean() * temp**2
    both = symmetric_kl_logits(s, t, temp).item()
    assert both == pytest.approx((by_hand + reverse).item() / 2, rel=1e-5)
    assert both == pytest.approx(symmetric_kl_logits(t, s, temp).item(), rel=1e-5)


def test_pkt_matches_a_per_sample_loop_from_the_paper():
    torch.manual_seed(2)
    s, t = torch.randn(6, 5), torch.randn(6, 9)  # widths may differ

    def distribution(x, i):
        x = x / x.norm(dim=1, keepdim=True)
        sims = torch.stack([(x[i] @ x[j] + 1) / 2 for j in range(len(x))])
        return sims / sims.sum()

    per_sample = []
    for i in range(6):
        q_s, q_t = distribution(s, i), distribution(t, i)
        per_sample.append(sum(q_t[j] * math.log(q_t[j] / q_s[j]) for j in range(6)))
    assert pkt(s, t).item() == pytest.approx(float(np.mean(per_sample)), abs=1e-5)
    rotation = torch.linalg.qr(torch.randn(9, 9))[0]
    assert pkt(t @ rotation, t).item() == pytest.approx(0.0, abs=1e-6)  # same geometry


def test_partial_l2_ignores_what_the_next_relu_would_erase():
    teacher = torch.tensor([2.0, 0.0, -1.0, -1.0])
    student = torch.tensor([1.0, -3.0, -2.0, 0.5])
    # kept: t>0 (1.0 diff), s>t (0.5 ≥ −1 → 1.5 diff); dropped: s≤t≤0 (elements 1 and 2)
    assert partial_l2(student, teacher).item() == pytest.approx((1.0 + 1.5**2) / 4)


def test_teachers_stay_frozen_in_eval_mode_and_their_statistics_do_not_move():
    teacher = tiny().train()
    student = tiny().train()
    loss = DistillLoss(student, [teacher], DistillConfig(pkt_weight=1.0), IMAGE)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    x = images()
    terms = loss(student(x, LABELS), LABELS, x)
    sum(terms.values()).backward()
    teacher.train()  # as a careless caller might: the loss puts it back for every batch
    loss(student(x, LABELS), LABELS, x)
    assert not teacher.training
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    for key, value in teacher.state_dict().items():
        torch.testing.assert_close(value, before[key])
    assert set(terms) == {"loss_ce", "loss_triplet", "loss_logits", "loss_pkt"}
    assert list(loss.state_dict()) == [], "teachers are not part of the loss's state"


def test_several_teachers_give_the_mean_of_their_terms():
    torch.manual_seed(3)
    teachers = [tiny(), tiny(backbone="osnet_x0_25")]
    student = tiny().eval()
    config = DistillConfig(pkt_weight=2.0, logit_loss="l1")
    x = images()
    out = student.outputs(x, LABELS)
    both = DistillLoss(student, teachers, config, IMAGE)(out, LABELS, x)
    each = [DistillLoss(student, [t], config, IMAGE)(out, LABELS, x) for t in teachers]
    for term in ("loss_logits", "loss_pkt"):
        mean = (each[0][term] + each[1][term]) / 2
        assert both[term].item() == pytest.approx(mean.item(), rel=1e-6)


def test_feature_distillation_trains_connectors_between_different_widths():
    teacher = tiny(backbone="resnet34")
    student = tiny(backbone="osnet_x0_25")
    config = DistillConfig(
        feature_weight=1.0,
        logit_weight=0.0,
        feature_layers=[("backbone.conv4", "backbone.layer3"), ("backbone", "backbone")],
    )
    loss = DistillLoss(student, [teacher], config, IMAGE)
    s_channels = [c[0].in_channels for c in loss.connectors[0]]
    t_channels = [c[0].out_channels for c in loss.connectors[0]]
    assert t_channels == [32, 64] and s_channels == [128, student.backbone.out_channels]
    x = images()
    terms = loss(student.train()(x, LABELS), LABELS, x)
    terms["loss_feature"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.parameters())
    loss.close()
    student(x, LABELS)
    with pytest.raises(RuntimeError, match="no forward pass"):
        loss.student_tap.outputs()


def test_an_unknown_feature_layer_is_named():
    config = DistillConfig(feature_weight=1.0, feature_layers=[("backbone.layer9", "backbone")])
    with pytest.raises(ValueError, match=r"no submodule \['backbone.layer9'\]"):
        DistillLoss(tiny(), [tiny()], config, IMAGE)


def test_a_tap_on_a_module_without_feature_maps_is_refused():
    model = tiny()
    tap = FeatureTap(model, ["pool"])
    with pytest.raises(ValueError, match="N×C×H×W maps; 'pool' gives"):
        model.eval()(images())
    tap.close()


def test_trainer_optimises_and_checkpoints_the_connectors():
    torch.manual_seed(4)
    teacher, student = tiny(classes=4), tiny(classes=4)
    config = DistillConfig(feature_weight=1.0, pkt_weight=1.0)
    loss = DistillLoss(student, [teacher], config, IMAGE)
    connector = loss.connectors[0][0][0].weight
    start = connector.detach().clone()
    data = TrainData(
        torch.rand(16, 3, *IMAGE) * 255, np.repeat(np.arange(4), 4), np.tile(np.arange(2), 8)
    )
    solver = SolverConfig(epochs=2, ids_per_batch=4, images_per_id=2, warmup_epochs=0)
    trainer = Trainer(student, data, loss, solver, AugmentConfig())
    trainer.train()
    assert not torch.equal(connector.detach(), start), "the connectors were trained"
    state = trainer.state_dict()["loss"]
    assert "connectors.0.0.0.weight" in state
    torch.testing.assert_close(state["connectors.0.0.0.weight"], connector.detach())


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34", "osnet_x0_25", "mobilenetv3_small"])
def test_every_student_of_the_zoo_learns_from_all_three_terms(backbone):
    torch.manual_seed(5)
    teacher, student = tiny(classes=3), tiny(backbone, classes=3).train()
    config = DistillConfig(pkt_weight=1.0, feature_weight=1.0, logit_loss="l1")
    loss = DistillLoss(student, [teacher], config, IMAGE)
    x = images()
    terms = loss(student(x, LABELS), LABELS, x)
    assert {"loss_logits", "loss_pkt", "loss_feature"} <= set(terms)
    sum(terms.values()).backward()
    first = next(p for p in student.backbone.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0
