"""Datasets, transforms and loaders for the LLB reference implementation.

`build_datasets(name, root, ...)` returns `(train_set, val_set, DataInfo)` with items
`(normalized float32 tensor (3, H, W), int label)`; `build_loader(...)` shuffles (and shards with
DistributedSampler) for training and gives each rank a disjoint, unpadded shard for evaluation.
Names: `synthetic` (default, in memory), `cifar10`, `cifar100` (with its 20 superclasses),
`imagenet` and `folder` (root/{train,val}/<class>/<image>), `places365`, `inat2018` (official
json split); their files are read by inputs/images.py (ImageNet-ReaL's labels by
inputs/named_sets.py: `read_real_labels`, `real_hits`); `synthetic` is inputs/synthetic.py's.

Augmentation (`augment`, default `default_augment`'s): `paper` is the authors' recipe for LLB
on a pretrained backbone, Resize `authors_resize(crop)` (bilinear; 256 for 224 px, 384 for SWAG's
384, whatever the weights' own eval resize) -> CenterCrop -> RandAugment(3, 9) (CIFAR: crop +
flip + RandAugment); `basic`, for a ViT from scratch, never crops away most of an image
(`basic_steps`: a pad-and-crop up to PAD_CROP_UP_TO px, a random-resized crop above, a flip
except on a folder: digits and text change class when mirrored); `none` trains on the eval
framing: Resize 256 (bicubic) -> CenterCrop 224, or with `eval_spec` the released weights'
sizes, interpolation, mean and std; `eval_framing="authors"` evaluates on Resize
authors_resize(crop) bicubic -> CenterCrop instead.

Files are decoded to uint8 tensors (`pipeline="tensor"`, images.load_uint8: torchvision.io for
JPEG), framed by v2's uint8 kernels, RandAugment on a PIL view (AsPIL), then ToNormalized. With
`on_device` (training on CUDA) the loader stops at the uint8 crop and the GPU runs RandAugment
and the normalize on the batch (device_split, inputs/on_device.py). `pipeline="pil"` is
torchvision's reference, PIL throughout. Rates per core: benchmark_data.py --jpeg.

A folder or imagenet split whose decoded uint8 images fit DECODE_BUDGET_BYTES (2 GiB; train
first, then val) is decoded once into memory (images.ImageFiles.decode; a copy per DDP process)
and framed by the Resize/CenterCrop calls streaming makes: an epoch then decodes nothing, with
0 workers by default. Larger sets stream, decoding in `default_workers` processes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from inputs.images import (build_image_folder, build_inat2018, decode_within_budget, load_rgb,
                           load_uint8)
from inputs.named_sets import build_cifar, build_places365
from inputs import pretrained
from inputs.on_device import BatchRandAugment, OnDevice
from inputs.synthetic import (RANKING, SHAPE_NAMES, SYNTHETIC_CLASSES, SYNTHETIC_MEAN,
                              SYNTHETIC_STD, SyntheticObjects)
from util import distributed

DATASETS = ("synthetic", "cifar10", "cifar100", "imagenet", "folder", "places365", "inat2018")
AUGMENTS = ("paper", "basic", "none")
# Evaluation framing: "weights" (the weights' own eval transform, e.g. AugReg's Resize 248) or
# "authors" (their dataset/__init__.py: Resize 256 bicubic -> CenterCrop 224; SWAG 384 -> 384)
EVAL_FRAMINGS = ("weights", "authors")
# How image files become tensors: decoded to uint8 tensors and framed by v2's tensor kernels
# ("tensor"), or decoded and framed as PIL images ("pil", torchvision's reference pipeline)
PIPELINES = {"tensor": load_uint8, "pil": load_rgb}
# The authors' resize before the center crop, per crop size (their dataset/__init__.py). Other
# crop sizes keep the 256 / 224 ratio (our choice: the authors trained at 224 and 384 only).
AUTHORS_RESIZE = {224: 256, 384: 384}
DECODE_BUDGET_BYTES = 2 * 1024 ** 3  # decode a folder/imagenet split once if it fits, as uint8

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
               "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}
PAD_CROP_UP_TO = 64  # basic: a pad-and-crop up to this size, a random-resized crop above
# basic above PAD_CROP_UP_TO px: the smallest crop, as a fraction of the area (torchvision's and
# DeiT's ImageNet-1k 0.08 for the large photo sets; a folder, often small, keeps half its image)
RESIZED_CROP_SCALE = {"folder": 0.5, "imagenet": 0.08, "places365": 0.08, "inat2018": 0.08}
INTERPOLATIONS = {"bilinear": v2.InterpolationMode.BILINEAR,
                  "bicubic": v2.InterpolationMode.BICUBIC, "nearest": v2.InterpolationMode.NEAREST}


@dataclass(kw_only=True)
class DataInfo:
    name: str
    num_classes: int
    image_size: int  # H == W of the tensors the transforms produce
    class_names: list[str]
    augment: str  # the training augmentation used, one of AUGMENTS
    coarse_of_class: list[int] | None = None  # superclass id of each fine class
    coarse_names: list[str] | None = None


# ----------------------------------------------------------------------------------- transforms
class AsPIL(torch.nn.Module):
    """Runs `transform` on a PIL image: a uint8 tensor (3, H, W) goes there and back (~0.2 ms at
    224 px). RandAugment(3, 9) on PIL is ~3x faster per core than on v2's tensor kernels."""

    def __init__(self, transform: torch.nn.Module) -> None:
        super().__init__()
        self.transform = transform

    def forward(self, image):
        if not isinstance(image, torch.Tensor):
            return self.transform(image)
        pil = Image.fromarray(image.permute(1, 2, 0).numpy())  # (H, W, 3) uint8
        return TF.pil_to_tensor(self.transform(pil))  # (3, H, W) uint8


