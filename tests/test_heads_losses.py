"""Heads, classifier layers and losses checked against naive per-sample formulas."""

import math

import pytest
import torch
import torch.nn.functional as F

from reid_core.config import LossConfig, ModelConfig
from reid_core.engine.checkpoint import load_checkpoint, save_checkpoint
from reid_core.modeling import create_model
from reid_core.modeling.classifiers import CLASSIFIERS as CLASSIFIER_REGISTRY
from reid_core.modeling.classifiers import create_classifier
from reid_core.modeling.heads import HEADS as HEAD_REGISTRY
from reid_core.modeling.heads import create_head
from reid_core.modeling.losses import (
    LOSSES,
    ReidLoss,
    cross_entropy,
    focal_loss,
    pairwise_circle,
    pairwise_cosface,
    triplet_loss,
)
from reid_core.modeling.model import ReidOutput

HEADS = list(HEAD_REGISTRY)  # registry-driven: a new head or classifier is tested here
CLASSIFIERS = list(CLASSIFIER_REGISTRY)
ALL_LOSSES = LossConfig(**{f"{name}_weight": 1.0 for name in LOSSES})


def images(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 64, 32, generator=torch.Generator().manual_seed(seed)) * 255


def model_config(head: str, classifier: str = "linear", **extra) -> ModelConfig:
    if head == "reduction":
        extra = {"embedding_dim": 16, "dropout": 0.1, **extra}
    return ModelConfig(base_width=8, head=head, classifier=classifier, **extra)


# ---------------------------------------------------------------- heads and the model


