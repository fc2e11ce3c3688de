"""Tests for inputs/on_device.py: the end of the pipeline run on a whole batch on the device.

BatchRandAugment must draw RandAugment's ops and magnitudes and apply torchvision's v2 kernels
image after image, transforms.ToNormalized must normalize a batch as it does each image,
transforms.device_split must hand the device only what may move there, and a loader of such a
set must give the tensors the loader processes give without it. Run here on the CPU: the device
code is the same on CUDA.
"""
import pytest
import torch

import data
import train
from inputs import on_device, transforms
from tests.test_pipeline import _jpeg_folder

# the device code runs here on the CPU; where CUDA is present (../shared/GPU.md) on it too
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _images(n=12, size=24, seed=0):
    """n uint8 images (n, 3, size, size): smooth colour blobs plus noise (ops act visibly)."""
    g = torch.Generator().manual_seed(seed)
    grid = torch.rand(n, 3, 4, 4, generator=g) * 255
    x = torch.nn.functional.interpolate(grid, size=(size, size), mode="bicubic")
    return (x + 20 * torch.randn(x.shape, generator=g)).clamp(0, 255).byte()


@pytest.mark.parametrize("device", DEVICES)
def test_batch_randaugment_applies_v2s_ops_image_after_image(device):
    batch_ra = on_device.BatchRandAugment(num_ops=3, magnitude=9)
    reference = batch_ra.reference  # v2.RandAugment(3, 9): its kernels, one image at a time
    drawn = set()
    for seed in range(4):
        x = _images(seed=seed)
        torch.manual_seed(seed)
        rounds = batch_ra.draw(len(x), 24, 24)
        got = batch_ra.apply(x.to(device), rounds).cpu()
        assert got.dtype == torch.uint8 and got.shape == x.shape
        for i, image in enumerate(x):
            ops = [op for groups in rounds for op, members in groups.items() if i in members]
            assert len(ops) == 3, "one op per image and round"
            expected = image
            for name, magnitude in ops:
                expected = reference._apply_image_or_video_transform(
                    expected, name, magnitude, interpolation=reference.interpolation,
                    fill=reference._fill)
            if device == "cpu":
                assert torch.equal(got[i], expected), f"seed {seed}, image {i}: ops {ops}"
            else:  # CUDA's float kernels may round a level differently
                levels = (got[i].float() - expected.float()).abs()
                assert levels.mean() < 0.05, f"seed {seed}, image {i}: ops {ops}"
        drawn |= {name for groups in rounds for name, _ in groups}
    assert drawn == set(reference._AUGMENTATION_SPACE), "every op must be exercised"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="a host sync exists only with CUDA")
def test_the_device_part_makes_no_host_sync():
    normalize = transforms.ToNormalized(transforms.IMAGENET_MEAN, transforms.IMAGENET_STD)
    tail = torch.nn.Sequential(on_device.BatchRandAugment(num_ops=3, magnitude=9), normalize).cuda()
    x = _images(n=64).pin_memory().cuda(non_blocking=True)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        tail(x)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_batch_randaugment_draws_randaugments_ops_and_magnitudes():
    # RandAugment (Cubuk et al. 2020) as torchvision ranges it, magnitude 9 of bins 0..30
    table = on_device.BatchRandAugment(num_ops=3, magnitude=9).signed_magnitudes(224, 200)
    assert len(table) == 14 and table["Identity"] == (0.0, False)
    assert table["Rotate"] == pytest.approx((9.0, True))  # 30 degrees * 9 / 30
    assert table["ShearX"] == pytest.approx((0.09, True))  # 0.3 * 9 / 30
    assert table["TranslateX"] == pytest.approx((150 / 331 * 200 * 0.3, True))  # of the width
    assert table["TranslateY"] == pytest.approx((150 / 331 * 224 * 0.3, True))
    assert table["Brightness"] == pytest.approx((0.27, True))  # factor 1 +- 0.9 * 9 / 30
    assert table["Posterize"] == (7.0, False) and table["Solarize"] == pytest.approx((0.7, False))
    torch.manual_seed(0)
    rounds = on_device.BatchRandAugment(num_ops=3, magnitude=9).draw(7000, 224, 200)
    for groups in rounds:
        count = {}
        for (name, _), members in groups.items():
            count[name] = count.get(name, 0) + len(members)
        assert sum(count.values()) == 7000 and len(count) == 14
        for (name, magnitude), members in groups.items():
            if table[name][1]:  # signed: each sign half the time (+- 4.5 sigma at n ~ 500)
                assert 0.4 < len(members) / count[name] < 0.6, (name, magnitude)
        assert all(0.85 < c / (7000 / 14) < 1.15 for c in count.values()), count