class ToNormalized(torch.nn.Module):
    """uint8 (..., 3, H, W) -> float32 (x / 255 - mean) / std in one pass, an image or a batch
    (device_split): v2's ToDtype(scale=True) -> Normalize within 1e-6, 3-4x faster an image."""

    def __init__(self, mean: tuple, std: tuple) -> None:
        super().__init__()
        self.mean = tuple(mean)
        self.std = tuple(std)
        # mean in uint8 levels and 1 / (255 std), (3, 1, 1); buffers: they follow .to(device)
        self.register_buffer("shift", torch.tensor(mean).view(3, 1, 1) * 255, persistent=False)
        scale = 1 / (torch.tensor(std).view(3, 1, 1) * 255)
        self.register_buffer("scale", scale, persistent=False)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # Note: contiguous whatever the strides (JPEGs decode channels-last): 3x faster than float()
        image = image.to(torch.float32, memory_format=torch.contiguous_format)  # (..., 3, H, W)
        return image.sub_(self.shift).mul_(self.scale)

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


def _framing(spec: dict, interpolation: str) -> list:
    return [v2.Resize(spec["resize_size"], interpolation=INTERPOLATIONS[interpolation]),
            v2.CenterCrop(spec["crop_size"])]


def authors_resize(crop_size: int) -> int:
    """The side the authors resize to before their center crop of `crop_size` (AUTHORS_RESIZE)."""
    return AUTHORS_RESIZE.get(crop_size, round(crop_size * 256 / 224))


def authors_spec(spec: dict) -> dict:
    """`spec` with the authors' eval framing: Resize authors_resize(crop) bicubic -> CenterCrop."""
    return dict(spec, resize_size=authors_resize(spec["crop_size"]), interpolation="bicubic")


