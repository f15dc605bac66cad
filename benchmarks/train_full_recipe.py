"""The full-size recipe for several methods, side by side: per-exit and ensemble top-1 of each.

    # the paper's setting (CIFAR-100, ResNet-18, 200 epochs), three methods one after the other:
    python benchmarks/train_full_recipe.py --dataset cifar100 --data ~/data --epochs 200 --milestones 100 150
    # several methods sharing one GPU at once, stopped (resumably) after 9 minutes:
    python benchmarks/train_full_recipe.py --dataset fashion-mnist --epochs 30 --schedule cosine --parallel --deadline-min 9

Each method is one ``sdedge train`` process with identical options (network, data, schedule, batch,
seed); only ``--method`` differs (``plain`` also gets ``--train-heads-after``). Runs write
``OUT/<method>/`` and resume when started again, so a run stopped by ``--deadline-min`` continues
later. At the end the script reads every ``results.json`` and prints test (and validation) accuracy
per exit side by side, the best epoch and the training time; ``OUT/summary.json`` keeps it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from sdedge.train.evaluate import format_deltas

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="cifar100")
    ap.add_argument("--data", default=None)
    ap.add_argument("--methods", nargs="+", default=["plain", "dsn", "byot"])
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=200)
    ap.add_argument("--schedule", default="multistep")
    ap.add_argument("--milestones", type=int, nargs="+", default=None)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--heads-epochs", type=int, default=5, help="plain: head epochs on the frozen backbone")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="runs/full")
    ap.add_argument("--parallel", action="store_true", help="start all methods at once (one GPU can hold them)")
    ap.add_argument("--deadline-min", type=float, default=None, help="stop the runs after this many minutes")
    ap.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `sdedge train` options for every run")
    args = ap.parse_args(argv)
    from sdedge.calibrate.benchmarking import provenance

    header = provenance("benchmarks/train_full_recipe.py", argv, ("sdedge", "torch", "torchvision", "numpy"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = ["--dataset", args.dataset, "--backbone", args.backbone, "--width", str(args.width), "--epochs",
              str(args.epochs), "--schedule", args.schedule, "--batch-size", str(args.batch_size), "--lr", str(args.lr),
              "--device", args.device, "--no-progress"]
    if args.data:
        common += ["--data", args.data]
    if args.milestones:
        common += ["--milestones", *map(str, args.milestones)]
    if args.threads:
        common += ["--threads", str(args.threads)]
    common += args.extra
    cmds = {}
    for m in args.methods:
        cmd = [sys.executable, "-m", "sdedge.cli", "train", *common, "--method", m, "-o", str(out / m)]
        if m == "plain" and args.heads_epochs:
            cmd += ["--train-heads-after", str(args.heads_epochs)]
        cmds[m] = cmd
    deadline = time.monotonic() + args.deadline_min * 60 if args.deadline_min else None
    t0 = time.monotonic()
    procs: dict[str, subprocess.Popen] = {}
    logs = {m: open(out / f"{m}.log", "a") for m in cmds}

    def wait(p: subprocess.Popen) -> None:
        try:
            p.wait(timeout=None if deadline is None else max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.terminate()  # the run resumes from last.pt next time
            p.wait()

    for m, cmd in cmds.items():
        print("$", " ".join(cmd), flush=True)
        procs[m] = subprocess.Popen(cmd, stdout=logs[m], stderr=subprocess.STDOUT, env=dict(os.environ))
        if not args.parallel:
            wait(procs[m])
    for p in procs.values():
        wait(p)
    wall = time.monotonic() - t0

    summary = {}
    for m in cmds:
        f = out / m / "results.json"
        if not f.is_file():
            last = out / m / "last.pt"
            print(f"{m}: not finished (rc {procs[m].returncode}); {'resumable from ' + str(last) if last.is_file() else 'no checkpoint'}; "
                  f"log {out / f'{m}.log'}")
            continue
        r = json.loads(f.read_text())
        h = r["history"]
        summary[m] = {"test": r["accuracy"]["test"], "val": r["accuracy"]["val"], "best_epoch": r["best_epoch"],
                      "epochs": r["epochs"], "train_s": r["train_seconds"],
                      "images_per_s": round(sum(e["images"] for e in h) / max(1e-9, sum(e["seconds"] for e in h)), 1)}
    if summary:
        k = len(next(iter(summary.values()))["test"]["exits"])
        print(f"\n{args.dataset} test top-1, {args.backbone} width {args.width}, {args.epochs} epochs ({args.schedule}), "
              f"batch {args.batch_size}, lr {args.lr}; wall-clock {wall / 60:.1f} min{' (parallel)' if args.parallel else ''}")
        head = f"{'method':<11}" + "".join(f"{f'exit {i + 1}':>9}" for i in range(k)) + \
            f"{'ensemble':>10}{'best ep':>9}{'img/s':>8}"
        print(head + "\n" + "-" * len(head))
        for m, r in summary.items():
            print(f"{m:<11}" + "".join(f"{a:>9.4f}" for a in r["test"]["exits"]) + f"{r['test']['ensemble']:>10.4f}"
                  f"{r['best_epoch']:>9}{r['images_per_s']:>8.0f}")
        for row in format_deltas(summary):
            print(row)
    from sdedge.common.jsonio import write_json_atomic

    write_json_atomic(out / "summary.json", {**header, "args": vars(args), "wall_s": round(wall, 1),
                                             "results": summary}, indent=1)
    return 0 if len(summary) == len(cmds) else 1


if __name__ == "__main__":
    raise SystemExit(main())
