"""The whole pipeline in one call: train -> export -> calibrate -> answer a few images under a budget.

``sdedge quickstart`` with no arguments needs no dataset and no network: it trains a small multi-exit
CNN with ``byot`` (self-distillation) on scikit-learn's bundled digits for about a minute on two CPU
cores, exports it as a per-section bundle, calibrates it on this machine (temperatures, thresholds for
at most 1 pp below the deepest exit, a latency profile, an anytime-curve plot), and answers a few test
images under a latency budget, printing the exit table and where every file went::

    sdedge-quickstart/
      run/best.pt                     the checkpoint (PyTorch, for `sdedge eval` / re-export)
      bundle/                         what goes to the device: manifest.json, sections/, full.onnx,
                                      calibration.json, profiles/<this device>.json
      anytime.png (.csv, .json)       accuracy vs latency of the exit policies (when matplotlib is installed)
      quickstart.json                 this run's summary

With ``dataset="fashion-mnist"`` (or ``cifar10``/``cifar100``) and ``data=DIR`` it does the same on a real
dataset. ``short=True`` is a seconds-long smoke setting for the test suite. Re-running starts over in
the same folder (the run is retrained and the bundle replaced atomically).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from .common.progress import reporter

# per dataset: backbone, backbone kwargs, epochs, batch size, learning rate (CPU-friendly defaults)
PRESETS: dict[str, dict[str, Any]] = {
    "digits": {"backbone": "tiny", "backbone_kwargs": {"width": 16}, "epochs": 30, "batch_size": 64, "lr": 0.05},
    "fashion-mnist": {"backbone": "tiny", "backbone_kwargs": {"width": 16}, "epochs": 3, "batch_size": 128, "lr": 0.05},
    "cifar10": {"backbone": "tiny", "backbone_kwargs": {"width": 32}, "epochs": 5, "batch_size": 128, "lr": 0.05},
    "cifar100": {"backbone": "tiny", "backbone_kwargs": {"width": 32}, "epochs": 5, "batch_size": 128, "lr": 0.05},
}
SHORT = {"backbone_kwargs": {"width": 8}, "epochs": 2, "limit": 600}


@dataclass
class QuickstartConfig:
    output: str = "sdedge-quickstart"
    dataset: str = "digits"
    data: str | None = None  # dataset folder (real datasets)
    backbone: str | None = None  # default: the dataset's preset
    width: int | None = None  # backbone width (tiny)
    epochs: int | None = None  # default: the dataset's preset
    method: str = "byot"
    short: bool = False  # seconds-long smoke setting (tests)
    threads: int | None = None  # torch and ONNX Runtime threads (None: all cores for training, 1 for inference)
    device: str = "cpu"  # training device: cpu | cuda | auto
    budget_ms: float | None = None  # per-image budget for the demo answers (default: halfway exit 1 .. full)
    images: int = 5  # test images answered at the end
    max_accuracy_drop: float = 1.0
    plot: bool = True  # anytime.png when matplotlib is installed
    seed: int = 0
    progress: bool | Callable[[str], None] = True


@dataclass
class QuickstartResult:
    output: str
    checkpoint: str
    bundle: str
    exits: list[dict[str, Any]]  # per exit: test accuracy, latency, MAC share, temperature, threshold
    answers: list[dict[str, Any]]
    budget_ms: float | None
    calibration_summary: str
    files: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("calibration_summary")
        return d

    def summary(self) -> str:
        return format_result(self)


def quickstart(cfg: QuickstartConfig | None = None) -> QuickstartResult:
    """Run the pipeline end to end (see the module docstring)."""
    from .export import ExportConfig, export_bundle
    from .common.errors import DataError
    from .train import TrainConfig, train

    cfg = cfg or QuickstartConfig()
    name = cfg.dataset.lower().replace("_", "-")
    if name in ("fmnist", "fashionmnist"):
        name = "fashion-mnist"
    if name not in PRESETS:
        raise DataError(f"quickstart knows the datasets {', '.join(PRESETS)}; got {cfg.dataset!r}")
    preset = dict(PRESETS[name])
    limit = None
    if cfg.short:
        preset.update({k: v for k, v in SHORT.items() if k != "limit"})
        limit = SHORT["limit"] if name != "digits" else None
    if cfg.backbone:
        preset["backbone"] = cfg.backbone
        preset["backbone_kwargs"] = {}
    for key in ("width", "epochs", "images", "threads"):  # 0 is a value, not "unset": refused, not ignored
        v = getattr(cfg, key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise DataError(f"quickstart {key} must be a positive integer, got {v!r}")
    if cfg.budget_ms is not None:
        from .runtime.policies import check_budget_ms

        check_budget_ms(cfg.budget_ms)  # before minutes of training, not after
    if cfg.width is not None:
        preset["backbone_kwargs"] = {"width": cfg.width}
    if cfg.epochs is not None:
        preset["epochs"] = cfg.epochs
    log = reporter(cfg.progress, "#")
    out = Path(cfg.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise DataError(f"quickstart output folder {out} is not writable; pass -o DIR")
    timings: dict[str, float] = {}
    notes: list[str] = []

    # 1. train
    t = time.perf_counter()
    log(f"1/4 training {preset['backbone']} {preset['backbone_kwargs']} with {cfg.method} on {name} "
        f"for {preset['epochs']} epochs ({'short smoke setting' if cfg.short else 'CPU preset'})")
    tcfg = TrainConfig(dataset=name, data=cfg.data, limit=limit, backbone=preset["backbone"],
                       backbone_kwargs=preset["backbone_kwargs"], method=cfg.method, epochs=preset["epochs"],
                       batch_size=preset["batch_size"], lr=preset["lr"], output=str(out / "run"), seed=cfg.seed,
                       device=cfg.device, threads=cfg.threads, progress=False, verbose=bool(cfg.progress),
                       resume=False)
    tres = train(tcfg)
    timings["train_s"] = time.perf_counter() - t

    # 2. export
    t = time.perf_counter()
    log("2/4 exporting per-section ONNX bundle (parity-checked against PyTorch)")
    eres = export_bundle(ExportConfig(checkpoint=str(tres.best_checkpoint), output=str(out / "bundle"), force=True,
                                      data=cfg.data, threads=cfg.threads or 1))
    bundle = Path(eres.bundle_path)
    timings["export_s"] = time.perf_counter() - t

    # 3. calibrate (torch-free code path, as on a device)
    from .calibrate.api import CalibrationConfig, calibrate_bundle
    from .runtime.options import SessionOptions

    t = time.perf_counter()
    plot = None
    if cfg.plot:
        try:
            import matplotlib  # noqa: F401

            plot = str(out / "anytime.png")
        except ImportError:
            notes.append("no anytime.png: matplotlib is not installed (pip install 'sdedge[plot]')")
    log("3/4 calibrating on this machine: temperatures, thresholds, latency profile")
    runs = 30 if cfg.short else 200
    options = SessionOptions(backend="onnxruntime", intra_op_threads=cfg.threads or 1)  # calibrate and answer alike
    cres = calibrate_bundle(bundle, config=CalibrationConfig(
        session=options, data=cfg.data, max_accuracy_drop=cfg.max_accuracy_drop,
        profile_runs=runs, profile_warmup=max(3, runs // 10), overhead_runs=runs, plot=plot, seed=cfg.seed),
        progress=log)
    timings["calibrate_s"] = time.perf_counter() - t

    # 4. answer a few test images under a budget
    t = time.perf_counter()
    from .calibrate.datasets import load_calibration_split
    from .calibrate import benchmarking as B
    from .runtime.session import AnytimeSession

    from .runtime.preprocess import Preprocessor

    man = cres.calibration or {}
    costs = man.get("expected", {}).get("reference", {}).get("exit_costs")
    if man.get("expected", {}).get("reference", {}).get("cost_unit") != "ms":
        costs = None
    budget = cfg.budget_ms
    log(f"4/4 answering {cfg.images} test images under a budget with the calibrated thresholds")
    with AnytimeSession(bundle, options) as s:
        test = load_calibration_split(s.manifest, cfg.data, "test")
        k = min(cfg.images, len(test.labels))
        x = Preprocessor(s.manifest, 1 << 62)(test.images[: max(k, 32)]).batch
        if budget is None:  # halfway between exit 1 and the full network, end to end as the caller sees it
            lo, hi = B.budget_range(s, x, runs=100 if cfg.short else 300)
            budget = round(lo + 0.5 * (hi - lo), 4)
        answers = []
        for i in range(k):
            r = s.infer(x[i], budget_ms=budget, threshold="calibrated")
            answers.append({"index": i, "label": r.label, "class_name": r.class_name, "truth": int(test.labels[i]),
                            "truth_name": s.classes[int(test.labels[i])], "confidence": r.confidence,
                            "exit": r.exit_index, "stopped_by": r.stopped_by, "latency_ms": r.latency_ms,
                            "deadline_met": r.deadline_met})
        shares = B.mac_shares(s.manifest)
        man_exits = s.manifest.exits
    timings["answer_s"] = time.perf_counter() - t
    exits = []
    fits = cres.temperature_fits
    for j in range(len(shares)):
        e = man_exits[j] if j < len(man_exits) else {}
        exits.append({"exit": j + 1, "val_accuracy": e.get("val_accuracy"), "test_accuracy": e.get("test_accuracy"),
                      "latency_ms": costs[j] if costs else None, "mac_share": shares[j],
                      "temperature": fits[j].temperature if fits else None,
                      "threshold": man.get("thresholds", [None] * len(shares))[j],
                      "enabled": man.get("enabled", [True] * len(shares))[j]})
    files = {"checkpoint": str(tres.best_checkpoint), "bundle": str(bundle),
             "calibration": str(bundle / "calibration.json")}
    files.update({f"profile {d}": str(bundle / "profiles" / f"{d}.json") for d in cres.profiles})
    files.update({f"plot {k}": v for k, v in cres.plot_files.items()})
    files["summary"] = str(out / "quickstart.json")
    res = QuickstartResult(str(out), str(tres.best_checkpoint), str(bundle), exits, answers, budget,
                           cres.summary(), files, timings, notes)
    from .common.atomic import write_text_atomic

    write_text_atomic(out / "quickstart.json", json.dumps(res.to_json(), indent=2, default=str) + "\n")
    return res


def format_result(res: QuickstartResult) -> str:
    lines = ["", "exit table (test accuracy at export; latency = cumulative mean on this machine, from the profile):"]
    head = f"{'exit':>4} {'test acc %':>10} {'val acc %':>9} {'latency ms':>10} {'MAC share':>9} {'T':>6} {'threshold':>9}"
    lines += [head, "-" * len(head)]

    def pct(v: Any) -> str:
        return "-" if v is None else f"{100 * v:.2f}"

    for e in res.exits:
        lat = "-" if e["latency_ms"] is None else f"{e['latency_ms']:.4f}"
        mac = "-" if e["mac_share"] is None else f"{e['mac_share']:.3f}"
        tt = "-" if e["temperature"] is None else f"{e['temperature']:.3f}"
        th = "-" if e["threshold"] is None or not e["enabled"] else f"{e['threshold']:.4f}"
        lines.append(f"{e['exit']:>4} {pct(e['test_accuracy']):>10} {pct(e['val_accuracy']):>9} {lat:>10} {mac:>9} "
                     f"{tt:>6} {th:>9}")
    lines.append("")
    b = "no budget" if res.budget_ms is None else f"budget {res.budget_ms:.4g} ms"
    lines.append(f"answers ({b}, calibrated thresholds):")
    for a in res.answers:
        ok = "ok   " if a["label"] == a["truth"] else "WRONG"
        met = "" if a["deadline_met"] is None else ("  deadline met" if a["deadline_met"] else "  deadline MISSED")
        lines.append(f"  test image {a['index']}: {ok} {a['class_name']!s:>12} (true {a['truth_name']})  "
                     f"exit {a['exit']} ({a['stopped_by']})  conf {a['confidence']:.3f}  {a['latency_ms']:.3f} ms{met}")
    lines.append("")
    lines.append("files:")
    for k, v in res.files.items():
        lines.append(f"  {k:<28} {v}")
    lines.append("")
    lines.append(f"time: train {res.timings.get('train_s', 0):.1f} s, export {res.timings.get('export_s', 0):.1f} s, "
                 f"calibrate {res.timings.get('calibrate_s', 0):.1f} s")
    for n in res.notes:
        lines.append(f"note: {n}")
    lines.append("next: `sdedge run BUNDLE IMAGE.png --budget-ms 5`, `sdedge serve BUNDLE`, `sdedge bench BUNDLE --plot b.png`")
    return "\n".join(lines)