def make_transforms(name: str, *, image_size: int | None, eval_spec: dict | None,
                    augment: str, eval_framing: str = "weights"
                    ) -> tuple[v2.Compose, v2.Compose, int]:
    """(train transform, val transform, output size) for dataset `name` and `augment`;
    eval_framing "authors" replaces the val framing of `eval_spec` by the authors'
    (authors_spec)."""
    randaugment = [AsPIL(v2.RandAugment(num_ops=3, magnitude=9))]
    if name == "synthetic" or name in CIFAR_STATS:  # native 32 px; augment before any resize
        mean, std = CIFAR_STATS.get(name, (SYNTHETIC_MEAN, SYNTHETIC_STD))
        framing = []
        size = 32
        val_framing = []
        if eval_spec is not None:
            framing = _framing(eval_spec, eval_spec["interpolation"])
            val_spec = authors_spec(eval_spec) if eval_framing == "authors" else eval_spec
            val_framing = _framing(val_spec, val_spec["interpolation"])
            size = eval_spec["crop_size"]
            mean = eval_spec["mean"]
            std = eval_spec["std"]
        elif image_size is not None and image_size != 32:  # nearest keeps the synthetic cells crisp
            mode = INTERPOLATIONS["nearest" if name == "synthetic" else "bicubic"]
            framing = [v2.Resize(image_size, interpolation=mode)]
            val_framing = framing
            size = image_size
        if name == "synthetic":  # already float tensors; never augmented (see SyntheticObjects)
            normalize = [v2.Normalize(mean, std)]
            return (v2.Compose(framing + normalize), v2.Compose(val_framing + normalize), size)
        # basic: a random 32 px crop of the image zero-padded to 40 px, and a flip
        crop_flip = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]
        augment_steps = {"paper": crop_flip + randaugment, "basic": crop_flip, "none": []}
        train_steps = augment_steps[augment] + framing
        val_steps = val_framing
    else:  # photo sets: 224 px by default
        side = image_size if image_size is not None else 224
        spec = eval_spec
        if spec is None:
            spec = {"resize_size": round(side * 256 / 224), "crop_size": side,
                    "interpolation": "bicubic", "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        size = spec["crop_size"]
        mean = spec["mean"]
        std = spec["std"]
        val_spec = authors_spec(spec) if eval_framing == "authors" else spec
        val_steps = _framing(val_spec, val_spec["interpolation"])
        if augment == "paper":
            # The authors' training framing, whatever the weights' eval resize (AugReg's 248):
            # Resize 256 bilinear -> CenterCrop 224 (SWAG 384 -> 384), then RandAugment(3, 9).
            # Note: bilinear here, bicubic for evaluation, as the authors (the eval side follows
            # the weights' own transform unless eval_framing is "authors").
            train_steps = _framing(authors_spec(spec), "bilinear") + randaugment
        elif augment == "basic":
            train_steps = basic_steps(name, size, val_steps)
        else:  # none: the weights' own eval framing, whatever eval_framing is
            train_steps = _framing(spec, spec["interpolation"])
    # PIL image (or a uint8 tensor, passed through) -> plain float tensor, normalized
    tensor = [v2.PILToTensor(), ToNormalized(mean, std)]
    return v2.Compose(train_steps + tensor), v2.Compose(val_steps + tensor), size


def device_split(transform: v2.Compose) -> tuple[v2.Compose, torch.nn.Sequential | None]:
    """(the loader's part of `transform`, ending in uint8 (3, H, W); the device's part, on a batch
    (inputs/on_device.py)): the device takes the normalize and a RandAugment right before it (not
    CIFAR's, which a resize follows). (transform, None) if it does not end in ToNormalized."""
    steps = list(transform.transforms)
    if not isinstance(steps[-1], ToNormalized):  # synthetic: float tensors, v2.Normalize
        return transform, None
    tail = [steps.pop()]  # ToNormalized: per image or on a batch alike
    if len(steps) >= 2 and isinstance(steps[-2], AsPIL):  # [..., AsPIL(RandAugment), PILToTensor]
        ra = steps.pop(-2).transform
        tail.insert(0, BatchRandAugment(num_ops=ra.num_ops, magnitude=ra.magnitude))
    return v2.Compose(steps), torch.nn.Sequential(*tail)


def basic_steps(name: str, size: int, framing: list) -> list:
    """`basic` for a photo set or folder at `size` px: up to PAD_CROP_UP_TO px the eval framing,
    then a crop of it padded by size // 8 (CIFAR's recipe); above, a random-resized crop of at
    least RESIZED_CROP_SCALE of the image. A flip, except on a folder (content unknown)."""
    flip = [] if name == "folder" else [v2.RandomHorizontalFlip()]
    if size <= PAD_CROP_UP_TO:
        return framing + [v2.RandomCrop(size, padding=size // 8)] + flip
    return [v2.RandomResizedCrop(size, scale=(RESIZED_CROP_SCALE[name], 1.0))] + flip


# --------------------------------------------------------------------------------- entry points
def _check_options(name: str, root: str | None, *, image_size: int | None,
                   eval_spec: dict | None, classes, max_per_class, augment: str | None,
                   eval_framing: str = "weights") -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    if eval_framing not in EVAL_FRAMINGS:
        raise ValueError(f"unknown eval_framing {eval_framing!r}; choose one of {EVAL_FRAMINGS}")
    if root is None and name != "synthetic":
        raise ValueError(f"{name} needs root, the directory that holds (or will hold) its "
                         "files (--data-dir in train.py)")
    if root is not None and name != "synthetic" and Path(root).is_file():
        raise NotADirectoryError(f"{name}: data root {root} is a file, expected a folder; pass "
                                 "the folder that holds (or will hold) the dataset's files")
    if classes is not None and name not in ("imagenet", "folder"):
        raise ValueError(f"classes selects subsets of imagenet and folder, not {name}")
    if max_per_class is not None and name not in ("imagenet", "folder", "synthetic"):
        raise ValueError(f"max_per_class selects subsets of imagenet, folder and synthetic, "
                         f"not {name}")
    if max_per_class is not None and max_per_class < 1:
        raise ValueError(f"max_per_class must be >= 1, got {max_per_class}")
    if augment is not None and augment not in AUGMENTS:
        raise ValueError(f"unknown augment {augment!r}; choose one of {AUGMENTS}")
    if name == "synthetic" and augment not in (None, "none"):
        raise ValueError(f"synthetic takes no augmentation (it would move the marks that tell "
                         f"look-alike objects apart); got augment={augment!r}, use 'none'")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    if eval_spec is None:
        return
    keys = ("resize_size", "crop_size", "interpolation", "mean", "std")
    if any(k not in eval_spec for k in keys) or eval_spec["interpolation"] not in INTERPOLATIONS:
        raise ValueError(f"eval_spec {eval_spec} is malformed; expected keys {keys} with "
                         f"interpolation one of {tuple(INTERPOLATIONS)} (inputs/pretrained.py's "
                         "eval_spec(NAME) builds it for released weights)")
    if image_size is not None and image_size != eval_spec["crop_size"]:
        raise ValueError(f"image_size={image_size} conflicts with the pretrained weights' crop "
                         f"size {eval_spec['crop_size']}; drop image_size or use matching weights")


def default_augment(name: str, *, pretrained: bool, backbone_augment: str | None = None) -> str:
    """The training augmentation when none is asked for (the only place that decides it).

    synthetic: none (a flip or crop would move the marks that tell twin objects apart); CIFAR:
    basic (pad-4 crop + flip); photo sets: the paper's RandAugment on released weights (the
    authors' setting), else what the backbone checkpoint was trained with; from scratch, none on
    a folder (a ViT-micro on 1,437 digit scans: 96% top-1 with none, 42% with `basic`'s pad-crop,
    docs/real_images.md), basic on the large photo sets."""
    if name == "synthetic" or (name == "folder" and not pretrained and backbone_augment is None):
        return "none"
    if name in CIFAR_STATS:
        return "basic"
    if pretrained:
        return "paper"
    if backbone_augment is not None:
        return backbone_augment
    return "basic"


def build_datasets(name: str, root: str | None = None, *, image_size: int | None = None,
                   eval_spec: dict | None = None, augment: str | None = None,
                   classes: int | str | None = None, max_per_class: int | None = None,
                   download: bool = False, seed: int = 0, expected_num_classes: int | None = None,
                   weights_name: str | None = None, eval_framing: str = "weights",
                   decode_budget_bytes: int = DECODE_BUDGET_BYTES, pipeline: str = "tensor",
                   on_device: bool = False) -> tuple[Dataset, Dataset, DataInfo]:
    """(train_set, val_set, info). Items are (image_tensor float32 (3,H,W) normalized, label int).

    `synthetic` ignores `root` (its images come from `seed`). `augment` is one of AUGMENTS;
    None means `default_augment`'s. `decode_budget_bytes=0` streams every set.
    `eval_framing` (EVAL_FRAMINGS): the val split's framing, the weights' own or the authors'.
    `pipeline` (PIPELINES): how image files are decoded and framed, uint8 tensors or PIL.
    `on_device`: items are uint8, and a set's `batch_transform` (device_split) finishes a batch
    on the device; build_loader(..., device=) applies it.
    """
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}; choose one of {tuple(PIPELINES)}")
    _check_options(name, root, image_size=image_size, eval_spec=eval_spec, classes=classes,
                   max_per_class=max_per_class, augment=augment, eval_framing=eval_framing)
    if augment is None:
        augment = default_augment(name, pretrained=eval_spec is not None)
    train_tf, val_tf, size = make_transforms(name, image_size=image_size, eval_spec=eval_spec,
                                             augment=augment, eval_framing=eval_framing)
    train_tail = val_tail = None
    if on_device:  # the loader's part and the device's
        (train_tf, train_tail), (val_tf, val_tail) = map(device_split, (train_tf, val_tf))
    coarse_of_class = coarse_names = None
    if name == "synthetic":  # classes are exactly balanced: M per class = 10 M images
        sizes = {} if max_per_class is None else {"num_images": SYNTHETIC_CLASSES * max_per_class}
        train = SyntheticObjects("train", seed=seed, transform=train_tf, **sizes)
        val = SyntheticObjects("val", seed=seed, transform=val_tf, **sizes)
        class_names = train.class_names
        # Superclass = the deciding object's shape: twin classes (e.g. "red square" and its
        # greener twin) share one, so look-alike, semantically unrelated classes are grouped.
        coarse_of_class = [RANKING[c] // 2 for c in range(SYNTHETIC_CLASSES)]
        coarse_names = list(SHAPE_NAMES)
    elif name in CIFAR_STATS:
        train, val, class_names, coarse_of_class, coarse_names = build_cifar(
            name, root, train_tf=train_tf, val_tf=val_tf, download=download)
    elif name in ("imagenet", "folder"):
        train, val = build_image_folder(name, root, classes=classes, max_per_class=max_per_class,
                                        train_tf=train_tf, val_tf=val_tf,
                                        load=PIPELINES[pipeline])
        class_names = train.class_names
    else:
        build = build_places365 if name == "places365" else build_inat2018
        train, val, class_names = build(root, train_tf=train_tf, val_tf=val_tf, download=download,
                                        load=PIPELINES[pipeline])
    info = DataInfo(name=name, num_classes=len(class_names), image_size=size,
                    class_names=class_names, augment=augment, coarse_of_class=coarse_of_class,
                    coarse_names=coarse_names)
    if info.num_classes < 2:
        raise ValueError(f"{name}: {root} has {info.num_classes} class; a classifier needs at "
                         "least 2 classes")
    if expected_num_classes is not None and expected_num_classes != info.num_classes:
        raise ValueError(f"pretrained head of {weights_name or 'the weights'} has "
                         f"{expected_num_classes} classes but {name} has {info.num_classes}; use "
                         "--method vit to fine-tune a new head, or pick matching weights")
    train.batch_transform, val.batch_transform = train_tail, val_tail
    if name in ("imagenet", "folder"):  # last: every check above runs before any decoding
        decode_within_budget([train, val], budget_bytes=decode_budget_bytes)
    return train, val, info


class EvalShardSampler(Sampler[int]):
    """Indices rank::world_size: disjoint shards covering the set exactly once
    (DistributedSampler pads shards with repeated samples, which would skew eval accuracy)."""

    def __init__(self, dataset_size: int, *, rank: int, world_size: int) -> None:
        self.indices = range(rank, dataset_size, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def default_workers(world_size: int) -> int:
    """Loader processes per rank for a streamed set: the cores this process may run on, shared by
    the ranks on this machine (torchrun's LOCAL_WORLD_SIZE, else all `world_size`), less one for
    the rank itself; at least 1: ImageNet's JPEGs keep every core busy (docs/performance.md)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    return max(1, (cores or 1) // max(1, local) - 1)


def build_loader(dataset: Dataset, *, batch_size: int, train: bool, workers: int | None = None,
                 rank: int = 0, world_size: int = 1, seed: int = 0,
                 pin_memory: bool = False, device: torch.device | str = "cpu"
                 ) -> DataLoader | OnDevice:
    """Train: shuffled by a DistributedSampler (also for one process: call
    loader.sampler.set_epoch(e), so each epoch's order depends on (seed, epoch) alone and a resumed
    run sees the same batches), last partial batch dropped. Eval: in order, nothing dropped,
    disjoint unpadded shards. A set with a `batch_transform` (build_datasets(on_device=True))
    has its batches moved to `device` and finished there (inputs/on_device.OnDevice)."""
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got batch_size="
                         f"{batch_size}, rank={rank}, world_size={world_size}")
    if train and len(dataset) // world_size < batch_size:
        raise ValueError(f"training set of {len(dataset)} images over {world_size} rank(s) is "
                         f"smaller than one batch of {batch_size}; lower the batch size (train.py: "
                         f"--batch-size, or leave it unset on a folder to cap it to the set)")
    if workers is None:
        workers = 0 if getattr(dataset, "in_memory", False) else default_workers(world_size)
    if train:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                     seed=seed, drop_last=True)
    else:
        sampler = EvalShardSampler(len(dataset), rank=rank, world_size=world_size)
    # Seeds the workers' augmentation RNGs, distinct per rank. (With workers > 0 a resumed run
    # draws other augmentations; with 0 workers or on the device the global RNG, restored, does.)
    generator = torch.Generator().manual_seed(seed * world_size + rank)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False,
                        sampler=sampler, drop_last=train, num_workers=workers,
                        persistent_workers=workers > 0, pin_memory=pin_memory, generator=generator)
    tail = getattr(dataset, "batch_transform", None)
    return loader if tail is None else OnDevice(loader, device, tail)


def build_loaders(r, *, rank: int, world: int, workers: int | None, device: torch.device,
                  download: bool = False, train: bool = True) -> tuple:
    """(train loader, val loader, DataInfo) of a recipe's data options (recipes.Recipe); both
    stages of a run share them. train=False (evaluation): no training loader, None in its place.
    On CUDA, RandAugment and the normalize run on the GPU (inputs/on_device.py)."""
    spec = pretrained.eval_spec(r.pretrained) if r.pretrained else None
    expected = None
    if r.pretrained and r.stage == "llb":  # LLB keeps the released head: the same label set
        expected = pretrained.num_classes(r.pretrained)
    if download and rank > 0:
        distributed.barrier()  # wait for rank 0's download, then read it
    train_set, val_set, info = build_datasets(
        r.dataset, r.data_dir, image_size=None if spec else r.image_size, eval_spec=spec,
        augment=r.augment, classes=r.classes, max_per_class=r.max_per_class,
        download=download and rank == 0, seed=r.seed, expected_num_classes=expected,
        weights_name=r.pretrained, eval_framing=r.eval_framing, on_device=device.type == "cuda")
    if download and rank == 0:
        distributed.barrier()
    loader = dict(workers=workers, rank=rank, world_size=world, seed=r.seed,
                  pin_memory=device.type == "cuda", batch_size=r.batch_size, device=device)
    train_loader = build_loader(train_set, train=True, **loader) if train else None
    return train_loader, build_loader(val_set, train=False, **loader), info
