"""Checkpoints: round trip, and refusal of altered, foreign, code-carrying, truncated and newer files."""
from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

import pytest
import torch

from sdedge.checkpoint import FORMAT, load_checkpoint, model_from_checkpoint, save_checkpoint
from sdedge.models import ModelConfig, build_model
from sdedge.common.errors import CheckpointError


def _model_and_meta():
    cfg = ModelConfig("tiny", 10, 1, (16, 16), backbone_kwargs={"width": 4})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    meta = {"model": cfg.to_json(), "data": {"dataset": "digits", "image_size": [16, 16], "in_channels": 1},
            "classes": [str(i) for i in range(10)], "method": {"name": "byot", "alpha": 0.3},
            "accuracy": {"val": {"exits": [0.5, 0.6, 0.7], "ensemble": 0.72}}}
    return cfg, model, meta


@pytest.fixture()
def saved(tmp_path: Path):
    cfg, model, meta = _model_and_meta()
    path = save_checkpoint(tmp_path / "ck.pt", meta, model.state_dict(), train_state={"epochs_done": 3})
    return path, model, meta


def test_round_trip(saved) -> None:
    path, model, meta = saved
    ck = load_checkpoint(path)
    assert {k: v for k, v in ck.meta.items() if k != "versions"} == meta
    assert "torch" in ck.meta["versions"] and ck.train_state == {"epochs_done": 3}
    sd = model.state_dict()
    assert set(ck.state_dict) == set(sd) and all(torch.equal(ck.state_dict[k], sd[k]) for k in sd)
    rebuilt = model_from_checkpoint(path)
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        for a, b in zip(rebuilt(x).logits, model(x).logits):
            assert torch.equal(a, b)
    assert list(path.parent.iterdir()) == [path]  # no temporary files left behind


def test_weights_only_load_is_used(saved) -> None:
    raw = torch.load(saved[0], weights_only=True)
    assert raw["format"] == FORMAT and isinstance(raw["meta"], str) and json.loads(raw["meta"])["classes"]


def test_altered_weights_are_refused(saved) -> None:
    path = saved[0]
    raw = bytearray(path.read_bytes())
    z = zipfile.ZipFile(io.BytesIO(bytes(raw)))
    info = next(i for i in z.infolist() if "/data/" in i.filename and i.file_size > 64)
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
    pos = info.header_offset + 30 + name_len + extra_len + 16  # inside the tensor's bytes
    raw[pos] ^= 0x01
    path.write_bytes(bytes(raw))
    changed = torch.load(path, weights_only=True)["state_dict"]  # torch itself does not notice
    assert any(not torch.equal(changed[k], v) for k, v in saved[1].state_dict().items())
    with pytest.raises(CheckpointError, match="altered or is corrupt"):
        load_checkpoint(path)


def test_altered_metadata_is_refused(saved, tmp_path: Path) -> None:
    path = saved[0]
    obj = torch.load(path, weights_only=True)
    obj["meta"] = obj["meta"].replace('"byot"', '"dsn "')  # same length, different meaning
    torch.save(obj, tmp_path / "meta.pt")
    with pytest.raises(CheckpointError, match="altered or is corrupt"):
        load_checkpoint(tmp_path / "meta.pt")
    del obj["sha256"]
    torch.save(obj, tmp_path / "nodigest.pt")
    with pytest.raises(CheckpointError, match="no content digest"):
        load_checkpoint(tmp_path / "nodigest.pt")


