"""How an image becomes the model's input: the train and eval transforms of every dataset.

`make_transforms(name, ...)` returns (train transform, val transform, output size); data.py's
build_datasets hands them to the datasets. An image file arrives as a uint8 tensor (3, H, W)
(data.load_uint8), is framed by v2's uint8 kernels, augmented (RandAugment on a PIL view,
AsPIL), then turned into a normalized float32 tensor (ToNormalized). With `on_device` (training
on CUDA) the loader stops at the uint8 crop and the GPU runs RandAugment and the normalize on
the batch (device_split, inputs/on_device.py). Rates per core: benchmark_data.py --jpeg.

Augmentation (`augment`, one of AUGMENTS): `paper` is the authors' recipe for LLB on a
pretrained backbone, Resize `authors_resize(crop)` (bilinear; 256 for 224 px, 384 for SWAG's
384, whatever the weights' own eval resize) -> CenterCrop -> RandAugment(3, 9) (CIFAR: crop +
flip + RandAugment); `basic`, for a ViT from scratch, never crops away most of an image
(`basic_steps`: a pad-and-crop up to PAD_CROP_UP_TO px, a random-resized crop above, a flip
except on a folder: digits and text change class when mirrored); `none` trains on the eval
framing: Resize 256 (bicubic) -> CenterCrop 224, or with `eval_spec` the released weights'
sizes, interpolation, mean and std; `eval_framing="authors"` evaluates on Resize
authors_resize(crop) bicubic -> CenterCrop instead.
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
