"""Training and evaluation throughput and memory of this project's ViT, torchvision's
VisionTransformer of the same configuration, and LLB on our frozen ViT (the authors' sizes
unless set), into <out-dir>/benchmark.json; on CUDA also the ViT train step's MFU.

    python benchmark.py                           # ViT-B/16 at 224 px; batch 8 on CPU, 128 on CUDA
    python benchmark.py --device cuda --compile   # the same, compiled

How each figure is measured: measure, prepare, peak_memory and vit_train_flops below.
"""
import argparse
import contextlib
import ctypes
import gc
import json
import os
import statistics
import sys
import threading
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.vision_transformer import VisionTransformer

import llb
import recipes
import vit
from inputs import pretrained
from util import cli
from util.cli import at_least

MODELS = ("vit", "torchvision_vit", "llb")
LR, WEIGHT_DECAY = 1e-4, 0.05  # AdamW's, for every model
NUM_CLASSES = 1000
STEPS = {"cpu": (1, 3), "cuda": (10, 30)}  # (warm-up, timed) steps per phase
# Dense (no sparsity) bf16 tensor-core peak FLOP/s, matched as substrings of the device name.
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}


def vit_config(args) -> vit.ViTConfig:
    """The benchmarked architecture: --model (default base; a --pretrained name gives its
    architecture, its weights are not loaded), --image-size (default 224), --patch-size."""
    if args.pretrained:
        fields_ = pretrained.architecture(args.pretrained)
    else:
        fields_ = vit.PRESETS[args.model or "base"] | dict(image_size=224)
    given = dict(image_size=args.image_size, patch_size=args.patch_size)
    given = {k: v for k, v in given.items() if v is not None}
    return vit.ViTConfig(**(fields_ | given | dict(num_classes=NUM_CLASSES)))


def build_model(name: str, args) -> nn.Module:
    """One of MODELS, on the CPU, freshly initialised (weights do not change timings)."""
    c = vit_config(args)
    if name == "torchvision_vit":
        return VisionTransformer(image_size=c.image_size, patch_size=c.patch_size,
                                 num_layers=c.depth, num_heads=c.heads, hidden_dim=c.width,
                                 mlp_dim=c.mlp_dim, num_classes=c.num_classes)
    if name == "llb":
        return llb.LLB(vit.ViT(c), llb_config(args))
    return vit.ViT(c)


def llb_config(args) -> llb.LLBConfig:
    """LLB's settings: llb.LLBConfig's defaults (the authors' recipe) where not given."""
    given = dict(num_objects=args.num_objects, depth=args.depth, layer=args.layer)
    return llb.LLBConfig(**{k: v for k, v in given.items() if v is not None})


def vit_train_flops(c: vit.ViTConfig, batch: int) -> float:
    """Model FLOPs of one ViT training step (a multiply-add = 2 FLOPs), T = N + 1 tokens:
    per image forward = 2 * (matmul params per token) * T           with per block 4 D^2 + 2 D M
                      + 2 * 2 * T^2 * D per block                   (q k^T and A v)
                      + 2 * N * (P^2 C D)                           (patch embedding)
                      + 2 * D * K                                   (head, class token only)
    training = 3 x forward (backward = 2 x forward); recomputation is not counted."""
    N, T, D = c.num_patches, c.num_patches + 1, c.width
    per_block = 2 * (4 * D * D + 2 * D * c.mlp_dim) * T + 2 * 2 * T * T * D
    embed = 2 * N * c.patch_size ** 2 * c.channels * D
    forward = c.depth * per_block + embed + 2 * D * c.num_classes
    return 3 * forward * batch


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")  # resident pages -> bytes


@contextlib.contextmanager
def peak_memory(device):
    """A block's `added["mb"]`: the MiB it adds at its peak. CUDA: max_memory_allocated after
    reset_peak_memory_stats, minus memory_allocated before. CPU (Linux): the process's peak RSS,
    sampled every 5 ms by a thread (and at the end), minus the RSS before."""
    gc.collect()
    added = {}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        yield added
        torch.cuda.synchronize(device)
        added["mb"] = (torch.cuda.max_memory_allocated(device) - start) / 2 ** 20
        return
    try:  # glibc keeps freed heap pages; give them back so that the RSS baseline is honest
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    start = peak = _rss()
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.wait(0.005):
            peak = max(peak, _rss())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    yield added
    stop.set()
    thread.join()
    added["mb"] = (max(peak, _rss()) - start) / 2 ** 20


