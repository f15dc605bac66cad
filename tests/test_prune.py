"""``sdedge prune``: structured channel pruning keeps the sections and exits, meets its MAC target, and
the pruned checkpoint trains, round-trips, exports with parity and runs in the torch-free runtime; the
data-free recovery reads no dataset file. No accuracy is asserted (tiny models, a few epochs):
``benchmarks/compress_bench.py`` measures that."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torch_pruning")

from sdedge.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from sdedge.compress import PruneConfig, PruneSettings, SynthConfig, exit_costs, prune, prune_network  # noqa: E402
from sdedge.compress.prune import PruneError  # noqa: E402
from sdedge.models import ModelConfig, build_model  # noqa: E402
from sdedge.train import TrainConfig  # noqa: E402

from test_runtime_no_torch import run_script  # noqa: E402


def _net(backbone: str = "resnet18", head: str = "bottleneck", **kw) -> tuple:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone, 10, 1, (28, 28), head, kw or ({"width": 16} if backbone == "resnet18" else {}))
    return cfg, build_model(cfg)


def _quick_train(out: Path, epochs: int = 1) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=64, lr=0.05, schedule="cosine", output=str(out), device="cpu",
                       progress=False, verbose=False)


@pytest.mark.parametrize("backbone,head", [("resnet18", "bottleneck"), ("resnet18", "byot-authors"),
                                           ("mobilenetv2", "bottleneck"), ("wrn16_4", "bottleneck")])
def test_pruning_keeps_exits_and_section_boundaries(backbone: str, head: str) -> None:
    cfg, net = _net(backbone, head)
    x = torch.randn(2, 1, 28, 28)
    net.eval()
    before = net(x)
    strides, n = list(net.section_strides), net.num_exits
    rep = prune_network(net, PruneSettings(target_macs=0.5), x)
    after = net(x, return_preacts=True)
    assert net.num_exits == n and list(net.section_strides) == strides
    assert [t.shape for t in after.logits] == [t.shape for t in before.logits]
    assert len({f.shape[1] for f in after.features}) == 1  # BYOT's hint compares every exit with the deepest
    assert [p.shape[1] for p in after.preacts] == net.preact_channels
    assert all(a < b for a, b in zip(rep.section_channels_after, rep.section_channels_before))
    # each section still ends where it did: same spatial size at each exit's input
    y, z = x, x
    ref = build_model(cfg).eval()
    for s_new, s_ref in zip(net.sections, ref.sections):
        y, z = s_new(y), s_ref(z)
        assert y.shape[2:] == z.shape[2:]
    costs = exit_costs(net, 1, (28, 28))
    assert [c.macs for c in costs] == [c.macs for c in rep.after]


@pytest.mark.parametrize("target", [0.7, 0.5, 0.3])
def test_mac_target_is_met_within_5_percent(target: float) -> None:
    _, net = _net()
    rep = prune_network(net, PruneSettings(target_macs=target), torch.randn(1, 1, 28, 28))
    assert abs(rep.macs_kept - target) <= 0.05 * target, rep.macs_kept
    assert rep.after[-1].params < rep.before[-1].params


def test_per_section_targets_keep_exit_one_whole() -> None:
    _, net = _net()
    rep = prune_network(net, PruneSettings(section_macs=[1.0, 0.5, 0.5, 0.5]), torch.randn(1, 1, 28, 28))
    kept = [a.section_macs / b.section_macs for a, b in zip(rep.after, rep.before)]
    assert kept[0] == 1.0 and rep.ratios[0] == 0.0
    assert all(abs(k - 0.5) <= 0.05 for k in kept[2:]), kept  # section 2 also loses input channels of section 1's: no
    assert abs(kept[1] - 0.5) <= 0.05, kept


def test_importances_and_steps_choose_different_channels_with_the_same_counts() -> None:
    x = torch.randn(8, 1, 28, 28)
    y = torch.randint(0, 10, (8,))

    def grad_batch(n):
        sum(torch.nn.functional.cross_entropy(z, y) for z in n.forward_exits(x)).backward()

    shapes, weights = [], []
    for imp, steps in [("magnitude", 1), ("bn", 1), ("taylor", 2)]:
        _, net = _net()
        with torch.no_grad():  # distinct BN scales, so the BN-scale importance has something to rank
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.weight.uniform_(0.1, 1.0)
        prune_network(net, PruneSettings(target_macs=0.5, importance=imp, steps=steps), x, grad_batch=grad_batch)
        sd = net.state_dict()
        shapes.append({k: tuple(v.shape) for k, v in sd.items()})
        weights.append(sd["sections.1.0.conv1.weight"] if "sections.1.0.conv1.weight" in sd else
                       next(v for k, v in sd.items() if k.startswith("sections.1") and v.dim() == 4))
    assert shapes[0] == shapes[1] == shapes[2]
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_bad_settings_are_refused() -> None:
    _, net = _net()
    x = torch.randn(1, 1, 28, 28)
    for s, msg in [(PruneSettings(target_macs=0.0), "fraction in"), (PruneSettings(target_macs=1.5), "fraction in"),
                   (PruneSettings(importance="random"), "unknown importance"), (PruneSettings(steps=0), "steps"),
                   (PruneSettings(section_macs=[1.0, 0.5]), "one fraction per section")]:
        with pytest.raises(PruneError, match=msg):
            prune_network(net, s, x)
    with pytest.raises(ValueError, match="pass the state dict"):
        build_model(dataclasses.replace(_net()[0], pruned=True))


@pytest.fixture(scope="module")
def pruned_run(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("pruned")
    res = prune(PruneConfig(checkpoint=str(tiny_checkpoint), output=str(out), target_macs=0.5,
                            train=_quick_train(out, epochs=2)))
    return res, out


def test_pruned_checkpoint_round_trips_and_trains(pruned_run, tiny_checkpoint) -> None:
    res, out = pruned_run
    ck = load_checkpoint(res.pruned_checkpoint)
    assert ck.meta["model"]["pruned"] is True
    assert "pruned" not in load_checkpoint(tiny_checkpoint).meta["model"]  # unpruned configs read as before
    net = model_from_checkpoint(ck).eval()
    teacher = model_from_checkpoint(tiny_checkpoint)
    assert net.section_channels != teacher.section_channels
    assert sum(p.numel() for p in net.parameters()) < sum(p.numel() for p in teacher.parameters())
    best = load_checkpoint(res.best_checkpoint)
    assert best.meta["model"] == ck.meta["model"] and best.meta["method"]["name"] == "distill"
    assert best.meta["hparams"]["teacher"] == str(tiny_checkpoint)
    assert best.meta["data"] == load_checkpoint(tiny_checkpoint).meta["data"]  # same data spec and normalisation
    trained = model_from_checkpoint(best)
    assert {k: v.shape for k, v in trained.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), net.state_dict().values()))
    record = json.loads((out / "prune.json").read_text())
    assert record["recovery"] == "distill" and set(record["accuracy"]) == {"teacher", "pruned", "recovered"}
    assert abs(record["report"]["macs_kept"] - res.report.macs_kept) < 1e-3


def test_pruned_checkpoint_exports_with_parity_and_runs_without_torch(pruned_run, tmp_path: Path) -> None:
    from sdedge.export import ExportConfig, export_bundle

    res, _ = pruned_run
    exported = export_bundle(ExportConfig(checkpoint=res.best_checkpoint, output=str(tmp_path / "bundle"),
                                          parity_samples=16, threads=1))
    assert exported.parity and all(r.max_abs_diff < 1e-3 and r.top1_agreement == 1.0 for r in exported.parity)
    out = run_script(sys.executable, Path(exported.bundle_path), "block")
    assert out.returncode == 0 and out.stdout.startswith("OK"), out.stderr[-3000:]
    py = os.environ.get("SDEDGE_NOTORCH_PYTHON")
    if py:
        out = run_script(py, Path(exported.bundle_path), "plain")
        assert out.returncode == 0 and out.stdout.startswith("OK"), out.stderr[-3000:]


def test_rerun_reuses_the_pruned_checkpoint(pruned_run, tiny_checkpoint, capsys) -> None:
    res, out = pruned_run
    before = Path(res.pruned_checkpoint).stat().st_mtime_ns
    cfg = _quick_train(out, epochs=2)
    cfg.verbose = True
    again = prune(PruneConfig(checkpoint=str(tiny_checkpoint), output=str(out), target_macs=0.5, train=cfg))
    assert Path(again.pruned_checkpoint).stat().st_mtime_ns == before
    assert "reusing" in capsys.readouterr().out
    with pytest.raises(PruneError, match="holds the recovery of another pruning"):
        prune(PruneConfig(checkpoint=str(tiny_checkpoint), output=str(out), target_macs=0.6, train=cfg))
    assert Path(again.pruned_checkpoint).stat().st_mtime_ns == before  # nothing overwritten


def test_data_free_recovery_reads_no_dataset(tiny_checkpoint, tmp_path: Path, monkeypatch) -> None:
    import sdedge.common.datasets as datasets
    import sdedge.data as data

    def refuse(*a, **k):
        raise AssertionError("the data-free path read a dataset")

    for mod, name in [(data, "load_splits"), (data, "splits_for_spec"), (datasets, "read_split"),
                      (datasets, "find_folder")]:
        monkeypatch.setattr(mod, name, refuse)
    monkeypatch.setenv("SDEDGE_DATA", str(tmp_path / "no-such-folder"))
    cfg = _quick_train(tmp_path / "df")
    cfg.data = str(tmp_path / "no-such-folder")
    res = prune(PruneConfig(checkpoint=str(tiny_checkpoint), output=str(tmp_path / "df"), target_macs=0.7,
                            data_free=True, synth=SynthConfig(images=32, batch_size=16, iterations=5),
                            synth_val_images=8, train=cfg))
    best = load_checkpoint(res.best_checkpoint)
    assert best.meta["model"]["pruned"] is True
    assert best.meta["data"] == load_checkpoint(tiny_checkpoint).meta["data"]  # calibrate/export read the real spec
    record = json.loads((tmp_path / "df" / "prune.json").read_text())
    assert record["data_free"] is True and "synthetic" in record["accuracy_note"]
    import numpy as np

    with np.load(tmp_path / "df" / "synthetic.npz") as z:
        h, w = load_checkpoint(tiny_checkpoint).meta["model"]["image_size"]
        assert z["train_x"].shape == (32, h, w, 1) and z["train_x"].dtype == np.uint8 and z["val_x"].shape[0] == 8


def test_synthesised_images_follow_the_teacher(tiny_checkpoint) -> None:
    import numpy as np

    from sdedge.compress import synthesize

    ck = load_checkpoint(tiny_checkpoint)
    net = model_from_checkpoint(ck).eval()
    pre, size = ck.meta["data"]["preprocess"], tuple(ck.meta["model"]["image_size"])

    def assigned_log_prob(iterations: int) -> tuple:
        x, y = synthesize(net, 10, 1, size, pre["mean"], pre["std"],
                          SynthConfig(images=20, batch_size=10, iterations=iterations))
        t = (torch.as_tensor(x).permute(0, 3, 1, 2).float() / 255 - pre["mean"][0]) / pre["std"][0]
        with torch.no_grad():
            logp = torch.log_softmax(net.forward_exits(t)[-1], 1)
        return x, y, float(logp[torch.arange(20), torch.arange(20) % 10].mean())

    x, y, optimised = assigned_log_prob(60)
    assert x.shape == (20, *size, 1) and x.dtype == np.uint8 and y.shape == (20,) and x.std() > 0
    _, _, noise = assigned_log_prob(1)
    assert optimised > noise + 0.5  # the images moved towards their assigned classes (log-probability)
    x2, _, _ = assigned_log_prob(60)
    assert np.array_equal(x, x2)  # seeded


def test_cli_prune_and_its_errors(tiny_checkpoint, tmp_path: Path) -> None:
    env = dict(os.environ)
    cmd = [sys.executable, "-m", "sdedge.cli", "prune"]
    out = subprocess.run(cmd + ["--help"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and "--target-macs" in out.stdout and "--data-free" in out.stdout
    out = subprocess.run(cmd + [str(tiny_checkpoint), "--target-macs", "1.5", "-o", str(tmp_path / "x")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 2 and "fraction in (0, 1]" in out.stderr
    out = subprocess.run(cmd + [str(tmp_path / "missing.pt"), "-o", str(tmp_path / "x")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode != 0 and "does not exist" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run(cmd + [str(tiny_checkpoint), "--data-free", "--recovery", "labels", "-o", str(tmp_path / "x")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode != 0 and "no labels" in out.stderr and "Traceback" not in out.stderr
    out = subprocess.run(cmd + [str(tiny_checkpoint), "--target-macs", "0.6", "--recovery", "none", "--json",
                                "-o", str(tmp_path / "p")], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    doc = json.loads(out.stdout[out.stdout.index("{"):])
    assert doc["best_checkpoint"] is None and Path(doc["pruned_checkpoint"]).is_file()
    assert 0.5 < doc["macs_kept"] < 0.7


def test_iterative_pruning_recovers_between_steps(tiny_checkpoint, tmp_path: Path) -> None:
    from sdedge.checkpoint import load_checkpoint, model_from_checkpoint

    out = tmp_path / "it"
    res = prune(PruneConfig(checkpoint=str(tiny_checkpoint), output=str(out), target_macs=0.5, steps=3, step_epochs=1,
                            recovery="labels", train=_quick_train(out, epochs=1)))
    # a recovery run after steps 1 and 2 (not after the last: the final recovery follows)
    assert sorted(p.name for p in (out / "steps").iterdir()) == ["1", "2"]
    for k in ("1", "2"):
        step = load_checkpoint(out / "steps" / k / "best.pt")
        assert step.meta["hparams"]["epochs"] == 1 and step.meta["method"]["name"] == "dsn"
        model_from_checkpoint(step)  # each intermediate network is a consistent, loadable pruned network
    # the final network started from step 2's recovered weights, pruned once more: fewer channels than step 2
    final = model_from_checkpoint(load_checkpoint(res.pruned_checkpoint))
    step2 = model_from_checkpoint(load_checkpoint(out / "steps" / "2" / "best.pt"))
    assert sum(p.numel() for p in final.parameters()) < sum(p.numel() for p in step2.parameters())
    assert abs(res.report.macs_kept - 0.5) <= 0.05 * 0.5 + 1e-9 or res.report.warning
    with pytest.raises(PruneError, match="needs steps >= 2"):
        prune(PruneConfig(checkpoint=str(tiny_checkpoint), output=str(tmp_path / "bad"), steps=1, step_epochs=1,
                          train=_quick_train(out, epochs=1)))
