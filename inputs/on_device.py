"""The end of the input pipeline on the accelerator, on whole batches (as timm's prefetching
loader): the loader hands over uint8 images, the device runs RandAugment per image and the
normalize. RandAugment(3, 9) costs a loader core as much as decoding the JPEG, and uint8 is a
quarter of float32's bytes: an 8-GPU ImageNet run is loader-bound (docs/performance.md).
data.build_loaders uses it on CUDA; on the CPU, PIL's RandAugment in the loader is ~3x faster.

    tail = torch.nn.Sequential(BatchRandAugment(3, 9), transforms.ToNormalized(mean, std))
    for x, y in OnDevice(loader, device, tail): ...  # x: (B, 3, H, W) float32 on `device`
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torchvision.transforms import v2
from torchvision.transforms.v2.functional._geometry import _get_inverse_affine_matrix

GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without a host sync (a plain copy from pageable memory waits for
    the GPU's queue to drain; torchvision's affine kernels make two such copies a call)."""
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def inverse_affine(name: str, magnitude: float, height: int, width: int) -> list[float]:
    """The 2x3 matrix (output -> input pixel, origin at the image centre) that torchvision's
    kernel builds for RandAugment's op `name` (v2's affine_image and rotate_image)."""
    if name in ("ShearX", "ShearY"):  # about the top-left corner (center=[0, 0]), atan'd
        shear = math.degrees(math.atan(magnitude))
        shears = [shear, 0.0] if name == "ShearX" else [0.0, shear]
        return _get_inverse_affine_matrix([-0.5 * width, -0.5 * height], 0.0, [0.0, 0.0], 1.0,
                                          shears)
    if name in ("TranslateX", "TranslateY"):  # whole pixels, as v2's int(magnitude)
        pixels = float(int(magnitude))
        shift = [pixels, 0.0] if name == "TranslateX" else [0.0, pixels]
        return _get_inverse_affine_matrix([0.0, 0.0], 0.0, shift, 1.0, [0.0, 0.0])
    # Rotate: rotate_image's angle in [0, 360), negated for its direction
    return _get_inverse_affine_matrix([0.0, 0.0], -(magnitude % 360), [0.0, 0.0], 1.0, [0.0, 0.0])


def warp(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """uint8 (k, 3, H, W), each through its own inverse affine matrix (k, 2, 3, on the host):
    nearest sampling, zeros outside, as v2's _affine_grid and _apply_grid_transform per image."""
    k, _, h, w = images.shape
    # theta^T / (w/2, h/2): (k, 3, 2), computed on the host as v2 does, then one async copy
    scaled = to_device(matrices.transpose(1, 2) / torch.tensor([0.5 * w, 0.5 * h]), images.device)
    xs = torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, w, device=images.device)
    ys = torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, h, device=images.device)
    ones = torch.ones(h, w, device=images.device)
    base = torch.stack([*torch.meshgrid(xs, ys, indexing="xy"), ones], -1)  # (H, W, 3): x, y, 1
    grid = base.view(1, h * w, 3).expand(k, -1, -1).bmm(scaled).view(k, h, w, 2)  # in [-1, 1]
    out = F.grid_sample(images.float(), grid, mode="nearest", padding_mode="zeros",
                        align_corners=False)
    return out.round_().to(torch.uint8)  # (k, 3, H, W)


