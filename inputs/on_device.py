"""The end of the input pipeline run on the accelerator, on whole batches (as timm's prefetching
loader does): the loader processes hand over uint8 images, and the device applies RandAugment
per image and normalizes.

Why: per loader core on 500x375 JPEGs, RandAugment(3, 9) costs ~1.7 ms an image (as much as
decoding it) and normalizing ~0.1 ms, and a float32 batch is 4x the bytes of a uint8 one through
shared memory and the pinned copy. An 8-GPU ImageNet run is loader-bound
(docs/performance.md). data.build_datasets(..., on_device=True) splits the transforms; recipe's
loaders turn it on where the device is CUDA. On the CPU the loader processes keep the whole
transform (RandAugment's PIL kernels are ~3x faster there than these tensor kernels).

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

# RandAugment's ops that move pixels: one grid_sample for all images that drew any of them
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
    base = torch.empty(1, h, w, 3, device=images.device)  # (x, y, 1) of each output pixel centre
    base[..., 0].copy_(torch.linspace((1.0 - w) * 0.5, (w - 1.0) * 0.5, w, device=images.device))
    ys = torch.linspace((1.0 - h) * 0.5, (h - 1.0) * 0.5, h, device=images.device)
    base[..., 1].copy_(ys.unsqueeze(-1))
    base[..., 2].fill_(1)
    grid = base.view(1, h * w, 3).expand(k, -1, -1).bmm(scaled).view(k, h, w, 2)  # in [-1, 1]
    out = F.grid_sample(images.float(), grid, mode="nearest", padding_mode="zeros",
                        align_corners=False)
    return out.round_().to(torch.uint8)  # (k, 3, H, W)


class BatchRandAugment(torch.nn.Module):
    """RandAugment(num_ops, magnitude) on a uint8 batch (B, 3, H, W), each image its own draw.

    Per image and round: one of torchvision's 14 ops, uniformly, at the magnitude's bin of its
    range, negated with probability 1/2 where the op is signed: v2.RandAugment's distribution,
    drawn for the whole batch at once from the global CPU generator (v2 draws image by image,
    ~0.1 ms an image in Python). The images that drew the same colour op and sign in a round go
    through torchvision's kernel for it together; all that drew a shear, translate or rotate go
    through one grid_sample (`warp`: torchvision's grid math, batched, as its own kernel copies
    each matrix to the device and so waits for the GPU).
    Note: tensor kernels, not PIL's (as transforms.AsPIL): 0.06-0.17 uint8 levels apart on average,
    but where a rotate or shear rounds differently an edge pixel can differ fully
    (benchmark_data.py --jpeg, docs/performance.md).
    """

    def __init__(self, num_ops: int = 3, magnitude: int = 9) -> None:
        super().__init__()
        # Note: torchvision's op table and kernels, through its private names; the tests
        # (tests/test_on_device.py) fail if a torchvision version changes them.
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
        rounds = []
        for r in range(num_ops):
            groups = {}
            for k, name in enumerate(names):
                value, signed = table[name]
                for sign in (1, -1) if signed else (1,):
                    members = op[r] == k
                    if signed:
                        members &= negative[r] == (sign < 0)
                    if members.any():
                        groups[(name, sign * value)] = members.nonzero()[:, 0]
            rounds.append(groups)
        return rounds

    def apply(self, images: torch.Tensor, rounds: list[dict]) -> torch.Tensor:
        """`images` (B, 3, H, W) uint8 through the drawn ops, round after round (a new tensor).
        No host sync: a round's indices, and its matrices, each go to the device in one async
        copy from pinned memory."""
        ra = self.reference
        height, width = images.shape[-2:]
        out = images.clone()
        for groups in rounds:
            ops = [op for op in groups if op[0] != "Identity"]
            if not ops:
                continue
            members = [groups[op] for op in ops]
            index = to_device(torch.cat(members), images.device).split([len(m) for m in members])
            moved = [i for i, (name, _) in enumerate(ops) if name in GEOMETRIC]
            if moved:  # every image that drew a shear, translate or rotate: one grid_sample
                per_op = [inverse_affine(*ops[i], height, width) for i in moved]  # one per op
                matrices = torch.tensor([m for i, m in zip(moved, per_op)
                                         for _ in members[i]]).view(-1, 2, 3)  # (k, 2, 3)
                where = torch.cat([index[i] for i in moved])
                out[where] = warp(out[where], matrices)
            for i, (name, magnitude) in enumerate(ops):
                if name not in GEOMETRIC:  # colour ops: torchvision's kernel on the images
                    out[index[i]] = ra._apply_image_or_video_transform(
                        out[index[i]], name, magnitude, interpolation=ra.interpolation,
                        fill=ra._fill)  # (k, 3, H, W) -> (k, 3, H, W)
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
        for x, y in self.loader:
            # uint8 over the bus: a quarter of float32's bytes; pinned by the loader on CUDA
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            yield self.transform(x), y