@pytest.mark.parametrize("classifier", CLASSIFIERS)
@pytest.mark.parametrize("head", HEADS)
def test_every_head_and_classifier_trains_a_step_and_exports_its_embedding(head, classifier):
    torch.manual_seed(0)
    model = create_model(model_config(head, classifier), num_classes=3)
    x, labels = images(), torch.tensor([0, 0, 1, 1, 2, 2])
    out = model.train()(x, labels)
    dim = model.embedding_dim
    assert out.features.shape == (6, dim) and out.neck.shape == (6, dim)
    assert out.logits.shape == (6, 3)
    terms = ReidLoss(ALL_LOSSES)(out, labels)
    assert set(terms) == {f"loss_{name}" for name in LOSSES}
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    sum(terms.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    optimizer.step()
    assert not torch.equal(model.head.classifier.weight, before["head.classifier.weight"])
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (6, dim)
        model.config.neck_feat = "before"
        assert model(x).shape == (6, dim)
        assert torch.isfinite(model(x)).all()


def test_reduction_head_sets_the_embedding_size_and_others_keep_the_backbones():
    reduced = create_model(model_config("reduction", embedding_dim=24), 2)
    kept = create_model(model_config("bnneck"), 2)
    assert reduced.embedding_dim == 24 and reduced.head.classifier.in_features == 24
    assert kept.embedding_dim == kept.backbone.out_channels
    same = create_model(model_config("reduction", embedding_dim=0), 2)
    assert same.embedding_dim == same.backbone.out_channels


def test_embedding_size_or_dropout_without_reduction_head_is_an_error():
    with pytest.raises(ValueError, match="reduction"):
        create_head(ModelConfig(base_width=8, embedding_dim=16), 64, 3)
    with pytest.raises(ValueError, match="reduction"):
        create_head(ModelConfig(base_width=8, head="linear", dropout=0.5), 64, 3)


def test_neck_feat_picks_the_embedding_before_or_after_the_neck():
    model = create_model(model_config("bnneck"), 3)
    x = images()
    model.train()(x)  # move the BN running stats away from identity
    model.eval()
    with torch.no_grad():
        out = model.outputs(x)
        torch.testing.assert_close(model(x), out.neck)
        model.config.neck_feat = "before"
        torch.testing.assert_close(model(x), out.features)
    assert not torch.allclose(out.neck, out.features)


def test_metric_feat_feeds_the_metric_losses_before_or_after_the_neck_bn():
    """FastReID's NECK_FEAT: bag of tricks puts the triplet before the BNNeck, SBS after it;
    the embedding stays the neck's output either way, and the classifier always sees it."""
    x, labels = images(), torch.tensor([0, 0, 1, 1, 2, 2])
    outputs, pooled = {}, {}
    for where in ("before", "after"):
        torch.manual_seed(0)
        model = create_model(model_config("bnneck", metric_feat=where), 3).train()
        outputs[where] = model(x, labels)
        pooled[where] = model.pool(model.backbone((x - model.pixel_mean) / model.pixel_std))
    torch.testing.assert_close(outputs["before"].features, pooled["before"])
    torch.testing.assert_close(outputs["after"].features, outputs["after"].neck)
    torch.testing.assert_close(outputs["before"].neck, outputs["after"].neck)
    assert not torch.allclose(outputs["before"].features, outputs["before"].neck)
    torch.testing.assert_close(outputs["before"].logits, outputs["after"].logits)


def test_linear_head_has_no_neck():
    model = create_model(model_config("linear"), 3).train()
    out = model(images())
    assert torch.equal(out.features, out.neck)
    assert not any(k.startswith("head.bottleneck") for k in model.state_dict())


def test_default_head_keeps_the_checkpoint_key_names():
    keys = {k for k in create_model(ModelConfig(base_width=8), 4).state_dict() if "head" in k}
    bn = {f"head.bottleneck.{n}" for n in ("weight", "bias", "running_mean", "running_var")}
    assert keys == bn | {"head.bottleneck.num_batches_tracked", "head.classifier.weight"}
    model = create_model(ModelConfig(base_width=8), 4)
    assert not model.head.bottleneck.bias.requires_grad  # BNNeck: no bias shift


def test_margin_applies_only_when_the_model_gets_labels():
    torch.manual_seed(0)
    model = create_model(model_config("bnneck", "arcface"), 3).train()
    x, labels = images(), torch.tensor([0, 0, 1, 1, 2, 2])
    plain, margined = model(x).logits, model(x, labels).logits
    target = F.one_hot(labels, 3).bool()
    torch.testing.assert_close(plain[~target], margined[~target])
    assert (margined[target] < plain[target]).all()
    model.eval()
    with torch.no_grad():  # a frozen teacher's logits: s·cos θ, no margin
        teacher = model.outputs(x).logits
        assert teacher.abs().max() <= model.config.classifier_scale + 1e-4


@pytest.mark.parametrize("classifier", CLASSIFIERS)
def test_reset_classifier_gives_a_fresh_one_of_the_same_kind(classifier):
    model = create_model(model_config("reduction", classifier), 3)
    old = model.head.classifier
    model.reset_classifier(7)
    assert model.num_classes == 7 and type(model.head.classifier) is type(old)
    assert model.head.classifier.weight.shape == (7, model.embedding_dim)
    assert model.train()(images(), torch.tensor([0, 0, 5, 5, 6, 6])).logits.shape == (6, 7)
    model.reset_classifier(0)
    assert model.num_classes == 0 and model.train()(images()).logits is None


def test_checkpoint_round_trip_keeps_head_and_classifier_kind(tmp_path):
    model = create_model(model_config("reduction", "circle", neck_feat="before"), 5)
    model.train()(images())
    model.eval()
    save_checkpoint(tmp_path / "ckpt", model, {"height": 64, "width": 32})
    loaded, meta = load_checkpoint(tmp_path / "ckpt")
    x = images(3, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded.num_classes == 5 and meta["embedding_dim"] == 16


# ---------------------------------------------------------------- classifier layers


def reference_margin_logits(kind, x, w, labels, s, m):
    """Per sample and class, from the papers' definitions, in double precision."""
    rows = []
    for i, xi in enumerate(x.double().tolist()):
        row = []
        for j, wj in enumerate(w.double().tolist()):
            cos = sum(a * b for a, b in zip(xi, wj, strict=True)) / (
                math.sqrt(sum(a * a for a in xi)) * math.sqrt(sum(b * b for b in wj))
            )
            is_target = labels is not None and j == int(labels[i])
            if not is_target and kind != "circle" or labels is None:
                row.append(s * cos)
            elif kind == "arcface":
                theta = math.acos(max(-1.0, min(1.0, cos)))
                if theta + m <= math.pi:
                    row.append(s * math.cos(theta + m))
                else:
                    row.append(s * (cos - m * math.sin(m)))
            elif kind == "cosface":
                row.append(s * (cos - m))
            elif is_target:  # circle, positive
                row.append(s * max(0.0, 1 + m - cos) * (cos - (1 - m)))
            else:  # circle, negative
                row.append(s * max(0.0, cos + m) * (cos - m))
        rows.append(row)
    return torch.tensor(rows)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", ["arcface", "cosface", "circle"])
def test_margin_classifiers_match_their_definitions(kind, seed):
    torch.manual_seed(seed)
    s, m = 30.0, 0.4
    layer = create_classifier(kind, 8, 5, scale=s, margin=m)
    x, labels = torch.randn(7, 8), torch.randint(0, 5, (7,))
    w = layer.weight.detach()
    expected = reference_margin_logits(kind, x, w, labels, s, m).float()
    torch.testing.assert_close(layer(x, labels), expected, rtol=1e-4, atol=1e-4)
    plain = reference_margin_logits(kind, x, w, None, s, m).float()
    torch.testing.assert_close(layer(x), plain, rtol=1e-4, atol=1e-4)


def test_arcface_past_pi_minus_m_falls_back_and_stays_monotonic():
    s, m = 10.0, 0.5
    layer = create_classifier("arcface", 2, 1, scale=s, margin=m)
    layer.weight.data = torch.tensor([[1.0, 0.0]])
    theta = torch.linspace(0, math.pi, 200, dtype=torch.float64).float()
    x = torch.stack([theta.cos(), theta.sin()], 1)
    logits = layer(x, torch.zeros(200, dtype=torch.long))[:, 0]
    assert (logits[1:] <= logits[:-1] + 1e-5).all()
    far = theta > math.pi - m + 1e-3
    torch.testing.assert_close(logits[far], s * (theta[far].cos() - m * math.sin(m)))
    near = theta < math.pi - m - 1e-3
    torch.testing.assert_close(logits[near], s * (theta[near] + m).cos(), atol=2e-4, rtol=1e-4)


def test_zero_margin_arcface_equals_cosface_equals_scaled_cosine():
    torch.manual_seed(3)
    x, labels = torch.randn(6, 8), torch.randint(0, 4, (6,))
    arc = create_classifier("arcface", 8, 4, scale=16.0, margin=0.0)
    cos = create_classifier("cosface", 8, 4, scale=16.0, margin=0.0)
    cos.weight.data = arc.weight.data.clone()
    expected = 16.0 * F.normalize(x) @ F.normalize(arc.weight.detach()).t()
    torch.testing.assert_close(arc(x, labels), expected)
    torch.testing.assert_close(cos(x, labels), expected)


@pytest.mark.parametrize("kind", ["arcface", "cosface", "circle"])
def test_margins_apply_to_the_target_class_only_with_labels(kind):
    torch.manual_seed(4)
    layer = create_classifier(kind, 8, 4, scale=16.0, margin=0.3)
    x, labels = torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    plain, margined = layer(x), layer(x, labels)
    target = F.one_hot(labels, 4).bool()
    assert (margined[target] < plain[target]).all()
    if kind != "circle":  # circle re-weights the non-targets too
        torch.testing.assert_close(margined[~target], plain[~target])


def test_linear_classifier_ignores_labels():
    layer = create_classifier("linear", 8, 4)
    x = torch.randn(5, 8)
    torch.testing.assert_close(layer(x, torch.zeros(5, dtype=torch.long)), layer(x))


@pytest.mark.parametrize("kind", ["linear", "arcface", "cosface", "circle"])
def test_every_classifier_starts_as_fastreid_heads_do(kind):
    torch.manual_seed(0)
    layer = create_classifier(kind, 512, 200)
    assert abs(layer.weight.std().item() / 0.01 - 1) < 0.02
    assert abs(layer.weight.mean().item()) < 1e-3


def test_unknown_classifier_names_the_known_ones():
    with pytest.raises(ValueError, match="arcface"):
        create_classifier("sphereface", 8, 4)


def test_margin_classifier_gradients_stay_finite_at_cosine_one():
    layer = create_classifier("arcface", 4, 2, scale=64.0, margin=0.5)
    x = layer.weight.detach()[:1].clone().requires_grad_()  # cos θ = 1 with class 0
    layer(x, torch.tensor([0])).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(layer.weight.grad).all()


# ---------------------------------------------------------------- losses vs naive loops


def pairs(labels, i):
    n = len(labels)
    pos = [j for j in range(n) if j != i and labels[j] == labels[i]]
    neg = [j for j in range(n) if labels[j] != labels[i]]
    return pos, neg


def naive_triplet(x, labels, margin, mining, normalize):
    x = x.double().tolist()
    if normalize:
        x = [[a / math.sqrt(sum(b * b for b in row)) for a in row] for row in x]
    labels = labels.tolist()
    losses = []
    for i in range(len(x)):
        pos, neg = pairs(labels, i)
        if not pos or not neg:
            continue
        d = {j: math.dist(x[i], x[j]) for j in pos + neg}
        if mining == "hard":
            d_ap, d_an = max(d[j] for j in pos), min(d[j] for j in neg)
        else:
            zp = sum(math.exp(d[j]) for j in pos)
            zn = sum(math.exp(-d[j]) for j in neg)
            d_ap = sum(math.exp(d[j]) / zp * d[j] for j in pos)
            d_an = sum(math.exp(-d[j]) / zn * d[j] for j in neg)
        gap = d_ap - d_an
        losses.append(math.log1p(math.exp(gap)) if margin == 0 else max(0.0, gap + margin))
    return sum(losses) / len(losses) if losses else 0.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("mining", ["hard", "weighted"])
@pytest.mark.parametrize(("margin", "normalize"), [(0.3, False), (0.0, False), (0.3, True)])
def test_triplet_matches_a_per_anchor_loop(seed, mining, margin, normalize):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 5, generator=g)
    labels = torch.randint(0, 4, (12,), generator=g)
    labels[0] = 9  # an anchor without positives is left out
    got = triplet_loss(x, labels, margin, mining, normalize)
    expected = naive_triplet(x, labels, margin, mining, normalize)
    assert got.item() == pytest.approx(expected, rel=1e-4, abs=1e-5)


def test_soft_margin_triplet_is_the_softplus_of_the_gap():
    x = torch.tensor([[0.0], [1.0], [1.5], [4.0]])
    labels = torch.tensor([0, 0, 1, 1])
    gaps = torch.tensor([1.0 - 1.5, 1.0 - 0.5, 2.5 - 0.5, 2.5 - 3.0])  # hardest d_ap − d_an
    torch.testing.assert_close(triplet_loss(x, labels, margin=0.0), F.softplus(gaps).mean())
    far = torch.tensor([[0.0], [200.0], [0.5], [300.0]])  # gaps of ±hundreds: no overflow
    assert torch.isfinite(triplet_loss(far, labels, margin=0.0))


def test_weighted_triplet_gradients_are_finite_even_for_identical_features():
    x = torch.randn(8, 4)
    x[1] = x[0]  # a zero distance: sqrt's gradient would be infinite without care
    x.requires_grad_()
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 4])
    triplet_loss(x, labels, 0.0, "weighted").backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def naive_pair_loss(x, labels, logit_p, logit_n):
    x = F.normalize(x.double(), dim=1).tolist()
    labels = labels.tolist()
    losses = []
    for i in range(len(x)):
        pos, neg = pairs(labels, i)
        if not pos or not neg:
            continue
        sim = {j: sum(a * b for a, b in zip(x[i], x[j], strict=True)) for j in pos + neg}
        total = sum(math.exp(logit_n(sim[n]) + logit_p(sim[p])) for p in pos for n in neg)
        losses.append(math.log1p(total))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("gamma", [8.0, 128.0])