class BatchRandAugment(torch.nn.Module):
    """RandAugment(num_ops, magnitude) on a uint8 batch (B, 3, H, W), each image its own draw
    of v2.RandAugment's ops and signs, drawn for the whole batch at once from the global CPU
    generator. The images that drew the same colour op and sign go through its torchvision kernel
    together; all that drew a shear, translate or rotate through one grid_sample (`warp`).
    Note: tensor kernels, not PIL's (transforms.AsPIL): 0.06-0.17 uint8 levels apart on average,
    an edge pixel fully where a rotate or shear rounds differently (docs/performance.md).
    """

    def __init__(self, num_ops: int = 3, magnitude: int = 9) -> None:
        super().__init__()
        # Note: torchvision's private op table and kernels (tests/test_on_device.py checks them)
        self.reference = v2.RandAugment(num_ops=num_ops, magnitude=magnitude)

    def signed_magnitudes(self, height: int, width: int) -> dict:
        """{op name: (magnitude at the chosen bin, whether it is signed)} for H x W images."""
        ra = self.reference
        table = {}
        for name, (magnitudes_fn, signed) in ra._AUGMENTATION_SPACE.items():
            magnitudes = magnitudes_fn(ra.num_magnitude_bins, height, width)
            value = 0.0 if magnitudes is None else float(magnitudes[ra.magnitude])
            table[name] = (value, signed and magnitudes is not None)
        return table

    def draw(self, batch: int, height: int, width: int) -> list[dict]:
        """Per round, {(op name, signed magnitude): LongTensor of the images that drew it}."""
        table = self.signed_magnitudes(height, width)
        names = list(table)
        num_ops = self.reference.num_ops
        # Every DDP rank draws for the global batch and keeps its own slice: train.py seeds all
        # ranks alike, and they must not give their i-th images the same ops.
        rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
        op = torch.randint(len(names), (world, num_ops, batch))[rank]  # (rounds, B) image's op
        negative = (torch.rand(world, num_ops, batch) <= 0.5)[rank]  # (rounds, B) if signed
        signed = torch.tensor([table[name][1] for name in names])
        code = 2 * op + (negative & signed[op])  # (rounds, B): 2 * op + 1 where negated
        values = [v for name in names for v in (table[name][0], -table[name][0])]  # by code
        return [{(names[c // 2], values[c]): (row == c).nonzero()[:, 0]
                 for c in row.unique().tolist()} for row in code]

    def apply(self, images: torch.Tensor, rounds: list[dict]) -> torch.Tensor:
        """`images` (B, 3, H, W) uint8 through the drawn ops, round after round (a new tensor),
        without a host sync: a round's indices, and its matrices, go to the device in one copy."""
        ra = self.reference
        out = images.clone()
        for groups in rounds:
            ops = [op for op in groups if op[0] != "Identity"]
            if not ops:
                continue
            index = to_device(torch.cat([groups[op] for op in ops]), images.device)
            index = dict(zip(ops, index.split([len(groups[op]) for op in ops])))
            moved = [op for op in ops if op[0] in GEOMETRIC]
            if moved:  # every image that drew a shear, translate or rotate: one grid_sample
                matrices = torch.tensor([inverse_affine(*op, *images.shape[-2:]) for op in moved])
                counts = torch.tensor([len(groups[op]) for op in moved])
                where = torch.cat([index[op] for op in moved])
                out[where] = warp(out[where], matrices.repeat_interleave(counts, 0).view(-1, 2, 3))
            for op in ops:
                if op[0] not in GEOMETRIC:  # colour ops: torchvision's kernel, (k, 3, H, W)
                    out[index[op]] = ra._apply_image_or_video_transform(
                        out[index[op]], *op, interpolation=ra.interpolation, fill=ra._fill)
        return out

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.apply(images, self.draw(len(images), *images.shape[-2:]))

    def extra_repr(self) -> str:
        return f"num_ops={self.reference.num_ops}, magnitude={self.reference.magnitude}"


class OnDevice:
    """Iterates `loader` with each batch moved to `device` and `transform` (a module, moved
    there too) applied to its images; len, sampler and dataset are the loader's."""

    def __init__(self, loader, device: torch.device, transform: torch.nn.Module) -> None:
        self.loader = loader
        self.device = torch.device(device)
        self.transform = transform.to(self.device)
        self.sampler = loader.sampler
        self.dataset = loader.dataset

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for images, labels in self.loader:  # uint8 over the bus, pinned by the loader on CUDA
            yield (self.transform(images.to(self.device, non_blocking=True)),
                   labels.to(self.device, non_blocking=True))
