"""``calibrate_bundle``: fit a bundle to its device and task, and write the result into the bundle.

::

    from sdedge.calibrate import CalibrationConfig, calibrate_bundle
    res = calibrate_bundle("bundle/", config=CalibrationConfig(max_accuracy_drop=1.0))
    print(res.summary())

Steps, all torch-free (numpy + :mod:`sdedge.runtime`):

1. calibration data: the validation split the model was trained without (read by
   :mod:`sdedge.calibrate.datasets` as the bundle's data spec, manifest ``model.data``, says), or arrays
   given by the caller;
   split into a *fit* half and a *held-out* half (seeded);
2. every exit's logits on it, once (``AnytimeSession.infer_all_exits``);
3. a temperature per exit on the fit half (:mod:`~sdedge.calibrate.temperature`), NLL/ECE before and
   after on both halves;
4. a latency profile of each section on this device (:mod:`~sdedge.calibrate.profile`), one per thread
   setting asked for;
5. per-exit thresholds for the target on the fit half, evaluated on the held-out half
   (:mod:`~sdedge.calibrate.thresholds`); a self-check replays the result with the runtime's own
   :func:`sdedge.runtime.policies.replay` from the ``calibration.json`` about to be written;
6. anytime curves on the held-out half (:mod:`~sdedge.calibrate.curves`), optionally plotted;
7. ``calibration.json`` and ``profiles/<device>.json`` written in one atomic swap of the bundle with
   :func:`sdedge.runtime.bundle.update_bundle` (manifest checksums updated in the same swap). Nothing is
   written before every step has succeeded; an interrupted run leaves the previous bundle as it was.

``calibration.json`` (format and version owned by :mod:`sdedge.runtime.calibration`, which builds the
document) holds the fields the runtime reads (``criterion``, ``temperatures``, ``thresholds``,
``enabled``) and the report: ``method``,
``target``, ``target_met``, ``expected`` (fit and held-out accuracy / mean latency / exit histogram),
``temperature_fits`` (converged, at_bound, NLL, ECE), ``data`` (source, split, sizes, seed),
``profile`` (the profile file the latencies come from) and ``warnings``.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from sdedge.common.dataset_files import named_data_dir
from sdedge.common.jsonio import dump_json
from sdedge.runtime.bundle import Bundle, CALIBRATION_NAME, open_bundle, update_bundle
from sdedge.runtime.calibration import calibration_document, parse_calibration
from sdedge.common.errors import BundleError, DataError, PolicyError, SdedgeError
from sdedge.runtime.options import SessionOptions
from sdedge.runtime.policies import ConfidencePolicy, replay
from sdedge.runtime.preprocess import Preprocessor
from sdedge.runtime.profile import profile_relpath

from .curves import CurveSet, accuracy_at_fractions, offline_curves
from .datasets import LabelledImages, check_labels_in_range, load_calibration_split
from .metrics import ece, nll
from .profile import ProfileConfig, default_batch_sizes, measure_profile
from .temperature import DEFAULT_BOUNDS, TemperatureFit, fit_temperatures
from .thresholds import (ReplayTable, Target, ThresholdResult, exit_costs_from_macs, exit_costs_from_profile,
                         fit_heldout_split, select_thresholds)


class CalibrationError(SdedgeError):
    """A calibration step failed a consistency check (the bundle is left as it was)."""


@dataclass
class CalibrationConfig:
    """Options of :func:`calibrate_bundle` (one flag of ``sdedge calibrate`` each).

    ``session``: how the calibration's session is opened (:class:`~sdedge.runtime.options.SessionOptions`):
    its ``criterion`` and ``answer`` are those the thresholds are chosen for, its ``intra_op_threads`` the
    first thread setting profiled, its ``max_batch`` raised to the largest of ``batch_sizes`` when smaller.
    ``batch_sizes``: the batch sizes profiled (None: 1, 2, 4, 8, 16 up to the session's ``max_batch``,
    :func:`~sdedge.calibrate.profile.default_batch_sizes`).
    ``profile_threads``: further intra-op thread settings to profile (one profile each).
    """

    session: SessionOptions = field(default_factory=SessionOptions)
    target_accuracy: float | None = None  # absolute (fraction, or percent when > 1)
    max_accuracy_drop: float | None = None  # percentage points below the deepest exit (default 1.0)
    target_latency_ms: float | None = None  # expected mean latency per image
    data: str | None = None  # dataset folder (default: SDEDGE_DATA / the dataset's usual place)
    split: str = "val"  # val (the training hold-out) | test | train
    max_samples: int | None = None  # seeded subsample of the calibration data
    heldout_fraction: float = 0.5  # share of the calibration data kept for evaluation (0: evaluate on the fit data)
    seed: int = 0
    profile_threads: tuple[int | None, ...] = ()  # more thread settings to profile besides session.intra_op_threads
    batch_sizes: tuple[int, ...] | None = None
    profile_runs: int = 200  # 0: no new profile (use the bundle's profile for this device, if any)
    profile_warmup: int = 20
    overhead_runs: int = 200
    temperature: bool = True  # fit temperatures (False: T = 1)
    temperature_bounds: tuple[float, float] = DEFAULT_BOUNDS
    num_candidates: int = 200
    confidence_z: float = 2.0  # accuracy targets must hold for acc - z standard errors (0: the point estimate)
    latency_stat: str = "mean_ms"  # section statistic of the cost model: mean_ms | p50_ms | p90_ms | p99_ms
    profile_only: bool = False  # measure and write profiles only; keep calibration.json
    plot: str | None = None  # PNG path; CSV and JSON tables are written beside it
    write: bool = True  # False: compute and report, write nothing into the bundle

    def target(self) -> Target:
        given = [v is not None for v in (self.target_accuracy, self.max_accuracy_drop, self.target_latency_ms)]
        if sum(given) > 1:
            raise PolicyError("give one target: target_accuracy, max_accuracy_drop or target_latency_ms")
        if self.target_latency_ms is not None:
            return Target.latency(self.target_latency_ms)
        if self.target_accuracy is not None:
            return Target.accuracy(target_accuracy=self.target_accuracy)
        return Target.accuracy(max_accuracy_drop=1.0 if self.max_accuracy_drop is None else self.max_accuracy_drop)

    def thread_settings(self) -> tuple[int | None, ...]:
        """The intra-op thread settings profiled, one profile each; the first runs the calibration."""
        return (self.session.intra_op_threads,) + tuple(self.profile_threads)

    def check(self) -> None:
        if not isinstance(self.session, SessionOptions):
            raise PolicyError(f"session must be a SessionOptions, got {type(self.session).__name__}")
        for t in self.profile_threads:
            self.session.replace(intra_op_threads=t)  # the session options' own check of a thread count
        self.target()
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise PolicyError(f"held-out fraction must be in [0, 1), got {self.heldout_fraction}")
        if self.max_samples is not None and self.max_samples < 2:
            raise PolicyError(f"max_samples must be >= 2, got {self.max_samples}")
        if self.latency_stat not in ("mean_ms", "p50_ms", "p90_ms", "p99_ms"):
            raise PolicyError(f"latency_stat must be mean_ms, p50_ms, p90_ms or p99_ms, got {self.latency_stat!r}")
        if not 0.0 <= self.confidence_z <= 5.0:
            raise PolicyError(f"confidence_z must be in [0, 5] standard errors, got {self.confidence_z}")
        if self.profile_runs:
            ProfileConfig(self.batch_sizes and tuple(self.batch_sizes), self.profile_runs, self.profile_warmup, self.overhead_runs).check()


@dataclass
class CalibrationResult:
    bundle: str
    device: str
    calibration: dict[str, Any] | None  # the calibration.json content (None with profile_only)
    profiles: dict[str, dict]  # device name -> profile written
    temperature_fits: list[TemperatureFit]
    thresholds: ThresholdResult | None
    curves: CurveSet | None
    data: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    files_written: list[str] = field(default_factory=list)
    plot_files: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        return format_summary(self)


def _log(progress: Callable[[str], None] | None, msg: str) -> None:
    if progress is not None:
        progress(msg)


def _check_writable(root: Path) -> None:
    for p in (root, root.parent):
        if not os.access(p, os.W_OK):
            raise BundleError(f"cannot calibrate bundle {root}: {p} is not writable (calibration writes "
                              "calibration.json and profiles/ into the bundle); copy the bundle somewhere writable "
                              "or pass write=False / --dry-run")


def _data(bundle: Bundle, images: Any, labels: Any, data: Any, cfg: CalibrationConfig) -> LabelledImages:
    if isinstance(data, LabelledImages):
        return data
    if images is not None or labels is not None:
        if images is None or labels is None:
            raise DataError("pass both images and labels (or neither, to read the bundle's validation split)")
        lab = np.asarray(labels)
        if lab.ndim != 1 or not np.issubdtype(lab.dtype, np.integer):
            raise DataError(f"labels must be a 1-D integer array, got {lab.dtype} {list(lab.shape)}")
        img = np.asarray(images)
        if img.shape[0] != lab.shape[0]:
            raise DataError(f"{img.shape[0]} images but {lab.shape[0]} labels")
        return LabelledImages(img, lab.astype(np.int64), "arrays given by the caller", "given")
    return load_calibration_split(bundle.manifest, data if data is not None else cfg.data, cfg.split)


def _random_pixels(bundle: Bundle, seed: int, n: int = 64) -> LabelledImages:
    """``n`` random uint8 images of the bundle's input size (labels 0): inputs for a latency profile alone."""
    c, h, w = bundle.manifest.input.shape[1:]
    img = np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)
    return LabelledImages(img, np.zeros(n, np.int64), "random pixels (no dataset named or found)", "none")


