"""``sdedge train``: train a multi-exit CNN with one of the methods (BYOT by default) and its baselines.

Every option maps onto a field of :class:`sdedge.train.TrainConfig`; robot code can call
``sdedge.train.train(TrainConfig(...))`` directly. Under ``torchrun`` the same command trains with DDP.
"""
from __future__ import annotations

import argparse
import json
from typing import Any
from .argtypes import non_negative_int, positive_int, thread_count

METHOD_HELP = """methods (loss terms; weights are the flags below):
  plain       CE on the deepest exit only (baseline); --train-heads-after N then trains the
              shallow exit heads for N epochs on the frozen backbone
  dsn         CE on every exit (deep supervision)
  byot        Be Your Own Teacher (default): deepest exit CE; shallow exits (1-alpha)*CE +
              alpha*T^2*KL(deepest || exit, T) + hint-weight * L2(exit feature, deepest feature)
              defaults alpha 0.3, T 3, hint-weight 0.03 (the authors' code; see sdedge.losses.methods)
  kd          Hinton KD from --teacher: every exit (1-alpha)*CE + alpha*T^2*KL   (alpha 0.9, T 4)
  tfkd-self   as kd, the teacher being a trained copy of the same network       (alpha 0.9, T 4)
  tfkd-reg    virtual teacher (correct class prob --correct-prob, rest uniform) (alpha 0.1, T 20, a 0.9)
  feature-kd  CE + feature-weight * partial-L2 on pre-ReLU features from --teacher (weight 1)
  logit-l2    (1-alpha)*CE + alpha*L2(logits, teacher logits), Ba & Caruana     (alpha 0.5)
  distill     pruning recovery from --teacher with as many exits: every exit (1-alpha)*CE + alpha/3 *
              (KL to the teacher's same exit + KL to its deepest + KL to own deepest) + hint + partial-L2

examples:
  sdedge train --dataset fashion-mnist --data ~/data/fashion-mnist --backbone resnet18 --width 16 \\
      --method byot --epochs 30 --schedule cosine --lr 0.1 -o runs/fmnist-byot
  sdedge train --dataset cifar100 --data ~/data --backbone resnet18 --method byot \\
      --epochs 200 --milestones 100 150 --batch-size 128 --lr 0.1 -o runs/c100-byot
  torchrun --nproc_per_node 4 -m sdedge.cli train --dataset cifar100 ... -o runs/c100-ddp
"""


def _kv(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    k, v = text.split("=", 1)
    try:
        return k.strip(), json.loads(v)
    except json.JSONDecodeError:
        return k.strip(), v


def _bool(text: str) -> bool:
    t = text.lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected on/off, got {text!r}")


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train", help="train a multi-exit CNN (byot, plain, dsn, kd, ...) and write best.pt / last.pt",
        description="Train a multi-exit CNN with self-distillation (BYOT) or a baseline method. Writes "
                    "RUN_DIR/best.pt (selected on the validation split), RUN_DIR/last.pt (resumable) and "
                    "RUN_DIR/results.json (per-exit and ensemble top-1 on validation and test).",
        epilog=METHOD_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--backbone", default="resnet18",
                   help="backbone name (resnet18/34/50/101/152, tiny, ...; see sdedge.models.list_backbones())")
    g.add_argument("--width", type=positive_int, default=None, help="backbone base width (resnet: 64 in the paper)")
    g.add_argument("--backbone-arg", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="extra backbone keyword (JSON value), repeatable")
    g.add_argument("--head", default="bottleneck", help="exit head kind: bottleneck (default; ResNet bottleneck blocks to the "
                        "deepest width and stride) | byot-authors (the BYOT authors' 1x1 -> kxk stride-k -> 1x1 "
                        "head) | byot-attention (attention mask + SepConvs, the TPAMI 2021 version) | linear")
    g.add_argument("--head-arg", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="exit head keyword (JSON value), repeatable, e.g. reduction=4")
    g = p.add_argument_group("method (weights default to the method's own; see below)")
    g.add_argument("--method", default="byot",
                   choices=["plain", "dsn", "byot", "kd", "tfkd-self", "tfkd-reg", "feature-kd", "logit-l2", "distill"],
                   help="training method (default byot)")
    g.add_argument("--teacher", default=None, metavar="CKPT",
                   help="teacher checkpoint for kd, tfkd-self, feature-kd, logit-l2, distill (loaded with weights_only)")
    g.add_argument("--init-from", default=None, metavar="CKPT",
                   help="start from this checkpoint's network and weights (e.g. a pruned one; the model "
                        "options above are then ignored)")
    g.add_argument("--train-heads-after", type=int, default=0, metavar="N",
                   help="plain only: then train the shallow exit heads for N epochs on the frozen backbone")
    add_weight_arguments(g)
    add_trainer_arguments(p)
    return p


