"""The trainer: checkpoint contract, resume, plain's head phase, config refusals, eval, DDP, real data."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sdedge.checkpoint import load_checkpoint
from sdedge.train import TrainConfig, TrainConfigError, evaluate_checkpoint, train

REPO = Path(__file__).resolve().parents[1]


def tiny_cfg(out: Path, **kw) -> TrainConfig:
    base = dict(dataset="digits", backbone="tiny", backbone_kwargs={"width": 4}, method="dsn", epochs=2,
                batch_size=64, lr=0.2, output=str(out), seed=0, device="cpu", progress=False, verbose=False)
    base.update(kw)
    return TrainConfig(**base)


def test_checkpoint_metadata_contract(tiny_checkpoint: Path) -> None:
    ck = load_checkpoint(tiny_checkpoint)
    m = ck.meta
    assert m["model"]["backbone"] == "tiny" and m["model"]["num_classes"] == 10
    d = m["data"]
    assert d["dataset"] == "digits" and d["image_size"] == [16, 16] and d["in_channels"] == 1
    assert set(d["preprocess"]) >= {"mean", "std", "scale", "channel_order"} and d["val_size"] == 200
    assert d["seed"] == 0
    assert m["classes"] == [str(i) for i in range(10)]
    assert m["method"] == {"name": "byot", "alpha": 0.3, "temperature": 3.0, "hint_weight": 0.03,
                           "deepest_ce_weight": 1.0, "label_smoothing": 0.0}
    assert m["hparams"]["epochs"] == 4 and m["hparams"]["backbone_kwargs"] == {"width": 8}
    for split in ("val", "test"):
        acc = m["accuracy"][split]
        assert len(acc["exits"]) == 3 and 0.0 <= acc["ensemble"] <= 1.0
    assert m["accuracy"]["val"]["exits"][-1] > 0.15  # better than chance (0.1) after 4 epochs
    assert 1 <= m["epoch"] <= 4 and "torch" in m["versions"]
    assert ck.train_state is None  # best.pt is lean; last.pt carries the training state
    last = load_checkpoint(tiny_checkpoint.parent / "last.pt")
    assert last.train_state["epochs_done"] == 4 and len(last.train_state["history"]) == 4
    res = json.loads((tiny_checkpoint.parent / "results.json").read_text())
    assert res["accuracy"] == m["accuracy"] and res["best_epoch"] == m["epoch"]
    # selection never looks at test: the best epoch has the best validation mean accuracy
    scores = [h["score"] for h in res["history"]]
    assert res["best_epoch"] == 1 + scores.index(max(scores))


def test_eval_reproduces_the_training_numbers(tiny_checkpoint: Path, capsys) -> None:
    acc = evaluate_checkpoint(tiny_checkpoint, split="both", device="cpu")
    meta = load_checkpoint(tiny_checkpoint).meta["accuracy"]
    for split in ("val", "test"):
        assert acc[split]["exits"] == pytest.approx(meta[split]["exits"], abs=1e-6)
        assert acc[split]["ensemble"] == pytest.approx(meta[split]["ensemble"], abs=1e-6)
    from sdedge.cli import main

    assert main(["eval", str(tiny_checkpoint), "--split", "val", "--json", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["val"]["exits"] == pytest.approx(meta["val"]["exits"], abs=1e-6)


def test_resume_continues_where_it_stopped(tmp_path: Path) -> None:
    ref = train(tiny_cfg(tmp_path / "ref", epochs=4))
    cfg = tiny_cfg(tmp_path / "run", epochs=4, stop_after=2)
    first = train(cfg)
    assert not first.completed and first.epochs_done == 2 and [h["epoch"] for h in first.history] == [1, 2]
    assert load_checkpoint(tmp_path / "run" / "last.pt").train_state["epochs_done"] == 2
    second = train(replace(cfg, stop_after=None))
    assert second.completed and second.epochs_done == 4
    assert [h["epoch"] for h in second.history] == [1, 2, 3, 4]
    # continuing gives the same run as never stopping (seeded shuffling/augmentation, restored momentum)
    for a, b in zip(ref.history, second.history):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["val"]["exits"] == pytest.approx(b["val"]["exits"], abs=1e-9)
    # a finished run only re-does the final evaluation
    third = train(replace(cfg, stop_after=None))
    assert third.history == second.history and third.metrics == second.metrics


def test_resume_refuses_another_configuration(tmp_path: Path) -> None:
    train(tiny_cfg(tmp_path, epochs=2, stop_after=1))
    with pytest.raises(TrainConfigError, match=r"another configuration \(lr: 0.2 -> 0.1\)"):
        train(tiny_cfg(tmp_path, epochs=2, lr=0.1))
    again = train(tiny_cfg(tmp_path, epochs=2, lr=0.1, resume=False))  # --no-resume starts over
    assert [h["epoch"] for h in again.history] == [1, 2]


def test_plain_trains_heads_on_the_frozen_backbone(tmp_path: Path) -> None:
    # 6 head epochs (~1 s): the heads reach 0.57-0.73 (exit 1) and 0.49-0.83 (exit 2) val accuracy over
    # seeds 0-5 (1 thread) and 0-2 (2 threads); after 1 head epoch exit 1 had 0.07-0.22, astride a 0.15 bound
    cfg = tiny_cfg(tmp_path, method="plain", epochs=2, train_heads_after=6)
    first = train(replace(cfg, stop_after=2))
    h = first.history
    assert h[-1]["train_acc"][:2] == [None, None]  # plain never runs the shallow heads
    assert h[-1]["select"] == "deepest"
    main_sd = load_checkpoint(tmp_path / "last.pt").state_dict
    res = train(cfg)
    assert res.completed and res.history[-1]["phase"] == "heads"
    assert res.best_epoch > cfg.epochs  # the heads phase selects its own best epoch
    final = load_checkpoint(res.best_checkpoint).state_dict
    backbone = [k for k in final if k.startswith("sections.") or k.startswith("exits.2.")]
    heads = [k for k in final if k.startswith("exits.0.") or k.startswith("exits.1.")]
    assert backbone and heads
    assert all(torch.equal(final[k], main_sd[k]) for k in backbone)  # frozen, BN statistics included
    assert any(not torch.equal(final[k], main_sd[k]) for k in heads)
    assert min(res.metrics["val"]["exits"][:2]) > 0.3  # both heads learned: 3x chance (0.1)


def test_config_refusals(tmp_path: Path) -> None:
    with pytest.raises(TrainConfigError, match="needs a teacher checkpoint"):
        train(tiny_cfg(tmp_path, method="kd"))
    with pytest.raises(TrainConfigError, match="does not use a teacher"):
        train(tiny_cfg(tmp_path, method="byot", teacher="x.pt"))
    with pytest.raises(TrainConfigError, match="only applies to --method plain"):
        train(tiny_cfg(tmp_path, method="dsn", train_heads_after=2))
    with pytest.raises(TrainConfigError, match=r"has no parameter\(s\) \['hint_weight'\]"):
        train(tiny_cfg(tmp_path, method="dsn", hint_weight=0.1))
    with pytest.raises(TrainConfigError, match="unknown method"):
        train(tiny_cfg(tmp_path, method="nope"))
    with pytest.raises(TrainConfigError, match="milestones"):
        train(tiny_cfg(tmp_path, milestones=[5]))
    with pytest.raises(TrainConfigError, match=r"random erasing probability must be in \[0, 1\], got 2"):
        train(tiny_cfg(tmp_path, random_erasing=2.0))
    with pytest.raises(TrainConfigError, match="--init-from .*no such checkpoint file"):
        train(tiny_cfg(tmp_path, init_from=str(tmp_path / "missing.pt")))
    assert not (tmp_path / "last.pt").exists()


def test_tfkd_self_needs_the_same_network(tmp_path: Path, tiny_checkpoint: Path) -> None:
    with pytest.raises(TrainConfigError, match="same network"):
        train(tiny_cfg(tmp_path / "a", method="tfkd-self", teacher=str(tiny_checkpoint)))  # width 4 vs 8
    res = train(tiny_cfg(tmp_path / "b", method="kd", teacher=str(tiny_checkpoint), epochs=1))
    assert load_checkpoint(res.best_checkpoint).meta["method"] == {"name": "kd", "alpha": 0.9, "temperature": 4.0}


def test_train_cli_writes_the_run_folder(tmp_path: Path, capsys) -> None:
    from sdedge.cli import main

    rc = main(["train", "--dataset", "digits", "--backbone", "tiny", "--width", "4", "--method", "byot",
               "--epochs", "1", "--batch-size", "64", "--lr", "0.2", "--alpha", "0.5", "-T", "2", "--threads", "1",
               "--no-progress", "--schedule", "cosine", "-o", str(tmp_path), "--json"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "exit 1" in out and "ensemble" in out  # the final table
    printed = json.loads(out[out.index('{\n "best_checkpoint"'):])
    assert printed["completed"] and Path(printed["best_checkpoint"]).is_file()
    meta = load_checkpoint(tmp_path / "best.pt").meta
    assert meta["method"]["alpha"] == 0.5 and meta["method"]["temperature"] == 2.0
    assert meta["hparams"]["schedule"] == "cosine"
    assert main(["train", "--dataset", "digits", "--method", "kd", "-o", str(tmp_path / "x")]) == 2  # clear error


def test_torchrun_two_cpu_processes(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "sdedge.cli",
           "train", "--dataset", "digits", "--backbone", "tiny", "--width", "4", "--method", "byot", "--epochs", "2",
           "--batch-size", "64", "--lr", "0.2", "--no-progress", "--device", "cpu", "-o", str(out)]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    assert "x2 processes" in p.stdout
    assert p.stdout.count("results:") == 1  # only rank 0 prints and writes
    ck = load_checkpoint(out / "best.pt")
    res = json.loads((out / "results.json").read_text())
    assert [h["epoch"] for h in res["history"]] == [1, 2]
    assert res["history"][0]["images_per_s"] > 0 and ck.meta["accuracy"]["test"]["n"] == 449
    # each process takes half of every epoch (1148 images: 574 each, 17 batches of 32); counts are summed
    assert res["history"][0]["images"] == 2 * 17 * 32


def test_fashion_mnist_slice_train_and_eval(fmnist_dir: Path, tmp_path: Path) -> None:
    # 3 cosine epochs (63 steps, ~3 s): the deepest exit reaches 0.46-0.64 val / 0.50-0.58 test accuracy
    # over seeds 0-5 with 1 and 2 threads (1 epoch gave 0.17-0.42: a "> 0.3" bound on it failed at random)
    cfg = TrainConfig(dataset="fashion-mnist", data=str(fmnist_dir), limit=1500, backbone="tiny",
                      backbone_kwargs={"width": 8}, method="byot", epochs=3, schedule="cosine", batch_size=64,
                      lr=0.1, seed=0, output=str(tmp_path), device="cpu", progress=False, verbose=False)
    res = train(cfg)
    meta = load_checkpoint(res.best_checkpoint).meta
    assert meta["data"]["image_size"] == [28, 28] and meta["data"]["in_channels"] == 1
    assert meta["data"]["val_size"] == 150 and meta["data"]["limit"] == 1500
    assert meta["classes"][0] == "T-shirt/top" and len(meta["classes"]) == 10
    assert res.metrics["test"]["n"] == 1500
    # it learned: 3x chance (0.1), well below the worst of the seeds and thread counts measured
    assert res.metrics["val"]["exits"][-1] > 0.3 and res.metrics["test"]["exits"][-1] > 0.3
    acc = evaluate_checkpoint(res.best_checkpoint, split="test", data=str(fmnist_dir), device="cpu")
    assert acc["test"]["exits"] == pytest.approx(res.metrics["test"]["exits"], abs=1e-6)