def test_batch_randaugment_draws_per_image_and_leaves_its_input_alone():
    x = _images(n=1).expand(32, -1, -1, -1).contiguous()  # one image, 32 times
    before = x.clone()
    torch.manual_seed(0)
    out = on_device.BatchRandAugment(num_ops=3, magnitude=9)(x)
    assert torch.equal(x, before)
    distinct = {tuple(image.flatten().tolist()) for image in out}
    assert len(distinct) > 16, "one draw per image, not one for the whole batch"


def test_ddp_ranks_seeded_alike_draw_their_own_slice_of_the_global_batch(monkeypatch):
    batch_ra = on_device.BatchRandAugment(num_ops=3, magnitude=9)

    def draws(rank, world):
        monkeypatch.setattr(on_device.dist, "is_initialized", lambda: world > 1)
        monkeypatch.setattr(on_device.dist, "get_rank", lambda: rank)
        monkeypatch.setattr(on_device.dist, "get_world_size", lambda: world)
        torch.manual_seed(0)  # train.py seeds every rank alike
        ops = torch.full((3, 16), -1)
        for r, groups in enumerate(batch_ra.draw(16, 24, 24)):
            for (name, magnitude), members in groups.items():
                ops[r, members] = names.index(name) * 2 + (magnitude < 0)
        return ops  # (rounds, B) a code of each image's op and sign
    names = list(batch_ra.signed_magnitudes(24, 24))
    assert (draws(0, 1) >= 0).all()
    assert torch.equal(draws(0, 1), draws(0, 1))
    assert not torch.equal(draws(0, 2), draws(1, 2))


def test_to_normalized_normalizes_a_batch_as_each_image():
    x = _images(n=5, size=17)
    mean, std = transforms.IMAGENET_MEAN, transforms.IMAGENET_STD
    expected = torch.stack([transforms.ToNormalized(mean, std)(image) for image in x])
    got = transforms.ToNormalized(mean, std)(x)
    assert got.dtype == torch.float32 and got.is_contiguous()
    assert torch.equal(got, expected)


def _kinds(steps):
    return [type(s).__name__ for s in steps]


def test_device_split_moves_the_normalize_and_a_final_randaugment_only():
    train, val, _ = transforms.make_transforms("imagenet", image_size=None, eval_spec=None,
                                               augment="paper")
    worker, tail = transforms.device_split(train)
    assert _kinds(worker.transforms) == ["Resize", "CenterCrop", "PILToTensor"]
    assert _kinds(tail) == ["BatchRandAugment", "ToNormalized"]
    worker, tail = transforms.device_split(val)
    assert _kinds(worker.transforms) == ["Resize", "CenterCrop", "PILToTensor"]
    assert _kinds(tail) == ["ToNormalized"]
    # CIFAR on released weights: a resize follows RandAugment, so it stays in the worker
    spec = {"resize_size": 64, "crop_size": 64, "interpolation": "bicubic",
            "mean": (0.5,) * 3, "std": (0.5,) * 3}
    train, _, _ = transforms.make_transforms("cifar10", image_size=None, eval_spec=spec,
                                             augment="paper")
    worker, tail = transforms.device_split(train)
    assert "AsPIL" in _kinds(worker.transforms) and _kinds(tail) == ["ToNormalized"]
    # synthetic: float tensors, normalized by v2; nothing to move
    train, _, _ = transforms.make_transforms("synthetic", image_size=None, eval_spec=None,
                                             augment="none")
    assert transforms.device_split(train) == (train, None)