def _time(step, device) -> float:
    """Seconds of one call of step(), the GPU's queue drained before and after."""
    _sync(device)
    t0 = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - t0


def prepare(name: str, args, device, x, y) -> dict:
    """One of MODELS on `device` and its "train" and "eval" step functions on the batch (x, y):
    vit and torchvision_vit train every parameter (a full fine-tune), llb its branch only."""
    torch.manual_seed(args.seed)
    model = build_model(name, args).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")
    autocast = recipes.autocast(args.amp, device)
    net = torch.compile(model) if args.compile else model
    is_llb = isinstance(model, llb.LLB)

    def train_step():  # forward + loss + backward + optimizer step
        with autocast:
            out = net(x)
        loss = model.loss(out, y)[0] if is_llb else F.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    def eval_step():  # forward only
        with torch.no_grad(), autocast:
            net(x)

    return dict(net=net, train=train_step, eval=eval_step,
                params=sum(p.numel() for p in model.parameters()),
                trainable_params=sum(p.numel() for p in params))


def measure(args, device, x, y, warmup: int, steps: int) -> dict:
    """Per model of MODELS: img/s = batch / MEDIAN step time, ms per step, peak MiB (building it
    and its warm-up train steps), parameters, on a random batch (nothing is learned). Each phase
    (train, then eval: a forward in eval mode under no_grad) runs `warmup` untimed steps per
    model (where --compile compiles: on CPU the first model's memory then includes the
    compiler's own), then `steps` timed steps interleaved, so that other work on the machine
    slows all alike."""
    # Prime the runtime (autograd engine, thread pools, oneDNN/BLAS buffers) with one step of a
    # 1-block ViT, so that its one-time allocations do not count against the first model.
    prime = vit.ViT(vit_config(args), depth=1).to(device)
    with recipes.autocast(args.amp, device):
        out = prime(x)
    F.cross_entropy(out.float(), y).backward()
    del prime, out

    bench, peak_mb = {}, {}
    for name in MODELS:  # built one at a time, each then kept; memory = what this one adds
        with peak_memory(device) as added:
            bench[name] = b = prepare(name, args, device, x, y)
            for _ in range(warmup):
                _time(b["train"], device)
        peak_mb[name] = added["mb"]
    times = {}
    for phase in ("train", "eval"):
        for b in bench.values():
            b["net"].train(phase == "train")
            for _ in range(warmup if phase == "eval" else 0):  # train was warmed up above
                _time(b["eval"], device)
        times[phase] = {m: [] for m in MODELS}
        for _ in range(steps):  # interleaved: step i of every model, then step i + 1
            for m, b in bench.items():
                times[phase][m].append(_time(b[phase], device))
    results = {}
    for m, b in bench.items():
        train_s = statistics.median(times["train"][m])
        eval_s = statistics.median(times["eval"][m])
        results[m] = dict(train_img_s=len(x) / train_s, eval_img_s=len(x) / eval_s,
                          peak_mem_mb=peak_mb[m],  # MiB added by building and warm-up training
                          train_ms_per_step=1e3 * train_s, eval_ms_per_step=1e3 * eval_s,
                          params=b["params"], trainable_params=b["trainable_params"])
    return results


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--model", choices=list(vit.PRESETS), help="ViT preset (default base)")
    add("--pretrained", help="released weights' name: their architecture (weights not loaded)")
    add("--image-size", type=at_least(1), help="default 224")
    add("--patch-size", type=at_least(1), help="default: the preset's")
    add("--batch-size", type=at_least(1), help="default: 8 on cpu, 128 on cuda")
    add("--device", choices=("cuda", "cpu"), default=recipes.default_device(),
        help="default: cuda when available")
    add("--amp", choices=("bf16", "fp16", "off"), help="default: bf16 on cuda, off on cpu")
    add("--compile", action="store_true", help="torch.compile every model")
    add("--num-objects", type=at_least(2), help="LLB's O (default: llb.LLBConfig's)")
    add("--llb-depth", dest="depth", type=at_least(2), help="LLB layers (default: LLBConfig's)")
    add("--layer", type=at_least(1), help="LLB's branch point l (default: depth - 1)")
    add("--steps", type=at_least(1), help="timed steps per phase (default: 3 on cpu, 30 on cuda)")
    add("--seed", type=int, default=0)
    add("--out-dir", default="runs/benchmark", help="where benchmark.json goes")
    add("--debug", action="store_true", help="show tracebacks of errors")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but this machine has no CUDA GPU")
    if args.amp is None:
        args.amp = recipes.default_amp(args.device)
    if args.batch_size is None:
        args.batch_size = 128 if args.device == "cuda" else 8
    if args.steps is None:
        args.steps = STEPS[args.device][1]
    if args.pretrained and (args.model or args.patch_size):
        p.error("--model/--patch-size come from --pretrained's architecture; drop them")
    return args


