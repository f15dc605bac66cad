"""CPU accuracy preset: ``plain`` vs ``dsn`` vs ``byot`` on the real Fashion-MNIST, same network and budget.

    python benchmarks/train_accuracy_preset.py --data ../shared/data/fashion-mnist     # ~25 min on 2 cores
    python benchmarks/train_accuracy_preset.py --epochs 1 --limit 2000                # a 1-minute smoke run

Contract
--------
* Data: Fashion-MNIST, 55 000 training images, 5 000 held out (seed 0) for model selection, the
  official 10 000 test images for the figures (never used for selection). Augmentation: random crop
  (4 px padding) + horizontal flip.
* Network: CIFAR ResNet-18 (BYOT layout, 4 sections / 4 exits, BYOT bottleneck heads), base width 16,
  channels_last, float32 (also with ``--device cuda``: the preset's numbers, only faster), ``--threads``
  torch threads (default 2).
* Budget, identical for every method: ``--epochs`` epochs (default 8) of SGD (momentum 0.9, weight
  decay 5e-4, batch 128, lr 0.1, cosine to 0 per step), same seed, same data order. ``plain`` trains
  only the deepest exit (it never runs the shallow heads, so its epochs are the cheapest) and then
  its shallow heads for ``--heads-epochs`` (default 1) epoch on the frozen backbone, which is how a
  plain network gets exits; the wall-clock of every run is printed so the compute is visible.
* Method weights: each method's defaults (``byot``: alpha 0.3, T 3, hint 0.03).
* Selection: ``best.pt`` by mean validation accuracy over the exits (``plain``: deepest during its
  backbone epochs, then mean during its head epoch).
* Output: per-exit and ensemble (mean of the exits' softmax) top-1 on the test split, side by side,
  then ``byot`` minus each baseline; everything also in ``OUT/preset.json``. Runs resume if killed.

Measured throughput on a 2-core Xeon (``train_step_time.py --config preset``): about 1 100 img/s for
``plain`` and 900 for ``dsn``/``byot``, i.e. about 50-60 s per epoch: 3 x 8 epochs plus evaluation fit
in about 25 minutes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def find_fmnist(given: str | None) -> str:
    for cand in (given, os.environ.get("SDEDGE_DATA"), str(REPO.parent / "shared" / "data" / "fashion-mnist"),
                 "/usr/share/datasets/fashion-mnist"):
        if cand and (Path(cand) / "train-images-idx3-ubyte.gz").is_file():
            return cand
    sys.exit("Fashion-MNIST not found: pass --data DIR (the folder with train-images-idx3-ubyte.gz)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="Fashion-MNIST folder (default: SDEDGE_DATA, ../shared/data/...)")
    ap.add_argument("--out", default="runs/preset", help="folder for the three runs and preset.json")
    ap.add_argument("--methods", nargs="+", default=["plain", "dsn", "byot"])
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--heads-epochs", type=int, default=1, help="plain: epochs of head training on the frozen backbone")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="first N training/test images only (smoke runs)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fresh", action="store_true", help="start over instead of resuming earlier runs in --out")
    ap.add_argument("--progress", action="store_true", help="progress bars")
    args = ap.parse_args(argv)

    from sdedge.train import TrainConfig, format_table, train
    from sdedge.train.evaluate import format_deltas

    data = find_fmnist(args.data)
    out = Path(args.out)
    results = {}
    t_all = time.perf_counter()
    for m in args.methods:
        cfg = TrainConfig(dataset="fashion-mnist", data=data, limit=args.limit, backbone="resnet18",
                          backbone_kwargs={"width": args.width}, method=m, epochs=args.epochs,
                          train_heads_after=args.heads_epochs if m == "plain" else 0, batch_size=args.batch_size,
                          lr=args.lr, schedule="cosine", weight_decay=5e-4, seed=0, device=args.device, amp=False,
                          threads=args.threads, output=str(out / m), resume=not args.fresh, progress=args.progress,
                          verbose=True)
        print(f"\n=== {m} ===", flush=True)
        t0 = time.perf_counter()
        r = train(cfg)
        wall = time.perf_counter() - t0
        results[m] = {"test": r.metrics["test"], "val": r.metrics["val"], "best_epoch": r.best_epoch,
                      "wall_s": round(wall, 1), "train_s": round(sum(h["seconds"] for h in r.history), 1),
                      "epochs": cfg.total_epochs(), "checkpoint": r.best_checkpoint}
    total = time.perf_counter() - t_all

    k = len(next(iter(results.values()))["test"]["exits"])
    n_test = next(iter(results.values()))["test"]["n"]
    print(f"\nFashion-MNIST test top-1 ({n_test} images), "
          f"ResNet-18 width {args.width}, {args.epochs} epochs each, batch {args.batch_size}, cosine lr {args.lr}, "
          f"{args.threads} threads")
    head = f"{'method':<11}" + "".join(f"{f'exit {i + 1}':>9}" for i in range(k)) + f"{'ensemble':>10}{'epochs':>8}{'minutes':>9}"
    print(head)
    print("-" * len(head))
    for m, r in results.items():
        ep = f"{args.epochs}+{args.heads_epochs}" if m == "plain" else str(args.epochs)
        print(f"{m:<11}" + "".join(f"{a:>9.4f}" for a in r["test"]["exits"]) + f"{r['test']['ensemble']:>10.4f}"
              f"{ep:>8}{r['wall_s'] / 60:>9.1f}")
    for row in format_deltas(results):
        print(row)
    print(f"total wall-clock {total / 60:.1f} min{'  (over the 30-minute budget)' if total > 1800 else ''}")
    for m, r in results.items():
        print(format_table({"val": r["val"], "test": r["test"]}, f"\n{m}: {r['checkpoint']} (epoch {r['best_epoch']})"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "preset.json").write_text(json.dumps({"args": vars(args), "total_s": round(total, 1), "results": results},
                                                indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
