"""Training throughput: reidflow's Trainer vs a plain PyTorch loop, same model, batch and work.

Both sides train the same network (default ResNet-50, BNNeck, 256×128) on the same P×K
batches of in-memory uint8 images with the same batched augmentation, CE + triplet loss and
Adam; the plain loop is what one writes by hand (index, augment, forward, loss, backward,
step). The Trainer adds its sampler, parameter groups, LR schedule, hooks and mixed-precision
machinery. Images/second are measured after `--warmup` steps; peak memory is the rise of
resident memory on CPU and the peak of allocated memory on GPU.

    python train_throughput.py                               # CPU, fp32
    python train_throughput.py --amp bf16 --channels-last --ibn a --profile   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from common import measure

from reid_core.config import AugmentConfig, LossConfig, ModelConfig, SolverConfig
from reid_core.data.samplers import PKSampler
from reid_core.engine.augment import BatchAugment
from reid_core.engine.device import resolve_device
from reid_core.engine.hooks import Hook
from reid_core.engine.trainer import TrainData, Trainer
from reid_core.modeling import create_model
from reid_core.modeling.losses import ReidLoss


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--ibn", default="none", choices=["none", "a", "b"])
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--ids-per-batch", type=int, default=16)
    parser.add_argument("--images-per-id", type=int, default=4)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per side")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"])
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--profile", action="store_true", help="print where a step's time goes")
    parser.add_argument("--json", type=Path)
    return parser.parse_args()


class StepClock(Hook):
    def __init__(self):
        self.times: list[float] = []

    def after_step(self, trainer) -> None:
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())


def make_data(args, steps: int) -> TrainData:
    ids = args.ids_per_batch * steps
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(ids), args.images_per_id * 2)
    images = rng.integers(0, 256, (len(labels), 3, args.height, args.width), dtype=np.uint8)
    cams = np.tile(np.arange(2), len(labels) // 2)
    return TrainData(torch.from_numpy(images), labels, cams)


def configs(args, steps: int):
    model = ModelConfig(backbone=args.backbone, ibn=args.ibn)
    solver = SolverConfig(
        epochs=1, ids_per_batch=args.ids_per_batch, images_per_id=args.images_per_id,
        warmup_epochs=0, amp=args.amp, channels_last=args.channels_last, compile=args.compile,
    )  # fmt: skip
    return model, solver, AugmentConfig(), LossConfig()


def ours(args, data: TrainData, device: torch.device, steps: int) -> list[float]:
    model_cfg, solver, augment, loss_cfg = configs(args, steps)
    torch.manual_seed(0)
    model = create_model(model_cfg, int(data.labels.max()) + 1).to(device)
    clock = StepClock()
    trainer = Trainer(model, data, ReidLoss(loss_cfg), solver, augment, [clock])
    trainer.max_iter = steps
    trainer.train()
    return clock.times


def plain_loop(args, data: TrainData, device: torch.device, steps: int) -> list[float]:
    model_cfg, solver, augment_cfg, loss_cfg = configs(args, steps)
    torch.manual_seed(0)
    model = create_model(model_cfg, int(data.labels.max()) + 1).to(device).train()
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if args.compile else model
    optimizer = torch.optim.Adam(model.parameters(), lr=solver.lr, weight_decay=5e-4)
    augment = BatchAugment(augment_cfg, args.height, args.width)
    loss_fn = ReidLoss(loss_cfg)
    labels = torch.as_tensor(data.labels)
    sampler = PKSampler(data.labels, args.ids_per_batch, args.images_per_id)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    times = []
    for index in list(sampler.epoch(0))[:steps]:
        index = torch.from_numpy(index)
        images = augment(data.images[index].to(device))
        if args.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        y = labels[index].to(device)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = forward(images, y)
        loss = sum(loss_fn(out, y).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter())
    return times


def throughput(times: list[float], warmup: int, batch: int) -> float:
    timed = times[warmup - 1 :] if warmup > 0 else times
    return (len(timed) - 1) * batch / (timed[-1] - timed[0])


def side(fn, args, data, device, steps) -> tuple[float, float]:
    """(images per second, peak memory in MiB) of one side."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    times, _, rss = measure(lambda: fn(args, data, device, steps))
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else rss
    return throughput(times, args.warmup, args.ids_per_batch * args.images_per_id), peak / 2**20


def profile(args, data, device) -> None:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        ours(args, data, device, 3)
    key = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=25))


def main() -> None:
    args = parse_args()
    device = resolve_device(args.device)
    steps = args.warmup + args.steps + 1  # +1: the first timestamp opens the window
    data = make_data(args, steps)
    ref_ips, ref_mem = side(plain_loop, args, data, device, steps)
    our_ips, our_mem = side(ours, args, data, device, steps)
    result = {
        "problem": f"{args.backbone} ibn={args.ibn} {args.height}x{args.width}, batch "
        f"{args.ids_per_batch}x{args.images_per_id}, amp {args.amp}, channels_last "
        f"{args.channels_last}, compile {args.compile}, {device}",
        "reidflow_images_per_second": round(our_ips, 2),
        "plain_loop_images_per_second": round(ref_ips, 2),
        "ratio": round(our_ips / ref_ips, 3),
        "reidflow_peak_mib": round(our_mem, 1),
        "plain_loop_peak_mib": round(ref_mem, 1),
        "threads": torch.get_num_threads(),
    }
    for key, value in result.items():
        print(f"{key:>30}: {value}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.profile:
        profile(args, data, device)


if __name__ == "__main__":
    main()
