"""Train and evaluate with FastReID's own code (the `fastreid` 1.4.0 package) on a dataset in
Market-1501 layout; write the metrics, the per-iteration loss and the training speed as JSON.

Runs in FastReID's own virtual environment (`make parity-venv`), never in reidflow's: it is
the reference side of `parity_fastreid.py`, which builds the FastReID options from the same
recipe reidflow trains with. FastReID's `tools/` are not packaged, so this is the small driver
they would be: a `DefaultTrainer` with FastReID's dataset, transforms, sampler, model, losses,
optimizer, schedule and evaluator. What is changed, only so that 1.4.0 runs on a current CPU
stack, is listed in `_compatibility` and `ParityTrainer`; none of it touches what is trained.

    .venv-fastreid/bin/python benchmarks/fastreid_driver.py --dataset D --out result.json \
        --seed 0 MODEL.BACKBONE.DEPTH 18x SOLVER.MAX_EPOCH 40 ...
"""

from __future__ import annotations

import argparse
import collections
import collections.abc
import json
import sys
import tempfile
import time
import types
from pathlib import Path

METRICS = {"rank1": "Rank-1", "mAP": "mAP", "mINP": "mINP"}  # ours -> FastReID's


def _compatibility() -> None:
    """fastreid 1.4.0 was written for torch 1.13 and Python 3.8: give it the two names it
    imports, and torch 1.13's `zero_grad`, which zeroed gradients in place.

    Since torch 2.0 `zero_grad()` sets them to None. FastReID's optimizer steps flat buffers
    (`ContiguousParams`) whose gradient is a buffer the parameters' gradients are views of;
    set to None, the buffers never get a gradient again and Adam skips them: on torch 2 the
    model silently never trains (its CE stays at ln(classes)).
    """
    import torch

    six = types.ModuleType("torch._six")
    six.string_classes = (str, bytes)
    sys.modules.setdefault("torch._six", six)
    collections.Mapping = collections.abc.Mapping  # type: ignore[attr-defined]
    zero_grad = torch.optim.Optimizer.zero_grad

    def zero_grad_in_place(self, set_to_none: bool = False) -> None:
        zero_grad(self, set_to_none=set_to_none)

    torch.optim.Optimizer.zero_grad = zero_grad_in_place


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True, help="Market-1501 layout folder")
    parser.add_argument("--out", type=Path, required=True, help="JSON result to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="data loader worker processes")
    parser.add_argument("--no-eval", action="store_true", help="train only (a speed round)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="FastReID config KEY VALUE pairs")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    _compatibility()
    import torch

    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)

    from fastreid.config import get_cfg
    from fastreid.data.build import (
        _test_loader_from_config,
        _train_loader_from_config,
        fast_batch_collator,
    )
    from fastreid.data.datasets import DATASET_REGISTRY
    from fastreid.data.datasets.market1501 import Market1501
    from fastreid.engine import DefaultTrainer, hooks
    from fastreid.evaluation.reid_evaluation import ReidEvaluator
    from fastreid.utils.env import seed_all_rng

    # The Cython evaluator is built with `make` inside site-packages at first use, and the
    # process exits when that fails; the pure-Python evaluator computes the same metrics.
    ReidEvaluator._compile_dependencies = lambda self: None

    @DATASET_REGISTRY.register()
    class ParityData(Market1501):
        """The dataset folder itself holds bounding_box_train/, query/, bounding_box_test/."""

        dataset_name = "parity"

        def __init__(self, root: str = "", **kwargs):
            super().__init__(root=str(args.dataset), **kwargs)

    class LossAndSpeed(hooks.HookBase):
        """Each step's total loss and wall time (the training steps alone)."""

        def __init__(self):
            self.losses: list[float] = []
            self.step_seconds: list[float] = []
            self._start = 0.0

        def before_step(self):
            self._start = time.perf_counter()

        def after_step(self):
            self.step_seconds.append(time.perf_counter() - self._start)
            self.losses.append(float(self.trainer.storage.history("total_loss").latest()))

    class ParityTrainer(DefaultTrainer):
        """DefaultTrainer whose loaders are plain torch DataLoaders: FastReID's DataLoaderX
        prefetches in a thread that calls torch.cuda.set_device, which fails without a GPU.
        Datasets, transforms, samplers and collation are FastReID's."""

        @classmethod
        def build_train_loader(cls, cfg):
            parts = _train_loader_from_config(cfg)
            batches = torch.utils.data.BatchSampler(
                parts["sampler"], parts["total_batch_size"], drop_last=True
            )
            return torch.utils.data.DataLoader(
                parts["train_set"],
                batch_sampler=batches,
                num_workers=args.workers,
                collate_fn=fast_batch_collator,
                persistent_workers=args.workers > 0,
            )

        @classmethod
        def build_test_loader(cls, cfg, dataset_name):
            parts = _test_loader_from_config(cfg, dataset_name=dataset_name)
            loader = torch.utils.data.DataLoader(
                parts["test_set"],  # queries first, then the gallery, in order
                batch_size=parts["test_batch_size"],
                shuffle=False,
                collate_fn=fast_batch_collator,
            )
            return loader, parts["num_query"]

        def build_writers(self):
            return []  # no console/JSON/TensorBoard event writers: the hook records the loss

        def build_hooks(self):
            if not args.no_eval:
                return super().build_hooks()
            self._last_eval_results = {}  # what `train` returns without an evaluation
            return [h for h in super().build_hooks() if not isinstance(h, hooks.EvalHook)]

    cfg = get_cfg()
    cfg.merge_from_list(list(args.opts))
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATASETS.NAMES = ("ParityData",)
    cfg.DATASETS.TESTS = ("ParityData",)
    with tempfile.TemporaryDirectory() as output:
        cfg.OUTPUT_DIR = output
        cfg.freeze()
        seed_all_rng(args.seed)  # model initialisation, the sampler's seed, augmentation
        trainer = ParityTrainer(cfg)
        recorder = LossAndSpeed()
        trainer.register_hooks([recorder])
        trainer.resume_or_load(resume=False)
        results = trainer.train()
    seconds = sum(recorder.step_seconds)
    out = {
        "losses": recorder.losses,
        "step_seconds": recorder.step_seconds,
        "iterations": len(recorder.losses),
        "iters_per_epoch": trainer.iters_per_epoch,
        "train_seconds": seconds,
        "images_per_second": len(recorder.losses) * cfg.SOLVER.IMS_PER_BATCH / seconds,
        "num_classes": trainer.cfg.MODEL.HEADS.NUM_CLASSES,
    }
    if not args.no_eval:
        metrics = results.get("ParityData", results)
        out.update({k: float(metrics[m]) for k, m in METRICS.items()})
    args.out.write_text(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