def config_from_args(args: argparse.Namespace):
    """The :class:`~sdedge.train.TrainConfig` of parsed options; options a command does not define
    (``sdedge prune`` has no model or method options) keep the config's defaults."""
    from dataclasses import fields

    from ..train import TrainConfig

    opts = vars(args)
    names = {f.name for f in fields(TrainConfig)}
    kw = {k: v for k, v in opts.items() if k in names}
    if "backbone_arg" in opts:
        kw["backbone_kwargs"] = dict(opts["backbone_arg"])
        if opts.get("width") is not None:
            kw["backbone_kwargs"]["width"] = opts["width"]
    if "head_arg" in opts:
        kw["head_kwargs"] = dict(opts["head_arg"])
    kw["progress"] = opts.get("progress", True) and not opts.get("quiet", False)
    kw["verbose"] = not opts.get("quiet", False)
    return TrainConfig(**kw)


def run(args: argparse.Namespace) -> int:
    from ..train import train

    import os

    result = train(config_from_args(args))
    if args.json and os.environ.get("RANK", "0") == "0":
        print(json.dumps({"best_checkpoint": result.best_checkpoint, "best_epoch": result.best_epoch,
                          "completed": result.completed, "accuracy": result.metrics}, indent=1))
    return 0


def add_trainer_arguments(p: argparse.ArgumentParser, epochs: int = 200, lr: float = 0.1,
                          schedule: str = "multistep") -> None:
    """The data, optimisation, augmentation and run options (shared with ``sdedge prune``'s recovery)."""
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="fashion-mnist",
                   help="fashion-mnist | cifar100 | cifar10 | digits (built in, no download) (default fashion-mnist)")
    g.add_argument("--data", default=None, metavar="DIR",
                   help="dataset folder (Fashion-MNIST IDX files; the folder holding cifar-100-python/ or "
                        "cifar-10-batches-py/); default: $SDEDGE_DATA, then /usr/share/datasets/fashion-mnist")
    g.add_argument("--download", action="store_true",
                   help="CIFAR only: download with torchvision into --data (or ~/.cache/sdedge) if missing")
    g.add_argument("--val-size", type=int, default=None,
                   help="training images held out for validation / model selection (default 5000; 200 for digits)")
    g.add_argument("--limit", type=int, default=None, help="use only the first N training and test images (quick runs)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, default=epochs, help=f"training epochs (default {epochs})")
    g.add_argument("--batch-size", type=int, default=128, help="global batch size (split across processes; default 128)")
    g.add_argument("--lr", type=float, default=lr, help=f"initial learning rate of SGD (default {lr})")
    g.add_argument("--momentum", type=float, default=0.9,
                   help="SGD momentum (default 0.9; onecycle: the momentum at the cycle's ends)")
    g.add_argument("--min-momentum", type=float, default=0.85,
                   help="onecycle: the momentum at the peak rate, cycled inversely to it (default 0.85; "
                        "= --momentum: no cycling)")
    g.add_argument("--nesterov", action="store_true", help="Nesterov momentum")
    g.add_argument("--weight-decay", "--wd", type=float, default=5e-4, help="weight decay (default 5e-4)")
    g.add_argument("--schedule", choices=["multistep", "cosine", "onecycle"], default=schedule,
                   help=f"LR schedule, updated every step (default {schedule}); onecycle is torch's OneCycleLR: "
                        "the rate rises from lr/25 to lr, then anneals to lr/25e4, momentum cycling inversely")
    g.add_argument("--milestones", type=int, nargs="+", default=None,
                   help="multistep: epochs where the LR is multiplied by --gamma (default epochs/2, 3*epochs/4)")
    g.add_argument("--gamma", type=float, default=0.1, help="multistep LR factor (default 0.1)")
    g.add_argument("--warmup-epochs", type=float, default=0.0,
                   help="linear LR warm-up (epochs, may be fractional); onecycle: the rising part "
                        "(default 0: 30%% of the epochs)")
    g.add_argument("--ema", dest="ema_decay", type=float, default=0.0, metavar="DECAY",
                   help="evaluate, select and save an exponential moving average of the weights with this "
                        "decay per step (torch's AveragedModel, BN statistics recomputed; 0 = off, 0.999 is usual)")
    g = p.add_argument_group("augmentation (on whole batches)")
    g.add_argument("--crop-padding", type=non_negative_int, default=None,
                   help="random-crop zero padding in pixels (default 4 at 32x32, scaled with image size; 0 = off)")
    g.add_argument("--hflip", type=_bool, default=None, metavar="on|off",
                   help="random horizontal flip (default: on where the dataset allows it; off for digits)")
    g.add_argument("--cutout", type=non_negative_int, default=0, metavar="PX", help="Cutout square side in pixels (0 = off; 16 for CIFAR)")
    g.add_argument("--autoaugment", action="store_true", help="AutoAugment (CIFAR-10 policy, per image)")
    g.add_argument("--random-erasing", type=float, default=0.0, metavar="P",
                   help="torchvision's RandomErasing with probability P per image (0 = off; 0.5 is common)")
    g = p.add_argument_group("run")
    g.add_argument("-o", "--output", required=True, metavar="RUN_DIR", help="run folder (best.pt, last.pt, results.json)")
    g.add_argument("--seed", type=int, default=0, help="seed of initialisation, validation split, shuffling (default 0)")
    g.add_argument("--select", choices=["auto", "mean", "deepest", "ensemble"], default="auto",
                   help="best.pt criterion on validation: mean of exits, deepest exit, or ensemble "
                        "(auto: mean; deepest for plain's backbone epochs)")
    g.add_argument("--device", default="auto", help="auto (cuda when present) | cpu | cuda | cuda:N")
    g.add_argument("--amp", type=_bool, default=None, metavar="on|off",
                   help="mixed precision on CUDA (bf16 where supported, else fp16 + GradScaler); default on for CUDA")
    g.add_argument("--channels-last", type=_bool, default=None, metavar="on|off",
                   help="channels_last memory format (default: on for CUDA and for CPUs with AVX-512; off on other "
                        "CPUs, where torch's oneDNN AVX2 kernels crashed with it)")
    g.add_argument("--threads", type=thread_count, default=None, help="torch CPU threads (default: torch's choice)")
    g.add_argument("--eval-batch-size", type=positive_int, default=512, help="batch size of the validation/test passes")
    g.add_argument("--no-resume", dest="resume", action="store_false",
                   help="start over even if RUN_DIR/last.pt exists (default: continue from it)")
    g.add_argument("--stop-after", type=int, default=None, metavar="N",
                   help="run at most N epochs now and exit (resume later with the same command)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    g.add_argument("--quiet", "-q", action="store_true", help="print only errors")
    g.add_argument("--json", action="store_true", help="print the final accuracy as JSON")


def add_weight_arguments(g: Any) -> None:
    """The method weight and temperature options."""
    g.add_argument("--alpha", type=float, default=None,
                   help="weight of the distillation term against CE (byot 0.3, kd/tfkd-self 0.9, tfkd-reg 0.1, logit-l2 0.5)")
    g.add_argument("--temperature", "-T", type=float, default=None,
                   help="softmax temperature of the KD terms (byot 3, kd/tfkd-self 4, tfkd-reg 20)")
    g.add_argument("--hint-weight", type=float, default=None,
                   help="byot: weight of the per-element L2 hint between each shallow exit's feature and the deepest (0.03)")
    g.add_argument("--feature-weight", type=float, default=None,
                   help="feature-kd: weight of the per-element partial-L2 feature loss (1; Heo et al.'s scale is about 8)")
    g.add_argument("--correct-prob", type=float, default=None,
                   help="tfkd-reg: the virtual teacher's probability of the correct class (0.9)")
    g.add_argument("--deepest-ce-weight", type=float, default=None,
                   help="byot: weight of the deepest exit's cross-entropy (1, the authors' code; DESIGN's "
                        "(1-alpha) is 0.7)")
    g.add_argument("--label-smoothing", type=float, default=None, metavar="EPS",
                   help="plain, dsn, byot: label smoothing of the cross-entropy targets (0); byot smooths only the "
                        "shallow exits' targets, never the deepest exit's (the teacher)")
