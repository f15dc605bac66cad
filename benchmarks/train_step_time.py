"""Training step time of each method relative to ``plain``, measured side by side on one machine.

    python benchmarks/train_step_time.py                       # full ResNet-18 (3x32x32, 100 classes) + the preset config
    python benchmarks/train_step_time.py --config full --batch-size 128 --steps 10
    python benchmarks/train_step_time.py --device cuda         # AMP (bf16) on a GPU

Contract
--------
* What a step is: exactly the trainer's optimisation step (``sdedge.train.loop``): forward through
  ``TrainForward`` (``plain`` skips the shallow exit heads, as the trainer does), the method's loss,
  backward, SGD (momentum 0.9, weight decay 5e-4) update. Data loading and augmentation are *not*
  timed: every contender gets the same preloaded, already normalised synthetic batch (seeded), so
  the ratio isolates what the method costs.
* the trainer's default memory format (``default_channels_last``: channels_last on CUDA and AVX-512 CPUs); fp32 on CPU, AMP (bf16 where supported) on CUDA, with a
  device synchronise before every clock read.
* Warm-up: 2 steps per method (not timed). Then ``--steps`` timed steps per method, interleaved one
  step at a time (plain, dsn, byot, plain, ...), so a neighbour's load on a shared machine hits all
  contenders alike. Reported: median and minimum ms per step, images/s (from the median), and the
  ratio to ``plain`` of the medians and of the minimums (the minimum is the least disturbed figure on
  a shared machine).
* Threads: ``--threads`` (default: torch's choice), printed with the CPU model.

Configs: ``full`` is the paper's network (CIFAR ResNet-18, width 64, 3x32x32, 100 classes, 4 exits);
``preset`` is the CPU accuracy preset's (ResNet-18 width 16 on 1x28x28, 10 classes; see
``train_accuracy_preset.py``).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

CONFIGS = {
    "full": dict(backbone="resnet18", width=64, channels=3, size=32, classes=100),
    "preset": dict(backbone="resnet18", width=16, channels=1, size=28, classes=10),
}


class Contender:
    def __init__(self, method: str, cfg: dict, batch: int, device: torch.device, amp: torch.dtype | None,
                 fmt: torch.memory_format, seed: int = 0) -> None:
        from sdedge.losses import build_method_loss, get_method
        from sdedge.models import ModelConfig, build_model
        from sdedge.train.loop import TrainForward

        torch.manual_seed(seed)
        mcfg = ModelConfig(cfg["backbone"], cfg["classes"], cfg["channels"], (cfg["size"], cfg["size"]),
                           backbone_kwargs={"width": cfg["width"]})
        self.net = build_model(mcfg).to(device).to(memory_format=fmt)
        self.loss = build_method_loss(method, get_method(method).resolve(), self.net.num_exits, cfg["classes"],
                                      self.net.section_channels).to(device)
        deepest_only = self.loss.exits_used == [self.net.num_exits - 1]
        if deepest_only:
            for e in self.net.exits[:-1]:
                e.requires_grad_(False)
        self.step_module = TrainForward(self.net, deepest_only).train()
        params = [p for p in self.net.parameters() if p.requires_grad]
        self.opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(batch, cfg["channels"], cfg["size"], cfg["size"], generator=g).to(device).contiguous(
            memory_format=fmt)
        self.y = torch.randint(0, cfg["classes"], (batch,), generator=g).to(device)
        self.device, self.amp = device, amp
        self.times: list[float] = []
        self.params = sum(p.numel() for p in self.net.parameters())

    def step(self) -> None:
        from sdedge.losses import LossBatch
        from sdedge.train.evaluate import autocast_context

        with autocast_context(self.device, self.amp):
            loss, _ = self.loss(LossBatch(self.step_module(self.x), self.y))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def timed(self, n: int) -> None:
        for _ in range(n):
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            self.step()
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - t)


def run_config(name: str, methods: list[str], batch: int, steps: int, device: torch.device,
               amp: torch.dtype | None, fmt: torch.memory_format) -> dict:
    cfg = CONFIGS[name]
    contenders = {m: Contender(m, cfg, batch, device, amp, fmt) for m in methods}
    for c in contenders.values():
        c.timed(2)
        c.times.clear()
    for _ in range(steps):
        for c in contenders.values():
            c.timed(1)
    base = statistics.median(contenders["plain"].times)
    base_min = min(contenders["plain"].times)
    rows = {}
    for m, c in contenders.items():
        med = statistics.median(c.times)
        rows[m] = {"ms_per_step": round(med * 1e3, 2), "images_per_s": round(batch / med, 1),
                   "ratio_to_plain": round(med / base, 3), "min_ratio_to_plain": round(min(c.times) / base_min, 3),
                   "timed_steps": len(c.times),
                   "min_ms": round(min(c.times) * 1e3, 2), "params": c.params}
    return {"config": name, **cfg, "batch_size": batch, "results": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", choices=["full", "preset", "both"], default="both")
    ap.add_argument("--methods", nargs="+", default=["plain", "dsn", "byot"])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per method (interleaved)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    amp = None
    if device.type == "cuda":
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        torch.backends.cudnn.benchmark = True
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"CPU, {torch.get_num_threads()} torch threads"
    from sdedge.calibrate import benchmarking as B

    header = B.provenance("benchmarks/train_step_time.py", argv, ("sdedge", "torch", "numpy"))
    methods = list(dict.fromkeys(["plain", *args.methods]))
    from sdedge.train.config import default_channels_last

    fmt = torch.channels_last if default_channels_last(device) else torch.contiguous_format
    print(f"train step time: {header['machine']}; device {device_name}; torch {torch.__version__}; "
          f"{'channels_last' if fmt == torch.channels_last else 'NCHW'}; "
          f"{'AMP ' + str(amp).replace('torch.', '') if amp else 'fp32'}; "
          f"{args.steps} interleaved timed steps per method after 2 warm-up steps")
    out = []
    for name in (["full", "preset"] if args.config == "both" else [args.config]):
        r = run_config(name, methods, args.batch_size, args.steps, device, amp, fmt)
        out.append(r)
        print(f"\n{name}: {r['backbone']} width {r['width']}, {r['channels']}x{r['size']}x{r['size']}, "
              f"{r['classes']} classes, batch {r['batch_size']}")
        print(f"{'method':<8} {'median ms':>10} {'min ms':>8} {'img/s':>8} {'x plain (median)':>17} "
              f"{'x plain (min)':>14} {'params':>8}")
        for m, row in r["results"].items():
            print(f"{m:<8} {row['ms_per_step']:>10.1f} {row['min_ms']:>8.1f} {row['images_per_s']:>8.0f} "
                  f"{row['ratio_to_plain']:>16.2f}x {row['min_ratio_to_plain']:>13.2f}x {row['params'] / 1e6:>7.2f}M")
    if args.json:
        from sdedge.common.jsonio import write_json_atomic

        write_json_atomic(args.json, {**header, "device": device_name, "runs": out}, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
