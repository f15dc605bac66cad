"""``export_bundle``: a trained checkpoint -> a verified bundle folder (the library behind ``sdedge export``).

Steps, each printed when ``progress`` is on:

1. load the checkpoint (``weights_only``) and rebuild the model; hash the checkpoint file;
2. trace once and cut per-section ONNX graphs + ``full.onnx`` (:mod:`.onnx_sections`); count MACs and
   parameters on those graphs (:mod:`.macs`);
3. parity, ONNX Runtime CPU vs PyTorch per exit on real validation images (:mod:`.parity`); past the
   tolerance the export fails with :class:`ExportError` and nothing is written;
4. with ``int8``: QDQ sections calibrated on training images, FP32 vs INT8 accuracy on the validation
   split (:mod:`.quantize`);
5. with ``format_version=2``: every section but the last split into its trunk and its exit head
   (:func:`.onnx_sections.split_head`; ``heads/h<k>.onnx``), each exit of the split graphs checked
   against the unsplit ones on probe inputs; INT8 and fp16 then convert trunks and heads apart
   (``int8/h<k>.onnx``: a head calibrated on the features it reads);
6. the manifest, validated by the runtime's own schema, then the staged folder is opened with
   :func:`sdedge.runtime.open_bundle` (every checksum) and a probe batch runs through the runtime's
   ONNX Runtime backend, chained sections against ``full.onnx``: a disagreement refuses the bundle;
7. the staged folder ``<out>.tmp-<random>`` is renamed into place, or swapped atomically with the old
   bundle under ``force``. An export that fails or is killed at any step leaves the old bundle (or
   nothing) at ``<out>``; a killed export's leftover staging folder is removed by the next export.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..common.errors import BundleError, DataError, ExportError
from ..common.progress import reporter
from ..runtime.manifest import features_name, input_name, logits_name
from .onnx_sections import MIN_OPSET
from .parity import DEFAULT_TOLERANCE, ExitParity, format_table
from .quantize import Int8ExitReport, format_int8_table



@dataclass
class ExportConfig:
    """Options of :func:`export_bundle` (the flags of ``sdedge export``)."""

    checkpoint: str
    output: str
    force: bool = False  # replace an existing bundle (atomically)
    int8: bool = False  # also write QDQ INT8 sections under int8/
    int8_samples: int = 512  # training images for INT8 calibration
    int8_method: str = "minmax"  # calibration: minmax | percentile | entropy
    int8_target: str = "onnxruntime"  # QDQ layout: onnxruntime (uint8 activations) | tensorrt (symmetric int8)
    int8_eval_samples: int | None = None  # validation images for FP32-vs-INT8 accuracy (None: all)
    fp16: bool = False  # also write float16 section graphs (float32 I/O) under fp16/, for TensorRT 11 fp16 engines
    parity: bool = True  # check ONNX Runtime against PyTorch per exit
    parity_tolerance: float = DEFAULT_TOLERANCE  # max |logit difference| allowed
    parity_samples: int = 64  # validation images used for parity
    data: str | None = None  # dataset folder (default: SDEDGE_DATA / the dataset's default folders)
    samples: Any = None  # optional images for parity: uint8 [N,H,W,C] raw or float32 [N,C,H,W] preprocessed
    opset: int = 18
    full: bool = True  # also write full.onnx (the single-graph reference)
    name: str | None = None  # model name in the manifest (default: <backbone>-<dataset>-<method>)
    threads: int | None = None  # ONNX Runtime intra-op threads for the checks (None: its default)
    format_version: int = 1  # bundle format: 1 (each section with its exit head) | 2 (exit heads as graphs of their own)
    progress: bool | Callable[[str], None] = False  # print each step (True: to stderr)


@dataclass
class ExportResult:
    bundle_path: Path
    manifest: dict
    parity: list[ExitParity] = field(default_factory=list)
    parity_inputs: str = ""
    chain_vs_full: ExitParity | None = None
    int8: list[Int8ExitReport] | None = None
    int8_samples: int = 0
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step
    sizes: dict[str, int] = field(default_factory=dict)  # bytes: sections, full, int8, bundle

    def parity_table(self) -> str:
        tol = self.manifest.get("parity", {}).get("tolerance")
        text = format_table(self.parity, tol, f"parity on {self.parity_inputs}") if self.parity else "parity: skipped"
        if self.chain_vs_full is not None:
            c = self.chain_vs_full
            text += (f"\nchained sections vs full.onnx (exit {c.index}, {c.samples} samples): "
                     f"max |Δlogit| {c.max_abs_diff:.3e}, top-1 agree {c.top1_agreement:.2%}")
        return text

    def int8_table(self) -> str:
        if not self.int8:
            return ""
        return format_int8_table(self.int8, self.int8_samples, "validation")


def _check_output(out: Path, force: bool) -> None:
    if not out.exists():
        return
    if not force:
        raise ExportError(f"{out} already exists; pass --force (force=True) to replace it atomically")
    if not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder; refusing to replace it")
    if any(out.iterdir()) and not (out / "manifest.json").is_file():
        raise ExportError(f"{out} exists and is not an sdedge bundle (no manifest.json); refusing to replace it "
                          "even with --force")


def _default_name(meta: dict) -> str:
    from ..common.hostinfo import slug

    method = meta.get("method")
    method = method.get("name") if isinstance(method, dict) else method
    parts = [(meta.get("model") or {}).get("backbone"), (meta.get("data") or {}).get("dataset"), method]
    return slug("-".join(str(p) for p in parts if p), 64)


def _parity_inputs(cfg: ExportConfig, data: Any, meta: dict, shape: tuple[int, ...],
                   say: Callable[[str], None]) -> tuple[np.ndarray, str]:
    from .samples import pick, preprocess

    pre = (meta.get("data") or {}).get("preprocess") or {}
    if cfg.samples is not None:
        x = np.asarray(cfg.samples)
        if x.dtype == np.uint8:
            x = preprocess(x if x.ndim == 4 else x[..., None], pre)
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(shape):
            raise ExportError(f"samples must be uint8 [N,H,W,C] or float32 [N,{shape[0]},{shape[1]},{shape[2]}], "
                              f"got shape {list(np.shape(cfg.samples))}")
        return x[:cfg.parity_samples], f"{min(len(x), cfg.parity_samples)} given samples"
    if data is not None:
        idx = pick(len(data.val_images), cfg.parity_samples)
        return preprocess(data.val_images[idx], pre), f"{len(idx)} {data.name} validation images"
    say("warning: no dataset for parity; using random normal inputs (pass --data DIR for real images)")
    x = np.random.default_rng(0).standard_normal((cfg.parity_samples, *shape)).astype(np.float32)
    return x, f"{cfg.parity_samples} random inputs (dataset not found)"


@dataclass
class _Source:
    """The loaded checkpoint and what the steps need from it."""

    model: Any
    meta: dict
    sha256: str
    shape: tuple[int, int, int]  # C, H, W
    data: Any  # ExportData or None

    @property
    def num_exits(self) -> int:
        return int(self.model.num_exits)

    @property
    def preprocess(self) -> dict:
        return (self.meta.get("data") or {}).get("preprocess") or {}


@dataclass
class _Staged:
    """What has been written into the staging folder so far."""

    sections: list[Any]  # SectionInfo
    paths: list[Path]
    files: dict[str, str]  # relative path -> sha256 (everything but the sections)
    sizes: dict[str, int]
    full: dict | None
    export_info: dict


def _validate(cfg: ExportConfig) -> None:
    if cfg.opset < MIN_OPSET:
        raise ExportError(f"opset {cfg.opset} is not supported: the exporter emits opset >= {MIN_OPSET}; "
                          f"use --opset {MIN_OPSET} or higher")
    from ..runtime.manifest import FORMAT_VERSIONS

    if cfg.format_version not in FORMAT_VERSIONS:
        raise ExportError(f"bundle format version must be one of {', '.join(map(str, FORMAT_VERSIONS))}, "
                          f"got {cfg.format_version!r}")
    if not (cfg.parity_tolerance > 0):
        raise ExportError(f"parity tolerance must be positive, got {cfg.parity_tolerance}")
    if cfg.int8:
        from .quantize import QuantizeSettings

        QuantizeSettings(per_channel=True, method=cfg.int8_method, target=cfg.int8_target).check()  # fail early
    if cfg.int8 and cfg.int8_samples < 1:
        raise ExportError(f"INT8 calibration needs at least 1 sample, got int8_samples={cfg.int8_samples}")
    if cfg.parity_samples < 1:
        raise ExportError(f"parity needs at least 1 sample, got parity_samples={cfg.parity_samples}")


def _load(cfg: ExportConfig, say: Callable[[str], None]) -> _Source:
    from ..checkpoint import load_checkpoint, model_from_checkpoint
    from ..common.digest import sha256_file
    from ..data import checkpoint_data_spec
    from .samples import load_export_data

    say(f"loading checkpoint {cfg.checkpoint}")
    ckpt = load_checkpoint(cfg.checkpoint)
    model = model_from_checkpoint(ckpt).cpu().eval()
    meta = ckpt.meta
    try:  # the DataSpec goes into the manifest verbatim: refuse a bad one before any work
        checkpoint_data_spec(meta)
    except DataError as e:
        raise ExportError(f"checkpoint {cfg.checkpoint}: its data record is not usable: {e}") from None
    mcfg, dmeta = meta.get("model") or {}, meta.get("data") or {}
    try:
        c_in = int(mcfg.get("in_channels") or dmeta.get("in_channels"))
        h, w = (int(v) for v in (mcfg.get("image_size") or dmeta.get("image_size")))
    except (TypeError, ValueError) as e:
        raise ExportError(f"checkpoint {cfg.checkpoint}: no usable input geometry (in_channels, image_size): {e}") from None
    if min(c_in, h, w) < 1:
        raise ExportError(f"checkpoint {cfg.checkpoint}: input geometry must be positive, got in_channels {c_in}, "
                          f"image_size {[h, w]}")
    data = None
    if cfg.int8 or (cfg.parity and cfg.samples is None):
        try:
            data = load_export_data(meta, cfg.data)
        except DataError as e:
            if cfg.int8:
                raise ExportError(f"INT8 export needs the checkpoint's training data for calibration: {e}; "
                                  "pass --data DIR (or set SDEDGE_DATA)") from None
            say(f"warning: cannot load the checkpoint's dataset ({e}); pass --data DIR for a parity check "
                "on real images")
    src = _Source(model, meta, sha256_file(cfg.checkpoint), (c_in, h, w), data)
    say(f"model {mcfg.get('backbone')} with {src.num_exits} exits, input {list(src.shape)}, "
        f"{len(meta.get('classes', []))} classes")
    return src


def _write_graphs(src: _Source, cfg: ExportConfig, tmp: Path, say: Callable[[str], None]) -> _Staged:
    from ..common.digest import sha256_bytes
    from . import macs
    from .manifest_build import SectionInfo
    from .onnx_sections import export_graphs, save_model, tensor_shape

    k_total = src.num_exits
    say(f"exporting ONNX (dynamo exporter, opset {cfg.opset}) and cutting {k_total} sections")
    graphs = export_graphs(src.model, src.shape, cfg.opset)
    (tmp / "sections").mkdir()
    staged = _Staged([], [], {}, {"sections": 0, "full": 0, "int8": 0}, None, {
        "exporter": "torch.onnx.export(dynamo=True)", "opset": graphs.opset,
        "ir_version": int(graphs.sections[0].ir_version), "batchnorm_remaining": graphs.remaining_batchnorms,
        "external_data": False})
    for k, g in enumerate(graphs.sections, start=1):
        rel = f"sections/s{k}.onnx"
        data = save_model(g, tmp / rel)
        staged.sizes["sections"] += len(data)
        staged.paths.append(tmp / rel)
        cost = macs.count(g)
        info = SectionInfo(k, rel, sha256_bytes(data), tensor_shape(g, input_name(k)),
                           tensor_shape(g, features_name(k)) if k < k_total else None,
                           tensor_shape(g, logits_name(k)), cost.macs, cost.params)
        staged.sections.append(info)
        say(f"  section {k}: {info.input_shape} -> {info.features_shape or info.logits_shape}, "
            + (f"{cost.macs:,} MACs" if cost.macs is not None else "MACs unknown") + f", {cost.params:,} params")
    if cfg.full:
        data = save_model(graphs.full, tmp / "full.onnx")
        staged.sizes["full"] = len(data)
        sha = staged.files["full.onnx"] = sha256_bytes(data)
        cost = macs.count(graphs.full)
        staged.full = {"file": "full.onnx", "sha256": sha, "macs": cost.macs, "params": cost.params,
                       "input": {"name": input_name(1), "shape": [None, *src.shape]},
                       "output": {"name": logits_name(k_total),
                                  "shape": [None, len(src.meta.get("classes", []))]}}
    return staged


def _check_parity(src: _Source, cfg: ExportConfig, tmp: Path, sessions: list, say: Callable[[str], None]
                  ) -> tuple[list[ExitParity], ExitParity | None, str, dict]:
    """ONNX Runtime vs PyTorch per exit (and chained sections vs full.onnx); raise past the tolerance."""
    from .parity import chain_logits, compare, ort_session, torch_logits

    x, desc = _parity_inputs(cfg, src.data, src.meta, src.shape, say)
    say(f"parity check on {desc}")
    got, _ = chain_logits(sessions, x)
    rows = compare(torch_logits(src.model, x), got)
    chain_full = None
    if cfg.full:
        full_logits = ort_session(tmp / "full.onnx", cfg.threads).run(None, {input_name(1): x})[0]
        chain_full = compare([full_logits], [got[-1]])[0]
        chain_full.index = src.num_exits
    worst = max(rows, key=lambda r: r.max_abs_diff)
    say(f"  largest |Δlogit| {worst.max_abs_diff:.2e} (exit {worst.index}), lowest top-1 agreement "
        f"{min(r.top1_agreement for r in rows):.2%}")
    if worst.max_abs_diff > cfg.parity_tolerance:
        raise ExportError(
            f"parity check failed: exit {worst.index} differs from PyTorch by {worst.max_abs_diff:.3e} "
            f"(tolerance {cfg.parity_tolerance:g}) on {desc}; no bundle was written.\n"
            + format_table(rows, cfg.parity_tolerance, "parity"))
    if chain_full is not None and chain_full.max_abs_diff > cfg.parity_tolerance:
        raise ExportError(f"chained sections and full.onnx disagree at exit {src.num_exits} by "
                          f"{chain_full.max_abs_diff:.3e} (tolerance {cfg.parity_tolerance:g})")
    record = {"tolerance": cfg.parity_tolerance, "inputs": desc, "runtime": "onnxruntime CPU",
              "exits": [r.to_json() for r in rows], "chain_vs_full": chain_full.to_json() if chain_full else None}
    return rows, chain_full, desc, record


def _half(cfg: ExportConfig, tmp: Path, staged: _Staged, say: Callable[[str], None]) -> None:
    """float16 copies of the sections under fp16/ (weights and compute in float16, inputs and outputs kept
    float32, by ONNX Runtime's maintained converter), each checked against its fp32 section on probe inputs."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from ..common.digest import sha256_bytes
    from .parity import ort_session

    (tmp / "fp16").mkdir()
    say(f"fp16: converting {len(staged.paths)} sections (float16 inside, float32 I/O)")
    for k, path in enumerate(staged.paths, start=1):
        info = staged.sections[k - 1]
        graphs = [(path, f"fp16/s{k}.onnx", f"section {k}", info)]
        if info.head is not None:  # format version 2: the exit head apart, converted alike
            graphs.append((tmp / info.head.file, f"fp16/h{k}.onnx", f"exit head {k}", info.head))
        for src_path, rel, what, owner in graphs:
            model = convert_float_to_float16(onnx.load(str(src_path)), keep_io_types=True)
            data = model.SerializeToString()
            (tmp / rel).write_bytes(data)
            try:
                ort_session(tmp / rel, cfg.threads)  # it must load: a converter bug is an export error, not a later one
            except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types
                raise ExportError(f"the fp16 copy of {what} does not load in onnxruntime: {e}") from None
            staged.sizes["fp16"] = staged.sizes.get("fp16", 0) + len(data)
            staged.files[rel] = sha256_bytes(data)
            owner.fp16_file = rel


def _split_heads(src: _Source, cfg: ExportConfig, tmp: Path, staged: _Staged, sessions: list,
                 say: Callable[[str], None]) -> None:
    """Format version 2: sections 1..K-1 rewritten as trunks, their exit heads under heads/; every exit of the
    split graphs must give the unsplit sections' logits (``sessions``) on probe inputs."""
    import onnx

    from ..common.digest import sha256_bytes
    from . import macs
    from .manifest_build import HeadInfo
    from .onnx_sections import save_model, split_head
    from .parity import chain_logits, compare, ort_session

    k_total = src.num_exits
    say(f"format version 2: splitting the exit heads of sections 1..{k_total - 1} into graphs of their own")
    (tmp / "heads").mkdir()
    pairs: list[tuple[Any, Any]] = []
    for k in range(1, k_total):
        info = staged.sections[k - 1]
        trunk, head = split_head(onnx.load(str(staged.paths[k - 1])), k, k_total)
        data = save_model(trunk, staged.paths[k - 1])
        info.sha256 = sha256_bytes(data)
        rel = f"heads/h{k}.onnx"
        hdata = save_model(head, tmp / rel)
        cost = macs.count(head)
        info.head = HeadInfo(rel, sha256_bytes(hdata), info.features_shape, info.logits_shape, cost.macs,  # type: ignore[arg-type]
                             cost.params)
        pairs.append((ort_session(data, cfg.threads), ort_session(hdata, cfg.threads)))
        share = f" of the section's {info.macs:,}" if info.macs is not None and cost.macs is not None else ""
        say(f"  exit head {k}: " + (f"{cost.macs:,} MACs{share}" if cost.macs is not None else "MACs unknown"))
    staged.sizes["sections"] = sum(p.stat().st_size for p in staged.paths)
    staged.sizes["heads"] = sum((tmp / f"heads/h{k}.onnx").stat().st_size for k in range(1, k_total))
    x = np.random.default_rng(2).standard_normal((8, *src.shape)).astype(np.float32)
    want, _ = chain_logits(sessions, x)
    got, _ = chain_logits([*pairs, sessions[-1]], x)
    for row in compare(want, got):
        if row.max_abs_diff > cfg.parity_tolerance:
            raise ExportError(f"the split graphs of exit {row.index} disagree with the unsplit section by "
                              f"{row.max_abs_diff:.3e} (tolerance {cfg.parity_tolerance:g}); no bundle was written")


def _quantize(src: _Source, cfg: ExportConfig, tmp: Path, staged: _Staged, sessions: list,
              say: Callable[[str], None]) -> tuple[list[Int8ExitReport], int, dict]:
    """QDQ sections under int8/, and FP32 vs INT8 on the validation split."""
    from ..common.digest import sha256_bytes
    from .parity import chain_logits, ort_session
    from .quantize import QuantizeSettings, compare_int8, quantize_section
    from .samples import pick, preprocess

    data = src.data
    if data is None:  # _load refuses INT8 without data; keep the invariant explicit
        raise ExportError("INT8 export needs the checkpoint's training data")
    calib = preprocess(data.train_images[pick(len(data.train_images), cfg.int8_samples, seed=1)], src.preprocess)
    say(f"INT8: calibrating {src.num_exits} sections on {len(calib)} {data.name} training images "
        f"({cfg.int8_method}, per-channel, QDQ for {cfg.int8_target})")
    _, calib_inputs = chain_logits(sessions, calib, collect_inputs=True)  # section k sees features_{k-1}
    (tmp / "int8").mkdir()
    settings = QuantizeSettings(per_channel=True, method=cfg.int8_method, target=cfg.int8_target)
    int8_sessions: list[Any] = []
    for k, (path, inputs) in enumerate(zip(staged.paths, calib_inputs), start=1):
        info = staged.sections[k - 1]
        # format version 2: the exit head apart, calibrated on the features it reads (the next section's input)
        graphs = [(path, f"int8/s{k}.onnx", input_name(k), inputs, info)]
        if info.head is not None:
            graphs.append((tmp / info.head.file, f"int8/h{k}.onnx", features_name(k), calib_inputs[k], info.head))
        pair = []
        for src_path, rel, name, feed, owner in graphs:
            quantize_section(src_path, tmp / rel, name, feed, settings)
            data_bytes = (tmp / rel).read_bytes()
            staged.sizes["int8"] += len(data_bytes)
            staged.files[rel] = sha256_bytes(data_bytes)
            owner.int8_file = rel
            pair.append(ort_session(tmp / rel, cfg.threads))
        int8_sessions.append(tuple(pair) if len(pair) == 2 else pair[0])
    n = len(data.val_images) if cfg.int8_eval_samples is None else cfg.int8_eval_samples
    idx = pick(len(data.val_images), n, seed=2)
    say(f"INT8: accuracy FP32 vs INT8 on {len(idx)} validation images")
    xv = preprocess(data.val_images[idx], src.preprocess)
    rows = compare_int8(chain_logits(sessions, xv)[0], chain_logits(int8_sessions, xv)[0], data.val_labels[idx])
    say("  " + ", ".join(f"exit {r.index}: {r.fp32_accuracy:.2%} -> {r.int8_accuracy:.2%}" for r in rows))
    record = {"quantization": settings.to_json(),
              "calibration": {"samples": len(calib), "split": "train", "dataset": data.name},
              "evaluation": {"split": "val", "samples": len(idx), "runtime": "onnxruntime CPU"},
              "exits": [r.to_json() for r in rows]}
    return rows, len(idx), record


def export_bundle(cfg: ExportConfig) -> ExportResult:
    """Export ``cfg.checkpoint`` to the bundle folder ``cfg.output``; see the module docstring."""
    from ..common.atomic import clean_stale_staging, staging_dir
    from ..common.jsonio import dump_json
    from ..runtime.bundle import MANIFEST_NAME, open_bundle
    from .manifest_build import build_manifest
    from .parity import ort_session

    say = reporter(cfg.progress, "[sdedge export]")
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    out = Path(cfg.output)
    _validate(cfg)
    _check_output(out, cfg.force)
    src = _load(cfg, say)
    timings["load"] = time.perf_counter() - t0

    for stale in clean_stale_staging(out):
        say(f"removed {stale.name}, left by an export that was killed")
    with staging_dir(out) as tmp:
        t = time.perf_counter()
        staged = _write_graphs(src, cfg, tmp, say)
        timings["export_onnx"] = time.perf_counter() - t

        sessions = [ort_session(p, cfg.threads) for p in staged.paths]
        rows: list[ExitParity] = []
        chain_full, desc, parity_record = None, "", None
        if cfg.parity:
            t = time.perf_counter()
            rows, chain_full, desc, parity_record = _check_parity(src, cfg, tmp, sessions, say)
            timings["parity"] = time.perf_counter() - t
        if cfg.format_version == 2:  # before INT8 and fp16, which then convert trunks and heads apart
            t = time.perf_counter()
            _split_heads(src, cfg, tmp, staged, sessions, say)
            timings["split_heads"] = time.perf_counter() - t
        int8_rows, n_eval, int8_record = None, 0, None
        if cfg.int8:
            t = time.perf_counter()
            int8_rows, n_eval, int8_record = _quantize(src, cfg, tmp, staged, sessions, say)
            timings["int8"] = time.perf_counter() - t
        if cfg.fp16:
            t = time.perf_counter()
            _half(cfg, tmp, staged, say)
            timings["fp16"] = time.perf_counter() - t
        del sessions

        t = time.perf_counter()
        raw = build_manifest(src.meta, cfg.name or _default_name(src.meta), Path(cfg.checkpoint).name, src.sha256,
                             staged.sections, staged.files, staged.full, parity_record, int8_record,
                             staged.export_info, cfg.format_version)
        (tmp / MANIFEST_NAME).write_bytes(dump_json(raw))
        say("verifying the bundle (checksums, then a probe through the runtime's ONNX Runtime backend)")
        try:
            bundle = open_bundle(tmp)
        except BundleError as e:
            raise ExportError(f"the freshly written bundle does not verify: {e}") from None
        probe = _probe(bundle, src.model, src.shape, cfg, src.data, src.meta)
        timings["verify"] = time.perf_counter() - t
        staged.sizes["bundle"] = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        say(f"writing {out}" + (" (replacing the old bundle atomically)" if out.exists() else ""))
    timings["total"] = time.perf_counter() - t0
    say(f"done in {timings['total']:.1f} s: {out} ({staged.sizes['bundle'] / 1e6:.2f} MB)")
    return ExportResult(out, raw, rows, desc, chain_full or probe, int8_rows, n_eval, timings, staged.sizes)


def _probe(bundle: Any, model: Any, shape: tuple[int, ...], cfg: ExportConfig, data: Any,
           meta: dict) -> ExitParity:
    """Chained sections through the runtime's backend vs full.onnx (or PyTorch): refuse on disagreement."""
    from ..runtime.backends import BackendOptions, create_backend
    from .parity import compare, torch_logits
    from .samples import preprocess

    if data is not None:
        x = preprocess(data.val_images[:8], meta["data"]["preprocess"])
    else:
        x = np.random.default_rng(1).standard_normal((8, *shape)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backend = create_backend(bundle, "onnxruntime", BackendOptions(intra_op_threads=cfg.threads or 1))
    try:
        logits = backend.run_chain(x)[-1]
        ref = backend.run_reference(x) if bundle.has_full else torch_logits(model, x)[-1]
    finally:
        backend.close()
    row = compare([ref], [logits])[0]
    row.index = bundle.manifest.num_exits
    # a top-1 flip only counts where the reference's top two classes are clearly apart
    top2 = np.sort(ref, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 2 * cfg.parity_tolerance
    flipped = bool(np.any(clear & (ref.argmax(1) != logits.argmax(1))))
    if row.max_abs_diff > cfg.parity_tolerance or flipped:
        what = "full.onnx" if bundle.has_full else "PyTorch"
        raise ExportError(f"bundle refused: the chained sections disagree with {what} on a probe batch "
                          f"(max |Δlogit| {row.max_abs_diff:.3e}, top-1 agreement {row.top1_agreement:.0%})")
    if cfg.int8:
        backend = create_backend(bundle, "onnxruntime", BackendOptions(precision="int8",
                                                                       intra_op_threads=cfg.threads or 1))
        try:
            for k, q in enumerate(backend.run_chain(x), start=1):
                if not np.isfinite(q).all():
                    raise ExportError(f"bundle refused: INT8 section {k} returns non-finite logits on a probe batch")
        finally:
            backend.close()
    return row
