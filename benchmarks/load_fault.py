"""Load and fault test: a real ``sdedge serve`` under mixed valid/invalid load, then kill -9 during export/calibrate.

    python benchmarks/load_fault.py [--bundle B --checkpoint C] [--requests 10000] [--clients 16] [--kills 20]

Without ``--bundle``/``--checkpoint`` a tiny 3-exit model is trained on the built-in digits (as the test
fixtures do) into ``--workdir``.

Contract:

* **Load.** ``sdedge serve`` runs in its own process on 127.0.0.1 (one session, ``--threads`` ORT threads,
  max batch 4, body cap 0.25 MiB). ``--clients`` threads each keep one keep-alive ``http.client``
  connection (re-opened whenever the server closes it) and send ``--requests`` requests in total, drawn
  with a fixed seed from a mix of valid requests (JSON FP32, JSON UINT8 batch 2, binary FP32, with a
  threshold; every valid infer carries ``budget_ms``) and invalid ones (malformed JSON, unknown model,
  unknown input, wrong datatype, wrong shape, NaN token, huge finite values, batch above the cap, lying
  binary header, binary sizes that do not add up, wrong Content-Type, broken gzip, bad budget, unknown
  route, a body over the cap announced by Content-Length on a raw socket). Each kind has one expected
  status. Counted: sent, answered (a status came back), wrong status, connection errors (reset, refused,
  timeout: the server failed to answer), 5xx (none is expected: no request in the mix should fault the
  server; a valid infer answered 504 because its deadline passed in the queue is the scheduler's designed
  answer, counted apart as ``deadline_expired_504`` and as a missed deadline; so is an invalid request whose fault
  only preprocessing finds, huge finite values that overflow once normalised, when its deadline passes in the
  queue first: ``invalid_expired_504``). RSS is the server's ``VmRSS`` from ``/proc/<pid>/status`` after a warm-up share of the load
  and at the end (``VmHWM`` too). Deadline-met share: valid infers whose ``deadline_met`` is true.
  The clients run on the same machine as the server (loopback), so client CPU competes with it.
* **Faults.** On a copy of the bundle, ``sdedge export CKPT -o COPY --force`` and ``sdedge calibrate
  COPY`` run as subprocesses; one full run of each gives its duration T; then each is started ``--kills``
  times and SIGKILLed at a time drawn uniformly in the i-th of ``--kills`` equal slices of [0, 1.05 T]
  (stratified, so the kills cover the whole run). After every kill the bundle must open and verify
  (``open_bundle``: manifest, every checksum) and load in an ``AnytimeSession``. Counted: kills made,
  kills that hit while a staging folder existed (mid-write), bundles valid after the kill, staging
  folders left over; finally one more run of each must finish (exit 0) on top of the leftovers.
"""
from __future__ import annotations

import argparse
import gzip
import http.client
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
ENV.pop("PYTHONPATH", None)