def test_pairwise_circle_matches_the_paper_formula(seed, gamma):
    g = torch.Generator().manual_seed(seed)
    x, labels = torch.randn(10, 6, generator=g), torch.randint(0, 3, (10,), generator=g)
    m = 0.25

    def logit_p(s):
        return -gamma * max(0.0, 1 + m - s) * (s - (1 - m))

    def logit_n(s):
        return gamma * max(0.0, s + m) * (s - m)

    expected = naive_pair_loss(x, labels, logit_p, logit_n)
    got = pairwise_circle(x, labels, m, gamma).item()
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("gamma", [8.0, 128.0])
def test_pairwise_cosface_matches_the_paper_formula(seed, gamma):
    g = torch.Generator().manual_seed(seed)
    x, labels = torch.randn(10, 6, generator=g), torch.randint(0, 3, (10,), generator=g)
    m = 0.25
    expected = naive_pair_loss(x, labels, lambda s: -gamma * s, lambda s: gamma * (s + m))
    got = pairwise_cosface(x, labels, m, gamma).item()
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-4)


def test_circle_loss_weights_are_held_constant():
    x = torch.randn(6, 4, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    pairwise_circle(x, labels, 0.25, 32.0).backward()
    grad_detached = x.grad.clone()
    # a version whose weights are differentiated gives a different gradient
    x.grad = None
    sim = F.normalize(x, dim=1) @ F.normalize(x, dim=1).t()
    same = labels[:, None] == labels[None]
    eye = torch.eye(6, dtype=torch.bool)
    lp = torch.where(same & ~eye, -32.0 * F.relu(1.25 - sim) * (sim - 0.75), -torch.inf)
    ln = torch.where(~same, 32.0 * F.relu(sim + 0.25) * (sim - 0.25), -torch.inf)
    F.softplus(lp.logsumexp(1) + ln.logsumexp(1)).mean().backward()
    assert not torch.allclose(x.grad, grad_detached)


@pytest.mark.parametrize(
    ("loss", "exponent"),
    [
        # all cosines 1: logit_p = −γ·m·m, logit_n = γ·(1 + m)·(1 − m)
        (pairwise_circle, -128 * 0.25**2 + 128 * 1.25 * 0.75),
        (pairwise_cosface, -128 + 128 * 1.25),  # logit_p = −γ, logit_n = γ·(1 + m)
    ],
)
def test_pair_losses_stay_finite_with_gamma_128_on_identical_features(loss, exponent):
    x = torch.ones(6, 8, requires_grad=True)
    value = loss(x, torch.tensor([0, 0, 1, 1, 2, 2]), 0.25, 128.0)
    value.backward()
    # one positive and four negatives per anchor: log(1 + 4·exp(exponent))
    assert value.item() == pytest.approx(exponent + math.log(4), rel=1e-5)
    assert torch.isfinite(x.grad).all()


METRIC_LOSSES = {
    "hard": lambda x, y: triplet_loss(x, y, 0.3, "hard"),
    "weighted": lambda x, y: triplet_loss(x, y, 0.0, "weighted"),
    "circle": lambda x, y: pairwise_circle(x, y, 0.25, 128.0),
    "cosface": lambda x, y: pairwise_cosface(x, y, 0.25, 128.0),
}


@pytest.mark.parametrize("name", sorted(METRIC_LOSSES))
@pytest.mark.parametrize(
    "labels", [[0, 1, 2, 3], [5, 5, 5, 5]], ids=["no_positives", "no_negatives"]
)
def test_a_batch_without_pairs_gives_zero_with_a_graph(name, labels):
    x = torch.randn(4, 3, requires_grad=True)
    value = METRIC_LOSSES[name](x, torch.tensor(labels))
    assert value.item() == 0.0 and value.requires_grad
    value.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("alpha", "gamma"), [(0.25, 2.0), (1.0, 0.5), (0.5, 5.0)])
