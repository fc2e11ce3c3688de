"""The end of the input pipeline run on the accelerator, on whole batches (as timm's prefetching
loader does): the loader processes hand over uint8 images, and the device applies RandAugment
per image and normalizes.

Why: per loader core on 500x375 JPEGs, RandAugment(3, 9) costs ~1.7 ms an image (as much as
decoding it) and normalizing ~0.1 ms, and a float32 batch is 4x the bytes of a uint8 one through
shared memory and the pinned copy. An 8-GPU ImageNet run is loader-bound
(docs/performance.md). data.build_datasets(..., on_device=True) splits the transforms; recipe's
loaders turn it on where the device is CUDA. On the CPU the loader processes keep the whole
transform (RandAugment's PIL kernels are ~3x faster there than these tensor kernels).

    tail = torch.nn.Sequential(BatchRandAugment(3, 9), data.ToNormalized(mean, std))
    for x, y in OnDevice(loader, device, tail): ...  # x: (B, 3, H, W) float32 on `device`
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torchvision.transforms import v2


class BatchRandAugment(torch.nn.Module):
    """RandAugment(num_ops, magnitude) on a uint8 batch (B, 3, H, W), each image its own draw.

    Per image and round: one of torchvision's 14 ops, uniformly, at the magnitude's bin of its
    range, negated with probability 1/2 where the op is signed: v2.RandAugment's distribution,
    drawn for the whole batch at once from the global CPU generator (v2 draws image by image,
    ~0.1 ms an image in Python). The images that drew the same op and sign in a round go
    through torchvision's kernel for it together: at most 2 x 14 kernel calls a round.
    Note: tensor kernels, not PIL's (as data.AsPIL): 0.06-0.17 uint8 levels apart on average,
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
        """`images` (B, 3, H, W) uint8 through the drawn ops, round after round (a new tensor)."""
        ra = self.reference
        out = images.clone()
        for groups in rounds:
            for (name, magnitude), members in groups.items():
                if name == "Identity":
                    continue
                index = members.to(images.device)
                # the op on the images that drew it: (k, 3, H, W) -> (k, 3, H, W)
                out[index] = ra._apply_image_or_video_transform(
                    out[index], name, magnitude, interpolation=ra.interpolation, fill=ra._fill)
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
