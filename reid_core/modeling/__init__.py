"""Networks for re-identification: backbones, pooling, heads, losses and the model factory."""

from reid_core.modeling.model import ReidModel, create_model, load_pretrained_backbone

__all__ = ["ReidModel", "create_model", "load_pretrained_backbone"]
