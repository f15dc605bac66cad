"""``prune(cfg) -> PruneResult``: the run behind ``sdedge prune``.

1. Load the trained checkpoint (the teacher) and the data it was trained on (the same hold-out), or,
   with ``data_free``, synthesise images from the teacher alone (:mod:`.synth`; no dataset file is read).
2. Prune its channels to the MAC target (:mod:`.prune`) and write ``RUN_DIR/pruned.pt``: a checkpoint
   whose model config says ``pruned`` (layer widths come from its weights), exportable as any other.
   With ``steps`` > 1 and ``step_epochs`` > 0, the network is fine-tuned between the steps (the same
   recovery, ``step_epochs`` epochs each, in ``RUN_DIR/steps/K/``) before importance is re-estimated:
   prune, recover, prune again, the classic iterative schedule.
3. Recover: fine-tune the pruned network with the trainer (:func:`sdedge.train.train`, ``init_from``
   the pruned checkpoint) and write ``RUN_DIR/best.pt`` / ``last.pt`` / ``results.json`` as ``sdedge
   train`` does. ``recovery="distill"`` (default) distils from the unpruned teacher (method ``distill``:
   each exit from the teacher's same exit and deepest exit, self-distillation, partial-L2 features);
   ``"labels"`` fine-tunes on the labels alone (``dsn``: CE at every exit), the baseline to compare
   with; ``"none"`` stops after pruning.
4. ``RUN_DIR/prune.json``: the MACs and parameters per exit before and after, the ratios, the accuracy
   of the teacher, of the pruned network before recovery and after it.

Re-running with the same settings reuses ``pruned.pt`` (and the synthetic images) and resumes training.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..common.errors import SdedgeError
from .prune import PruneError, PruneReport, PruneSettings, prune_network
from .synth import SynthConfig, synthesize

RECOVERIES = ("distill", "labels", "none")
RECOVERY_METHOD = {"distill": "distill", "labels": "dsn"}


@dataclass
class PruneConfig:
    checkpoint: str  # the trained (unpruned) checkpoint: what is pruned, and the teacher
    output: str = "runs/pruned"
    target_macs: float | None = 0.5  # fraction of the deepest exit's MACs to keep
    section_macs: list[float] | None = None  # or one fraction per section
    importance: str = "magnitude"  # magnitude | bn | taylor
    steps: int = 1
    step_epochs: int = 0  # with steps > 1: recovery epochs between steps (0: prune the steps back to back)
    round_to: int | None = None
    recovery: str = "distill"  # distill | labels | none
    data_free: bool = False  # recover on images synthesised from the teacher (no dataset read)
    synth: SynthConfig = field(default_factory=SynthConfig)
    synth_val_images: int = 256  # synthetic hold-out for model selection (data-free only)
    # the trainer's options for the recovery (dataset, hold-out and seed come from the checkpoint)
    train: Any = None  # sdedge.train.TrainConfig; None: 20 epochs, lr 0.01, cosine

    def settings(self) -> PruneSettings:
        return PruneSettings(self.target_macs, self.section_macs, self.importance, self.steps, self.round_to)


@dataclass
class PruneResult:
    pruned_checkpoint: str
    best_checkpoint: str | None  # None with recovery "none"
    report: PruneReport
    accuracy: dict = field(default_factory=dict)  # teacher / pruned / recovered -> {"val", "test"}
    results: str | None = None  # prune.json

    def table(self) -> str:
        from ..train.evaluate import format_table

        lines = [self.report.table()]
        for name, acc in self.accuracy.items():
            if acc and any(acc.values()):
                lines.append(format_table(acc, f"\n{name}: top-1"))
        return "\n".join(lines)


def _default_train_config() -> Any:
    from ..train import TrainConfig

    return TrainConfig(epochs=20, lr=0.01, schedule="cosine")


def _synthetic_splits(teacher, ck, cfg: PruneConfig, teacher_digest: str, out: Path, device: torch.device, say,
                      show_progress: bool = True):
    """Train/val splits of images synthesised from ``teacher`` (cached in RUN_DIR/synthetic.npz)."""
    from ..common.atomic import write_bytes_atomic
    from ..common.datasets import ImageArrays
    from ..data import DataSplits, checkpoint_data_spec
    from ..models import ModelConfig

    spec = checkpoint_data_spec(ck.meta)
    if spec is None:
        raise PruneError(f"{cfg.checkpoint} names no dataset; data-free recovery needs its normalisation and classes")
    pre = ck.meta["data"]["preprocess"]
    mcfg = ModelConfig.from_json(ck.meta["model"])
    cache = out / "synthetic.npz"
    key = json.dumps({"synth": asdict(cfg.synth), "val": cfg.synth_val_images, "teacher": teacher_digest},
                     sort_keys=True)
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) == key:
                say(f"reusing the synthetic images in {cache}")
                arrays = {k: z[k] for k in ("train_x", "train_y", "val_x", "val_y")}
            else:
                arrays = None
    else:
        arrays = None
    if arrays is None:
        total = cfg.synth.images + cfg.synth_val_images
        say(f"synthesising {total} images from the teacher (DeepInversion, {cfg.synth.iterations} steps per batch "
            f"of {cfg.synth.batch_size}; no dataset is read)")
        bar = _bar(total, "synthesise", disable=not show_progress)
        x, y = synthesize(teacher, mcfg.num_classes, mcfg.in_channels, tuple(mcfg.image_size), pre["mean"], pre["std"],
                          replace(cfg.synth, images=total), device, progress=lambda d, t: bar.update(d - bar.n))
        bar.close()
        n = cfg.synth.images
        arrays = {"train_x": x[:n], "train_y": y[:n], "val_x": x[n:], "val_y": y[n:]}
        buf = _npz_bytes(key=np.array(key), **arrays)
        write_bytes_atomic(cache, buf)
    h, w = (int(v) for v in mcfg.image_size)
    empty = ImageArrays(np.zeros((0, h, w, mcfg.in_channels), np.uint8), np.zeros((0,), np.int64))
    info = spec.info
    return DataSplits(spec.dataset, ImageArrays(arrays["train_x"], arrays["train_y"]),
                      ImageArrays(arrays["val_x"], arrays["val_y"]), empty, list(ck.meta["classes"]),
                      list(pre["mean"]), list(pre["std"]), bool(info.hflip),
                      pre.get("channel_order", "L" if mcfg.in_channels == 1 else "RGB"), spec)


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _bar(total: int, desc: str, disable: bool = False):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False, disable=disable)


def prune(cfg: PruneConfig) -> PruneResult:
    """Prune ``cfg.checkpoint`` and recover it; see the module docstring."""
    from ..checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
    from ..common.digest import sha256_file
    from ..data import splits_for_spec, checkpoint_data_spec
    from ..data.augment import normalize
    from ..models import ModelConfig
    from ..train import train
    from ..train.ddp import resolve_device
    from ..train.evaluate import as_tensor, evaluate_arrays

    if cfg.recovery not in RECOVERIES:
        raise PruneError(f"unknown recovery {cfg.recovery!r}; expected one of {', '.join(RECOVERIES)}")
    if cfg.data_free and cfg.recovery == "labels":
        raise PruneError("data-free recovery has no labels to fine-tune on: use --recovery distill")
    tcfg = copy.deepcopy(cfg.train) if cfg.train is not None else _default_train_config()
    verbose = tcfg.verbose
    say = (lambda m: print(f"[sdedge prune] {m}", flush=True)) if verbose else (lambda m: None)
    if not isinstance(cfg.step_epochs, int) or cfg.step_epochs < 0:
        raise PruneError(f"step_epochs must be an integer >= 0, got {cfg.step_epochs!r}")
    if cfg.step_epochs and (cfg.steps < 2 or cfg.recovery == "none"):
        raise PruneError("step_epochs fine-tunes between pruning steps: it needs steps >= 2 and a recovery "
                         "(distill or labels)")
    if cfg.synth_val_images < 2 and cfg.data_free:
        raise PruneError("data-free recovery needs at least 2 synthetic validation images")
    if Path(cfg.output).resolve() == Path(cfg.checkpoint).resolve().parent:
        raise PruneError(f"the output folder {cfg.output} holds the checkpoint being pruned ({cfg.checkpoint}): its "
                         f"pruned.pt, best.pt and last.pt would overwrite it; use another -o RUN_DIR")
    ck = load_checkpoint(cfg.checkpoint)
    mcfg = ModelConfig.from_json(ck.meta["model"])
    settings = cfg.settings()
    device = resolve_device(tcfg.device)
    teacher = model_from_checkpoint(ck).to(device)
    settings.check(teacher.num_exits)
    spec = checkpoint_data_spec(ck.meta)
    if spec is None and not cfg.data_free:
        raise PruneError(f"{cfg.checkpoint} names no dataset to recover on")
    if cfg.data_free:
        cfg.synth.check()
    out = Path(cfg.output)  # the recovery's run folder too
    out.mkdir(parents=True, exist_ok=True)
    teacher_digest = sha256_file(cfg.checkpoint)  # what pruned.pt and synthetic.npz were made from
    if tcfg.threads:
        torch.set_num_threads(int(tcfg.threads))

    if cfg.data_free:
        splits = _synthetic_splits(teacher, ck, cfg, teacher_digest, out, device, say, tcfg.progress and tcfg.verbose)
    else:
        splits = splits_for_spec(spec, tcfg.data)
    pre = ck.meta["data"]["preprocess"]
    mean, std = pre["mean"], pre["std"]

    def accuracy(net, split: str):
        arr = splits.split(split)
        if len(arr) == 0:
            return None
        return evaluate_arrays(net, as_tensor(arr.images), as_tensor(arr.labels), mean, std, device,
                               tcfg.eval_batch_size, False)

    pruned_path = out / "pruned.pt"
    key = {"settings": settings.to_json(), "teacher": teacher_digest, "data_free": cfg.data_free}
    if cfg.step_epochs:
        key["step_epochs"] = cfg.step_epochs
        key["step_recovery"] = cfg.recovery
    report = None
    if pruned_path.is_file() and tcfg.resume:
        old = load_checkpoint(pruned_path)
        if old.meta.get("prune", {}).get("key") == key:
            say(f"reusing {pruned_path} (same settings)")
            report = _report_from_json(old.meta["prune"]["report"], settings)
            pruned_acc = old.meta["accuracy"]
    if report is None:
        if tcfg.resume and cfg.recovery != "none" and (out / "last.pt").is_file():
            raise PruneError(f"{out} holds the recovery of another pruning (other settings or teacher); use another "
                             "-o RUN_DIR, or --no-resume to start over in this one")
        net = copy.deepcopy(teacher)  # pruned in place; the teacher stays as it is
        x0 = normalize(torch.as_tensor(splits.train.images[:64]), torch.tensor(mean), torch.tensor(std)).to(device)
        y0 = torch.as_tensor(splits.train.labels[:64]).to(device)

        def grad_batch(n) -> None:
            n.train()
            sum(torch.nn.functional.cross_entropy(z, y0) for z in n.forward_exits(x0)).backward()
            n.eval()

        meta = dict(ck.meta)
        meta.pop("versions", None)
        meta["model"] = ModelConfig(**{**asdict(mcfg), "pruned": True}).to_json()
        meta["method"] = {"name": "pruned", "from": str(cfg.checkpoint)}

        def recover_between(n, k: int) -> None:
            """Fine-tune the partly pruned ``n`` for ``step_epochs`` epochs (RUN_DIR/steps/K), weights back into ``n``."""
            folder = out / "steps" / str(k)
            folder.mkdir(parents=True, exist_ok=True)
            save_checkpoint(folder / "pruned.pt", {**meta, "accuracy": {}}, n.state_dict())
            say(f"step {k}/{settings.steps}: recovering for {cfg.step_epochs} epoch(s) in {folder}")
            sub = replace(_recovery_config(tcfg, cfg, spec, folder, folder / "pruned.pt", cfg.step_epochs),
                          milestones=None, warmup_epochs=0.0, stop_after=None, verbose=False)
            best_k = load_checkpoint(train(sub, splits=splits).best_checkpoint)
            n.load_state_dict(best_k.state_dict)

        say(f"pruning {mcfg.backbone} to {_target_text(settings)} of its MACs ({settings.importance} importance, "
            f"{settings.steps} step{'s' if settings.steps > 1 else ''}"
            f"{f', {cfg.step_epochs} recovery epoch(s) between steps' if cfg.step_epochs else ''})")
        report = prune_network(net, settings, x0, grad_batch=grad_batch,
                               between_steps=recover_between if cfg.step_epochs else None)
        pruned_acc = {"val": accuracy(net, "val"), "test": accuracy(net, "test")}
        meta["accuracy"] = pruned_acc
        meta["prune"] = {"key": key, "report": report.to_json()}
        save_checkpoint(pruned_path, meta, net.state_dict())
    say("\n" + report.table())
    if report.warning:
        say(f"note: {report.warning}")

    accuracy_table = {"teacher": ck.meta.get("accuracy") or {}, "pruned": pruned_acc}
    best = None
    if cfg.recovery != "none":
        tcfg = _recovery_config(tcfg, cfg, spec, out, pruned_path, tcfg.epochs)
        say(f"recovery: {tcfg.method} for {tcfg.epochs} epochs"
            + (f" from the teacher {cfg.checkpoint}" if tcfg.teacher else " on the labels")
            + (" on synthetic images" if cfg.data_free else ""))
        result = train(tcfg, splits=splits)  # the splits loaded above (the checkpoint's hold-out) or synthetic
        best = result.best_checkpoint
        accuracy_table["recovered"] = result.metrics
    from ..common.jsonio import write_json_atomic

    record = {"checkpoint": str(cfg.checkpoint), "pruned_checkpoint": str(pruned_path), "best_checkpoint": best,
              "recovery": cfg.recovery, "data_free": cfg.data_free, "report": report.to_json(),
              "accuracy_note": ("pruned/recovered 'val' is the synthetic hold-out, judged by the teacher's labels; "
                                "no real image was read" if cfg.data_free else "the checkpoint's own hold-out and test split"),
              "accuracy": accuracy_table,
              "synth": asdict(cfg.synth) if cfg.data_free else None}
    results = out / "prune.json"
    write_json_atomic(results, record, indent=1)
    res = PruneResult(str(pruned_path), best, report, accuracy_table, str(results))
    say(f"results: {results}")
    return res


def _recovery_config(tcfg: Any, cfg: PruneConfig, spec: Any, output: Path, init_from: Path, epochs: int) -> Any:
    """The trainer's config of a recovery run: ``init_from`` fine-tuned for ``epochs`` in ``output``."""
    sub = replace(tcfg, output=str(output), init_from=str(init_from), epochs=epochs,
                  method=RECOVERY_METHOD[cfg.recovery], teacher=str(cfg.checkpoint) if cfg.recovery == "distill" else None)
    if spec is not None:
        sub = replace(sub, dataset=spec.dataset, val_size=spec.val_size, seed=spec.seed, limit=spec.limit)
    return sub


def _target_text(s: PruneSettings) -> str:
    if s.section_macs is not None:
        return "per section " + "/".join(f"{f:.0%}" for f in s.section_macs)
    return f"{s.target_macs:.0%}"


def _report_from_json(d: dict, settings: PruneSettings) -> PruneReport:
    from .macs import ExitCost

    return PruneReport(settings, d["ratios"], [ExitCost.from_json(r) for r in d["exits_before"]],
                       [ExitCost.from_json(r) for r in d["exits_after"]],
                       d.get("section_channels_before", []), d.get("section_channels_after", []))


__all__ = ["PruneConfig", "PruneResult", "prune", "RECOVERIES", "SdedgeError"]