@pytest.mark.parametrize("device", DEVICES)
def test_a_loader_on_the_device_gives_the_loader_processes_tensors(tmp_path, device):
    root = _jpeg_folder(tmp_path / "f")
    plain = data.build_datasets("imagenet", str(root), augment="none")
    moved = data.build_datasets("imagenet", str(root), augment="none", on_device=True)
    assert moved[0][0][0].dtype == torch.uint8 and moved[0].batch_transform is not None
    for split, shuffled in ((0, True), (1, False)):
        loaders = [data.build_loader(sets[split], batch_size=3, train=shuffled, workers=0,
                                     device=device) for sets in (plain, moved)]
        assert isinstance(loaders[1], on_device.OnDevice)
        assert len(loaders[1]) == len(loaders[0])
        assert loaders[1].sampler is loaders[1].loader.sampler  # set_epoch reaches the loader
        for (x0, y0), (x1, y1) in zip(*loaders, strict=True):
            assert x1.device.type == device and y1.device.type == device
            assert x1.dtype == torch.float32 and x1.shape == (3, 3, 224, 224)
            assert torch.equal(y0, y1.cpu())
            assert torch.allclose(x0, x1.cpu(), atol=1e-6)


def test_paper_on_the_device_augments_every_training_batch(tmp_path):
    root = _jpeg_folder(tmp_path / "f")
    train, val, _ = data.build_datasets("imagenet", str(root), augment="paper", on_device=True)
    assert _kinds(train.batch_transform) == ["BatchRandAugment", "ToNormalized"]
    assert _kinds(val.batch_transform) == ["ToNormalized"]
    loader = data.build_loader(train, batch_size=6, train=True, workers=0, device="cpu")
    torch.manual_seed(0)
    x, _ = next(iter(loader))
    framed = val.batch_transform(torch.stack([val[i][0] for i in range(6)]))  # no augmentation
    assert x.shape == framed.shape and not torch.allclose(x.sort(0).values, framed.sort(0).values)


def test_training_and_evaluation_run_on_device_batches(tmp_path, monkeypatch):
    """train.py end to end with the CUDA path (forced here on the CPU): both stages train on
    batches finished by BatchRandAugment + ToNormalized, and evaluate on ToNormalized's."""
    build = data.build_datasets

    def build_on_device(*args, **kwargs):  # what data.build_loaders asks for on CUDA
        return build(*args, **kwargs | {"on_device": True})
    monkeypatch.setattr(data, "build_datasets", build_on_device)
    calls = {"BatchRandAugment": 0, "ToNormalized": 0}
    for name, cls in (("BatchRandAugment", on_device.BatchRandAugment),
                      ("ToNormalized", transforms.ToNormalized)):
        forward = cls.forward

        def counted(self, x, forward=forward, name=name):
            calls[name] += 1
            assert x.dtype == torch.uint8 and x.dim() == 4  # a batch of the loader's uint8
            return forward(self, x)
        monkeypatch.setattr(cls, "forward", counted)
    root = _jpeg_folder(tmp_path / "f")
    results = train.main(["--dataset", "folder", "--data-dir", str(root), "--augment", "paper",
                          "--image-size", "32", "--epochs", "1", "--llb-epochs", "1",
                          "--batch-size", "2", "--device", "cpu",
                          "--out-dir", str(tmp_path / "r")])
    assert results["top1_integrated"] is not None
    assert calls["BatchRandAugment"] >= 2 * 3  # two stages x 3 training batches of 2
    assert calls["ToNormalized"] > calls["BatchRandAugment"]  # and every evaluation batch
