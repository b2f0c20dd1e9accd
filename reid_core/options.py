"""The options of the library's parts: models, losses, solver, augmentation, evaluation,
distillation and domain adaptation.

They are the library's own typed arguments (`create_model(ModelConfig(...))`), usable without
the pipeline: `reid_core.config` builds the pipeline's configuration from them, not the other
way round. Every option is validated when set; unknown keys, infinite and NaN values are refused.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)


class Options(BaseModel):
    """Base of every options model (and of the pipeline's config sections)."""

    # no inf or NaN anywhere: an infinite tolerance would open a gate, a NaN would close it
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(Options):
    """Which network to build (see `reid_core.modeling.create_model`)."""

    backbone: str = "resnet18"
    base_width: int = Field(64, ge=8, le=512)  # ResNet family: width of the first stage
    last_stride: Literal[1, 2] = 1
    ibn: Literal["none", "a", "b"] = "none"  # instance-batch normalisation (IBN-Net)
    se: bool = False  # squeeze-excitation in every residual block
    non_local: bool = False  # non-local blocks in stages 2 and 3 (AGW)
    # ResNet stem's max pooling: padding 1 (torchvision's) or ceil_mode without padding (FastReID's)
    stem_pool: Literal["padded", "ceil"] = "padded"
    # residual backbones: each residual branch's last norm starts at zero scale, an identity
    # start that trains far better from scratch on short budgets and worse on long ones; false
    # starts every norm at one, as FastReID does
    zero_init_residual: bool = False
    pretrained: str = ""  # ImageNet weights: a local file or an http(s):// or file:// URL
    pooling: str = "gem"  # a name in reid_core.modeling.pooling.POOLINGS
    gem_p: float = Field(3.0, gt=0)
    head: str = "bnneck"  # a name in reid_core.modeling.heads.HEADS
    embedding_dim: int = Field(0, ge=0, le=16384)  # reduction head's output; 0: the backbone's
    dropout: float = Field(0.0, ge=0, lt=1)  # reduction head only
    neck_feat: Literal["before", "after"] = "after"  # the embedding: before or after the neck
    # what the metric losses (triplet, circle, cosface) see: the feature before the neck's BN
    # or after it; FastReID's MODEL.HEADS.NECK_FEAT (its embedding is always after the neck)
    metric_feat: Literal["before", "after"] = "before"
    classifier: str = "linear"  # a name in reid_core.modeling.classifiers.CLASSIFIERS
    classifier_scale: float = Field(64.0, gt=0)  # margin classifiers: logit scale s
    classifier_margin: float = Field(0.35, ge=0)  # margin classifiers: margin m

    @field_validator("ibn", mode="before")
    @classmethod
    def _ibn_flag(cls, value: Any) -> Any:
        # `ibn: true` in older configs meant IBN-a
        return {True: "a", False: "none"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("backbone", "pooling", "head", "classifier")
    @classmethod
    def _registered(cls, value: str, info: ValidationInfo) -> str:
        from reid_core.modeling.backbones import BACKBONES
        from reid_core.modeling.classifiers import CLASSIFIERS
        from reid_core.modeling.heads import HEADS
        from reid_core.modeling.pooling import POOLINGS

        registries = {"backbone": BACKBONES, "pooling": POOLINGS, "head": HEADS,
                      "classifier": CLASSIFIERS}  # fmt: skip
        registries[info.field_name].lookup(value)
        return value


class LossConfig(Options):
    """Weighted re-id losses; a weight of 0 turns a loss off."""

    ce_weight: float = Field(1.0, ge=0)
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    # ε spread over all classes (torch's form) or over the other classes (FastReID's form)
    label_smoothing_over: Literal["all", "others"] = "all"
    triplet_weight: float = Field(1.0, ge=0)
    triplet_margin: float = Field(0.3, ge=0)  # 0 means soft margin (softplus)
    triplet_mining: Literal["hard", "weighted"] = "hard"
    triplet_normalize: bool = False  # triplet on L2-normalised features
    circle_weight: float = Field(0.0, ge=0)  # pairwise circle loss (Sun et al. 2020)
    circle_margin: float = Field(0.25, ge=0)
    circle_gamma: float = Field(128.0, gt=0)
    cosface_weight: float = Field(0.0, ge=0)  # pairwise cosface
    cosface_margin: float = Field(0.25, ge=0)
    cosface_gamma: float = Field(128.0, gt=0)
    focal_weight: float = Field(0.0, ge=0)  # focal loss on the logits
    focal_gamma: float = Field(2.0, ge=0)
    focal_alpha: float = Field(0.25, gt=0, le=1)


class SolverConfig(Options):
    """Optimizer, schedule, sampler and numerics of a training run."""

    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(3.5e-4, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    weight_decay_norm: float = Field(0.0, ge=0)  # norms and biases
    bias_lr_factor: float = Field(1.0, gt=0)
    heads_lr_factor: float = Field(1.0, gt=0)  # pooling, neck and classifier
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    epochs: int = Field(12, ge=1)
    # "identities": an epoch shows every identity once (P×K batches); "images": an epoch is
    # len(images) / batch size iterations, FastReID's definition, which its recipes count in
    epoch_length: Literal["identities", "images"] = "identities"
    scheduler: Literal["cosine", "multistep"] = "cosine"
    steps: list[int] = [40, 90]  # multistep: epochs at which the LR is multiplied by gamma
    gamma: float = Field(0.1, gt=0, le=1)
    delay_epochs: int = Field(0, ge=0)  # cosine: constant LR for these epochs after warmup
    min_lr_factor: float = Field(0.01, ge=0, le=1)
    # What moves the main schedule (multistep / cosine). "iterations": every iteration, from
    # the start of training (cosine after warmup + delay_epochs). "epochs_after_warmup":
    # FastReID's clock, once per epoch and only after warmup: milestones count epochs from the
    # one in which warmup ends, cosine starts after max(warmup, delay_epochs) epochs
    schedule_clock: Literal["iterations", "epochs_after_warmup"] = "iterations"
    warmup_method: Literal["linear", "constant", "exp"] = "linear"
    warmup_epochs: float = Field(1.0, ge=0)
    warmup_factor: float = Field(0.1, gt=0, le=1)  # LR factor at the first iteration
    freeze_iters: int = Field(0, ge=0)  # train only the heads for these first iterations
    clip_grad: float = Field(0.0, ge=0)  # 0: off
    clip_type: Literal["norm", "value"] = "norm"
    ids_per_batch: int = Field(16, ge=2)
    images_per_id: int = Field(4, ge=1)
    # pk: each identity once per sampler epoch, K random images; chunked: FastReID's
    # NaiveIdentitySampler (every identity's images dealt out in chunks of K)
    sampler: str = "pk"  # a name in reid_core.data.samplers.SAMPLERS
    amp: Literal["off", "bf16", "fp16"] = "off"
    channels_last: bool = True  # NHWC activations: ~15–25 % faster training steps on CPU too
    compile: bool = False
    ema_decay: float = Field(0.0, ge=0, lt=1)  # 0: no EMA of the weights
    precise_bn_iters: int = Field(0, ge=0)  # recompute BN statistics on this many batches
    checkpoint_every: int = Field(0, ge=0)  # iterations between resumable checkpoints; 0: epoch
    eval_every: int = Field(0, ge=0)  # epochs between evaluations on the query split; 0: off
    seed: int = 0

    @field_validator("sampler")
    @classmethod
    def _registered_sampler(cls, value: str) -> str:
        from reid_core.data.samplers import SAMPLERS

        SAMPLERS.lookup(value)
        return value

    @model_validator(mode="after")
    def _steps_increase(self) -> SolverConfig:
        if self.steps != sorted(set(self.steps)):
            raise ValueError("steps must be strictly increasing epochs")
        return self


class AugmentConfig(Options):
    """Batched training augmentation on the training device (probabilities per image)."""

    flip_p: float = Field(0.5, ge=0, le=1)
    pad: int = Field(6, ge=0)  # pad then random crop back to the input size
    erasing_p: float = Field(0.5, ge=0, le=1)  # random erasing with the mean pixel
    # the box's distribution: Zhong et al.'s or torchvision's (FastReID's); see ERASING_BOXES
    erasing_box: Literal["zhong", "torchvision"] = "zhong"
    patch_p: float = Field(0.0, ge=0, le=1)  # random patch pasted from another image
    cutout_p: float = Field(0.0, ge=0, le=1)  # a fixed-size square set to the mean pixel
    color_jitter_p: float = Field(0.0, ge=0, le=1)
    autoaugment_p: float = Field(0.0, ge=0, le=1)  # ImageNet AutoAugment policy
    augmix_p: float = Field(0.0, ge=0, le=1)


class DistillConfig(Options):
    """A smaller student trained from one or more frozen teachers plus its own re-id loss.

    The loss is `loss` (the student's re-id loss) + `logit_weight` × the logit term
    (`logit_loss`: L1 on raw logits, KL or symmetric KL at `temperature`) + `pkt_weight` × PKT
    on the pooled features + `feature_weight` × partial L2 between connected feature maps of
    the `feature_layers` pairs [student submodule, teacher submodule]. FastReID's paper uses
    L1 + α·PKT; its published recipe, symmetric KL at T=16.
    """

    model: ModelConfig = ModelConfig(base_width=32)
    loss: LossConfig = LossConfig()
    solver: SolverConfig = SolverConfig()
    augment: AugmentConfig = AugmentConfig()
    logit_loss: Literal["l1", "kl", "symmetric_kl"] = "symmetric_kl"
    logit_weight: float = Field(1.0, ge=0)
    temperature: float = Field(16.0, gt=0)
    pkt_weight: float = Field(0.0, ge=0)
    feature_weight: float = Field(0.0, ge=0)
    feature_layers: list[tuple[str, str]] = [("backbone", "backbone")]
    log_every: int = Field(10, ge=1)


class AdaptConfig(Options):
    """Pseudo-label rounds on an unlabelled target domain.

    A round: target features → k-reciprocal Jaccard distance (`k1`, `k2`, neighbours by
    `knn`) → DBSCAN (`eps`, `min_samples`) → outliers dropped or kept as singletons →
    training on the pseudo ids with a cluster memory (InfoNCE at `memory_temperature`, entries
    updated with `memory_momentum`) or a fresh classifier and cross-entropy (`objective: ce`).
    `loss` adds re-id terms; its classification terms (CE, focal) apply with `ce` only.
    """

    rounds: int = Field(1, ge=1)
    start_round: int = Field(0, ge=0)  # index of this run's first round (KFP: one per task)
    eps: float = Field(0.6, gt=0, lt=1)  # on the Jaccard distance, which lies in [0, 1]
    min_samples: int = Field(4, ge=2)
    k1: int = Field(30, ge=2)
    k2: int = Field(6, ge=1)
    knn: Literal["torch", "faiss"] = "torch"
    outliers: Literal["drop", "singletons"] = "drop"
    objective: Literal["memory", "ce"] = "memory"
    memory_temperature: float = Field(0.05, gt=0)
    memory_momentum: float = Field(0.2, ge=0, lt=1)
    loss: LossConfig = LossConfig(triplet_weight=0.0)
    solver: SolverConfig = SolverConfig(epochs=4, lr=1e-4, warmup_epochs=0.0)
    augment: AugmentConfig = AugmentConfig()
    log_every: int = Field(10, ge=1)


class EvaluateConfig(Options):
    metric: Literal["cosine", "euclidean"] = "cosine"
    batch_size: int = Field(128, ge=1)
    max_rank: int = Field(50, ge=1)
    # verification: TAR at these false accept rates, each in (0, 1]
    fars: list[Annotated[float, Field(gt=0, le=1)]] = Field([1e-4, 1e-3, 1e-2], min_length=1)
    flip: bool = False  # average each image's features with its mirror image's
    query_expansion: Literal["none", "average", "alpha"] = "none"
    qe_k: int = Field(5, ge=1)
    qe_alpha: float = Field(3.0, ge=0)
    rerank: bool = False  # k-reciprocal re-ranking of the distances
    rerank_k1: int = Field(20, ge=1)
    rerank_k2: int = Field(6, ge=1)
    rerank_lambda: float = Field(0.3, ge=0, le=1)
    rerank_knn: Literal["torch", "faiss"] = "torch"  # nearest-neighbour search of re-ranking
    # test sets without a fixed query/gallery (VehicleID's): redraw the gallery this many times
    # from this seed, and report each metric's mean and its spread as `<metric>_std`
    gallery_draws: int = Field(10, ge=1)
    draw_seed: int = 0
    # DSR for partial re-id: re-score each query's top `dsr_top_k` gallery items by global
    # distance with the spatial-feature reconstruction distance, fused (1 − w)·global + w·DSR.
    # w is `dsr_weight`, or the best on the set named by `dsr_validation`: an input of the
    # evaluate stage kept out of the reported test sets (never choose w on a test set)
    dsr: bool = False
    dsr_top_k: int = Field(100, ge=1)
    dsr_lambda: float = Field(1e-3, gt=0)
    dsr_weight: float | None = Field(None, ge=0, le=1)
    dsr_validation: str = ""

    @model_validator(mode="after")
    def _dsr_weight_from_one_place(self) -> EvaluateConfig:
        if not self.dsr and (self.dsr_weight is not None or self.dsr_validation):
            raise ValueError(
                "evaluate.dsr_weight and evaluate.dsr_validation apply to DSR re-ranking: set "
                "evaluate.dsr: true as well"
            )
        if self.dsr and (self.dsr_weight is None) == (not self.dsr_validation):
            raise ValueError(
                "evaluate.dsr needs exactly one of evaluate.dsr_weight (a fusion weight in "
                "[0, 1]) and evaluate.dsr_validation (the name of a validation set, given to "
                "evaluate as an extra --dataset/--manifest, to choose the weight on)"
            )
        return self


def validation_problems(err: ValidationError) -> list[str]:
    """One `dotted.key: problem` line per problem pydantic found."""
    lines = []
    for problem in err.errors():
        key = ".".join(str(p) for p in problem["loc"]) or "(top level)"
        if problem["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key")
        else:
            lines.append(f"{key}: {problem['msg']}")
    return lines
