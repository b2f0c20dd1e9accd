"""Every registered backbone, driven by the registry (as timm's tests are): a new entry is
tested without a line here. Forward and backward run in `make test`; ONNX export with an
ONNX Runtime parity check, minutes for the whole zoo, runs in `make test-zoo`."""

from __future__ import annotations

import pytest
import torch

from reid_core.config import ModelConfig
from reid_core.export.onnx import ServingModel, export_onnx, parity_report
from reid_core.modeling import create_model
from reid_core.modeling.backbones import BACKBONES

HEIGHT, WIDTH = 64, 32


def _small(name: str):
    """The registered backbone at its smallest width (ResNet family) or as it comes."""
    torch.manual_seed(0)
    try:
        return create_model(ModelConfig(backbone=name, base_width=8), 4)
    except ValueError:  # the backbone has no width option
        return create_model(ModelConfig(backbone=name), 4)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_trains_one_step(name):
    model = _small(name).train()
    images = torch.rand(4, 3, HEIGHT, WIDTH) * 255
    out = model(images)
    assert out.logits.shape == (4, 4) and out.neck.shape[0] == 4
    out.logits.logsumexp(1).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        assert model(images).shape == (4, model.embedding_dim)  # eval: the embedding


@pytest.mark.zoo
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_exports_to_onnx_with_parity(name, tmp_path):
    serving = ServingModel(_small(name).eval(), l2_normalize=False)
    export_onnx(serving, tmp_path / "model.onnx", HEIGHT, WIDTH, opset=18)
    images = (torch.rand(5, 3, HEIGHT, WIDTH) * 255).round().to(torch.uint8)
    report = parity_report(serving, tmp_path / "model.onnx", images, [1, 5])
    with torch.no_grad():  # untrained deep nets give large features: the diff is relative
        scale = max(1.0, serving(images.float()).abs().max().item())
    assert report["max_abs_diff"] < 1e-3 * scale and report["min_cosine"] > 0.9999