def test_focal_loss_matches_its_per_sample_formula(seed, alpha, gamma):
    g = torch.Generator().manual_seed(seed)
    logits, labels = torch.randn(8, 5, generator=g) * 3, torch.randint(0, 5, (8,), generator=g)
    expected = 0.0
    for row, y in zip(logits.double().tolist(), labels.tolist(), strict=True):
        p = math.exp(row[y]) / sum(math.exp(v) for v in row)
        expected += -alpha * (1 - p) ** gamma * math.log(p)
    assert focal_loss(logits, labels, alpha, gamma).item() == pytest.approx(expected / 8, rel=1e-5)


def test_focal_loss_with_gamma_zero_is_alpha_times_cross_entropy():
    logits, labels = torch.randn(8, 5), torch.randint(0, 5, (8,))
    expected = 0.3 * F.cross_entropy(logits, labels)
    torch.testing.assert_close(focal_loss(logits, labels, alpha=0.3, gamma=0.0), expected)


def test_focal_loss_gradient_is_finite_for_a_certain_sample():
    logits = torch.tensor([[100.0, -100.0, 0.0]], requires_grad=True)
    focal_loss(logits, torch.tensor([0]), alpha=1.0, gamma=0.5).backward()
    assert torch.isfinite(logits.grad).all()


