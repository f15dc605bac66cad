"""Parity: the exported sections on ONNX Runtime (CPU) against PyTorch, exit by exit.

For every exit: the largest absolute logit difference and the share of samples whose top-1 class is
the same. Sections are chained exactly as the runtime chains them (``features_k`` of section k is the
input of section k+1), so an error in one section shows up in every later exit too.

Tolerance: 1e-3 on the max absolute logit difference by default. Float32 kernels that sum in a different
order (BN folded into the convs, another convolution algorithm) move logits by 1e-6…1e-4 on the
registered backbones; a wrong weight, a missed BN or a wrong tensor hookup moves them by 1e-1 or more.
Top-1 agreement is reported but not enforced: two nearly tied classes may swap under any float change.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from ..runtime.backends.base import Backend

DEFAULT_TOLERANCE = 1e-3


@dataclass
class ExitParity:
    index: int  # 1-based exit
    max_abs_diff: float
    top1_agreement: float
    samples: int

    def to_json(self) -> dict:
        return asdict(self)


def ort_session(path_or_bytes: str | os.PathLike | bytes, threads: int | None = None, optimize: bool = True) -> Any:
    """An ONNX Runtime CPU session; ``optimize=False`` turns graph optimisations off, so a QDQ graph runs as the
    ONNX spec defines it (QuantizeLinear, DequantizeLinear, float ops) rather than through integer kernels."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        so.intra_op_num_threads = int(threads)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    src = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])


class GraphChain(Backend):
    """Section graphs on ONNX Runtime sessions behind the runtime's backend interface.

    Export checks and quantizes the staged graphs before any bundle (manifest, checksums) exists, so it
    cannot open them with :class:`~sdedge.runtime.backends.onnxruntime.OnnxRuntimeBackend`; this runner
    gives those graphs the same :meth:`~sdedge.runtime.backends.base.Backend.run_chain`. Outputs are
    positional, as the exporter writes them: ``(features, logits)``, the last section ``(logits,)``. A
    section given as a ``(trunk, head)`` pair of sessions (format version 2) runs both: ``(features,)``,
    then ``(logits,)`` from the features.
    """

    name = "onnxruntime-graphs"

    def __init__(self, sessions: Sequence[Any]) -> None:
        self._sessions = list(sessions)

    @property
    def num_sections(self) -> int:
        return len(self._sessions)

    def upload(self, x: np.ndarray) -> np.ndarray:
        return x

    def run_section(self, index: int, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
        sess = self._sessions[index - 1]
        if isinstance(sess, tuple):
            trunk, head = sess
            feats = trunk.run(None, {trunk.get_inputs()[0].name: x})[0]
            return feats, head.run(None, {head.get_inputs()[0].name: feats})[0]
        outs = sess.run(None, {sess.get_inputs()[0].name: x})
        return (None if index == len(self._sessions) else outs[0]), outs[-1]

    def take_rows(self, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x[rows])


def chain_logits(sessions: Sequence[Any], x: np.ndarray, batch: int = 256,
                 collect_inputs: bool = False) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Run the section sessions in a chain; return per-exit logits (and, optionally, each section's input)."""
    runner = GraphChain(sessions)
    k = runner.num_sections
    logits: list[list[np.ndarray]] = [[] for _ in range(k)]
    inputs: list[list[np.ndarray]] = [[] for _ in range(k)]

    def keep_input(section: int, _ms: float, features: Any) -> None:
        if section < k:
            inputs[section].append(features)  # the input of the next section

    for start in range(0, len(x), batch):
        f = np.ascontiguousarray(x[start:start + batch], dtype=np.float32)
        if collect_inputs:
            inputs[0].append(f)
        for i, lg in enumerate(runner.run_chain(f, on_section=keep_input if collect_inputs else None)):
            logits[i].append(lg)
    return ([np.concatenate(c) for c in logits],
            [np.concatenate(c) for c in inputs] if collect_inputs else [])


def torch_logits(model: Any, x: np.ndarray, batch: int = 256) -> list[np.ndarray]:
    """Every exit's logits from the PyTorch model (eval mode, float32, CPU)."""
    import torch

    outs: list[list[np.ndarray]] = []
    with torch.inference_mode():
        for start in range(0, len(x), batch):
            res = model(torch.from_numpy(np.ascontiguousarray(x[start:start + batch])))
            if not outs:
                outs = [[] for _ in res.logits]
            for i, lg in enumerate(res.logits):
                outs[i].append(lg.float().numpy())
    return [np.concatenate(c) for c in outs]


def compare(reference: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> list[ExitParity]:
    rows = []
    for i, (a, b) in enumerate(zip(reference, got), start=1):
        diff = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0
        agree = float(np.mean(a.argmax(1) == b.argmax(1))) if len(a) else 1.0
        rows.append(ExitParity(i, diff, agree, int(len(a))))
    return rows


def format_table(rows: Sequence[ExitParity], tolerance: float | None = None, title: str = "parity") -> str:
    lines = [f"{title}: ONNX Runtime (CPU) vs PyTorch" + (f", tolerance {tolerance:g}" if tolerance else ""),
             f"{'exit':>4}  {'max |Δlogit|':>12}  {'top-1 agree':>11}  {'samples':>7}  status"]
    for r in rows:
        ok = "ok" if tolerance is None or r.max_abs_diff <= tolerance else "FAIL"
        lines.append(f"{r.index:>4}  {r.max_abs_diff:>12.3e}  {r.top1_agreement:>11.2%}  {r.samples:>7}  {ok}")
    return "\n".join(lines)
