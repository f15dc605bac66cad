"""Coverage-guided fuzzing (atheris / libFuzzer) of the server's request decoding path.

What is fuzzed, per input: the body decompression the app applies for ``Content-Encoding: gzip/deflate``
(``sdedge.runtime.server.app._decompress``), the split of the body by ``Inference-Header-Content-Length``
(binary tensor extension), JSON parsing, and the validation of the request and its tensors
(``sdedge.runtime.server.protocol.parse_infer_request``). The only exception allowed out is
:class:`ProtocolError` with a 4xx status; anything else is a crash libFuzzer reports and saves.

Input layout (so the fuzzer controls headers and body with one byte string)::

    byte 0, bits 0-1: Inference-Header-Content-Length: 0 absent, 1 decimal of bytes 1-2 (uint16 LE),
                      2 the text of bytes 1-4 (latin-1: garbage headers), 3 the length of the JSON part
                      (up to and including the first "}\\n" of the decompressed body: an honest client)
          bit 2:      the body is compressed: bit 3 picks deflate (1) or gzip (0)
    then the body.

Run by hand (seeds in ``fuzz/corpus/request_decoding``; new inputs go to a temporary copy unless a
corpus folder is given)::

    python fuzz/fuzz_request_decoding.py -max_total_time=600
    python fuzz/fuzz_request_decoding.py my_corpus/ -runs=1000000
    python fuzz/fuzz_request_decoding.py --write-seeds     # regenerate the seed corpus

CI runs it for ~10 s (``tests/test_fuzz.py``); it needs ``pip install atheris`` (the test extra).
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import struct
import sys
import tempfile
import zlib
from pathlib import Path

SEEDS = Path(__file__).resolve().parent / "corpus" / "request_decoding"
CAP = 1 << 20  # decompressed-body cap used here (the server's is --max-body-mb)
CHW = (3, 4, 5)
MAX_BATCH = 4


def encode_case(body: bytes, header: str = "none", value: int | bytes = 0, compress: str | None = None) -> bytes:
    """One fuzzer input in the layout of the module docstring (used to write the seeds)."""
    flags = {"none": 0, "int": 1, "text": 2, "json": 3}[header]
    if compress:
        flags |= 4 | (8 if compress == "deflate" else 0)
        body = zlib.compress(body) if compress == "deflate" else gzip.compress(body)
    extra = b""
    if header == "int":
        extra = struct.pack("<H", int(value))
    elif header == "text":
        extra = (bytes(value) + b"    ")[:4]
    return bytes([flags]) + extra + body


def decode_case(data: bytes) -> tuple[bytes, str | None, str | None]:
    """(body, Inference-Header-Content-Length or None, content encoding or None) of one fuzzer input."""
    if not data:
        return b"", None, None
    flags, rest = data[0], data[1:]
    mode = flags & 3
    header: str | None = None
    if mode == 1:
        header, rest = str(struct.unpack("<H", (rest[:2] + b"\0\0")[:2])[0]), rest[2:]
    elif mode == 2:
        header, rest = rest[:4].decode("latin-1"), rest[4:]
    elif mode == 3:
        header = JSON_END  # resolved on the (decompressed) body by json_end_header()
    enc = ("deflate" if flags & 8 else "gzip") if flags & 4 else None
    return rest, header, enc


JSON_END = "<json-end>"


def json_end_header(body: bytes) -> str:
    """The honest header length: the JSON part ends at the first ``}\\n`` (what the seeds write)."""
    end = body.find(b"}\n")
    return str(end + 2 if end >= 0 else len(body))


def seeds() -> dict[str, bytes]:
    c, h, w = CHW
    n = c * h * w
    fp32 = {"id": "a", "inputs": [{"name": "image", "datatype": "FP32", "shape": [1, c, h, w], "data": [0.5] * n}],
            "parameters": {"budget_ms": 5, "threshold": 0.5, "criterion": "margin"}}
    raw = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": [2, h, w, c], "data": [[[[7] * c] * w] * h] * 2}],
           "outputs": [{"name": "label"}, {"name": "probabilities", "parameters": {"binary_data": True}}]}
    head = json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, c, h, w],
                                   "parameters": {"binary_data_size": 4 * n}}],
                       "parameters": {"binary_data_output": True}}).encode() + b"\n"
    binary = head + struct.pack(f"<{n}f", *([0.25] * n))
    return {
        "json_fp32": encode_case(json.dumps(fp32).encode()),
        "json_uint8_nested": encode_case(json.dumps(raw).encode()),
        "binary_fp32_exact": encode_case(binary, "json"),
        "binary_fp32_int_header": encode_case(binary, "int", len(head)),
        "gzip_json": encode_case(json.dumps(fp32).encode(), compress="gzip"),
        "deflate_binary": encode_case(binary, "json", compress="deflate"),
        "garbage_header": encode_case(binary, "text", b"12x\x00"),
    }


def write_seeds(folder: Path = SEEDS) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in seeds().items():
        (folder / name).write_bytes(data)


def main(argv: list[str]) -> None:
    if "--write-seeds" in argv:
        write_seeds()
        print(f"wrote {len(seeds())} seeds to {SEEDS}")
        return
    import atheris  # noqa: PLC0415 - only the fuzz run needs it

    with atheris.instrument_imports(include=["sdedge.runtime.server.protocol", "sdedge.runtime.server.app"]):
        from sdedge.runtime.server.app import _decompress
        from sdedge.runtime.server.protocol import ModelIO, ProtocolError, parse_infer_request

    io = ModelIO(input_name="image", chw=CHW, classes=("a", "b", "c"), max_batch=MAX_BATCH)

    def one_input(data: bytes) -> None:
        body, header, enc = decode_case(data)
        try:
            if enc is not None:
                body = _decompress(body, enc, CAP)
            if header == JSON_END:
                header = json_end_header(body)
            req = parse_infer_request(body, header, io)
        except ProtocolError as e:
            if not 400 <= e.status < 500:
                raise AssertionError(f"ProtocolError with status {e.status}: {e}") from None
            return
        if not (1 <= req.batch <= MAX_BATCH and req.array.dtype.name in ("float32", "uint8")):
            raise AssertionError(f"accepted a request the model cannot take: {req.array.dtype} {req.array.shape}")

    args = list(argv)
    if not any(os.path.isdir(a) for a in args[1:] if not a.startswith("-")):
        work = Path(tempfile.mkdtemp(prefix="sdedge-fuzz-corpus-"))
        if SEEDS.is_dir():
            shutil.copytree(SEEDS, work, dirs_exist_ok=True)
        args.append(str(work))
        print(f"corpus: {work} (seeded from {SEEDS})", file=sys.stderr)
    atheris.Setup(args, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