# ---------------------------------------------------------------- the combined loss


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ({}, {"loss_ce", "loss_triplet"}),
        ({"triplet_weight": 0.0}, {"loss_ce"}),
        ({"ce_weight": 0.0, "circle_weight": 1.0}, {"loss_triplet", "loss_circle"}),
        (
            {"ce_weight": 0.0, "triplet_weight": 0.0, "cosface_weight": 2.0, "focal_weight": 1.0},
            {"loss_cosface", "loss_focal"},
        ),
    ],
)
def test_reid_loss_returns_exactly_the_enabled_terms(weights, expected):
    g = torch.Generator().manual_seed(0)
    features = torch.randn(6, 4, generator=g)
    out = ReidOutput(features, features, torch.randn(6, 3, generator=g))
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    config = LossConfig(**weights)
    terms = ReidLoss(config)(out, labels)
    assert set(terms) == expected
    if "loss_cosface" in terms:
        torch.testing.assert_close(
            terms["loss_cosface"], 2.0 * pairwise_cosface(features, labels, 0.25, 128.0)
        )
    if "loss_triplet" in terms:
        reference = triplet_loss(features, labels, config.triplet_margin)
        torch.testing.assert_close(terms["loss_triplet"], config.triplet_weight * reference)


def test_reid_loss_skips_classification_terms_without_logits():
    features = torch.randn(4, 3)
    out = ReidOutput(features, features, None)
    terms = ReidLoss(LossConfig(focal_weight=1.0))(out, torch.tensor([0, 0, 1, 1]))
    assert set(terms) == {"loss_triplet"}