def calibrate_bundle(bundle: str | os.PathLike, images: Any = None, labels: Any = None, data: Any = None,
                     config: CalibrationConfig | None = None, progress: Callable[[str], None] | None = None,
                     **overrides: Any) -> CalibrationResult:
    """Calibrate ``bundle`` in place (see the module docstring); ``overrides`` set config fields, or
    fields of its ``session`` (e.g. ``criterion="entropy"``, ``intra_op_threads=1``)."""
    from sdedge.runtime.session import AnytimeSession  # lazily: pulls in onnxruntime

    cfg = config or CalibrationConfig()
    if overrides:
        session_kw, rest = SessionOptions.split_overrides(overrides)
        unknown = sorted(set(rest) - {f.name for f in dataclasses.fields(cfg)})
        if unknown:
            raise PolicyError(f"unknown calibration option(s): {', '.join(unknown)}")
        cfg = dataclasses.replace(cfg, **rest)
        cfg = dataclasses.replace(cfg, session=cfg.session.replace(**session_kw))
    cfg.check()
    root = Path(bundle)
    b = open_bundle(root)
    if cfg.write:
        _check_writable(root)
    k = b.manifest.num_exits
    warnings: list[str] = []

    try:
        lab = _data(b, images, labels, data, cfg)
    except DataError:
        if not (cfg.profile_only and images is None and labels is None and data is None
                and named_data_dir(cfg.data) is None):
            raise
        # a latency profile needs inputs of the right shape, not labelled ones: a device without the dataset
        # (a robot) can still be profiled; a data folder that was named and is missing stays an error
        lab = _random_pixels(b, cfg.seed)
        warnings.append("no dataset named or found: the latency profile was measured on random pixels "
                        "(a CNN's latency does not depend on what its pixels show)")
    n_all = int(lab.labels.shape[0])
    check_labels_in_range(lab, b.manifest.num_classes, "calibration labels")
    if cfg.max_samples and n_all > cfg.max_samples:
        keep = np.sort(np.random.default_rng(cfg.seed).permutation(n_all)[: cfg.max_samples])
        lab = LabelledImages(lab.images[keep], lab.labels[keep], lab.source + f" (seeded subsample of {cfg.max_samples})",
                             lab.split)
    n = int(lab.labels.shape[0])
    if n < 2:
        raise DataError(f"calibration needs at least 2 labelled images, got {n}")
    if lab.split == "test":
        warnings.append("calibrating on the test split: test accuracy measured afterwards is no longer an unbiased "
                        "estimate (use the validation split)")
    _log(progress, f"calibration data: {n} images from {lab.source}")

    options = cfg.session.replace(max_batch=max(cfg.session.max_batch, max(cfg.batch_sizes or (1,))))
    sessions: list[Any] = []
    try:
        session = AnytimeSession(b, options)
        sessions.append(session)
        device = session.device_name
        prep = Preprocessor(b.manifest, 1 << 62)
        profile_inputs = prep(lab.images[: min(n, 64)]).batch

        # -- latency profiles (one per thread setting) ---------------------------------------------------------
        profiles: dict[str, dict] = {}
        if cfg.profile_runs:
            pcfg = ProfileConfig(cfg.batch_sizes and tuple(sorted(set(cfg.batch_sizes))), cfg.profile_runs,
                                 cfg.profile_warmup, cfg.overhead_runs)
            for i, threads in enumerate(cfg.thread_settings()):
                s = session if i == 0 else AnytimeSession(b, options, intra_op_threads=threads)
                if i:
                    sessions.append(s)
                _log(progress, f"profiling {s.device_name}: {cfg.profile_runs} runs per batch size "
                               f"{list(pcfg.batch_sizes or default_batch_sizes(s.max_batch))}")
                prof = measure_profile(s, profile_inputs, pcfg)
                profiles[prof["device"]] = prof
        if cfg.profile_only:
            if not profiles:
                raise PolicyError("profile_only needs profile_runs > 0")
            written = _write(root, {profile_relpath(d): p for d, p in profiles.items()}, cfg)
            return CalibrationResult(str(root), device, None, profiles, [], None, None,
                                     {"source": lab.source, "n": n}, warnings, written)
        own_profile = profiles.get(device) or b.profile(device)
        if own_profile is not None:
            costs = exit_costs_from_profile(own_profile, k, stat=cfg.latency_stat)
        else:
            from sdedge.calibrate.benchmarking import mac_shares

            costs = exit_costs_from_macs(mac_shares(b.manifest))
            warnings.append(f"no latency profile for {device} (profile_runs=0 and none in the bundle): thresholds "
                            "minimise a MAC-based cost proxy and latencies are not reported")

        # -- logits, once ---------------------------------------------------------------------------------------------
        _log(progress, f"running all {k} exits on {n} images ({device})")
        all_logits = session.infer_all_exits(lab.images)
        fit_idx, held_idx = fit_heldout_split(n, cfg.heldout_fraction, cfg.seed)
        if held_idx.size == 0 or fit_idx.size == 0:
            fit_idx = held_idx = np.arange(n)
            warnings.append("calibration and evaluation use the same split (held-out fraction 0 or too few images): "
                            "the reported expectations are optimistic")
        y = lab.labels

        # -- temperatures -------------------------------------------------------------------------------------------------
        if cfg.temperature:
            fits = fit_temperatures(all_logits[:, fit_idx], y[fit_idx], cfg.temperature_bounds,
                                    heldout_logits=all_logits[:, held_idx], heldout_labels=y[held_idx])
        else:
            fits = [_identity_fit(all_logits[j, fit_idx], y[fit_idx], all_logits[j, held_idx], y[held_idx])
                    for j in range(k)]
        temps = [f.temperature for f in fits]
        for j, f in enumerate(fits, start=1):
            if not f.converged:
                warnings.append(f"exit {j}: temperature fit did not converge ({f.note or 'tolerance not reached'})")

        # -- thresholds ------------------------------------------------------------------------------------------------------
        table = ReplayTable(all_logits, y, temps, cfg.session.criterion, cfg.session.answer)
        fit_t, held_t = table.subset(fit_idx), table.subset(held_idx)
        _log(progress, f"choosing thresholds ({cfg.target().kind} target) on {fit_idx.size} images, "
                       f"evaluating on {held_idx.size}")
        thr = select_thresholds(fit_t, costs, cfg.target(), cfg.num_candidates, heldout=held_t,
                                confidence_z=cfg.confidence_z)
        warnings.extend(thr.warnings)

        calib = calibration_document(
            cfg.session.criterion, temps, thr.thresholds, thr.enabled,
            answer=cfg.session.answer, method=thr.method, target=thr.target, target_met=thr.target_met,
            nearest_achievable=thr.nearest_achievable,
            expected={"fit": thr.fit, "heldout": thr.heldout, "reference": thr.reference},
            temperature_fits=[f.to_json() for f in fits],
            data={"source": lab.source, "split": lab.split, "n": n, "fit_n": int(fit_idx.size),
                  "heldout_n": int(held_idx.size), "seed": cfg.seed,
                  "same_split": bool(np.array_equal(fit_idx, held_idx))},
            device=device, backend=session.backend_name,
            profile=profile_relpath(device) if own_profile is not None else None,
            warnings=list(dict.fromkeys(warnings)),
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        )
        calib = _jsonable(calib)
        _self_check(calib, all_logits[:, held_idx], thr, table.subset(held_idx), b)

        # -- curves ------------------------------------------------------------------------------------------------------------
        curves = offline_curves(held_t, costs, {"thresholds": thr.thresholds, "enabled": thr.enabled})
        curves.meta.update({"bundle": str(root), "device": device, "data": lab.source, "split": "held-out half"})
        calib["expected"]["accuracy_at_fraction"] = _jsonable(accuracy_at_fractions(curves))

        files = {CALIBRATION_NAME: dump_json(calib)}
        files.update({profile_relpath(d): dump_json(p) for d, p in profiles.items()})
        written = _write(root, files, cfg)
        plot_files: dict[str, str] = {}
        if cfg.plot:
            from .plot import save_curves

            title = f"{b.manifest.model.get('name', root.name)} on {device}\n(held-out {held_idx.size} images, " \
                    f"{cfg.session.criterion})"
            plot_files = save_curves(curves, cfg.plot, title)
        return CalibrationResult(str(root), device, calib, profiles, fits, thr, curves, calib["data"],
                                 calib["warnings"], written, plot_files)
    finally:
        for s in sessions:
            s.close()