# -- helpers ----------------------------------------------------------------------------------------------------------------
def rss_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (kB) of a process, from /proc/<pid>/status."""
    out = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    return out


def staging_dirs(bundle: Path) -> list[Path]:
    return sorted(bundle.parent.glob(f"{bundle.name}.tmp-*")) + sorted(bundle.parent.glob(f"{bundle.name}.old-*"))


def bundle_ok(bundle: Path) -> tuple[bool, str]:
    """Does the bundle open, verify every checksum, and load in a session? (ok, what failed)."""
    from sdedge.runtime import AnytimeSession, open_bundle

    try:
        b = open_bundle(bundle)
        with AnytimeSession(b, backend="onnxruntime", intra_op_threads=1, warmup=0) as s:
            s.infer_all_exits(__import__("numpy").zeros((1,) + s.input_shape, "float32"))
        return True, ""
    except Exception as e:  # noqa: BLE001 - reported, not raised
        return False, f"{type(e).__name__}: {e}"


# -- the request mix --------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Req:
    kind: str
    expect: int
    method: str
    path: str
    body: bytes | None
    headers: dict
    valid_infer: bool = False
    # the fault shows only when the session preprocesses the input (values that overflow once normalised), so a
    # request whose deadline passes in the queue first is answered 504 before anything looks at its values
    found_when_run: bool = False
    raw_socket: bool = False  # sent by hand: the head only, with a Content-Length above the cap


def request_mix(model: str, chw: tuple[int, int, int], budget_ms: float, cap: int) -> list[tuple[Req, int]]:
    """(request, weight) pairs; about 60 % valid."""
    c, h, w = chw
    n = c * h * w
    infer = f"/v2/models/{model}/infer"
    js = {"Content-Type": "application/json"}

    def doc(value: Any = 0.1, shape=None, dtype="FP32", name="image", params=None, data=None) -> dict:
        shape = shape or [1, c, h, w]
        count = 1
        for d in shape:
            count *= d
        return {"inputs": [{"name": name, "datatype": dtype, "shape": shape,
                            "data": data if data is not None else [value] * count}],
                "parameters": params if params is not None else {"budget_ms": budget_ms}}

    def j(d: dict) -> bytes:
        return json.dumps(d).encode()

    head = j({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, c, h, w],
                          "parameters": {"binary_data_size": 4 * n}}],
              "parameters": {"budget_ms": budget_ms, "binary_data_output": True}})
    tensor = struct.pack(f"<{n}f", *([0.2] * n))
    binh = {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(head))}
    raw = doc(shape=[2, h, w, c], dtype="UINT8", data=[7] * (2 * n))
    mix = [
        (Req("valid json fp32", 200, "POST", infer, j(doc()), js, True), 20),
        (Req("valid json uint8 x2", 200, "POST", infer, j(raw), js, True), 8),
        (Req("valid binary fp32", 200, "POST", infer, head + tensor, binh, True), 20),
        (Req("valid threshold", 200, "POST", infer,
             j(doc(params={"budget_ms": budget_ms, "threshold": 0.6, "criterion": "entropy"})), js, True), 8),
        (Req("health", 200, "GET", "/v2/health/ready", None, {}), 4),
        (Req("malformed JSON", 400, "POST", infer, b'{"inputs": [', js), 3),
        (Req("unknown model", 404, "POST", "/v2/models/nope/infer", j(doc()), js), 3),
        (Req("unknown input", 400, "POST", infer, j(doc(name="pixels")), js), 3),
        (Req("wrong datatype", 400, "POST", infer, j(doc(dtype="FP16")), js), 3),
        (Req("wrong shape", 400, "POST", infer, j(doc(shape=[1, c, h, w + 1])), js), 3),
        (Req("NaN token", 400, "POST", infer, j(doc()).replace(b"0.1", b"NaN", 1), js), 3),
        (Req("huge finite values", 400, "POST", infer, j(doc(value=3e38)), js, found_when_run=True), 2),
        (Req("batch above cap", 400, "POST", infer, j(doc(shape=[5, c, h, w])), js), 2),
        (Req("lying header length", 400, "POST", infer, head + tensor,
             dict(binh, **{"Inference-Header-Content-Length": str(len(head) + 4 * n + 9)})), 3),
        (Req("binary sizes do not add up", 400, "POST", infer, head + tensor[:-4], binh), 3),
        (Req("wrong content type", 415, "POST", infer, j(doc()), {"Content-Type": "text/plain"}), 2),
        (Req("broken gzip", 400, "POST", infer, b"not gzip", dict(js, **{"Content-Encoding": "gzip"})), 2),
        (Req("gzip valid", 200, "POST", infer, gzip.compress(j(doc())), dict(js, **{"Content-Encoding": "gzip"}), True), 2),
        (Req("bad budget", 400, "POST", infer, j(doc(params={"budget_ms": -1})), js), 2),
        (Req("unknown route", 404, "GET", "/v3/nothing", None, {}), 1),
        (Req("body over cap", 413, "POST", infer, None, {"Content-Length": str(cap * 4)}, raw_socket=True), 2),
    ]
    return mix


@dataclass
class LoadReport:
    requests: int
    clients: int
    sent: int = 0
    answered: int = 0
    wrong_status: int = 0
    connection_errors: int = 0
    server_errors_5xx: int = 0
    valid_infers: int = 0
    deadline_met: int = 0
    deadline_expired_504: int = 0  # valid infers whose deadline passed in the queue (answered 504, not run)
    invalid_expired_504: int = 0  # invalid ones found only when run (Req.found_when_run) that expired first
    deadline_met_share: float | None = None
    rss_kb_before: int | None = None
    rss_kb_after: int | None = None
    rss_growth_kb: int | None = None
    hwm_kb_after: int | None = None
    seconds: float = 0.0
    requests_per_s: float = 0.0
    server_alive_after: bool = False
    server_ready_after: bool = False
    by_kind: dict = field(default_factory=dict)
    wrong_examples: list = field(default_factory=list)


def _send_raw_over_cap(port: int, r: Req, timeout: float) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall((f"{r.method} {r.path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   f"Content-Length: {r.headers['Content-Length']}\r\n\r\n").encode())
        data = b""
        while b"\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionError("closed without an answer")
            data += chunk
        return int(data.split(b" ", 2)[1])


class ServerProcess:
    """``sdedge serve BUNDLE --port 0 ARGS...`` in a subprocess; the port is the one it prints once it listens.

    The server binds port 0 itself (nothing picks a free port, releases it and binds it again: another
    process could take it in between). Its output (stderr and stdout, merged) is read by a thread: each
    line goes to ``log`` (when given) and to ``lines``; ``wait_line`` waits for a line that says something.
    """

    def __init__(self, bundle: Path, args: Sequence[str] = (), log: Path | None = None, model: str = "m",
                 cap: int = 0, env: dict[str, str] | None = None) -> None:
        from sdedge.runtime.server.runner import grpc_listening_port, listening_port

        self._listening_port = listening_port
        self._grpc_listening_port = grpc_listening_port
        self.model = model
        self.cap = cap
        self.port: int | None = None
        self.grpc_port: int | None = None  # the gRPC endpoint's port (a free one the OS picks, unless args say)
        if "--grpc-port" not in args:
            args = [*args, "--grpc-port", "any"]
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._log = open(log, "w", encoding="utf-8") if log else None
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sdedge.cli", "serve", str(bundle), "--port", "0", "--model-name", model, *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV if env is None else env)
        self._reader = threading.Thread(target=self._read, name="sdedge-serve-output", daemon=True)
        self._reader.start()

    @classmethod
    def for_load(cls, bundle: Path, threads: int = 1, max_batch: int = 4, max_body_mb: float = 0.25,
                 model: str = "m", log: Path | None = None) -> "ServerProcess":
        """The load test's server: one session, ``threads`` ORT threads, max batch 4, body cap 0.25 MiB."""
        return cls(bundle, ["--threads", str(threads), "--warmup", "1", "--max-batch", str(max_batch), "--max-body-mb",
                            str(max_body_mb), "--body-timeout", "10", "--log-level", "error"],
                   log=log, model=model, cap=int(max_body_mb * 1024 * 1024))

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if self._log is not None:
                self._log.write(line)
                self._log.flush()
            with self._cond:
                self.lines.append(line)
                if self.port is None:
                    self.port = self._listening_port(line)
                if self.grpc_port is None:
                    self.grpc_port = self._grpc_listening_port(line)
                self._cond.notify_all()
        with self._cond:
            self.lines.append("")  # end of output: the process closed it (exited)
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "".join(self.lines)

    def wait_line(self, needle: str, timeout: float = 60.0) -> bool:
        """Wait until a line of the server's output contains ``needle``; False at the timeout or the output's end."""
        def seen() -> bool:
            return any(needle in line for line in self.lines) or (bool(self.lines) and self.lines[-1] == "")

        with self._cond:
            self._cond.wait_for(seen, timeout)
            return any(needle in line for line in self.lines)

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Wait for the listening line (the bound port), then for ``/v2/health/ready`` to answer 200."""
        end = time.monotonic() + timeout
        with self._cond:
            self._cond.wait_for(lambda: self.port is not None or (bool(self.lines) and self.lines[-1] == ""), timeout)
        if self.port is None:
            raise RuntimeError(f"sdedge serve printed no listening line (exit status {self.proc.poll()}):\n"
                               f"{self.output[-3000:]}")
        while True:  # the socket listens: connections wait in its backlog until the app has started
            if self.proc.poll() is not None:
                raise RuntimeError(f"sdedge serve exited with {self.proc.returncode}:\n{self.output[-3000:]}")
            try:
                if self.get("/v2/health/ready")[0] == 200:
                    return
            except OSError:
                pass
            if time.monotonic() > end:
                raise RuntimeError("sdedge serve did not become ready")
            time.sleep(0.1)

    def get(self, path: str) -> tuple[int, bytes]:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            c.request("GET", path)
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(30)
        if self._log is not None:
            self._log.close()
        return self.proc.returncode


def run_load(bundle: Path, requests: int = 10_000, clients: int = 16, budget_ms: float = 20.0, seed: int = 0,
             threads: int = 1, warmup_share: float = 0.1, timeout: float = 30.0, log: Path | None = None,
             say: Callable[[str], None] = print) -> LoadReport:
    """Drive a fresh ``sdedge serve`` with ``requests`` mixed requests from ``clients`` threads."""
    from sdedge.runtime import open_bundle

    chw = tuple(open_bundle(bundle).manifest.input.shape[1:])
    srv = ServerProcess.for_load(bundle, threads=threads, log=log)
    rep = LoadReport(requests, clients)
    try:
        srv.wait_ready()
        mix = request_mix(srv.model, chw, budget_ms, srv.cap)
        rng = random.Random(seed)
        plan = rng.choices([m[0] for m in mix], weights=[m[1] for m in mix], k=requests)
        lock = threading.Lock()
        next_i = 0
        warm_n = int(requests * warmup_share)
        warm_done = threading.Event()
        stats: Counter = Counter()
        kinds: dict[str, Counter] = {}

        def record(r: Req, status: int | None, met: bool | None, err: str | None) -> None:
            with lock:
                k = kinds.setdefault(r.kind, Counter())
                k["sent"] += 1
                stats["sent"] += 1
                if status is None:
                    stats["conn"] += 1
                    k["conn"] += 1
                    if len(rep.wrong_examples) < 10:
                        rep.wrong_examples.append(f"{r.kind}: connection error {err}")
                    return
                stats["answered"] += 1
                if r.valid_infer and status == 504:  # expired in the queue: the scheduler's deadline answer, by design
                    stats["valid"] += 1
                    stats["expired"] += 1
                    return
                if r.found_when_run and status == 504 and "deadline" in str(err):  # expired before it was looked at
                    stats["expired_invalid"] += 1
                    k["expired"] += 1
                    return
                if status >= 500:
                    stats["5xx"] += 1
                if status != r.expect:
                    stats["wrong"] += 1
                    k["wrong"] += 1
                    if len(rep.wrong_examples) < 10:
                        rep.wrong_examples.append(f"{r.kind}: expected {r.expect}, got {status}: {err}")
                if r.valid_infer and status == 200:
                    stats["valid"] += 1
                    stats["met"] += bool(met)

        def client() -> None:
            nonlocal next_i
            conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)
            while True:
                with lock:
                    i = next_i
                    next_i += 1
                if i >= requests:
                    break
                if i == warm_n:
                    warm_done.set()
                r = plan[i]
                status = met = err = None
                try:
                    if r.raw_socket:
                        status = _send_raw_over_cap(srv.port, r, timeout)
                    else:
                        conn.request(r.method, r.path, r.body, r.headers)
                        resp = conn.getresponse()
                        body = resp.read()
                        status = resp.status
                        if resp.getheader("connection", "").lower() == "close":
                            conn.close()
                        if status != 200:
                            err = body[:200].decode("utf-8", "replace")
                        elif r.valid_infer:
                            hl = resp.getheader("inference-header-content-length")
                            head = json.loads(body[:int(hl)] if hl else body)
                            met = head.get("parameters", {}).get("deadline_met")
                except (OSError, http.client.HTTPException) as e:
                    err = f"{type(e).__name__}: {e}"
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)
                record(r, status, met, err)
            conn.close()

        pool = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
        t0 = time.perf_counter()
        for t in pool:
            t.start()
        warm_done.wait(timeout=600)
        rep.rss_kb_before = rss_kb(srv.proc.pid)["VmRSS"]
        say(f"  warm-up of {warm_n} requests done; server VmRSS {rep.rss_kb_before / 1024:.1f} MiB")
        for t in pool:
            t.join()
        rep.seconds = time.perf_counter() - t0
        mem = rss_kb(srv.proc.pid)
        rep.rss_kb_after, rep.hwm_kb_after = mem["VmRSS"], mem["VmHWM"]
        rep.rss_growth_kb = rep.rss_kb_after - rep.rss_kb_before
        rep.sent, rep.answered, rep.wrong_status = stats["sent"], stats["answered"], stats["wrong"]
        rep.connection_errors, rep.server_errors_5xx = stats["conn"], stats["5xx"]
        rep.valid_infers, rep.deadline_met = stats["valid"], stats["met"]
        rep.deadline_expired_504 = stats["expired"]
        rep.invalid_expired_504 = stats["expired_invalid"]
        rep.deadline_met_share = stats["met"] / stats["valid"] if stats["valid"] else None
        rep.requests_per_s = rep.sent / rep.seconds
        rep.by_kind = {k: dict(v) for k, v in sorted(kinds.items())}
        rep.server_alive_after = srv.get("/v2/health/live")[0] == 200
        rep.server_ready_after = srv.get("/v2/health/ready")[0] == 200
    finally:
        srv.stop()
    return rep


# -- kill -9 during export and calibrate ----------------------------------------------------------------------------------
@dataclass
class KillReport:
    command: str
    full_run_s: float
    kills: int = 0
    finished_before_kill: int = 0
    killed_mid_write: int = 0
    valid_after_kill: int = 0
    invalid: list = field(default_factory=list)
    leftover_staging_max: int = 0
    final_run_ok: bool = False
    final_valid: bool = False
    leftover_staging_after_final: int = 0
    kill_times_s: list = field(default_factory=list)


def _run_and_kill(cmd: list[str], bundle: Path, delay: float) -> tuple[bool, bool]:
    """Start ``cmd``, SIGKILL it after ``delay`` s; (finished on its own first, a staging folder existed at the kill)."""
    before = set(staging_dirs(bundle))
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    try:
        proc.wait(delay)
        return True, False
    except subprocess.TimeoutExpired:
        mid = bool(set(staging_dirs(bundle)) - before)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return False, mid


def run_kills(command: str, cmd: list[str], bundle: Path, kills: int, seed: int = 0,
              say: Callable[[str], None] = print) -> KillReport:
    """Kill ``cmd`` (which rewrites ``bundle``) ``kills`` times at stratified random points; check the bundle each time."""
    t = time.perf_counter()
    first = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=900)
    if first.returncode != 0:
        raise RuntimeError(f"{command} failed before any kill: {first.stderr[-2000:]}")
    rep = KillReport(command, time.perf_counter() - t)
    rng = random.Random(seed)
    for i in range(kills):
        delay = rng.uniform(i / kills, (i + 1) / kills) * 1.05 * rep.full_run_s
        finished, mid = _run_and_kill(cmd, bundle, delay)
        ok, why = bundle_ok(bundle)
        rep.kills += 1
        rep.kill_times_s.append(round(delay, 3))
        rep.finished_before_kill += finished
        rep.killed_mid_write += mid
        rep.valid_after_kill += ok
        if not ok:
            rep.invalid.append(f"kill {i} at {delay:.2f} s: {why}")
        rep.leftover_staging_max = max(rep.leftover_staging_max, len(staging_dirs(bundle)))
        say(f"  {command}: kill {i + 1}/{kills} at {delay:5.2f} s"
            f"{' (had finished)' if finished else ' mid-write' if mid else ''}: bundle {'valid' if ok else 'BROKEN ' + why}")
    final = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=900)
    rep.final_run_ok = final.returncode == 0
    if not rep.final_run_ok:
        rep.invalid.append(f"final run failed: {final.stderr[-1000:]}")
    rep.final_valid = bundle_ok(bundle)[0]
    rep.leftover_staging_after_final = len(staging_dirs(bundle))
    return rep


def export_cmd(checkpoint: Path, bundle: Path) -> list[str]:
    return [sys.executable, "-m", "sdedge.cli", "export", str(checkpoint), "-o", str(bundle), "--force",
            "--threads", "1", "-q"]


def calibrate_cmd(bundle: Path) -> list[str]:
    return [sys.executable, "-m", "sdedge.cli", "calibrate", str(bundle), "--threads", "1", "--profile-runs", "20",
            "--overhead-runs", "20", "-q"]


def tiny_model(workdir: Path) -> tuple[Path, Path]:
    """Train the tiny 3-exit digits model and export it (the test fixtures' recipe)."""
    import torch

    torch.set_num_threads(1)
    from sdedge.export import ExportConfig, export_bundle
    from sdedge.train import TrainConfig, train

    res = train(TrainConfig(dataset="digits", backbone="tiny", method="byot", epochs=4, batch_size=64, lr=0.2,
                            output=str(workdir / "run"), seed=0, device="cpu", progress=False,
                            backbone_kwargs={"width": 8}))
    out = export_bundle(ExportConfig(checkpoint=str(res.best_checkpoint), output=str(workdir / "bundle")))
    return Path(res.best_checkpoint), Path(out.bundle_path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="bundle to serve and to copy for the kills")
    ap.add_argument("--checkpoint", type=Path, help="checkpoint the bundle was exported from (for the export kills)")
    ap.add_argument("--workdir", type=Path, default=Path("load_fault_work"))
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--budget-ms", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=1, help="server ORT threads")
    ap.add_argument("--kills", type=int, default=20, help="kills of export, and of calibrate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the report here")
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    if (args.bundle is None) != (args.checkpoint is None):
        ap.error("give both --bundle and --checkpoint, or neither (a tiny model is trained)")
    if args.bundle is None:
        print("training the tiny model ...")
        args.checkpoint, args.bundle = tiny_model(args.workdir)
    from sdedge.calibrate.benchmarking import provenance

    header = provenance("benchmarks/load_fault.py", argv)
    start_load = header["load_average_at_start"]
    print(f"machine: {header['machine']}; load average {f'{start_load[0]:.2f}' if start_load else 'n/a'} at start")
    print(f"load: {args.requests} requests from {args.clients} clients, budget {args.budget_ms:g} ms")
    load = run_load(args.bundle, args.requests, args.clients, args.budget_ms, args.seed, args.threads,
                    log=args.workdir / "server.log")
    copy = args.workdir / "kill" / "bundle"
    shutil.rmtree(copy.parent, ignore_errors=True)
    copy.parent.mkdir(parents=True)
    shutil.copytree(args.bundle, copy)
    print(f"faults: kill -9 of export and of calibrate, {args.kills} each, on {copy}")
    exp = run_kills("export", export_cmd(args.checkpoint, copy), copy, args.kills, args.seed)
    cal = run_kills("calibrate", calibrate_cmd(copy), copy, args.kills, args.seed + 1)
    print()
    print(f"requests sent {load.sent}, answered {load.answered}, wrong status {load.wrong_status}, "
          f"connection errors {load.connection_errors}, 5xx {load.server_errors_5xx} "
          f"({load.requests_per_s:.0f} req/s over {load.seconds:.1f} s)")
    print(f"server RSS {load.rss_kb_before / 1024:.1f} MiB after warm-up -> {load.rss_kb_after / 1024:.1f} MiB at the "
          f"end ({load.rss_growth_kb / 1024:+.1f} MiB; peak {load.hwm_kb_after / 1024:.1f} MiB); alive "
          f"{load.server_alive_after}, ready {load.server_ready_after}")
    share = "n/a" if load.deadline_met_share is None else f"{load.deadline_met_share:.1%}"
    print(f"deadline met: {load.deadline_met}/{load.valid_infers} valid infers ({share}) at {args.budget_ms:g} ms; "
          f"expired in the queue (504): {load.deadline_expired_504} valid, {load.invalid_expired_504} invalid ones "
          "that only running finds")
    for r in (exp, cal):
        print(f"{r.command}: kills survived with a valid bundle {r.valid_after_kill}/{r.kills} "
              f"(mid-write {r.killed_mid_write}, finished before the kill {r.finished_before_kill}; full run "
              f"{r.full_run_s:.1f} s); staging folders left: max {r.leftover_staging_max}, after a final run "
              f"{r.leftover_staging_after_final}; final run ok {r.final_run_ok}, valid {r.final_valid}")
    for line in load.wrong_examples + exp.invalid + cal.invalid:
        print("  !", line)
    if args.json:
        from sdedge.common.jsonio import write_json_atomic

        write_json_atomic(args.json, {**header, "load": asdict(load), "export": asdict(exp), "calibrate": asdict(cal)},
                          indent=2)
    bad = (load.answered != load.sent or load.wrong_status or load.connection_errors or load.server_errors_5xx
           or exp.valid_after_kill != exp.kills or cal.valid_after_kill != cal.kills
           or not (exp.final_run_ok and cal.final_run_ok))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
