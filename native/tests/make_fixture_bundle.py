"""Make the small real bundle the native tests run on (``$SDEDGE_TEST_BUNDLE``).

    python native/tests/make_fixture_bundle.py OUT [--epochs 4] [--calibrate] [--reuse] [--v2 OUT2]

Trains the ``tiny`` backbone (width 8, 3 exits) on the built-in digits with BYOT, exactly as the pytest
fixtures ``tiny_checkpoint`` / ``tiny_bundle`` of ``tests/conftest.py`` do, exports it with the library's
``export_bundle`` (parity-checked, full.onnx included) and, with ``--calibrate``, calibrates it in place
(calibration.json + a latency profile). With ``--v2 OUT2`` the same checkpoint is also exported as bundle
format version 2 (exit heads as graphs of their own) to OUT2, calibrated alike (``$SDEDGE_TEST_BUNDLE_V2``:
the native tests run on it too). Seconds on one core. Prints the bundle's path (only that) on
stdout, so a shell can do ``export SDEDGE_TEST_BUNDLE="$(python native/tests/make_fixture_bundle.py DIR)"``.
Needs the training extras (torch): ``pip install -e ".[all]"``.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path

# the tiny model's training settings (tests/conftest.py's tiny_checkpoint fixture reads them from here)
TINY = dict(dataset="digits", backbone="tiny", method="byot", batch_size=64, lr=0.2, seed=0, device="cpu",
            progress=False, backbone_kwargs={"width": 8})


def make_bundle(out: Path, epochs: int = 4, calibrate: bool = False, v2: Path | None = None) -> Path:
    import torch

    from sdedge.export import ExportConfig, export_bundle
    from sdedge.train import TrainConfig, train

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="sdedge-fixture-run-") as run:
        result = train(TrainConfig(epochs=epochs, output=run, **TINY))
        exported = export_bundle(ExportConfig(checkpoint=str(result.best_checkpoint), output=str(out), force=True,
                                              threads=1))
        if v2 is not None:
            export_bundle(ExportConfig(checkpoint=str(result.best_checkpoint), output=str(v2), force=True, threads=1,
                                       format_version=2))
    bundle = Path(exported.bundle_path)
    if calibrate:
        from sdedge.calibrate import calibrate_bundle

        for b in (bundle, v2) if v2 is not None else (bundle,):
            calibrate_bundle(b, intra_op_threads=1)
    return bundle


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="the bundle folder to write (replaced if present)")
    p.add_argument("--epochs", type=int, default=4, help="training epochs (default 4, as the pytest fixture)")
    p.add_argument("--calibrate", action="store_true", help="also calibrate it (calibration.json, profile)")
    p.add_argument("--reuse", action="store_true", help="keep OUT when it already holds a manifest.json")
    p.add_argument("--v2", type=Path, metavar="OUT2", help="also export the same checkpoint as format version 2 here")
    args = p.parse_args(argv)
    out = args.out.resolve()
    v2 = args.v2.resolve() if args.v2 else None
    if args.reuse and (out / "manifest.json").is_file() and (v2 is None or (v2 / "manifest.json").is_file()):
        print(out)
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(sys.stderr):  # training and export report on stderr; stdout is the path
        bundle = make_bundle(out, args.epochs, args.calibrate, v2)
    print(bundle.resolve())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
