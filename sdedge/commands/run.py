"""``sdedge run BUNDLE IMAGE...``: answer a few images from the shell with an AnytimeSession.

Images are PNG/JPEG (read with Pillow, converted to the model's channels and resized to its input
size with a note) or ``.npy`` arrays (anything ``AnytimeSession.infer`` accepts: raw uint8 HWC or
preprocessed float CHW, one image or a batch). One line per image: class, confidence, exit, latency.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .argtypes import add_precision_argument, thread_count


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("run", help="classify images with a bundle (anytime, under a budget or a threshold)",
                       description="Classify PNG/JPEG/.npy images with a bundle, section by section, stopping "
                                   "at the exit chosen by the budget or the confidence threshold.")
    p.add_argument("bundle", help="bundle folder (made by `sdedge export`)")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="PNG/JPEG files or .npy arrays")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--budget-ms", type=float, default=None,
                   help="latency budget per image in milliseconds: the deepest exit that fits")
    g.add_argument("--threshold", default=None,
                   help="confidence threshold in [0, 1] (first exit at least this sure), or 'calibrated' "
                        "for calibration.json's per-exit thresholds; default: run to the deepest exit")
    p.add_argument("--criterion", choices=["max_prob", "entropy", "margin"], default=None,
                   help="confidence criterion (default max_prob, or the calibrated one with --threshold calibrated)")
    p.add_argument("--backend", choices=["auto", "onnxruntime", "tensorrt"], default="auto",
                   help="inference backend (default auto: TensorRT engines if built, else onnxruntime)")
    add_precision_argument(p)
    p.add_argument("--threads", type=thread_count, default=None, help="onnxruntime intra-op threads (default: all CPUs)")
    p.add_argument("--answer", choices=["last", "ensemble"], default="last",
                   help="answer with the last exit run, or the mean of the exits run so far")
    p.add_argument("--top", type=int, default=1, help="also print the top-N classes per image")
    return p


def _threshold(text: str | None) -> Any:
    if text is None or text == "calibrated":
        return text
    try:
        return float(text)
    except ValueError:
        from ..common.errors import PolicyError

        raise PolicyError(f"--threshold must be a number in [0, 1] or 'calibrated', got {text!r}") from None


# Pillow's grey modes wider than 8 bits and their full scale: 16-bit PNGs load as I;16 (or I, 32-bit, still 16-bit
# data); convert("L") would clip them at 255 instead of scaling them
_WIDE_GREY = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I": 65535.0}


def load_image(path: Path, shape: tuple[int, int, int], channel_order: str) -> tuple[Any, str]:
    """An image file as an array ``infer`` accepts, and a note on what was done to it."""
    import numpy as np

    from ..common.errors import InputError

    if path.is_dir():
        raise InputError(f"{path} is a folder, not an image file")
    if not path.is_file():
        raise InputError(f"image file {path} does not exist")
    if path.suffix.lower() == ".npy":
        try:
            return np.load(path, allow_pickle=False), ""
        except (ValueError, OSError) as e:
            raise InputError(f"{path} is not a readable .npy array ({e})") from None
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise InputError("reading PNG/JPEG needs Pillow: `pip install 'sdedge[runtime]'` (or pass .npy arrays)") from None
    c, h, w = shape
    try:
        with Image.open(path) as im:
            im.load()
            notes = []
            mode = "L" if c == 1 else "RGB"
            if im.mode in _WIDE_GREY:  # 16/32-bit grey: scaled to 8 bits (Pillow's convert would clip at 255)
                notes.append(f"{im.mode}->8 bit")
                wide = np.asarray(im, dtype=np.float64)
                im = Image.fromarray(np.clip(np.rint(wide / _WIDE_GREY[im.mode] * 255), 0, 255).astype(np.uint8))
            if im.mode != mode:
                notes.append(f"{im.mode}->{mode}")
                im = im.convert(mode)
            if im.size != (w, h):
                notes.append(f"resized {im.size[0]}x{im.size[1]}->{w}x{h}")
                im = im.resize((w, h), Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except Image.DecompressionBombError as e:
        raise InputError(f"{path} is too large to decode safely ({e})") from None
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{path} is not a readable image ({e})") from None
    if c == 3 and channel_order == "BGR":
        arr = arr[..., ::-1]
    return np.ascontiguousarray(arr), ", ".join(notes)


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..runtime.options import SessionOptions
    from ..runtime.session import AnytimeSession

    options = SessionOptions(backend=args.backend, precision=args.precision, intra_op_threads=args.threads,
                             answer=args.answer, criterion=args.criterion or "max_prob")
    session = AnytimeSession(args.bundle, options)
    threshold = _threshold(args.threshold)
    print(f"# {session.describe_backend()}: {session.num_exits} exits, input {list(session.input_shape)}, "
          f"{'calibrated' if session.calibration else 'uncalibrated'}", file=sys.stderr)
    for name in args.images:
        arr, note = load_image(Path(name), session.input_shape, session.manifest.preprocess.channel_order)
        out = session.infer(arr, budget_ms=args.budget_ms, threshold=threshold, criterion=args.criterion)
        results = out if isinstance(out, list) else [out]
        for j, r in enumerate(results):
            tag = name if len(results) == 1 else f"{name}[{j}]"
            met = "" if r.deadline_met is None else ("  deadline met" if r.deadline_met else "  DEADLINE MISSED")
            print(f"{tag}: {r.class_name} (class {r.label})  confidence {r.confidence:.3f}  exit {r.exit_index}/"
                  f"{session.num_exits} ({r.stopped_by})  {r.latency_ms:.3f} ms{met}" + (f"  [{note}]" if note else ""))
            if args.top > 1:
                order = np.argsort(-r.probabilities)[:args.top]
                print("    " + ", ".join(f"{session.classes[i]} {r.probabilities[i]:.3f}" for i in order))
    session.close()
    return 0