def _write(root: Path, files: dict[str, Any], cfg: CalibrationConfig) -> list[str]:
    if not cfg.write:
        return []
    data = {rel: (v if isinstance(v, bytes) else dump_json(v)) for rel, v in files.items()}
    update_bundle(root, data)
    return sorted(data)


def _identity_fit(z: np.ndarray, y: np.ndarray, hz: np.ndarray, hy: np.ndarray) -> TemperatureFit:
    return TemperatureFit(1.0, True, False, 0, (1.0, 1.0), nll(z, y), nll(z, y), ece(z, y), ece(z, y),
                          nll(hz, hy), nll(hz, hy), ece(hz, hy), ece(hz, hy), note="temperature scaling off")


def _jsonable(obj: Any) -> Any:
    """Plain JSON types only; NaN/Inf become null (the bundle's JSON forbids them)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if np.isfinite(v) else None
    return obj


def _self_check(calib: dict, logits: np.ndarray, thr: ThresholdResult, table: ReplayTable, b: Bundle) -> None:
    """The runtime's own replay of the calibration about to be written must decide what we evaluated
    (the document is first read back exactly as the runtime reads the file: format header and fields)."""
    c = parse_calibration(calib, b.manifest.num_exits)
    pol = ConfidencePolicy.build(b.manifest.num_exits, "calibrated", calibration=c)
    rt = replay(logits, pol, answer=calib["answer"])
    ours = table.exits(thr.thresholds, thr.enabled)
    if not np.array_equal(rt.exit_index, ours):
        bad = int((rt.exit_index != ours).sum())
        raise CalibrationError(f"internal check failed: the runtime's replay of the chosen thresholds differs from the "
                               f"calibrator's on {bad} of {ours.size} held-out samples; nothing was written")


def format_summary(res: CalibrationResult) -> str:
    """The printable report: per-exit table, the target and what it achieves, files and warnings."""
    lines = [f"bundle {res.bundle}  device {res.device}"]
    if res.calibration is None:
        lines += [f"profile written: {p}" for p in res.files_written]
        lines += [f"warning: {w}" for w in res.warnings]
        return "\n".join(lines)
    cal, thr = res.calibration, res.thresholds
    assert thr is not None
    d = cal["data"]
    lines.append(f"data: {d['source']}; {d['n']} images = {d['fit_n']} fit + {d['heldout_n']} held-out (seed {d['seed']})")
    prof = next(iter(res.profiles.values()), None) if res.profiles else None
    sec = prof["batch_sizes"]["1"]["sections"] if prof and "1" in prof["batch_sizes"] else None
    held = thr.heldout or thr.fit
    hist = held["exit_histogram"]
    ref = thr.reference
    accs = held.get("exit_accuracies") or ref["exit_accuracies"]
    head = (f"{'exit':>4} {'T':>6} {'ECE before':>10} {'ECE after':>9} {'acc %':>7} {'cum ms':>8} "
            f"{'sec p50':>8} {'sec p99':>8} {'threshold':>9} {'on':>3} {'exits %':>7}")
    lines += ["", head, "-" * len(head)]
    for j, f in enumerate(res.temperature_fits):
        eb = f.heldout_ece_before if f.heldout_ece_before is not None else f.ece_before
        ea = f.heldout_ece_after if f.heldout_ece_after is not None else f.ece_after
        t = cal["thresholds"][j]
        cum = f"{ref['exit_costs'][j]:.3f}" if ref["cost_unit"] == "ms" else "-"
        p50 = f"{sec[j]['p50_ms']:.3f}" if sec else "-"
        p99 = f"{sec[j]['p99_ms']:.3f}" if sec else "-"
        ts = "-" if t is None else f"{t:.4f}"
        on = "yes" if cal["enabled"][j] else "no"
        lines.append(f"{j + 1:>4} {f.temperature:>6.3f} {100 * eb:>9.2f}% {100 * ea:>8.2f}% "
                     f"{100 * accs[j]:>7.2f} {cum:>8} {p50:>8} {p99:>8} {ts:>9} {on:>3} "
                     f"{100 * hist[j] / max(1, sum(hist)):>7.1f}")
    tgt = thr.target
    lines.append("")
    margin = f", lower bound at {tgt['confidence_z']:g} standard errors" if tgt.get("confidence_z") else ""
    lines.append(f"target: {tgt['text']} ({thr.method}, criterion {thr.criterion}{margin}) -> "
                 f"{'met' if thr.target_met else 'NOT met'} on the fit split"
                 + ("" if thr.heldout is None else f", {'met' if thr.heldout['target_met'] else 'NOT met'} held-out"))

    def pt(r: dict) -> str:
        lat = "n/a" if r.get("mean_latency_ms") is None else f"{r['mean_latency_ms']:.3f} ms"
        return f"accuracy {100 * r['accuracy']:.2f} %, mean latency {lat}, mean exit {r['mean_exit']:.2f}"

    lines.append(f"expected on the fit split:      {pt(thr.fit)}")
    if thr.heldout is not None:
        lines.append(f"expected on the held-out split: {pt(thr.heldout)} "
                     f"(deepest exit alone: {100 * thr.heldout['deepest_exit_accuracy']:.2f} %)")
    if res.curves is not None:
        from .curves import format_fraction_table

        lines += ["", "accuracy within a share of the full latency (held-out):",
                  format_fraction_table(accuracy_at_fractions(res.curves))]
    if res.files_written:
        lines += ["", "written into the bundle: " + ", ".join(res.files_written)]
    if res.plot_files:
        lines.append("plot: " + ", ".join(res.plot_files.values()))
    for w in res.warnings:
        lines.append(f"warning: {w}")
    return "\n".join(lines)