def test_reid_loss_uses_the_configured_triplet_mining():
    features, labels = torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    out = ReidOutput(features, features, None)
    config = LossConfig(triplet_mining="weighted", triplet_margin=0.0, triplet_normalize=True)
    expected = triplet_loss(features, labels, 0.0, "weighted", normalize=True)
    torch.testing.assert_close(ReidLoss(config)(out, labels)["loss_triplet"], expected)


@pytest.mark.parametrize("over", ["all", "others"])
def test_label_smoothing_matches_its_per_sample_formula(over):
    torch.manual_seed(0)
    logits, labels, eps = torch.randn(6, 5) * 3, torch.tensor([0, 4, 2, 2, 1, 3]), 0.1
    expected = []
    for row, y in zip(logits, labels.tolist(), strict=True):
        log_p = torch.log_softmax(row, dim=0)
        if over == "all":  # 1 − ε + ε/C on the target, ε/C elsewhere
            target = [eps / 5 + (1 - eps) * (c == y) for c in range(5)]
        else:  # FastReID: 1 − ε on the target, ε/(C − 1) elsewhere
            target = [1 - eps if c == y else eps / 4 for c in range(5)]
        expected.append(-sum(t * log_p[c] for c, t in enumerate(target)))
    got = cross_entropy(logits, labels, eps, over)
    torch.testing.assert_close(got, torch.stack(expected).mean())


def test_label_smoothing_over_an_unknown_set_is_refused():
    with pytest.raises(ValueError, match="'all' or 'others'"):
        cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]), 0.1, "some")
