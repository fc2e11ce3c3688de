"""How fast the data loader feeds training: a folder of small PNGs streamed vs decoded once.

    python benchmark_data.py

Writes a folder of 32 px PNGs into a temporary directory (10 classes, 140 training and 20
validation images per class, smooth random colours plus noise, like small scans), then times
training epochs of a ViT-micro (patch 4, 32 px, batch 128, AdamW) on the CPU, fed by
  (a) data.py's folder set streamed: every epoch decodes every PNG (the loader's default workers),
  (b) the same folder decoded once into a uint8 tensor (data.py's default for small sets,
      0 workers), per-item transforms on tensors,
  (c) the same images, normalized, as a plain in-memory TensorDataset (the peer, 0 workers),
each with the same model, sampler and batch size. Epochs of all loaders are interleaved (one
epoch each per round, the order reversed every other round), so a change in machine load hits
them alike. After one warm-up round it reports medians over `--epochs` rounds: images/s, the
epoch time over the peer's in the same round, and the time the loop waited for the next batch.
On a shared machine the step time varies from round to round; the wait column does not.
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
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

import data
import vit

CLASSES = 10
SIZE = 32
BATCH = 128
PEER = "(c) TensorDataset"


def make_folder(root: Path, *, train_per_class: int, val_per_class: int, seed: int) -> None:
    """root/{train,val}/class_k/NNNN.png: a random 4x4 colour grid blurred to 32 px, plus noise."""
    g = torch.Generator().manual_seed(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for k in range(CLASSES):
            folder = root / split / f"class_{k}"
            folder.mkdir(parents=True)
            grid = torch.rand(count, 3, 4, 4, generator=g) * 255  # (n, 3, 4, 4)
            images = F.interpolate(grid, size=(SIZE, SIZE), mode="bicubic", align_corners=False)
            images = images + 8 * torch.randn(images.shape, generator=g)  # (n, 3, 32, 32)
            pixels = images.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            for i in range(count):
                Image.fromarray(pixels[i]).save(folder / f"{i:04d}.png")


def train_epoch(loader: DataLoader, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                epoch: int) -> tuple[float, float, int]:
    """(seconds, seconds waiting for the loader, images) of one training epoch."""
    loader.sampler.set_epoch(epoch)
    images = 0
    wait = 0.0
    start = time.perf_counter()
    batches = iter(loader)
    while True:
        fetch = time.perf_counter()
        try:
            x, y = next(batches)
        except StopIteration:
            break
        wait += time.perf_counter() - fetch
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        images += len(y)
    return time.perf_counter() - start, wait, images


def build_loaders(root: Path, augments: list[str]) -> tuple[dict, dict]:
    """The loaders to compare, by row label, and each set's build time in seconds."""
    loaders = {}
    build_s = {}
    for augment in augments:
        for label, budget in (("(a) streamed", 0), ("(b) decoded once", data.DECODE_BUDGET_BYTES)):
            start = time.perf_counter()
            train, _, _ = data.build_datasets("folder", str(root), image_size=SIZE,
                                              augment=augment, decode_budget_bytes=budget)
            build_s[f"{label}, {augment}"] = time.perf_counter() - start
            if budget > 0 and not train.in_memory:
                raise RuntimeError(f"{root}: the training set was not decoded into memory")
            loaders[f"{label}, {augment}"] = data.build_loader(train, batch_size=BATCH,
                                                               train=True)
    # (c) the peer: the decoded `none` images, normalized once, as plain tensors
    train, _, _ = data.build_datasets("folder", str(root), image_size=SIZE, augment="none")
    x = torch.stack([train[i][0] for i in range(len(train))])  # (N, 3, 32, 32) float32
    peer = TensorDataset(x, torch.tensor(train.targets))
    loaders[PEER] = data.build_loader(peer, batch_size=BATCH, train=True,
                                                     workers=0)
    return loaders, build_s


def measure(loaders: dict, *, epochs: int, seed: int) -> dict:
    """Per loader: medians of img/s, epoch time / the peer's in the same round, data wait."""
    models = {}
    for label in loaders:
        torch.manual_seed(seed)  # the same initial weights for every loader
        model = vit.create_vit("micro", image_size=SIZE, patch_size=4, num_classes=CLASSES)
        models[label] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3))
    rounds = []
    for epoch in range(epochs + 1):  # epoch 0 warms up (starts workers, allocators)
        order = list(loaders) if epoch % 2 else list(loaders)[::-1]  # cancel order effects
        rounds.append({label: train_epoch(loaders[label], *models[label], epoch)
                       for label in order})
    result = {}
    for label in loaders:
        timed = rounds[1:]
        result[label] = {
            "img_s": statistics.median(r[label][2] / r[label][0] for r in timed),
            "vs_peer": statistics.median(r[label][0] / r[PEER][0] for r in timed),
            "wait_s": statistics.median(r[label][1] for r in timed),
            "wait_share": statistics.median(r[label][1] / r[label][0] for r in timed)}
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-per-class", type=int, default=140)
    parser.add_argument("--val-per-class", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=5, help="timed rounds after one warm-up")
    parser.add_argument("--augment", nargs="+", choices=data.AUGMENTS, default=["none", "basic"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.train_per_class * CLASSES < BATCH or args.val_per_class < 1:
        parser.error(f"need --epochs >= 1, --train-per-class >= {-(-BATCH // CLASSES)} (one "
                     f"batch of {BATCH}) and --val-per-class >= 1")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "pngs"
        make_folder(root, train_per_class=args.train_per_class,
                    val_per_class=args.val_per_class, seed=args.seed)
        loaders, build_s = build_loaders(root, args.augment)
        result = measure(loaders, epochs=args.epochs, seed=args.seed)
    print(f"ViT-micro, patch 4, {SIZE} px, batch {BATCH}, {CLASSES * args.train_per_class} "
          f"training PNGs; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPU cores; medians of {args.epochs} epochs after 1 warm-up\n")
    print("| loader, augment | workers | build s | train img/s | epoch time vs (c) "
          "| waiting for data per epoch |")
    print("|---|---|---|---|---|---|")
    for label, loader in loaders.items():
        r = result[label]
        build = f"{build_s[label]:.2f}" if label in build_s else "-"
        print(f"| {label} | {loader.num_workers} | {build} | {r['img_s']:.0f} | "
              f"{r['vs_peer']:.2f}x | {r['wait_s']:.2f} s ({100 * r['wait_share']:.1f}%) |")

if __name__ == "__main__":
    main()
