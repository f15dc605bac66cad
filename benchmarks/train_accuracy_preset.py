"""CPU accuracy preset: ``plain`` vs ``dsn`` vs ``byot`` on the real Fashion-MNIST, same network and budget.

    python benchmarks/train_accuracy_preset.py --data ../shared/data/fashion-mnist     # ~25 min on 2 cores
    python benchmarks/train_accuracy_preset.py --epochs 1 --limit 2000                # a 1-minute smoke run
    # three seeds, recorded with the command, machine, versions and per-seed numbers:
    python benchmarks/train_accuracy_preset.py --seeds 3 --methods dsn byot --json benchmarks/results/train_accuracy_preset.json
    # the previous recipe, for comparison:
    python benchmarks/train_accuracy_preset.py --schedule cosine --no-nesterov --ema 0

Contract
--------
* Data: Fashion-MNIST, 55 000 training images, 5 000 held out (seed 0) for model selection, the
  official 10 000 test images for the figures (never used for selection). Augmentation: random crop
  (2 px padding, the reference script's ±2-pixel shift) + horizontal flip.
* Network: CIFAR ResNet-18 (BYOT layout, 4 sections / 4 exits, the BYOT authors' heads), base width 16,
  channels_last, float32 (also with ``--device cuda``: the preset's numbers, only faster), ``--threads``
  torch threads (default 2).
* Budget, identical for every method: ``--epochs`` epochs (default 8) of SGD (weight decay 5e-4, batch
  128, Nesterov, torch's one-cycle schedule peaking at lr 0.1 after 30 % of the steps, momentum cycled
  0.9 -> 0.85 -> 0.9 against the rate), evaluated through an EMA of the weights (decay 0.998, BN
  statistics recomputed), same seed, same data order. ``plain`` trains
  only the deepest exit (it never runs the shallow heads, so its epochs are the cheapest) and then
  its shallow heads for ``--heads-epochs`` (default 1) epoch on the frozen backbone, which is how a
  plain network gets exits; the wall-clock of every run is printed so the compute is visible.
* Method weights: each method's defaults (``byot``: alpha 0.3, T 3, hint 0.03).
* Selection: ``best.pt`` by mean validation accuracy over the exits (``plain``: deepest during its
  backbone epochs, then mean during its head epoch).
* Recipe flags (``--schedule``, ``--nesterov``, ``--warmup-epochs``, ``--ema``, ``--head``,
  ``--crop-padding``, ``--random-erasing``, ``--deepest-ce-weight``) are passed to every method alike
  (``--deepest-ce-weight`` to ``byot`` only). The defaults were chosen by measurement: on a 4-epoch,
  18 000-image proxy over three seeds (``benchmarks/results/train_recipe_proxy_*.json``) one-cycle +
  Nesterov + EMA beat the previous cosine recipe for both methods (byot +0.7 / +3.1 / +3.5 / +2.9 points
  per exit, dsn -0.6 / +1.7 / +2.5 / +2.0). The EMA decay 0.998 keeps the proxy's averaging horizon
  (about 1.4 epochs) at the full preset's 430 steps per epoch. The head: the BYOT authors' (``byot-authors``)
  beat ``bottleneck`` at exit 1 over seeds 0-2 of the full preset by +1.17 ± 0.38 (dsn) and +0.97 ± 0.23 (byot)
  points and was level deeper (``benchmarks/results/train_accuracy_preset_byot_authors.json``).
  The crop padding: 2 pixels beat 4 (the trainer's default on 28-pixel images) over seeds 0-2 for both methods, by
  +2.18 / +0.67 / +0.36 / +0.35 (dsn) and +1.79 / +0.66 / +0.29 / +0.44 (byot) points per exit
  (``benchmarks/results/train_accuracy_preset_crop2.json``).
* Seeds: ``--seeds N`` repeats everything with seeds ``--first-seed`` .. +N-1 (initialisation, hold-out,
  data order and augmentation all follow the seed).
* Output: per-exit and ensemble (mean of the exits' softmax) top-1 on the test split, side by side
  (mean ± sample standard deviation over seeds), then ``byot`` minus each baseline, paired by seed (mean ±
  standard deviation of the per-seed differences), and whether each difference exceeds zero by more
  than one standard deviation; everything also in ``OUT/preset.json`` (and ``--json``, with the
  command, machine, versions and the raw per-seed numbers; per run ``train_s`` is the training epochs'
  seconds, ``wall_s`` this invocation's wall-clock, evaluation only for a resumed run). Runs resume if
  killed (a finished run is only evaluated again); ``--include EARLIER.json`` takes the finished runs of an
  earlier results file of the same recipe as they are (seeds trained in separate sessions, summarized
  together; each such run names its file).
* ``--versus EARLIER.json``: also this run minus an earlier results file, method by method, paired by seed
  (how one recipe or head kind compares with another); the earlier file's command and per-seed numbers are
  copied into the new one, so the comparison stands on its own.

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


def _mean_std(values: list[float]) -> tuple[float, float]:
    import statistics

    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarize(per_seed: dict[str, list[dict]]) -> dict[str, dict]:
    """Per method: mean and standard deviation over seeds of each exit's and the ensemble's test top-1."""
    out = {}
    for m, runs in per_seed.items():
        cols = [[r["test"]["exits"][j] for r in runs] for j in range(len(runs[0]["test"]["exits"]))]
        cols.append([r["test"]["ensemble"] for r in runs])
        stats = [_mean_std(c) for c in cols]
        out[m] = {"mean": [round(a, 6) for a, _ in stats], "std": [round(b, 6) for _, b in stats], "n": len(runs)}
    return out


def _paired(runs: list[dict], others: list[dict]) -> dict:
    """``runs`` minus ``others``, matched by seed (exits then ensemble): per-seed values, mean, std, mean > std."""
    by_seed = {r["seed"]: r for r in others}
    pairs = [(a, by_seed[a["seed"]]) for a in runs if a["seed"] in by_seed]
    if not pairs:
        raise ValueError("no seed in common to pair the runs by")
    k = len(pairs[0][0]["test"]["exits"])
    diffs = [[a["test"]["exits"][j] - b["test"]["exits"][j] for a, b in pairs] for j in range(k)]
    diffs.append([a["test"]["ensemble"] - b["test"]["ensemble"] for a, b in pairs])
    stats = [_mean_std(d) for d in diffs]
    return {"seeds": [a["seed"] for a, _ in pairs], "per_seed": [[round(v, 6) for v in d] for d in diffs],
            "mean": [round(a, 6) for a, _ in stats], "std": [round(b, 6) for _, b in stats],
            "above_zero_by_one_std": [bool(a > b and a > 0) for a, b in stats]}


def paired_differences(per_seed: dict[str, list[dict]], method: str = "byot",
                       baselines: tuple[str, ...] = ("plain", "dsn")) -> dict[str, dict]:
    """``method`` minus each baseline, seed by seed (exits then ensemble): mean, std, and mean > std."""
    if method not in per_seed:
        return {}
    return {f"{method}-{base}": _paired(per_seed[method], per_seed[base])
            for base in baselines if base in per_seed}


def versus_earlier(per_seed: dict[str, list[dict]], earlier: dict) -> dict[str, dict]:
    """Each method of this run minus the same method of an earlier results file, paired by seed."""
    theirs = earlier["per_seed"]
    return {m: _paired(runs, theirs[m]) for m, runs in per_seed.items()
            if m in theirs and {r["seed"] for r in runs} & {r["seed"] for r in theirs[m]}}


# Settings that do not change what a run computes (paths, which seeds and methods, output options); every other
# setting is the recipe, which an included run must match (a flag added later joins it by itself). A setting in
# ONLY_FOR matters to that method's runs only.
NOT_RECIPE = frozenset({"data", "out", "methods", "seeds", "first_seed", "versus", "include", "fresh", "progress",
                        "json"})
ONLY_FOR = {"heads_epochs": "plain", "deepest_ce_weight": "byot"}


def read_results(path: str) -> dict:
    """An earlier ``--json`` results file of this script; ValueError/OSError when it is not one."""
    try:
        record = json.loads(Path(path).read_text())
    except ValueError as e:
        raise ValueError(f"not a results file of this script ({e})") from e
    if not isinstance(record, dict) or not isinstance(record.get("per_seed"), dict):
        raise ValueError("not a results file of this script (no per_seed)")
    return record


def included_runs(earlier: dict, settings: dict, source: str) -> tuple[dict[tuple[str, int], dict], list[str]]:
    """Finished runs of an earlier results file of this script, keyed by (method, seed), tagged with ``source``,
    and a line per method left out because its recipe differs from ``settings`` (e.g. ``byot`` runs with another
    ``deepest_ce_weight``: runs of different recipes are never summarized together).

    Raises ValueError when no method's recipe matches.
    """
    theirs = earlier.get("settings") or {}
    recipe = sorted((theirs.keys() | settings.keys()) - NOT_RECIPE)
    runs: dict[tuple[str, int], dict] = {}
    left_out: list[str] = []
    for m, method_runs in earlier["per_seed"].items():
        differ = [f"{k}: {theirs.get(k)!r} there, {settings.get(k)!r} here" for k in recipe
                  if ONLY_FOR.get(k, m) == m and theirs.get(k) != settings.get(k)]
        if differ:
            left_out.append(f"{m} ({'; '.join(differ)})")
            continue
        runs.update({(m, r["seed"]): {"included_from": source, **r} for r in method_runs})
    if not runs:
        raise ValueError(f"{source} ran another recipe: {', '.join(left_out)}")
    return runs, left_out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="Fashion-MNIST folder (default: SDEDGE_DATA, ../shared/data/...)")
    ap.add_argument("--out", default="runs/preset", help="folder for the runs and preset.json")
    ap.add_argument("--methods", nargs="+", default=["plain", "dsn", "byot"])
    ap.add_argument("--seeds", type=int, default=1, help="repeat with this many seeds (default 1)")
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--heads-epochs", type=int, default=1, help="plain: epochs of head training on the frozen backbone")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--schedule", choices=["multistep", "cosine", "onecycle"], default="onecycle")
    ap.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--warmup-epochs", type=float, default=0.0)
    ap.add_argument("--ema", type=float, default=0.998, metavar="DECAY", help="EMA of the weights (0 = off)")
    ap.add_argument("--head", default="byot-authors",
                    help="exit head kind (default byot-authors, chosen by measurement; bottleneck | byot-attention | ...)")
    ap.add_argument("--crop-padding", type=int, default=2,
                    help="random-crop padding in pixels (default 2, chosen by measurement; the trainer's own default, "
                         "4 px at 32 scaled to the image size, is what the preset used before)")
    ap.add_argument("--random-erasing", type=float, default=0.0)
    ap.add_argument("--deepest-ce-weight", type=float, default=None, help="byot only (default: the method's, 1)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="first N training/test images only (smoke runs)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--versus", default=None, metavar="JSON",
                    help="an earlier --json results file: also report this run minus it, method by method, paired by "
                         "seed (e.g. one head kind against another)")
    ap.add_argument("--include", nargs="+", default=[], metavar="JSON",
                    help="earlier --json results files of the same recipe: their finished (method, seed) runs are "
                         "taken as they are instead of trained again (runs done in separate sessions, summarized "
                         "together)")
    ap.add_argument("--fresh", action="store_true", help="start over instead of resuming earlier runs in --out")
    ap.add_argument("--progress", action="store_true", help="progress bars")
    ap.add_argument("--json", default=None, help="also write the record (command, machine, versions, per-seed "
                                                 "numbers) here, e.g. benchmarks/results/train_accuracy_preset.json")
    args = ap.parse_args(argv)
    if args.seeds < 1:
        ap.error("--seeds must be >= 1")

    from sdedge.common.jsonio import write_json_atomic
    from sdedge.train import TrainConfig, train

    data = find_fmnist(args.data)
    earlier = None
    if args.versus:
        try:
            earlier = read_results(args.versus)
        except (OSError, ValueError) as e:
            sys.exit(f"--versus {args.versus}: {e}")
    included: dict[tuple[str, int], dict] = {}
    for path in args.include:
        try:
            runs, left_out = included_runs(read_results(path), vars(args), path)
        except (OSError, ValueError, KeyError, TypeError) as e:
            sys.exit(f"--include {path}: {e}")
        included.update(runs)
        for line in left_out:
            print(f"--include {path}: another recipe's runs left out: {line}", flush=True)
    out = Path(args.out)
    from sdedge.calibrate import benchmarking as B

    record = {**B.provenance("benchmarks/train_accuracy_preset.py", argv, ("sdedge", "torch", "torchvision", "numpy")),
              "settings": vars(args)}
    per_seed: dict[str, list[dict]] = {m: [] for m in args.methods}
    t_all = time.perf_counter()
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    for seed in seeds:
        for m in args.methods:
            if (m, seed) in included:
                print(f"\n=== {m}, seed {seed}: from {included[m, seed]['included_from']} ===", flush=True)
                per_seed[m].append(included[m, seed])
                continue
            run_dir = out / m if args.seeds == 1 and args.first_seed == 0 else out / f"seed{seed}" / m
            cfg = TrainConfig(dataset="fashion-mnist", data=data, limit=args.limit, backbone="resnet18",
                              backbone_kwargs={"width": args.width}, head=args.head, method=m, epochs=args.epochs,
                              train_heads_after=args.heads_epochs if m == "plain" else 0, batch_size=args.batch_size,
                              lr=args.lr, schedule=args.schedule, nesterov=args.nesterov,
                              warmup_epochs=args.warmup_epochs, ema_decay=args.ema, crop_padding=args.crop_padding,
                              random_erasing=args.random_erasing,
                              deepest_ce_weight=args.deepest_ce_weight if m == "byot" else None,
                              weight_decay=5e-4, seed=seed, device=args.device, amp=False, threads=args.threads,
                              output=str(run_dir), resume=not args.fresh, progress=args.progress, verbose=True)
            print(f"\n=== {m}, seed {seed} ===", flush=True)
            t0 = time.perf_counter()
            r = train(cfg)
            wall = time.perf_counter() - t0
            per_seed[m].append({"seed": seed, "test": r.metrics["test"], "val": r.metrics["val"],
                                "best_epoch": r.best_epoch, "wall_s": round(wall, 1),
                                "train_s": round(sum(h["seconds"] for h in r.history), 1),
                                "epochs": cfg.total_epochs(), "checkpoint": r.best_checkpoint})
    total = time.perf_counter() - t_all

    summary = summarize(per_seed)
    diffs = paired_differences(per_seed)
    k = len(next(iter(summary.values()))["mean"]) - 1
    n_test = per_seed[args.methods[0]][0]["test"]["n"]
    print(f"\nFashion-MNIST test top-1 ({n_test} images), ResNet-18 width {args.width}, head {args.head}, "
          f"{args.epochs} epochs each, batch {args.batch_size}, {args.schedule} lr {args.lr}"
          f"{', Nesterov' if args.nesterov else ''}{f', EMA {args.ema}' if args.ema else ''}, {args.threads} threads, "
          f"seeds {seeds[0]}..{seeds[-1]} (mean ± std)")
    head = (f"{'method':<11}" + "".join(f"{f'exit {i + 1}':>16}" for i in range(k))
            + f"{'ensemble':>16}{'train min':>11}")
    print(head)
    print("-" * len(head))
    for m, st in summary.items():
        # the epochs' own seconds (kept across a resume, unlike this invocation's wall-clock per run)
        mins = sum(r["train_s"] for r in per_seed[m]) / len(per_seed[m]) / 60
        print(f"{m:<11}" + "".join(f"{100 * a:>9.2f} ± {100 * b:4.2f}" for a, b in zip(st["mean"], st["std"]))
              + f"{mins:>11.1f}")
    def diff_row(name: str, d: dict, note: str) -> str:
        return f"{name:<11}" + "".join(f"{100 * a:>+9.2f} ± {100 * b:4.2f}" for a, b in zip(d["mean"], d["std"])) + note

    for name, d in diffs.items():
        print(diff_row(name, d, "   (pp, paired by seed)"))
        print(f"{'':<11}" + "".join(f"{('> 1 std' if ok else 'not'):>16}" for ok in d["above_zero_by_one_std"]))
    versus = versus_earlier(per_seed, earlier) if earlier is not None else {}
    if versus:
        print(f"this run minus {args.versus} ({earlier.get('command', '?')}), same method, paired by seed:")
    for m, d in versus.items():
        print(diff_row(m, d, f"   (pp, seeds {', '.join(map(str, d['seeds']))})"))
    print(f"total wall-clock {total / 60:.1f} min")
    record.update({"total_s": round(total, 1), "per_seed": per_seed, "summary": summary, "differences": diffs})
    if earlier is not None:
        record["versus"] = {"file": args.versus, "command": earlier.get("command"), "settings": earlier.get("settings"),
                            "per_seed": earlier["per_seed"], "differences": versus}
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "preset.json", record, indent=1)
    if args.json:
        write_json_atomic(args.json, record, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
