"""Why ``feature-kd``'s default weight is 1, not Heo et al.'s ~8: deepest-exit accuracy at several weights.

    python benchmarks/feature_weight_probe.py --json benchmarks/results/feature_weight_probe.json

Contract
--------
* Teacher: a ``dsn`` run of the tiny network (width 8) on the built-in digits, ``--epochs`` epochs.
* Students: the same network trained with ``feature-kd`` from that teacher at each ``--weights`` value
  (partial-L2 on pre-ReLU section outputs via 1x1 connectors, plus CE at every exit), same epochs,
  seeds ``0 .. --seeds-1``; reported: validation and test accuracy of the deepest exit, mean over seeds.
* Small and quick (a minute on 2 cores): it shows how the feature term's weight trades against CE on
  small networks and short runs, not what it does on CIFAR at 200 epochs.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=float, nargs="+", default=[0.25, 1.0, 4.0, 8.0])
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import torch

    from sdedge.common.jsonio import write_json_atomic
    from sdedge.train import TrainConfig, train

    torch.set_num_threads(2)
    from sdedge.calibrate import benchmarking as B

    header = B.provenance("benchmarks/feature_weight_probe.py", argv, ("sdedge", "torch", "numpy"))
    base = dict(dataset="digits", backbone="tiny", backbone_kwargs={"width": 8}, epochs=args.epochs, batch_size=64,
                lr=0.2, device="cpu", progress=False, verbose=False)
    rows: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        teacher = train(TrainConfig(method="dsn", output=f"{tmp}/teacher", seed=0, **base))
        for w in args.weights:
            for seed in range(args.seeds):
                r = train(TrainConfig(method="feature-kd", teacher=teacher.best_checkpoint, feature_weight=w,
                                      output=f"{tmp}/w{w}-s{seed}", seed=seed, **base))
                rows.setdefault(str(w), []).append({"seed": seed, "val_deepest": r.metrics["val"]["exits"][-1],
                                                    "test_deepest": r.metrics["test"]["exits"][-1]})
    summary = {w: {k: round(statistics.fmean(x[k] for x in runs), 4) for k in ("val_deepest", "test_deepest")}
               for w, runs in rows.items()}
    print(f"feature-kd on digits (tiny width 8, {args.epochs} epochs, {args.seeds} seeds): deepest exit, mean")
    print(f"{'weight':>8}{'val':>8}{'test':>8}")
    for w, s in summary.items():
        print(f"{float(w):>8g}{s['val_deepest']:>8.4f}{s['test_deepest']:>8.4f}")
    if args.json:
        write_json_atomic(args.json, {**header, "settings": vars(args), "per_seed": rows, "summary": summary},
                          indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
