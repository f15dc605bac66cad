"""``train(cfg) -> TrainResult``: the whole training run behind ``sdedge train``.

Run folder (``cfg.output``)::

    best.pt        the model selected on the validation split (never on test); what `sdedge export` takes
    last.pt        the latest epoch, plus ``train_state`` (optimizer, epoch, best score, history, RNG) for resume
    results.json   per-exit + ensemble top-1 on val and test of best.pt (and of last.pt), and the history

Model selection (``cfg.select``): ``mean`` of the exits' validation accuracies (the anytime
criterion: every exit matters), ``deepest``, or ``ensemble``; ``auto`` is ``mean``, except for
``plain``'s backbone epochs, where only the deepest exit is trained and so ``deepest`` is used.

``plain --train-heads-after N``: after the ``epochs`` backbone epochs, the backbone (every section
and the final classifier, batch-norm statistics included) is frozen and the shallow exit heads are
trained with CE for N more epochs (fresh SGD, cosine from ``lr`` to 0), starting from the last
backbone epoch's weights. Selection restarts with those epochs (the shallow exits are untrained
before them). Without it, ``plain``'s shallow exits stay at their random initialisation.

Resume: with ``cfg.resume`` (default) and a ``last.pt`` in the run folder written by the same
configuration (see :data:`~sdedge.train.config.RUN_ONLY_FIELDS` for what may differ), training
continues with the next epoch; a finished run only re-does the final evaluation.

Weight averaging (``cfg.ema_decay`` > 0): torch's ``AveragedModel`` keeps an exponential moving average
of the parameters, updated after every optimiser step; before each evaluation its batch-norm statistics
are recomputed (torch's ``update_bn``) on up to :data:`EMA_BN_IMAGES` unaugmented training images. The
average is what is validated, selected, tested and saved (``best.pt`` and ``last.pt`` hold its
weights); the live weights that training continues from travel in ``last.pt``'s ``train_state``.
``plain``'s heads phase starts a fresh average.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from ..checkpoint import load_checkpoint, save_checkpoint
from ..losses import Component, build_method_loss, get_method
from ..models import ModelConfig, build_model
from ..common.jsonio import write_json_atomic
from ..common.errors import CheckpointError
from . import ddp
from .config import TrainConfig, TrainConfigError, TrainResult, default_channels_last
from .evaluate import as_tensor, evaluate_arrays, format_table, normalized_batches
from .loop import EpochInputs, TrainForward, run_epoch
from .schedule import StepSchedule, lr_at, onecycle, steps_per_epoch

#: training images (a seeded sample, the same on every process) whose pass recomputes the EMA's BN statistics
EMA_BN_IMAGES = 10_000


def train(cfg: TrainConfig, splits=None) -> TrainResult:
    """Train (or resume) the run described by ``cfg``; see the module docstring.

    ``splits`` (a :class:`~sdedge.data.DataSplits`) replaces the dataset ``cfg`` names: the data-free
    recovery of ``sdedge prune --data-free`` trains on images synthesised from the teacher this way.
    """
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    dist = ddp.setup(cfg.device)
    try:
        return _Run(cfg, dist, splits).run()
    finally:
        ddp.cleanup(dist)


def _check_fits_data(what: str, cfg: ModelConfig, num_classes: int, in_channels: int,
                     image_size: tuple[int, int]) -> None:
    """Refuse a checkpoint's network (a teacher, an ``init_from``) whose classes or input differ from the data's."""
    if cfg.num_classes != num_classes:
        raise TrainConfigError(f"{what} has {cfg.num_classes} classes, the data {num_classes}")
    if (cfg.in_channels, tuple(cfg.image_size)) != (in_channels, tuple(image_size)):
        raise TrainConfigError(f"{what} takes {cfg.in_channels}x{tuple(cfg.image_size)} inputs, "
                               f"the data are {in_channels}x{tuple(image_size)}")


class _Run:
    def __init__(self, cfg: TrainConfig, dist: ddp.DistInfo, splits=None) -> None:
        self.dev = dist.device
        if cfg.channels_last is None:
            cfg = replace(cfg, channels_last=default_channels_last(self.dev))
        self.cfg = cfg
        self.given_splits = splits
        self.dist = dist
        self.out = Path(cfg.output)
        self.best_path = self.out / "best.pt"
        self.last_path = self.out / "last.pt"

    # ---------------------------------------------------------------- set-up
    def log(self, msg: str) -> None:
        if self.dist.is_main and self.cfg.verbose:
            print(msg, flush=True)

    def _load_data(self):
        from ..data import load_splits

        cfg = self.cfg
        if self.given_splits is not None:
            return self.given_splits
        if self.dist.enabled and cfg.download and not self.dist.is_main:
            ddp.barrier(self.dist)  # let rank 0 download first
        splits = load_splits(cfg.dataset, cfg.data, cfg.val_size, cfg.seed, cfg.download, cfg.limit)
        if self.dist.enabled and cfg.download and self.dist.is_main:
            ddp.barrier(self.dist)
        return splits

    def _load_teacher(self, model_cfg: ModelConfig):
        from ..checkpoint import model_from_checkpoint

        cfg = self.cfg
        ck = load_checkpoint(cfg.teacher)
        teacher = model_from_checkpoint(ck)
        tcfg = ModelConfig.from_json(ck.meta["model"])
        _check_fits_data(f"teacher {cfg.teacher}", tcfg, model_cfg.num_classes, model_cfg.in_channels,
                         model_cfg.image_size)
        if get_method(cfg.method).same_architecture_teacher and (
                (tcfg.backbone, tcfg.backbone_kwargs, tcfg.head, tcfg.head_kwargs)
                != (model_cfg.backbone, model_cfg.backbone_kwargs, model_cfg.head, model_cfg.head_kwargs)):
            raise TrainConfigError(f"tfkd-self needs a trained copy of the same network as teacher, but {cfg.teacher} is "
                                   f"{tcfg.backbone} {tcfg.backbone_kwargs} (head {tcfg.head}) and the student "
                                   f"{model_cfg.backbone} {model_cfg.backbone_kwargs} (head {model_cfg.head}); "
                                   "use --method kd for a different teacher")
        teacher.requires_grad_(False).eval().to(self.dev)
        if self.cfg.channels_last:
            teacher.to(memory_format=torch.channels_last)
        return teacher, ck

    def _init_from(self, s):
        """The model config and the network (with its weights) of ``cfg.init_from``, checked against the data."""
        from ..checkpoint import model_from_checkpoint

        ck = load_checkpoint(self.cfg.init_from)
        model_cfg = ModelConfig.from_json(ck.meta["model"])
        _check_fits_data(f"--init-from {self.cfg.init_from}", model_cfg, s.num_classes, s.in_channels, s.image_size)
        return model_cfg, model_from_checkpoint(ck)

    def _amp_dtype(self) -> torch.dtype | None:
        amp = self.cfg.amp
        if amp is None:
            amp = self.dev.type == "cuda"
        if not amp:
            return None
        if self.dev.type != "cuda":
            self.log("note: AMP applies to CUDA only; training in float32 on the CPU")
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    # ---------------------------------------------------------------- phases
    def _setup_phase(self, phase: str) -> None:
        cfg, net = self.cfg, self.net
        k = net.num_exits
        if phase == "main":
            self.loss_fn = self.main_loss
            deepest_only = self.main_loss.exits_used == [k - 1]
            net.requires_grad_(True)
            if deepest_only:
                for e in net.exits[:-1]:
                    e.requires_grad_(False)
            params = [p for p in net.parameters() if p.requires_grad] + list(self.main_loss.parameters())
            milestones = cfg.resolved_milestones()
            if cfg.schedule == "onecycle":
                pct = cfg.warmup_epochs / cfg.epochs if cfg.warmup_epochs > 0 else 0.3
                self.schedule = onecycle(cfg.lr, cfg.epochs, self.steps, pct, cfg.min_momentum, cfg.momentum)
            else:
                self.schedule = StepSchedule(lambda prog: lr_at(prog, cfg.lr, cfg.epochs, cfg.schedule, milestones,
                                                                cfg.gamma, cfg.warmup_epochs))
            step_module = TrainForward(net, deepest_only)
            self.frozen_sections = False
            self.select = cfg.select if cfg.select != "auto" else ("deepest" if deepest_only else "mean")
        else:  # "heads": plain's shallow exits on the frozen backbone
            self.loss_fn = build_method_loss("plain", {}, k, net.num_classes, net.preact_channels,
                                             components=[Component("ce", 1.0, "ce", {"exits": "shallow"})]).to(self.dev)
            net.requires_grad_(False)
            for e in net.exits[:-1]:
                e.requires_grad_(True)
            params = [p for p in net.parameters() if p.requires_grad]
            e0, n = cfg.epochs, cfg.train_heads_after
            self.schedule = StepSchedule(lambda prog: lr_at(prog - e0, cfg.lr, n, "cosine", []))
            step_module = TrainForward(net, False)
            self.frozen_sections = True
            self.select = cfg.select if cfg.select != "auto" else "mean"
        self.phase = phase
        self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                         nesterov=cfg.nesterov and cfg.momentum > 0)
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            step_module = DistributedDataParallel(step_module, device_ids=[self.dev.index] if self.dev.type == "cuda" else None)
        self.step_module = step_module

    def _phase_of(self, epoch: int) -> str:
        return "main" if epoch < self.cfg.epochs else "heads"

    # ---------------------------------------------------------------- weight averaging
    def _new_ema(self) -> None:
        """Start (or restart, for plain's heads phase) the weights' EMA; it is the network evaluated and saved."""
        if not self.cfg.ema_decay:
            self.ema, self.eval_net = None, self.net
            return
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        self.ema = AveragedModel(self.net, multi_avg_fn=get_ema_multi_avg_fn(self.cfg.ema_decay), use_buffers=False)
        self.eval_net = self.ema.module

    def _refresh_ema_bn(self) -> None:
        """Recompute the EMA network's batch-norm statistics on unaugmented training images (torch's update_bn)."""
        if self.ema is None:
            return
        from torch.optim.swa_utils import update_bn

        x = self.inputs.images
        n = int(x.shape[0])
        if n > EMA_BN_IMAGES:
            pick = torch.randperm(n, generator=torch.Generator().manual_seed(self.cfg.seed))[:EMA_BN_IMAGES]
            x = x.index_select(0, pick.to(x.device))
        if x.shape[0] > 1 and x.shape[0] % self.cfg.eval_batch_size == 1:
            x = x[:-1]  # no one-image last batch: batch norm cannot take batch statistics of one 1x1 feature
        batches = (b for _, b in normalized_batches(x, self.splits.mean, self.splits.std, self.dev,
                                                      self.cfg.eval_batch_size, self.cfg.channels_last))
        update_bn(batches, self.eval_net)

    # ---------------------------------------------------------------- checkpoints
    def _meta(self, accuracy: dict, epochs_done: int) -> dict:
        from ..data import checkpoint_data

        cfg, s = self.cfg, self.splits
        method = {"name": cfg.method, **self.params}
        if cfg.method == "plain":
            method["train_heads_after"] = cfg.train_heads_after
        return {
            "model": self.model_cfg.to_json(),
            # the run's DataSpec (dataset, hold-out size used, seed, limit, geometry) + preprocess; export
            # copies the spec into the manifest and calibration rebuilds the same validation split from it
            "data": checkpoint_data(s),
            "classes": list(s.classes),
            "method": method,
            "hparams": asdict(cfg),
            "accuracy": accuracy,
            "epoch": epochs_done,
            "best_epoch": self.best_epoch,
            "selection": self.select,
        }

    def _train_state(self, epochs_done: int) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if self.dev.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.dev)
        ema = None if self.ema is None else {"live": self.net.state_dict(), "n_averaged": int(self.ema.n_averaged)}
        return {"epochs_done": epochs_done, "phase": self.phase, "optimizer": self.optimizer.state_dict(), "ema": ema,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "loss": self.main_loss.state_dict(), "best_score": self.best_score, "best_epoch": self.best_epoch,
                "history": self.history, "rng": rng,
                "scheduler": {"kind": self.cfg.schedule, "milestones": self.cfg.resolved_milestones(),
                              "lr": self.history[-1]["lr"] if self.history else self.cfg.lr}}

    def _save(self, path: Path, accuracy: dict, epochs_done: int, with_state: bool,
              state_dict: dict | None = None) -> None:
        if not self.dist.is_main:
            return
        save_checkpoint(path, self._meta(accuracy, epochs_done), state_dict or self.eval_net.state_dict(),
                        self._train_state(epochs_done) if with_state else None)

    def _try_resume(self) -> int:
        cfg = self.cfg
        if not (cfg.resume and self.last_path.is_file()):
            return 0
        ck = load_checkpoint(self.last_path)
        ts = ck.train_state
        if not isinstance(ts, dict) or "epochs_done" not in ts:
            raise CheckpointError(f"{self.last_path} has no training state to resume from; "
                                  "use another --output folder or --no-resume")
        old = TrainConfig.from_dict(ck.meta.get("hparams", {}))
        a = json.loads(json.dumps(old.identity()))
        b = json.loads(json.dumps(cfg.identity()))
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if diff:
            shown = ", ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in diff[:6])
            raise TrainConfigError(f"{self.last_path} belongs to a run with another configuration ({shown}); "
                                   "use a new --output folder, or --no-resume to start over in this one")
        done = int(ts["epochs_done"])
        if self.ema is not None:  # the checkpoint's weights are the average; the live ones travel in train_state
            if not isinstance(ts.get("ema"), dict):
                raise CheckpointError(f"{self.last_path} has no EMA state; use another --output folder or --no-resume")
            self.net.load_state_dict(ts["ema"]["live"])
            if done < cfg.total_epochs() and ts.get("phase") != self._phase_of(done):
                self._new_ema()  # resuming exactly where plain's heads phase starts: a fresh average
            else:
                self.eval_net.load_state_dict(ck.state_dict)
                self.ema.n_averaged.fill_(int(ts["ema"]["n_averaged"]))
        else:
            self.net.load_state_dict(ck.state_dict)
        self.history = list(ts.get("history") or [])
        self.best_score = ts.get("best_score")
        self.best_epoch = int(ts.get("best_epoch") or 0)
        self.main_loss.load_state_dict(ts["loss"])
        if done < cfg.total_epochs():
            self._setup_phase(self._phase_of(done))
            if ts.get("phase") == self.phase:
                self.optimizer.load_state_dict(ts["optimizer"])
                if self.scaler is not None and ts.get("scaler"):
                    self.scaler.load_state_dict(ts["scaler"])
            else:
                self.best_score = None  # a new phase starts its own selection
        rng = ts.get("rng") or {}
        if isinstance(rng.get("torch"), torch.Tensor):
            torch.set_rng_state(rng["torch"])
        if self.dev.type == "cuda" and isinstance(rng.get("cuda"), torch.Tensor):
            torch.cuda.set_rng_state(rng["cuda"], self.dev)
        self.log(f"resuming {self.out} after epoch {done}/{cfg.total_epochs()}")
        return done

    # ---------------------------------------------------------------- the run
    def _score(self, val: dict | None) -> float | None:
        if val is None:
            return None
        return {"mean": float(np.mean(val["exits"])), "deepest": val["exits"][-1], "ensemble": val["ensemble"]}[self.select]

    def _evaluate(self, split: str) -> dict | None:
        arr = self.eval_data[split]
        if arr[0].shape[0] == 0:
            return None
        return evaluate_arrays(self.eval_net, arr[0], arr[1], self.splits.mean, self.splits.std, self.dev,
                               self.cfg.eval_batch_size, self.cfg.channels_last, self.amp_dtype, self.dist)

    def run(self) -> TrainResult:
        cfg, dist = self.cfg, self.dist
        t_start = time.perf_counter()
        self.splits = s = self._load_data()
        torch.manual_seed(cfg.seed)
        if cfg.init_from:
            self.model_cfg, net = self._init_from(s)
            self.net = net = net.to(self.dev)
        else:
            self.model_cfg = ModelConfig(cfg.backbone, s.num_classes, s.in_channels, s.image_size, cfg.head,
                                         dict(cfg.backbone_kwargs), dict(cfg.head_kwargs))
            try:
                self.net = net = build_model(self.model_cfg).to(self.dev)
            except (TypeError, ValueError) as e:
                raise TrainConfigError(f"cannot build {cfg.backbone} with {cfg.backbone_kwargs} / head {cfg.head} "
                                       f"{cfg.head_kwargs}: {e}") from None
        if cfg.channels_last:
            net.to(memory_format=torch.channels_last)
        self.params = cfg.method_params()
        teacher = None
        t_channels = None
        if cfg.teacher:
            teacher, _ = self._load_teacher(self.model_cfg)
            t_channels = teacher.preact_channels
        self.main_loss = build_method_loss(cfg.method, self.params, net.num_exits, s.num_classes,
                                           net.preact_channels, t_channels).to(self.dev)
        if cfg.channels_last:
            self.main_loss.to(memory_format=torch.channels_last)
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        if self.dev.type == "cuda":
            torch.backends.cudnn.benchmark = True

        from ..data.augment import AugmentConfig, BatchAugment

        aug = BatchAugment(AugmentConfig(cfg.crop_padding, s.hflip if cfg.hflip is None else cfg.hflip,
                                         cfg.cutout, cfg.autoaugment, cfg.random_erasing), s.image_size, s.mean,
                           s.std)
        data_dev = self.dev if self.dev.type == "cuda" else torch.device("cpu")
        train_x = as_tensor(s.train.images).to(data_dev)
        train_y = as_tensor(s.train.labels).to(data_dev)
        self.eval_data = {name: (as_tensor(a.images), as_tensor(a.labels))
                          for name, a in (("val", s.val), ("test", s.test))}
        per_proc = max(2, -(-cfg.batch_size // dist.world))
        self.inputs = inputs = EpochInputs(train_x, train_y, aug, per_proc, self.dev, cfg.channels_last,
                                           self.amp_dtype)
        self.steps = steps_per_epoch(int(train_y.shape[0]), per_proc, dist.world)
        self._new_ema()

        self.history: list[dict] = []
        self.best_score: float | None = None
        self.best_epoch = 0
        self.phase = "main"
        start = self._try_resume()
        if start < cfg.total_epochs() and not hasattr(self, "optimizer"):
            self._setup_phase(self._phase_of(start))
        elif not hasattr(self, "optimizer"):
            self._setup_phase(self._phase_of(cfg.total_epochs() - 1))

        n_params = sum(p.numel() for p in net.parameters())
        self.log(f"sdedge train: {cfg.method} on {s.name} ({len(s.train)} train / {len(s.val)} val / {len(s.test)} "
                 f"test, {s.in_channels}x{s.image_size[0]}x{s.image_size[1]}, {s.num_classes} classes); "
                 f"{self.model_cfg.backbone} {self.model_cfg.backbone_kwargs or ''}"
                 f"{' (pruned)' if self.model_cfg.pruned else ''} with {net.num_exits} exits, {n_params / 1e6:.2f} M params; "
                 f"device {self.dev}{f' x{dist.world} processes' if dist.enabled else ''}, "
                 f"{'AMP ' + str(self.amp_dtype).replace('torch.', '') if self.amp_dtype else 'fp32'}, "
                 f"{'channels_last' if cfg.channels_last else 'NCHW'}; augment: {aug.describe()}; "
                 f"method params {self.params or '{}'}")

        ran = 0
        completed = True
        for epoch in range(start, cfg.total_epochs()):
            if cfg.stop_after is not None and ran >= cfg.stop_after:
                completed = False
                break
            phase = self._phase_of(epoch)
            if phase != self.phase:
                self._setup_phase(phase)
                self._new_ema()
                self.best_score = None
                self.log(f"training the {net.num_exits - 1} shallow exit heads on the frozen backbone "
                         f"for {cfg.train_heads_after} epochs")
            desc = f"epoch {epoch + 1}/{cfg.total_epochs()}" if (cfg.progress and dist.is_main) else None
            st = run_epoch(self.step_module, self.loss_fn, self.optimizer, self.scaler, inputs, epoch, cfg.seed, dist,
                           self.schedule, teacher if self.phase == "main" else None, desc, self.frozen_sections,
                           self.ema)
            self._refresh_ema_bn()
            val = self._evaluate("val")
            score = self._score(val)
            is_best = score is None or self.best_score is None or score > self.best_score
            if is_best:
                self.best_score, self.best_epoch = score, epoch + 1
            entry = {"epoch": epoch + 1, "phase": self.phase, "lr": st.lr, "loss": st.loss, "parts": st.parts,
                     "train_acc": st.train_acc, "val": val, "score": score, "select": self.select,
                     "images": st.images, "seconds": round(st.seconds, 3), "images_per_s": round(st.images / max(st.seconds, 1e-9), 1)}
            self.history.append(entry)
            if is_best:
                self._save(self.best_path, {"val": val, "test": None}, epoch + 1, with_state=False)
            self._save(self.last_path, {"val": val, "test": None}, epoch + 1, with_state=True)
            ddp.barrier(dist)
            ran += 1
            self.log(self._epoch_line(entry, is_best))

        done = self.history[-1]["epoch"] if self.history else start
        if not completed:
            self.log(f"stopped after {ran} epoch(s) as asked (--stop-after); {done}/{cfg.total_epochs()} done, "
                     f"run again with the same options to continue")
            return TrainResult(str(self.best_path), str(self.last_path), {}, self.history, self.best_epoch,
                               self.select, done, completed=False)
        return self._finish(t_start)

    def _epoch_line(self, e: dict, is_best: bool) -> str:
        acc = "/".join("-" if a is None else f"{a:.3f}" for a in e["train_acc"])
        val = ("/".join(f"{a:.3f}" for a in e["val"]["exits"]) + f" ens {e['val']['ensemble']:.3f}") if e["val"] else "-"
        return (f"epoch {e['epoch']:>3}/{self.cfg.total_epochs()} {e['phase'] if e['phase'] != 'main' else ''}"
                f" loss {e['loss']:.4f}  train {acc}  val {val}  lr {e['lr']:.4g}  {e['seconds']:.1f}s "
                f"({e['images_per_s']:.0f} img/s){'  *best' if is_best else ''}")

    def _finish(self, t_start: float) -> TrainResult:
        cfg = self.cfg
        total = cfg.total_epochs()
        last_val = self.history[-1]["val"] if self.history else self._evaluate("val")
        last_acc = {"val": last_val, "test": self._evaluate("test")}
        last_sd = {k: v.detach().clone() for k, v in self.eval_net.state_dict().items()}
        last_epoch = self.history[-1]["epoch"] if self.history else total
        if self.best_epoch and self.best_epoch != last_epoch and self.best_path.is_file():
            best = load_checkpoint(self.best_path)
            self.eval_net.load_state_dict(best.state_dict)
            best_val = next((h["val"] for h in self.history if h["epoch"] == self.best_epoch), None)
            best_acc = {"val": best_val if best_val is not None else self._evaluate("val"), "test": self._evaluate("test")}
            best_sd = None
        else:
            self.best_epoch = self.best_epoch or last_epoch
            best_acc, best_sd = last_acc, last_sd
        self._save(self.best_path, best_acc, self.best_epoch, with_state=False, state_dict=best_sd)
        self.eval_net.load_state_dict(last_sd)
        self._save(self.last_path, last_acc, total, with_state=True)
        results = {
            "best_checkpoint": str(self.best_path), "last_checkpoint": str(self.last_path),
            "best_epoch": self.best_epoch, "selection": self.select, "epochs": total,
            "method": {"name": cfg.method, **self.params}, "accuracy": best_acc, "last_accuracy": last_acc,
            "history": self.history, "config": asdict(cfg),
            "train_seconds": round(sum(h["seconds"] for h in self.history), 3),
        }
        path = self.out / "results.json"
        if self.dist.is_main:
            write_json_atomic(path, results, indent=1)
        ddp.barrier(self.dist)
        self.log(format_table(best_acc, f"\n{self.best_path} (epoch {self.best_epoch}, selected on validation "
                                        f"{self.select} accuracy): top-1"))
        self.log(f"results: {path}")
        return TrainResult(str(self.best_path), str(self.last_path), best_acc, self.history, self.best_epoch,
                           self.select, total, True, str(path))

