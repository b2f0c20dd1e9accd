"""Data-parallel training across processes (torchrun): gloo on CPU, NCCL on GPU.

A distributed step must give the gradient of the single-process step on the same global
batch. Three things make it so:
- the sampler gives each rank whole identities of the global P×K batch;
- batch norm uses the statistics of the global batch (`GlobalBatchNorm` on CPU, where torch's
  SyncBatchNorm does not run; torch's SyncBatchNorm on GPU);
- the loss is computed on the outputs of the whole global batch (`gather_rows`), because
  batch-hard mining and the pairwise losses compare every image with every other one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the job; `world_size == 1` is plain single-process training."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE_PROCESS = DistributedContext()
OPERATOR_PROCS_ENV = "PET_NPROC_PER_NODE"
"""Processes per pod, as Kubeflow's training operator sets it (torchrun reads PET_* too)."""


def processes_per_node(configured: int) -> int:
    """How many training processes this machine runs: the training operator's
    PET_NPROC_PER_NODE when set (a number, or `auto`/`gpu` for one per visible GPU), else
    `configured`."""
    given = os.environ.get(OPERATOR_PROCS_ENV, "").strip()
    if not given:
        return configured
    if given in ("auto", "gpu"):
        return max(torch.cuda.device_count(), 1)
    if not given.isdigit() or int(given) < 1:
        raise ValueError(f"{OPERATOR_PROCS_ENV}={given!r}: expected a positive count, auto or gpu")
    return int(given)


def is_launched_worker() -> bool:
    """Whether a launcher (torchrun) started this process as one of its workers."""
    return "LOCAL_RANK" in os.environ


def context_from_env(device: torch.device) -> DistributedContext:
    """Join the process group torchrun describes in the environment (WORLD_SIZE, RANK, ...).

    Without torchrun's variables this is single-process training.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return SINGLE_PROCESS
    context = DistributedContext(
        rank=int(os.environ["RANK"]),
        world_size=world_size,
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=context.rank, world_size=world_size)
    return context


def local_device(spec_device: torch.device, context: DistributedContext) -> torch.device:
    """On GPU each rank takes the device of its local rank."""
    if spec_device.type == "cuda" and context.enabled:
        return torch.device("cuda", context.local_rank)
    return spec_device


class _GatherRows(torch.autograd.Function):
    """All ranks' tensors concatenated along dim 0, with gradients flowing back to each rank.

    Backward sums the incoming gradients over ranks and keeps this rank's rows: every rank
    computes the same loss from the gathered rows, and DDP's gradient averaging then yields
    exactly the single-process gradient.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        ctx.rows = tensor.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows (same count on each rank); differentiable for floats."""
    if tensor.requires_grad:
        return _GatherRows.apply(tensor)
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class _SumOverRanks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm over the global batch of all ranks, on any backend (gloo included).

    Each rank's per-channel count, sum and centred sum of squares are summed over ranks and
    combined exactly (Chan et al.), so the statistics equal those of one process seeing the
    whole batch. Evaluation mode is plain batch norm with the running statistics.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.full((1,), x.numel() // x.shape[1], dtype=x.dtype, device=x.device)
        local_mean = x.mean(dims)
        # Sum over ranks of n_r, n_r·mean_r and n_r·mean_r²; with each rank's centred sum of
        # squares this gives the global mean and variance without cancellation.
        centred = (x - local_mean.view(shape)).pow(2).sum(dims)
        stats = torch.cat([count, count * local_mean, count * local_mean.pow(2), centred])
        stats = _SumOverRanks.apply(stats)
        c = x.shape[1]
        total = stats[0]
        mean = stats[1 : 1 + c] / total
        var = (stats[1 + 2 * c :] + stats[1 + c : 1 + 2 * c] - total * mean.pow(2)) / total
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach(), total.detach())
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, n: torch.Tensor):
        self.num_batches_tracked += 1
        momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * n / (n - 1).clamp(min=1)
        self.running_mean.lerp_(mean, momentum)
        self.running_var.lerp_(unbiased, momentum)


def convert_batch_norms(module: nn.Module, device: torch.device) -> nn.Module:
    """Swap every BatchNorm for its global-batch version: torch's SyncBatchNorm on GPU,
    `GlobalBatchNorm` elsewhere. Parameters, buffers and requires_grad flags carry over."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    converted = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
        module, GlobalBatchNorm
    ):
        converted = GlobalBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats, device=device,
        )  # fmt: skip
        _copy_norm(module, converted)
        converted.plain_type = type(module)
    for name, child in module.named_children():
        converted.add_module(name, convert_batch_norms(child, device))
    return converted


def restore_batch_norms(module: nn.Module) -> nn.Module:
    """The inverse of `convert_batch_norms` on CPU: plain BatchNorm modules again, so the
    trained model saves and loads like any other (state-dict keys never change)."""
    converted = module
    if isinstance(module, GlobalBatchNorm):
        converted = module.plain_type(
            module.num_features, module.eps, module.momentum, module.affine,
            module.track_running_stats, device=module.running_mean.device,
        )  # fmt: skip
        _copy_norm(module, converted)
    for name, child in module.named_children():
        converted.add_module(name, restore_batch_norms(child))
    return converted


def _copy_norm(source: nn.Module, target: nn.Module) -> None:
    target.load_state_dict(source.state_dict())
    if source.affine:
        target.weight.requires_grad_(source.weight.requires_grad)
        target.bias.requires_grad_(source.bias.requires_grad)
    target.train(source.training)
