"""How many ImageNet-sized JPEGs one loader core turns into model inputs per second.

    python benchmark_data.py                   # 150 generated 500x375 photos, JPEG quality 90
    python benchmark_data.py --images DIR      # your own JPEGs (e.g. ImageNet val files)
    python benchmark_data.py --device cuda     # (d)'s GPU part timed on the GPU

One process with one thread (what one DataLoader worker does), from a file path to the
normalized float tensor a worker hands to the batch, for the evaluation transform and each
--augment's training transform (ImageNet's, 224 px), per pipeline:
  (a) this project: data.load_uint8 (torchvision.io for JPEG) -> v2's uint8 tensor kernels,
      RandAugment on a PIL view (transforms.AsPIL), one-pass normalize (transforms.ToNormalized);
  (b) the peer, torchvision's reference: PIL decode (data.load_rgb) -> the same v2 steps on PIL
      images -> PILToTensor -> ToDtype -> Normalize (built here by peer_steps);
  (c) v2 on tensors throughout (RandAugment's tensor kernels), to show why (a) uses PIL there;
  (d) what training on CUDA runs in a loader process: (a) up to the uint8 crop; the GPU does
      RandAugment and the normalize on the batch (inputs/on_device.py), timed apart on --device;
and decode alone (PIL, torchvision.io): the floor. It also prints each pipeline's difference
from (b) on the same draws, and the loader cores that --gpus GPUs each fed --gpu-img-s need.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch.utils.data import default_collate
from torchvision.transforms import v2

import data
import vit
from inputs import transforms
from inputs.on_device import BatchRandAugment
from util.cli import at_least

REFERENCE = "(b) PIL + v2, reference"
DEVICE_ROW = "(d) on CUDA, the loader's part"  # uint8 out; RandAugment + normalize on the GPU
PHOTO = (375, 500)  # (H, W): ImageNet's average photo
# An LLB training step on ViT-B/16 at 224 px is about 88 GFLOP per image (the frozen backbone's
# forward, 17.6 GMAC, plus the branch's six blocks forward and backward): an H100 at 40% of its
# 989 TFLOP/s dense bf16 peak runs about 4,500 of them a second.
GPU_IMG_S = 4500
OCTAVES = ((4, 50), (8, 30), (16, 20), (32, 16), (64, 14), (128, 16), (256, 14))  # (cells, amp)


def make_photos(root: Path, *, count: int, seed: int) -> list[str]:
    """`count` 500x375 JPEGs at quality 90, ~100 KB each (ImageNet's average is ~110 KB):
    colour noise over seven octaves (1/f-like), flat patches with sharp edges, sensor noise."""
    g = torch.Generator().manual_seed(seed)
    root.mkdir(parents=True)
    paths = []
    for i in range(count):
        img = torch.full((1, 3, *PHOTO), 128.0)  # (1, 3, H, W)
        for cells, amplitude in OCTAVES:
            grid = torch.randn(1, 3, cells * 3 // 4, cells, generator=g) * amplitude
            img += F.interpolate(grid, size=PHOTO, mode="bicubic", align_corners=False)
        for _ in range(8):  # objects: flat patches with sharp edges
            top = int(torch.randint(0, PHOTO[0] - 40, (1,), generator=g))
            left = int(torch.randint(0, PHOTO[1] - 40, (1,), generator=g))
            h, w = torch.randint(20, 200, (2,), generator=g).tolist()
            patch = img[..., top:top + h, left:left + w]  # a view: edited in place
            patch.mul_(0.3).add_(torch.rand(1, 3, 1, 1, generator=g) * 180)
        img += 16 * torch.randn(img.shape, generator=g)
        pixels = img[0].clamp(0, 255).round().byte().permute(1, 2, 0).numpy()  # (H, W, 3)
        paths.append(str(root / f"{i:04d}.jpg"))
        Image.fromarray(pixels).save(paths[-1], quality=90)
    return paths


def peer_steps(transform: v2.Compose, *, v2_normalize: bool) -> list:
    """`transform`'s steps with RandAugment unwrapped from transforms.AsPIL (it then runs on
    whatever it is given), and with `v2_normalize` v2's ToDtype -> Normalize for
    transforms.ToNormalized."""
    steps = []
    for step in transform.transforms:
        if isinstance(step, transforms.AsPIL):
            steps.append(step.transform)
        elif isinstance(step, transforms.ToNormalized) and v2_normalize:
            steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(step.mean, step.std)]
        else:
            steps.append(step)
    return steps


def jpeg_rows(augments: list[str]) -> dict:
    """{row label: (load, transform or None, device tail or None)}: the decode floors, then per
    transform (a)-(d); a row is timed without its tail (the loader's part)."""
    rows = {"decode only, PIL": (data.load_rgb, None, None),
            "decode only, torchvision.io": (data.load_uint8, None, None)}
    made = {a: transforms.make_transforms("imagenet", image_size=None, eval_spec=None, augment=a)
            for a in augments}  # (train, val, size): the same val transform for every augment
    by_name = {"eval": made[augments[0]][1]} | {f"train {a}": made[a][0] for a in augments}
    for name, tf in by_name.items():
        rows[f"{name}: (a) this project"] = (data.load_uint8, tf, None)
        reference = peer_steps(tf, v2_normalize=True)
        rows[f"{name}: {REFERENCE}"] = (data.load_rgb, v2.Compose(reference), None)
        if any(isinstance(step, transforms.AsPIL) for step in tf.transforms):
            tensors = peer_steps(tf, v2_normalize=False)
            rows[f"{name}: (c) v2 on tensors"] = (data.load_uint8, v2.Compose(tensors), None)
        rows[f"{name}: {DEVICE_ROW}"] = (data.load_uint8, *transforms.device_split(tf))
    return rows


def time_rows(rows: dict, paths: list[str], *, rounds: int) -> dict:
    """Best img/s of each row over `rounds` rounds after a short warm-up. Every row draws the
    same augmentation per image (the CPU generator seeded by the image index); rows are
    interleaved, the order reversed every other round, and each row's best round is kept
    (another process on the core only slows a round down; medians moved by 15% between runs on
    a shared VM)."""
    rates = {label: [] for label in rows}
    for r in range(rounds + 1):
        order = list(rows) if r % 2 else list(rows)[::-1]  # cancel order effects
        for label in order:
            load, transform, _ = rows[label]
            batch = paths[:10] if r == 0 else paths  # round 0 warms up
            start = time.perf_counter()
            for i, path in enumerate(batch):
                torch.default_generator.manual_seed(i)  # the same augmentation in every row
                image = load(path)
                if transform is not None:
                    transform(image)
            if r > 0:
                rates[label].append(len(batch) / (time.perf_counter() - start))
    return {label: max(rate) for label, rate in rates.items()}


def time_tails(rows: dict, paths: list[str], device: torch.device) -> dict:
    """ms per image of each (d) row's device tail on `device`, on batches of 64 of its inputs."""
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    result = {}
    for label, (load, transform, tail) in rows.items():
        if tail is None:
            continue
        batch = default_collate([transform(load(p)) for p in (paths * 64)[:64]])  # (64, 3, H, W)
        batch = batch.to(device)
        tail.to(device)  # a module: moved in place, so agreement() runs before this
        times = []
        for _ in range(4):  # the first warms up
            start = time.perf_counter()
            tail(batch)
            sync()
            times.append(time.perf_counter() - start)
        result[label] = statistics.median(times[1:]) * 1000 / len(batch)
    return result


def agreement(rows: dict, paths: list[str]) -> dict:
    """Per transform, (a), (c) and (d) (its tail run per image) vs (b), on the same draws: uint8
    levels (mean, 99th percentile, max) and the share of images on which a fixed random
    ViT-Ti/16 (head re-initialized, not zero) gives one top-1. (d)'s BatchRandAugment draws a
    batch at once, not as v2 does, so for it (c) stands in: v2's draws on the same kernels."""
    torch.manual_seed(0)
    model = vit.create_vit("tiny", image_size=224, patch_size=16, num_classes=1000).eval()
    torch.nn.init.normal_(model.head.weight, std=0.02)
    result = {}
    for label in rows:
        tail = rows[label][2]
        moved_only_normalize = tail is not None and not isinstance(tail[0], BatchRandAugment)
        if not (": (a)" in label or ": (c)" in label or moved_only_normalize):
            continue
        name = label.split(":")[0]
        outputs = []
        for row in (label, f"{name}: {REFERENCE}"):
            load, transform, tail = rows[row]
            draws = []
            for i, path in enumerate(paths):
                torch.default_generator.manual_seed(i)  # the tail draws after the loader's part
                image = transform(load(path))
                draws.append(image if tail is None else tail(image[None])[0])
            outputs.append(torch.stack(draws))  # (N, 3, 224, 224) normalized
        std = torch.tensor(transform.transforms[-1].std).view(1, 3, 1, 1)
        levels = ((outputs[0] - outputs[1]) * std * 255).abs().flatten()
        with torch.no_grad():
            top1 = [torch.cat([model(x) for x in out.split(25)]).argmax(1) for out in outputs]
        p99 = levels.kthvalue(max(1, int(0.99 * levels.numel()))).values  # quantile() caps size
        result[label] = dict(mean=levels.mean().item(), p99=p99.item(), max=levels.max().item(),
                            agree=100 * (top1[0] == top1[1]).float().mean().item(),
                            classes=len(set(top1[1].tolist())))
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--jpeg", action="store_true", help="accepted; the JPEG study is what this program runs")
    add("--images", help="a folder of your own .jpg files (default: generated)")
    add("--count", type=at_least(1), default=150, help="photos to time")
    add("--rounds", type=at_least(1), default=7, help="timed rounds after a warm-up")
    add("--augment", nargs="+", choices=transforms.AUGMENTS, default=list(transforms.AUGMENTS))
    add("--gpus", type=at_least(1), default=8, help="GPUs to feed")
    add("--gpu-img-s", type=at_least(1), default=GPU_IMG_S,
        help="images/s one GPU trains (default: an LLB step on an H100, 40%% MFU)")
    add("--device", default="cpu", choices=["cpu", "cuda"], help="where to time (d)'s GPU part")
    add("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here; leave --device out to "
                     "time the device part on the CPU")
    return args


def main(argv: list[str] | None = None) -> None:
    """img/s per loader core of each row, the pixel agreement with (b), the cores needed."""
    args = parse_args(argv)
    torch.set_num_threads(1)  # one DataLoader worker: one process, one thread
    with tempfile.TemporaryDirectory() as tmp:
        if args.images is None:
            paths = make_photos(Path(tmp) / "photos", count=args.count, seed=args.seed)
            source = f"{len(paths)} generated 500x375 photos, JPEG quality 90"
        else:
            folder = Path(args.images)
            files = folder.iterdir() if folder.is_dir() else []
            paths = sorted(str(p) for p in files if p.suffix.lower() in (".jpg", ".jpeg"))
            paths = paths[:args.count]
            if not paths:
                raise SystemExit(f"error: {folder} is not a folder holding .jpg/.jpeg files; "
                                 "pass a folder of JPEG photos to --images")
            source = f"{len(paths)} JPEGs of {args.images}"
        kb = sum(os.path.getsize(p) for p in paths) / len(paths) / 1024
        rows = jpeg_rows(args.augment)
        rate = time_rows(rows, paths, rounds=args.rounds)
        agree = agreement(rows, paths)
        tail_ms = time_tails(rows, paths, torch.device(args.device))
    floor = rate["decode only, torchvision.io"]
    print(f"{source} (mean {kb:.0f} KB); torch {torch.__version__}, torchvision "
          f"{torchvision.__version__}, 1 thread of {os.cpu_count()} CPU cores; best of "
          f"{args.rounds} rounds; 224 px ImageNet transforms\n")
    print("| file -> model input | img/s per core | vs (b) | time vs decode floor |")
    print("|---|---|---|---|")
    for label, r in rate.items():
        peer = rate.get(f"{label.split(':')[0]}: {REFERENCE}")
        vs = f"{r / peer:.2f}x" if peer is not None and ": (" in label else "-"
        print(f"| {label} | {r:.0f} | {vs} | {floor / r:.2f}x |")
    print(f"\n{DEVICE_ROW}: the loader processes stop at the uint8 crop; the GPU then runs "
          f"the rest on the batch (inputs/on_device.py). That part on {args.device} (batches "
          "of 64): " + ", ".join(
              f"{label.split(':')[0]} {ms:.2f} ms/img" for label, ms in tail_ms.items()))
    print("\n| pipeline vs (b), same draws | uint8 levels: mean / p99 / max | same top-1 "
          "(random ViT-Ti/16) | classes predicted |")
    print("|---|---|---|---|")
    for label, a in agree.items():
        print(f"| {label} | {a['mean']:.3f} / {a['p99']:.0f} / {a['max']:.0f} | "
              f"{a['agree']:.1f}% | {a['classes']} |")
    need = args.gpus * args.gpu_img_s
    print(f"\n{args.gpus} GPUs x {args.gpu_img_s} img/s = {need} img/s need, per training "
          f"transform:")
    for label, r in rate.items():
        if label.startswith("train") and ": (c)" not in label:
            print(f"  {label}: {need / r:.0f} loader cores")


if __name__ == "__main__":
    main()
