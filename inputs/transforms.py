"""How an image becomes the model's input: `make_transforms` gives each dataset's train and val
transforms. An image file's uint8 tensor (3, H, W) (data.load_uint8) is framed by v2's uint8
kernels, augmented (RandAugment on a PIL view, AsPIL), then normalized to float32 (ToNormalized);
on CUDA the GPU runs the last two on the batch (`device_split`, inputs/on_device.py). Rates per
core: benchmark_data.py --jpeg.
"""
from __future__ import annotations

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from inputs.on_device import BatchRandAugment
from inputs.synthetic import SYNTHETIC_MEAN, SYNTHETIC_STD

AUGMENTS = ("paper", "basic", "none")
# Evaluation framing: "weights" (the weights' own eval transform, e.g. AugReg's Resize 248) or
# "authors" (their dataset/__init__.py: Resize 256 bicubic -> CenterCrop 224; SWAG 384 -> 384)
EVAL_FRAMINGS = ("weights", "authors")
# The authors' resize before the center crop, per crop size (their dataset/__init__.py). Other
# crop sizes keep the 256 / 224 ratio (our choice: the authors trained at 224 and 384 only).
AUTHORS_RESIZE = {224: 256, 384: 384}

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


def resize_crop(spec: dict) -> list:
    """Resize (the shorter side) -> CenterCrop of an eval spec (inputs/pretrained.eval_spec)."""
    return [v2.Resize(spec["resize_size"], interpolation=INTERPOLATIONS[spec["interpolation"]]),
            v2.CenterCrop(spec["crop_size"])]


def authors_resize(crop_size: int) -> int:
    """The side the authors resize to before their center crop of `crop_size` (AUTHORS_RESIZE)."""
    return AUTHORS_RESIZE.get(crop_size, round(crop_size * 256 / 224))


def authors_spec(spec: dict, interpolation: str = "bicubic") -> dict:
    """`spec` with the authors' framing: Resize authors_resize(crop) -> CenterCrop."""
    return dict(spec, resize_size=authors_resize(spec["crop_size"]), interpolation=interpolation)


def make_transforms(name: str, *, image_size: int | None, eval_spec: dict | None,
                    augment: str, eval_framing: str = "weights"
                    ) -> tuple[v2.Compose, v2.Compose, int]:
    """(train transform, val transform, output size) of dataset `name`. Val: the weights'
    `eval_spec` (sizes, interpolation, mean, std), else Resize 256 bicubic -> CenterCrop 224 (or
    `image_size`), CIFAR and synthetic at 32 px; eval_framing "authors": authors_spec's. Train,
    `augment`: `none` the weights' own framing; `paper` the authors' recipe for LLB (RandAugment
    (3, 9) after their framing, or CIFAR's crop + flip); `basic`, for a ViT from scratch, CIFAR's
    crop + flip or basic_steps. Synthetic is never augmented (inputs/synthetic.py)."""
    small = name == "synthetic" or name in CIFAR_STATS  # native 32 px; augment before any resize
    spec = eval_spec
    if spec is None and not small:
        side = image_size if image_size is not None else 224
        spec = {"resize_size": round(side * 256 / 224), "crop_size": side,
                "interpolation": "bicubic", "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
    if spec is not None:
        mean = spec["mean"]
        std = spec["std"]
        size = spec["crop_size"]
        train_framing = resize_crop(spec)
        val_framing = resize_crop(authors_spec(spec) if eval_framing == "authors" else spec)
    else:
        mean, std = CIFAR_STATS.get(name, (SYNTHETIC_MEAN, SYNTHETIC_STD))
        size = image_size if image_size is not None else 32
        train_framing = []
        if size != 32:  # nearest keeps the synthetic cells crisp
            mode = INTERPOLATIONS["nearest" if name == "synthetic" else "bicubic"]
            train_framing = [v2.Resize(size, interpolation=mode)]
        val_framing = train_framing
    if name == "synthetic":  # float tensors already
        normalize = [v2.Normalize(mean, std)]
        return v2.Compose(train_framing + normalize), v2.Compose(val_framing + normalize), size
    randaugment = [AsPIL(v2.RandAugment(num_ops=3, magnitude=9))]
    if small:  # basic: a random 32 px crop of the image zero-padded to 40 px, and a flip
        crop_flip = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]
        augment_steps = {"paper": crop_flip + randaugment, "basic": crop_flip, "none": []}
        train_steps = augment_steps[augment] + train_framing
    elif augment == "paper":
        # Note: the authors train on Resize 256 bilinear -> CenterCrop 224 (SWAG 384 -> 384)
        # whatever the weights' eval resize (AugReg's 248), and evaluate bicubic.
        train_steps = resize_crop(authors_spec(spec, "bilinear")) + randaugment
    elif augment == "basic":
        train_steps = basic_steps(name, size, val_framing)
    else:
        train_steps = train_framing
    tensor = [v2.PILToTensor(), ToNormalized(mean, std)]  # a PIL image (or uint8 tensor) -> float
    return v2.Compose(train_steps + tensor), v2.Compose(val_framing + tensor), size


def basic_steps(name: str, size: int, framing: list) -> list:
    """`basic` for a photo set or folder at `size` px: up to PAD_CROP_UP_TO px the eval framing,
    then a crop of it padded by size // 8 (CIFAR's recipe); above, a random-resized crop of at
    least RESIZED_CROP_SCALE of the image. A flip, except on a folder (content unknown)."""
    flip = [] if name == "folder" else [v2.RandomHorizontalFlip()]
    if size <= PAD_CROP_UP_TO:
        return framing + [v2.RandomCrop(size, padding=size // 8)] + flip
    return [v2.RandomResizedCrop(size, scale=(RESIZED_CROP_SCALE[name], 1.0))] + flip


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