def main(argv=None) -> dict:
    """Measure MODELS, print a table, write <out_dir>/benchmark.json and return its content."""
    args = parse_args(argv)
    device = torch.device(args.device)
    warmup = STEPS[device.type][0]
    c = vit_config(args)
    g = torch.Generator().manual_seed(args.seed)  # the same batch for every model
    x = torch.randn(args.batch_size, c.channels, c.image_size, c.image_size, generator=g).to(device)
    y = torch.randint(0, c.num_classes, (args.batch_size,), generator=g).to(device)
    name = (torch.cuda.get_device_name(device) if device.type == "cuda"
            else f"cpu ({torch.get_num_threads()} thread{'s' * (torch.get_num_threads() > 1)})")
    results = measure(args, device, x, y, warmup, args.steps)

    tv = results["torchvision_vit"]
    for r in results.values():  # > 1: faster than torchvision's ViT of the same configuration
        r["train_vs_torchvision"] = r["train_img_s"] / tv["train_img_s"]
        r["eval_vs_torchvision"] = r["eval_img_s"] / tv["eval_img_s"]
    # LLB's train step relative to a full fine-tune of the same backbone (< 1: LLB is cheaper)
    llb_vs_vit = results["llb"]["train_ms_per_step"] / results["vit"]["train_ms_per_step"]
    mfu, mfu_note = None, "CUDA only"
    if device.type == "cuda":
        peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
        mfu_note = (f"vs dense bf16 peak {peak:.3g} FLOP/s" if peak
                    else f"unknown peak FLOP/s for {name}")
        mfu_note += "" if args.amp == "bf16" else f" (amp {args.amp}: not bf16 matmuls)"
        if peak:  # model FLOPs per second of the ViT train step / the GPU's peak
            seconds = results["vit"]["train_ms_per_step"] / 1e3
            mfu = vit_train_flops(c, args.batch_size) / seconds / peak
    results["vit"]["mfu"] = mfu

    report = {
        "device": name, "results": results,
        "llb_train_step_vs_vit": llb_vs_vit, "mfu_note": mfu_note,
        "config": dict(vars(c), llb=asdict(llb_config(args).for_backbone(c.depth))),
        "batch_size": args.batch_size, "amp": args.amp, "compile": args.compile,
        "warmup_steps": warmup, "timed_steps": args.steps, "statistic": "median step time",
        "order": "interleaved per step: " + ", ".join(MODELS),
        "peak_mem": ("cuda max_memory_allocated" if device.type == "cuda" else "cpu peak RSS")
        + " minus the value before building the model; build + warm-up train steps",
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    report = json.loads(json.dumps(report))  # exactly what the file holds
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "benchmark.json").write_text(json.dumps(report, indent=2) + "\n")

    print(f"\n{c.depth}-block ViT, D={c.width}, {c.image_size} px, P={c.patch_size}, "
          f"batch {args.batch_size}, amp {args.amp}{', compiled' if args.compile else ''}, "
          f"{name}, median of {args.steps} steps")
    print(f"{'model':<17}{'train img/s':>12}{'eval img/s':>12}{'train vs tv':>12}{'eval vs tv':>12}"
          f"{'peak MB':>10}")
    for m, r in results.items():
        print(f"{m:<17}{r['train_img_s']:>12.2f}{r['eval_img_s']:>12.2f}"
              f"{r['train_vs_torchvision']:>11.2f}x{r['eval_vs_torchvision']:>11.2f}x"
              f"{r['peak_mem_mb']:>10.0f}")
    print(f"LLB train step / ViT full fine-tune step: {llb_vs_vit:.2f}")
    print(f"ViT train MFU: {'n/a' if mfu is None else f'{100 * mfu:.1f}%'} ({mfu_note})")
    print(f"written to {out / 'benchmark.json'}")
    return report


if __name__ == "__main__":
    sys.exit(cli.run(main))
