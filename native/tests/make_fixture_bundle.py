"""Make the small real bundle the native tests run on (``$SDEDGE_TEST_BUNDLE``).

    python native/tests/make_fixture_bundle.py OUT [--epochs 4] [--calibrate] [--reuse]

Trains the ``tiny`` backbone (width 8, 3 exits) on the built-in digits with BYOT, exactly as the pytest
fixtures ``tiny_checkpoint`` / ``tiny_bundle`` of ``tests/conftest.py`` do, exports it with the library's
``export_bundle`` (parity-checked, full.onnx included) and, with ``--calibrate``, calibrates it in place
(calibration.json + a latency profile). Seconds on one core. Prints the bundle's path (only that) on
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


def make_bundle(out: Path, epochs: int = 4, calibrate: bool = False) -> Path:
    import torch

    from sdedge.export import ExportConfig, export_bundle
    from sdedge.train import TrainConfig, train

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="sdedge-fixture-run-") as run:
        result = train(TrainConfig(epochs=epochs, output=run, **TINY))
        exported = export_bundle(ExportConfig(checkpoint=str(result.best_checkpoint), output=str(out), force=True,
                                              threads=1))
    bundle = Path(exported.bundle_path)
    if calibrate:
        from sdedge.calibrate import calibrate_bundle

        calibrate_bundle(bundle, intra_op_threads=1)
    return bundle


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="the bundle folder to write (replaced if present)")
    p.add_argument("--epochs", type=int, default=4, help="training epochs (default 4, as the pytest fixture)")
    p.add_argument("--calibrate", action="store_true", help="also calibrate it (calibration.json, profile)")
    p.add_argument("--reuse", action="store_true", help="keep OUT when it already holds a manifest.json")
    args = p.parse_args(argv)
    out = args.out.resolve()
    if args.reuse and (out / "manifest.json").is_file():
        print(out)
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(sys.stderr):  # training and export report on stderr; stdout is the path
        bundle = make_bundle(out, args.epochs, args.calibrate)
    print(bundle.resolve())
    return 0


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
