"""The trainer: exact resume after a real kill, DDP equivalence, EMA, precise BN, freezing."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import ROOT, VENV_BIN
from safetensors.torch import load_file

from reid_core.config import AugmentConfig, LossConfig, ModelConfig, SolverConfig
from reid_core.engine.ema import ModelEMA
from reid_core.engine.precise_bn import recompute_bn_stats
from reid_core.engine.trainer import Trainer, fit
from reid_core.engine.training_state import STATE_FILE, load_state
from reid_core.modeling import create_model
from reid_core.modeling.losses import ReidLoss

SCRIPT = ROOT / "tests" / "support" / "tiny_fit.py"
NO_AUGMENT = {"flip_p": 0.0, "pad": 0, "erasing_p": 0.0}


def _script(out, *, state_dir=None, sleep=0.0, **json_args) -> list[str]:
    cmd = [sys.executable, str(SCRIPT), "--out", str(out), "--sleep", str(sleep)]
    if state_dir is not None:
        cmd += ["--state-dir", str(state_dir)]
    for name, value in json_args.items():
        cmd += [f"--{name}", json.dumps(value)]
    return cmd


def _assert_same_weights(a, b, atol=0.0, rtol=0.0) -> None:
    a, b = load_file(str(a)), load_file(str(b))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=rtol, msg=key)


def test_killed_run_resumes_to_the_uninterrupted_weights(tmp_path, venv_env, start_process):
    # Everything stateful is on: augmentation, warmup, EMA, backbone freeze, clipping.
    solver = {"epochs": 4, "checkpoint_every": 2, "ema_decay": 0.9, "freeze_iters": 3,
              "warmup_epochs": 1.0, "clip_grad": 5.0}  # fmt: skip
    env = venv_env()
    subprocess.run(_script(tmp_path / "full.safetensors", solver=solver), env=env, check=True)

    state_dir = tmp_path / "state"
    killed = start_process(
        _script(tmp_path / "never.safetensors", state_dir=state_dir, sleep=0.5, solver=solver),
        tmp_path / "killed.log",
        env=env,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        state = load_state(state_dir) if (state_dir / STATE_FILE).exists() else None
        if state is not None and state["iter"] >= 6:
            break
        assert killed.poll() is None, (tmp_path / "killed.log").read_text()
        time.sleep(0.1)
    else:
        pytest.fail("no checkpoint at iteration 6 within 2 minutes")
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=30) == -signal.SIGKILL
    assert not (tmp_path / "never.safetensors").exists()

    resumed = subprocess.run(
        _script(tmp_path / "resumed.safetensors", state_dir=state_dir, solver=solver),
        env=env, check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert "resuming from iteration" in resumed.stdout
    _assert_same_weights(tmp_path / "full.safetensors", tmp_path / "resumed.safetensors")


def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path, venv_env, free_port):
    # SGD keeps the comparison linear in the gradients; batch norm, batch-hard triplet and
    # label-smoothed CE all depend on the whole batch, so any per-rank shortcut shows. Two
    # steps, momentum carried from the first (a wrong gradient moves weights by ~1e-2): from
    # the third on, this tiny net (32×16 images, 2×1 last maps, unit-scale BNs) amplifies
    # float rounding through batch statistics and hinge / ReLU kinks into 1e-3 gaps.
    solver = {"optimizer": "sgd", "lr": 0.002, "warmup_epochs": 0.0, "epochs": 1,
              "ids_per_batch": 8}  # fmt: skip
    env = venv_env(OMP_NUM_THREADS="1")
    single = tmp_path / "single.safetensors"
    subprocess.run(_script(single, solver=solver, augment=NO_AUGMENT), env=env, check=True)
    torchrun = [str(VENV_BIN / "torchrun"), "--nproc_per_node", "2", "--master_addr",
                "127.0.0.1", "--master_port", str(free_port)]  # fmt: skip
    double = tmp_path / "ddp.safetensors"
    cmd = torchrun + _script(double, solver=solver, augment=NO_AUGMENT)[1:]
    subprocess.run(cmd, env=env, check=True, timeout=300)
    _assert_same_weights(single, double, atol=2e-5, rtol=1e-4)


# ------------------------------------------------------------------ in-process behaviour


@pytest.fixture
def tiny():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from tiny_fit import NUM_IDS, tiny_data
    finally:
        sys.path.remove(str(SCRIPT.parent))
    torch.manual_seed(0)
    model = create_model(ModelConfig(backbone="resnet18", base_width=8), NUM_IDS)
    loss = ReidLoss(LossConfig())
    return model, tiny_data(), loss


def test_frozen_backbone_does_not_move_until_the_freeze_ends(tiny):
    model, data, loss_fn = tiny
    solver = SolverConfig(epochs=2, ids_per_batch=4, images_per_id=2, freeze_iters=3)
    trainer = Trainer(model, data, loss_fn, solver, AugmentConfig(**NO_AUGMENT))
    start = {k: v.clone() for k, v in model.backbone.state_dict().items() if "running" not in k}
    head_start = model.head.state_dict()["bottleneck.weight"].clone()
    trainer.model.train()
    for hook in trainer.hooks:
        hook.before_train(trainer)
    for index in list(trainer.sampler.epoch(0))[:3]:
        for hook in trainer.hooks:
            hook.before_step(trainer)
        trainer.step(torch.from_numpy(index))
    params = dict(model.backbone.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in start.items() if k in params)
    assert not torch.equal(model.head.state_dict()["bottleneck.weight"], head_start)
    for hook in trainer.hooks:
        hook.before_step(trainer)
    trainer.step(torch.from_numpy(next(iter(trainer.sampler.epoch(1)))))
    assert not torch.equal(params["conv1.weight"], start["conv1.weight"])


def test_nan_loss_stops_training_naming_the_term(tiny):
    model, data, _ = tiny
    solver = SolverConfig(epochs=1, ids_per_batch=4, images_per_id=2)

    def bad_loss(out, y, _x):
        return {"loss_bad": out.features.sum() * float("nan")}

    from reid_core.engine.hooks import NaNGuard

    with pytest.raises(FloatingPointError, match="loss_bad became nan at iteration 1"):
        fit(model, data, solver, AugmentConfig(**NO_AUGMENT), bad_loss, [NaNGuard()])


def test_losses_evaluations_and_lr_reach_every_sink(tiny, caplog):
    from reid_core.engine.hooks import MetricLogger, PeriodicEvaluation
    from reid_core.engine.sinks import LoggingSink

    class Collect:
        def __init__(self):
            self.calls: list[tuple[int, dict]] = []

        def log_metrics(self, metrics, step):
            self.calls.append((step, dict(metrics)))

    model, data, loss_fn = tiny
    solver = SolverConfig(epochs=2, ids_per_batch=4, images_per_id=2)
    collect = Collect()
    sinks = [collect, LoggingSink()]
    hooks = [MetricLogger(2, sinks, prefix="t_"),
             PeriodicEvaluation(1, lambda m: {"score": 0.5}, sinks, prefix="v_")]  # fmt: skip
    with caplog.at_level("INFO", logger="reid_core.training"):
        fit(model, data, solver, AugmentConfig(**NO_AUGMENT), loss_fn, hooks)
    losses = [(s, m) for s, m in collect.calls if "t_lr" in m]
    assert losses and all(s % 2 == 0 or s == losses[-1][0] for s, _ in losses)
    assert all({"t_loss_ce", "t_loss_triplet"} <= set(m) for _, m in losses)
    scores = [s for s, m in collect.calls if m == {"v_score": 0.5}]
    assert len(scores) == 2 and scores[-1] == losses[-1][0]  # once per epoch, the last at the end
    assert len(caplog.records) == len(collect.calls)
    assert "v_score=0.5" in caplog.records[-1].getMessage()


def test_ema_follows_the_weights_by_the_decay():
    model = torch.nn.Linear(3, 2)
    ema = ModelEMA(model, decay=0.75)
    before = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(4.0)
    ema.update(model)
    torch.testing.assert_close(ema.shadow.weight, before + 0.25 * 4.0)
    ema.copy_to(model)
    torch.testing.assert_close(model.weight, before + 1.0)


def test_precise_bn_gives_the_mean_of_the_batch_statistics():
    bn = torch.nn.BatchNorm1d(3)
    batches = [torch.randn(8, 3) * (i + 1) + i for i in range(5)]
    used = recompute_bn_stats(bn, batches, bn)
    assert used == 5
    expected_mean = torch.stack([b.mean(0) for b in batches]).mean(0)
    expected_var = torch.stack([b.var(0, unbiased=True) for b in batches]).mean(0)
    torch.testing.assert_close(bn.running_mean, expected_mean)
    torch.testing.assert_close(bn.running_var, expected_var)
    assert bn.momentum == 0.1


@pytest.mark.parametrize("amp", ["bf16", "off"])
def test_bf16_and_channels_last_train_to_finite_weights(tiny, amp):
    model, data, loss_fn = tiny
    solver = SolverConfig(epochs=1, ids_per_batch=4, images_per_id=2, amp=amp,
                          channels_last=True, precise_bn_iters=2)  # fmt: skip
    fit(model, data, solver, AugmentConfig(), loss_fn)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    x = torch.rand(2, 3, 32, 16) * 255
    assert model.eval()(x).shape == (2, model.embedding_dim)


def test_fastreid_exact_choices_train_to_finite_weights(tiny):
    """The presets' FastReID choices: ceil stem pooling, smoothing over the other classes, the
    chunked sampler, torchvision's erasing box."""
    _, data, _ = tiny
    model = create_model(
        ModelConfig(backbone="resnet18", base_width=8, stem_pool="ceil"),
        len(np.unique(data.labels)),
    )
    solver = SolverConfig(epochs=2, ids_per_batch=4, images_per_id=2, sampler="chunked",
                          epoch_length="images")  # fmt: skip
    loss_fn = ReidLoss(LossConfig(label_smoothing_over="others"))
    fit(model, data, solver, AugmentConfig(erasing_p=1.0, erasing_box="torchvision"), loss_fn)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_training_state_holds_only_tensors_and_plain_values(tiny, tmp_path):
    model, data, loss_fn = tiny
    solver = SolverConfig(epochs=2, ids_per_batch=4, images_per_id=2, ema_decay=0.5)
    fit(model, data, solver, AugmentConfig(), loss_fn, state_dir=tmp_path)
    state = torch.load(tmp_path / STATE_FILE, weights_only=True)  # no pickled objects
    assert state["iter"] == len(np.unique(data.labels)) // 4
    assert "EMAHook" in state["hooks"]


def test_compiled_training_matches_eager_training(tmp_path, venv_env):
    solver = {"optimizer": "sgd", "lr": 0.002, "epochs": 1}
    env = venv_env(OMP_NUM_THREADS="1")
    eager, compiled = tmp_path / "eager.safetensors", tmp_path / "compiled.safetensors"
    subprocess.run(_script(eager, solver=solver, augment=NO_AUGMENT), env=env, check=True)
    solver["compile"] = True
    subprocess.run(_script(compiled, solver=solver, augment=NO_AUGMENT), env=env, check=True)
    _assert_same_weights(eager, compiled, atol=1e-4, rtol=1e-3)