def test_foreign_files_are_refused(saved, tmp_path: Path) -> None:
    _, model, _ = saved
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(CheckpointError, match="not an sdedge checkpoint"):
        load_checkpoint(tmp_path / "bare.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "text.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickled_code_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save({"format": FORMAT, "format_version": 1, "meta": "{}", "state_dict": {}, "x": _Payload(marker)},
               tmp_path / "evil.pt")
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="carries pickled objects .*weights_only=True"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_truncated_file_is_refused(saved) -> None:
    path = saved[0]
    raw = path.read_bytes()
    for cut in (10, len(raw) // 3, len(raw) - 30):
        path.write_bytes(raw[:cut])
        with pytest.raises(CheckpointError, match="not a readable checkpoint"):
            load_checkpoint(path)


def test_newer_format_version_is_refused(saved, tmp_path: Path) -> None:
    obj = torch.load(saved[0], weights_only=True)
    obj["format_version"] = 2
    torch.save(obj, tmp_path / "v2.pt")
    with pytest.raises(CheckpointError, match="format_version 2 is not supported .*upgrade sdedge"):
        load_checkpoint(tmp_path / "v2.pt")


def test_missing_metadata_and_mismatched_weights(tmp_path: Path) -> None:
    cfg, model, meta = _model_and_meta()
    with pytest.raises(CheckpointError, match="lacks"):
        save_checkpoint(tmp_path / "a.pt", {"model": meta["model"]}, model.state_dict())
    sd = dict(model.state_dict())
    sd.pop(next(iter(sd)))
    save_checkpoint(tmp_path / "b.pt", meta, sd)
    with pytest.raises(CheckpointError, match="do not fit its model config"):
        model_from_checkpoint(tmp_path / "b.pt")
    bad = dict(meta, model=dict(meta["model"], backbone="nope"))
    save_checkpoint(tmp_path / "c.pt", bad, model.state_dict())
    with pytest.raises(CheckpointError, match="model config is invalid"):
        model_from_checkpoint(tmp_path / "c.pt")


def test_failed_save_leaves_the_old_file_intact(saved) -> None:
    path, model, meta = saved
    before = path.read_bytes()
    with pytest.raises(ValueError, match="not JSON compliant"):
        save_checkpoint(path, dict(meta, accuracy={"val": float("nan")}), model.state_dict())
    assert path.read_bytes() == before and list(path.parent.iterdir()) == [path]


def test_nan_weights_and_impossible_sizes_are_refused_as_checkpoint_errors(tmp_path: Path) -> None:
    """A digest anyone can recompute proves no sanity: NaN weights and a negative width are refused with a
    CheckpointError (one line), not exported or left to a torch RuntimeError."""
    cfg, model, meta = _model_and_meta()
    sd = model.state_dict()
    bad = dict(sd)
    name = next(k for k, v in sd.items() if v.is_floating_point())
    bad[name] = sd[name].clone().fill_(float("nan"))
    path = save_checkpoint(tmp_path / "nan.pt", meta, bad)
    with pytest.raises(CheckpointError, match=rf"weights hold NaN or Inf \(tensor '{name}'\)"):
        model_from_checkpoint(path)
    neg = json.loads(json.dumps(meta))
    neg["model"]["backbone_kwargs"] = {"width": -4}
    path = save_checkpoint(tmp_path / "neg.pt", neg, sd)
    with pytest.raises(CheckpointError, match="checkpoint model config is invalid") as e:
        model_from_checkpoint(path)
    assert "\n" not in str(e.value)


def test_refusal_messages_are_one_line_and_never_suggest_weights_only_false(tmp_path: Path) -> None:
    import os

    class _Payload:
        def __reduce__(self):
            return (os.system, ("true",))

    torch.save({"format": FORMAT, "x": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"carries pickled objects .*unsupported GLOBAL") as e:
        load_checkpoint(tmp_path / "evil.pt")
    assert "\n" not in str(e.value) and "weights_only set to False" not in str(e.value).replace("`", "")
    (tmp_path / "rand.pt").write_bytes(bytes(range(256)) * 8)  # garbage: corrupt, not "code"
    with pytest.raises(CheckpointError, match="is not a readable checkpoint") as e:
        load_checkpoint(tmp_path / "rand.pt")
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match=r"is a folder; give the checkpoint file"):
        load_checkpoint(tmp_path)
