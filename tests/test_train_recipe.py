"""Recipe options of the trainer: torch's one-cycle schedule with momentum cycling, and the EMA of the weights."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sdedge.checkpoint import load_checkpoint
from sdedge.train import TrainConfig, TrainConfigError, evaluate_checkpoint, train
from sdedge.train.schedule import onecycle, steps_per_epoch


def tiny_cfg(out: Path, **kw) -> TrainConfig:
    base = dict(dataset="digits", backbone="tiny", backbone_kwargs={"width": 4}, method="dsn", epochs=3,
                batch_size=64, lr=0.2, output=str(out), seed=0, device="cpu", progress=False, verbose=False)
    base.update(kw)
    return TrainConfig(**base)


def test_onecycle_follows_torch_step_by_step() -> None:
    epochs, steps = 3, 7
    sched = onecycle(0.4, epochs, steps, 0.25, 0.8, 0.95)
    p = torch.zeros(1, requires_grad=True)
    ref_opt = torch.optim.SGD([p], lr=0.4, momentum=0.95)
    ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=0.4, total_steps=epochs * steps, pct_start=0.25,
                                              base_momentum=0.8, max_momentum=0.95)
    ours = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.123, momentum=0.5)
    for e in range(epochs):
        for s in range(steps):
            lr = sched.apply(ours, e + s / steps)
            g = ref_opt.param_groups[0]
            assert lr == pytest.approx(g["lr"], rel=1e-12)
            assert ours.param_groups[0]["momentum"] == pytest.approx(g["momentum"], rel=1e-12)
            ref_opt.step()
            if e * steps + s < epochs * steps - 1:
                ref.step()
    moms = [sched.momentum(e + s / steps) for e in range(epochs) for s in range(steps)]
    assert min(moms) < 0.81 and moms[0] == pytest.approx(0.95)  # momentum dips at the peak rate
    assert onecycle(0.4, epochs, steps, 0.25, 0.9, 0.9).momentum is None  # equal bounds: no cycling


def test_steps_per_epoch_matches_the_loop() -> None:
    assert steps_per_epoch(1000, 64) == 15
    assert steps_per_epoch(10, 64) == 1
    assert steps_per_epoch(1001, 64, world=2) == 7  # 501 images per process (padded)


def test_onecycle_run_resumes_like_an_uninterrupted_one(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path / "ref", schedule="onecycle", nesterov=True)
    ref = train(cfg)
    lrs = [h["lr"] for h in ref.history]
    assert lrs[-1] < 0.2 / 1000  # annealed to lr / 25e4 at the last step
    stopped = replace(cfg, output=str(tmp_path / "run"), stop_after=1)
    train(stopped)
    again = train(replace(stopped, stop_after=None))
    for a, b in zip(ref.history, again.history):
        assert a["lr"] == b["lr"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["val"]["exits"] == pytest.approx(b["val"]["exits"], abs=1e-9)


def test_ema_is_what_is_evaluated_and_saved(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path / "ema", ema_decay=0.9)
    res = train(cfg)
    best = load_checkpoint(res.best_checkpoint)
    last = load_checkpoint(res.last_checkpoint)
    live = last.train_state["ema"]["live"]
    assert last.train_state["ema"]["n_averaged"] == cfg.epochs * steps_per_epoch(len(_train_labels(cfg)), 64)
    differ = [k for k in live if k.endswith("weight") and not torch.equal(live[k], last.state_dict[k])]
    assert differ, "the saved weights are the live ones, not their average"
    # the saved average (with its recomputed BN statistics) reproduces the reported accuracy
    again = evaluate_checkpoint(res.best_checkpoint, split="val", device="cpu")
    assert again["val"]["exits"] == pytest.approx(res.metrics["val"]["exits"], abs=1e-6)
    assert best.meta["hparams"]["ema_decay"] == 0.9
    # a decay of ~0 makes the average the live weights themselves: the update is wired to every step
    res0 = train(tiny_cfg(tmp_path / "ema0", ema_decay=1e-12, epochs=1))
    last0 = load_checkpoint(res0.last_checkpoint)
    live0 = last0.train_state["ema"]["live"]
    for k, v in live0.items():
        if k.endswith("weight") and "bn" not in k and v.dim() > 1:
            assert torch.allclose(v, last0.state_dict[k], atol=1e-6), k


def test_ema_run_resumes_like_an_uninterrupted_one(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path / "ref", ema_decay=0.95)
    ref = train(cfg)
    stopped = replace(cfg, output=str(tmp_path / "run"), stop_after=2)
    train(stopped)
    again = train(replace(stopped, stop_after=None))
    for a, b in zip(ref.history, again.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["val"]["exits"] == pytest.approx(b["val"]["exits"], abs=1e-9)


def test_ema_with_plain_heads_phase_restarts_the_average(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path / "p", method="plain", epochs=2, train_heads_after=2, ema_decay=0.9)
    res = train(cfg)
    assert res.completed and res.history[-1]["phase"] == "heads"
    ts = load_checkpoint(res.last_checkpoint).train_state
    assert ts["ema"]["n_averaged"] == 2 * steps_per_epoch(len(_train_labels(cfg)), 64)


def test_recipe_refusals(tmp_path: Path) -> None:
    with pytest.raises(TrainConfigError, match="min momentum"):
        tiny_cfg(tmp_path, schedule="onecycle", momentum=0.8, min_momentum=0.85).validate()
    with pytest.raises(TrainConfigError, match="EMA decay"):
        tiny_cfg(tmp_path, ema_decay=1.0).validate()
    tiny_cfg(tmp_path, schedule="cosine", momentum=0.8).validate()  # min momentum only matters for onecycle


def test_train_cli_recipe_flags(tmp_path: Path) -> None:
    from sdedge.cli import build_parser
    from sdedge.commands.train import config_from_args

    args = build_parser().parse_args(["train", "-o", str(tmp_path), "--schedule", "onecycle", "--min-momentum", "0.8",
                                      "--ema", "0.999", "--nesterov"])
    cfg = config_from_args(args)
    assert (cfg.schedule, cfg.min_momentum, cfg.ema_decay, cfg.nesterov) == ("onecycle", 0.8, 0.999, True)


def _train_labels(cfg: TrainConfig):
    from sdedge.data import load_splits

    return load_splits(cfg.dataset, cfg.data, cfg.val_size, cfg.seed, False, cfg.limit).train.labels
