"""The command line refusing what it must: bad numbers, unwritable or self-destructive output paths, images it
cannot read faithfully. Each refusal is one line on stderr and exit status 2, before any work is done."""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np
import pytest

from sdedge.cli import main
from sdedge.commands import argtypes


def _refused(capsys, argv: list[str], needle: str) -> None:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err and needle in err[-1] and "Traceback" not in "\n".join(err), err


@pytest.mark.parametrize("kind, good, bad", [
    (argtypes.thread_count, ["1", "1024"], ["0", "-1", "1025", "100000", "x"]),
    (argtypes.non_negative_int, ["0", "7"], ["-1", "1.5"]),
    (argtypes.positive_ms, ["0.5", "1e6"], ["0", "-1", "inf", "nan", "x"]),
    (argtypes.burn_count, ["0", "1"], ["-1", "100000"]),
])
def test_argument_types(kind, good, bad) -> None:
    for text in good:
        kind(text)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError):
            kind(text)


@pytest.mark.parametrize("argv, needle", [
    (["train", "--width", "0"], "argument --width: expected a positive integer"),
    (["train", "--cutout", "-1"], "argument --cutout: expected a non-negative integer"),
    (["quickstart", "--epochs", "0"], "argument --epochs: expected a positive integer"),
    (["quickstart", "--budget-ms", "0"], "argument --budget-ms: expected a positive finite number"),
    (["quickstart", "--images", "-1"], "argument --images: expected a positive integer"),
    (["eval", "ck.pt", "--batch-size", "0"], "argument --batch-size: expected a positive integer"),
    (["run", "b", "x.png", "--threads", "100000"], "argument --threads: expected a number of threads in 1..1024"),
    (["bench", "b", "--warmup", "-1"], "argument --warmup: expected a non-negative integer"),
    (["bench", "b", "--budgets", "1,inf"], "argument --budgets: expected positive finite"),
    (["prune", "ck.pt", "--target-macs", "0.5", "--section-macs", "1,1,1"], "not allowed with argument --target-macs"),
])
def test_bad_numbers_and_contradictions_are_refused_by_the_parser(capsys, argv, needle) -> None:
    _refused(capsys, argv, needle)


def test_a_report_path_inside_the_bundle_or_unwritable_is_refused_before_any_work(capsys, tiny_bundle: Path,
                                                                                   tmp_path: Path) -> None:
    cal = tiny_bundle / "manifest.json"
    before = hashlib.sha256(cal.read_bytes()).hexdigest()
    _refused(capsys, ["calibrate", str(tiny_bundle), "--dry-run", "--json", str(cal)], "is inside the bundle")
    _refused(capsys, ["bench", str(tiny_bundle), "--json", str(cal)], "is inside the bundle")
    assert hashlib.sha256(cal.read_bytes()).hexdigest() == before
    afile = tmp_path / "afile"
    afile.write_text("x")
    _refused(capsys, ["bench", str(tiny_bundle), "--json", str(afile / "b.json")], "does not exist")
    _refused(capsys, ["calibrate", str(tiny_bundle), "--plot", str(tmp_path)], "is a folder")


def test_an_output_path_the_system_refuses_is_one_line_not_a_traceback(capsys, tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    _refused(capsys, ["quickstart", "--short", "--no-plot", "-o", str(afile)], "error: File exists")


def test_prune_refuses_to_write_over_its_own_input(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from sdedge.common.errors import SdedgeError
    from sdedge.compress import PruneConfig, prune

    run = tmp_path / "run"
    with pytest.raises(SdedgeError, match="holds the checkpoint being pruned"):
        prune(PruneConfig(checkpoint=str(run / "best.pt"), output=str(run)))


def test_run_reads_16_bit_images_scaled_and_refuses_bombs_and_folders(tmp_path: Path, monkeypatch) -> None:
    from PIL import Image

    from sdedge.commands.run import load_image
    from sdedge.common.errors import InputError

    Image.fromarray(np.full((8, 8), 32768, np.uint16)).save(tmp_path / "g16.png")
    arr, note = load_image(tmp_path / "g16.png", (1, 8, 8), "L")
    assert arr.dtype == np.uint8 and int(arr[0, 0]) == 128 and "8 bit" in note  # scaled, not clipped to 255
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1 600 pixels: over twice the limit, a "bomb"
    with pytest.raises(InputError, match="too large to decode safely"):
        load_image(tmp_path / "big.png", (1, 8, 8), "L")
    with pytest.raises(InputError, match="is a folder, not an image file"):
        load_image(tmp_path, (1, 8, 8), "L")
