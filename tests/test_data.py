"""Tests for data.py. Every dataset is built in a tmp dir in its real on-disk format."""
import contextlib
import json
import os
import pickle

import numpy as np  # only to write CIFAR pickles exactly as the real archive stores them
import pytest
import torch
import torchvision
from PIL import Image
from torch.utils.data import DistributedSampler

import data
import recipes
from inputs import synthetic, transforms

SPEC = {"resize_size": 40, "crop_size": 36, "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}


# ----------------------------------------------------------------------------- fixtures
def _pickle(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


@pytest.fixture
def cifar_root(tmp_path, monkeypatch):
    """Both CIFAR archives, extracted, with the real file names and pickle keys."""
    # The real files are checked by MD5; these small stand-ins only need to exist.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity",
                        lambda path, md5=None: os.path.isfile(path))
    rng = np.random.default_rng(0)
    c10 = tmp_path / "cifar-10-batches-py"
    c10.mkdir()
    for i, file in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        _pickle(c10 / file, {"batch_label": file, "labels": [(i + j) % 10 for j in range(20)],
                             "data": rng.integers(0, 256, (20, 3072), dtype=np.uint8),
                             "filenames": [f"{file}_{j}.png" for j in range(20)]})
    _pickle(c10 / "batches.meta", {"label_names": [f"c10_{k}" for k in range(10)],
                                   "num_cases_per_batch": 20, "num_vis": 3072})
    c100 = tmp_path / "cifar-100-python"
    c100.mkdir()
    coarse_of = [int(p) // 5 for p in rng.permutation(100)]  # 5 fine classes per superclass
    for file, per_class in (("train", 2), ("test", 1)):
        fine = [f for f in range(100) for _ in range(per_class)]
        _pickle(c100 / file, {"batch_label": file, "fine_labels": fine,
                              "coarse_labels": [coarse_of[f] for f in fine],
                              "data": rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8),
                              "filenames": [f"{file}_{j}.png" for j in range(len(fine))]})
    _pickle(c100 / "meta", {"fine_label_names": [f"fine{k}" for k in range(100)],
                            "coarse_label_names": [f"coarse{k}" for k in range(20)]})
    return tmp_path, coarse_of


def _png(path, size, colour=(200, 30, 90)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


# ----------------------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic_per_seed():
    a = synthetic.SyntheticObjects("train", num_images=300, seed=3)
    b = synthetic.SyntheticObjects("train", num_images=300, seed=3)
    assert torch.equal(a.images, b.images) and a.targets == b.targets
    c = synthetic.SyntheticObjects("train", num_images=300, seed=4)
    assert not torch.equal(a.images, c.images)
    val = synthetic.SyntheticObjects("val", num_images=300, seed=3)
    assert not torch.equal(a.images, val.images)


def test_synthetic_build_sizes_balance_and_items():
    train, val, info = data.build_datasets("synthetic", seed=0)
    assert (len(train), len(val)) == (6000, 1000)
    assert info.num_classes == 10 and info.image_size == 32 and info.augment == "none"
    assert data.build_loader(train, batch_size=10, train=True).num_workers == 0  # in memory
    assert len(info.class_names) == 10 and len(info.coarse_of_class) == 10
    for ds, n in ((train, 600), (val, 100)):
        assert torch.bincount(torch.tensor(ds.targets)).tolist() == [n] * 10
    assert train.images.dtype == torch.uint8 and train.images.shape == (6000, 3, 32, 32)
    x, y = train[0]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and isinstance(y, int)
    assert x.min() >= -1 and x.max() <= 1  # (x - 0.5) / 0.5 of values in [0, 1]
    assert x.std() > 0.1


def test_synthetic_label_follows_the_ranking_rule():
    ds = synthetic.SyntheticObjects("train", num_images=2000, seed=1)
    rank_of = torch.empty(12, dtype=torch.long)
    rank_of[torch.tensor(synthetic.RANKING)] = torch.arange(12)
    assert torch.equal(rank_of[ds.objects].min(1).values, torch.tensor(ds.targets))
    assert all(len(set(row)) == 3 for row in ds.objects.tolist())  # distinct types
    assert all(len(set(row)) == 3 for row in ds.cells.tolist())  # distinct cells
    # Each object is drawn exactly in its cell: the cell differs from the background there.
    image, cells = ds.images[0].float(), ds.cells[0].tolist()
    cell_std = image.view(3, 4, 8, 4, 8).permute(1, 3, 0, 2, 4).reshape(16, -1).std(1)
    assert set(cell_std.topk(3).indices.tolist()) == set(cells)


def test_synthetic_twins_look_alike_but_decide_unrelated_classes():
    colour, alpha = synthetic._object_templates()
    drawn = colour * alpha
    twin_gap = [(drawn[2 * p] - drawn[2 * p + 1]).abs().mean() for p in range(6)]
    shape_gap = [(drawn[2 * p] - drawn[2 * q]).abs().mean() for p in range(6) for q in range(p)]
    assert max(twin_gap) < 0.5 * min(shape_gap)
    rank = {t: r for r, t in enumerate(synthetic.RANKING)}
    assert all(abs(rank[2 * p] - rank[2 * p + 1]) == 6 for p in range(6))


def test_synthetic_resizes_for_pretrained_weights_and_refuses_augmentation():
    train, val, info = data.build_datasets("synthetic", eval_spec=SPEC)
    assert info.image_size == 36 and train[0][0].shape == val[0][0].shape == (3, 36, 36)
    for augment in ("paper", "basic"):
        with pytest.raises(ValueError, match=rf"synthetic takes no augmentation .*augment="
                                             rf"'{augment}', use 'none'"):
            data.build_datasets("synthetic", augment=augment)
    assert data.build_datasets("synthetic", augment="none", max_per_class=1)[2].augment == "none"


# ----------------------------------------------------------------------------- CIFAR
def test_cifar10_sizes_labels_and_transforms(cifar_root):
    root, _ = cifar_root
    train, val, info = data.build_datasets("cifar10", str(root))
    assert (len(train), len(val)) == (100, 20) and info.num_classes == 10
    assert info.class_names[3] == "c10_3" and info.image_size == 32
    assert info.augment == "none"  # the library's default: no augmentation unless asked
    assert data.build_loader(train, batch_size=10, train=True).num_workers == 0
    assert train.targets[:3] == [0, 1, 2] and val.targets[:3] == [5, 6, 7]
    x, y = val[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 5
    mean, std = (torch.tensor(s)[:, None, None] for s in transforms.CIFAR_STATS["cifar10"])
    expected = (torch.tensor(val.data[0]).permute(2, 0, 1) / 255 - mean) / std
    assert torch.allclose(x, expected, atol=1e-5)
    big_train, big_val, big = data.build_datasets("cifar10", str(root), image_size=64)
    assert big.image_size == 64 and big_train[0][0].shape == big_val[0][0].shape == (3, 64, 64)
    spec_train, spec_val, spec = data.build_datasets("cifar10", str(root), eval_spec=SPEC)
    assert spec.image_size == 36 and spec_train[1][0].shape == spec_val[1][0].shape == (3, 36, 36)


def test_cifar100_exposes_superclasses(cifar_root):
    root, coarse_of = cifar_root
    train, val, info = data.build_datasets("cifar100", str(root), augment="paper")
    assert info.num_classes == 100 and info.coarse_of_class == coarse_of
    assert info.coarse_names == [f"coarse{k}" for k in range(20)]
    assert train[0][0].shape == (3, 32, 32)


def test_cifar_augmentations(cifar_root):
    root, _ = cifar_root
    tensor = ["PILToTensor", "ToNormalized"]
    crop_flip = ["RandomCrop", "RandomHorizontalFlip"]
    for augment, steps in (("paper", crop_flip + ["AsPIL"]), ("basic", crop_flip),
                           ("none", [])):
        train, val, info = data.build_datasets("cifar10", str(root), augment=augment)
        assert [type(t).__name__ for t in train.transform.transforms] == steps + tensor
        assert [type(t).__name__ for t in val.transform.transforms] == tensor
    assert torch.equal(train[0][0], val.transform(Image.fromarray(train.data[0])))  # none
    # basic: the 32 px image zero-padded by 4, cropped at a random offset, maybe flipped
    train, _, _ = data.build_datasets("cifar10", str(root), augment="basic")
    mean, std = (torch.tensor(s)[:, None, None] for s in transforms.CIFAR_STATS["cifar10"])
    padded = torch.nn.functional.pad(torch.tensor(train.data[0]).permute(2, 0, 1), (4,) * 4)
    crops = [padded[:, y:y + 32, x:x + 32] for y in range(9) for x in range(9)]
    crops += [c.flip(-1) for c in crops]
    for _ in range(5):
        pixels = ((train[0][0] * std + mean) * 255).round().to(torch.uint8)  # (3, 32, 32)
        assert any(torch.equal(pixels, c) for c in crops)


def test_cifar100_inconsistent_superclass_is_an_error(cifar_root):
    root, coarse_of = cifar_root
    test_file = root / "cifar-100-python" / "test"
    with open(test_file, "rb") as f:
        entry = pickle.load(f)
    entry["coarse_labels"][0] = (entry["coarse_labels"][0] + 1) % 20
    _pickle(test_file, entry)
    with pytest.raises(RuntimeError, match=r"cifar-100-python.*test.*superclass.*cifar\.html"):
        data.build_datasets("cifar100", str(root))


def test_missing_cifar_says_path_layout_and_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}/cifar-10-batches-py.*data_batch_1.*"
                                                r"--download.*kriz/cifar\.html"):
        data.build_datasets("cifar10", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python.*meta.*--download"):
        data.build_datasets("cifar100", str(tmp_path))


def test_synthetic_superclasses_group_the_look_alike_twins():
    _, _, info = data.build_datasets("synthetic", max_per_class=1)
    # twins sit 6 ranks apart: class c and class c + 6 are decided by the same shape
    for c in range(4):
        assert info.coarse_of_class[c] == info.coarse_of_class[c + 6]
        shape = info.class_names[c].split(",")[0].split(" +")[0]
        assert info.class_names[c + 6].startswith(shape)
    assert len(set(info.coarse_of_class)) == 6
    assert info.coarse_names[info.coarse_of_class[0]] == "square"


def test_synthetic_max_per_class_keeps_classes_balanced():
    train, val, _ = data.build_datasets("synthetic", max_per_class=7)
    for split in (train, val):
        assert sorted(split.targets) == sorted(list(range(10)) * 7)


# ----------------------------------------------------------------------------- places365
def test_places365_uses_torchvision_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.places365, "check_integrity",
                        lambda path, md5=None: os.path.isfile(path))
    (tmp_path / "categories_places365.txt").write_text("/a/airfield 0\n/b/bakery 1\n")
    (tmp_path / "places365_train_standard.txt").write_text(
        "/a/airfield/00000001.jpg 0\n/b/bakery/00000001.jpg 1\n")
    (tmp_path / "places365_val.txt").write_text("Places365_val_00000001.jpg 1\n")
    for path in ("data_large_standard/a/airfield/00000001.jpg",
                 "data_large_standard/b/bakery/00000001.jpg",
                 "val_large/Places365_val_00000001.jpg"):
        _png(tmp_path / path, (60, 50))
    train, val, info = data.build_datasets("places365", str(tmp_path), image_size=32)
    assert info.class_names == ["/a/airfield", "/b/bakery"] and (len(train), len(val)) == (2, 1)
    assert train[1][0].shape == (3, 32, 32) and train[1][1] == 1 and val[0][1] == 1


def test_places365_missing_files_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"places365: {tmp_path} lacks .*categories_"
                                                r"places365\.txt.*--download.*places2"):
        data.build_datasets("places365", str(tmp_path))


# ----------------------------------------------------------------------------- option errors
def test_bad_options_are_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*synthetic"):
        data.build_datasets("mnist")
    with pytest.raises(ValueError, match="cifar10 needs root"):
        data.build_datasets("cifar10")
    with pytest.raises(ValueError, match="eval_spec .* malformed.*resize_size"):
        data.build_datasets("synthetic", eval_spec={"crop_size": 3})
    with pytest.raises(ValueError, match="image_size=64 conflicts .* crop size 36"):
        data.build_datasets("synthetic", image_size=64, eval_spec=SPEC)
    with pytest.raises(ValueError, match=r"unknown augment 'randaugment'; choose one of "
                                         r"\('paper', 'basic', 'none'\)"):
        data.build_datasets("cifar10", str(tmp_path), augment="randaugment")
    (tmp_path / "data.tar").write_bytes(b"")
    for name in ("cifar10", "imagenet", "places365", "inat2018"):
        with pytest.raises(NotADirectoryError, match=rf"{name}: data root {tmp_path}/data\.tar "
                                                     r"is a file, expected a folder"):
            data.build_datasets(name, str(tmp_path / "data.tar"))


def test_llb_on_released_weights_needs_their_label_set():
    """LLB keeps the released head: data.build_loaders refuses data with another label set."""
    import train

    args = ["--method", "llb", "--pretrained", "vit_b_16:IMAGENET1K_V1", "--max-per-class", "1"]
    (llb, _), = recipes.plan(train.parse_args(args))
    with pytest.raises(ValueError, match=r"vit_b_16:IMAGENET1K_V1 has 1000 classes but synthetic "
                                         r"has 10; use --method vit.*matching weights"):
        data.build_loaders(llb, rank=0, world=1, workers=0, device=torch.device("cpu"))


# ----------------------------------------------------------------------------- loaders
def _labels(loader):
    return torch.cat([y for _, y in loader]).tolist()


def test_train_loader_shuffles_by_seed_and_drops_last():
    ds = synthetic.SyntheticObjects("val", num_images=100)
    loader = data.build_loader(ds, batch_size=16, train=True, seed=5)
    assert loader.num_workers == 0 and not loader.persistent_workers  # in-memory set
    assert len(loader) == 6 and len(_labels(loader)) == 96
    again = data.build_loader(ds, batch_size=16, train=True, seed=5)
    other = data.build_loader(ds, batch_size=16, train=True, seed=6)
    assert _labels(loader) != ds.targets[:96]
    assert _labels(again) == _labels(data.build_loader(ds, batch_size=16, train=True, seed=5))
    assert _labels(other) != _labels(data.build_loader(ds, batch_size=16, train=True, seed=5))
    # one process too: each epoch's order is a function of (seed, epoch), as resuming needs
    epoch0 = _labels(loader)
    loader.sampler.set_epoch(1)
    epoch1 = _labels(loader)
    fresh = data.build_loader(ds, batch_size=16, train=True, seed=5)
    fresh.sampler.set_epoch(1)
    assert epoch1 != epoch0 and _labels(fresh) == epoch1
    with pytest.raises(ValueError, match="smaller than one batch of 128"):
        data.build_loader(ds, batch_size=128, train=True)


def test_eval_loader_keeps_order_and_everything():
    val = synthetic.SyntheticObjects("val", num_images=9)
    loader = data.build_loader(val, batch_size=4, train=False, workers=0, pin_memory=False)
    assert _labels(loader) == val.targets  # 9 items, last batch of 1 kept
    streamed = torch.utils.data.TensorDataset(torch.zeros(8, 3))  # no in_memory attribute
    auto = data.build_loader(streamed, batch_size=4, train=True)
    assert auto.num_workers == data.default_workers(1) and auto.persistent_workers


def test_default_workers_share_the_machine_s_cores_among_its_ranks(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(112)), raising=False)
    assert data.default_workers(8) == 13  # 112 cores / 8 ranks, less the rank's own
    assert data.default_workers(1) == 111
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun: 4 of 16 ranks on this machine
    assert data.default_workers(16) == 27
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert data.default_workers(16) == 1  # never 0: a streamed set needs a loader process


def test_distributed_train_loader_uses_distributed_sampler():
    ds = synthetic.SyntheticObjects("val", num_images=101)
    loaders = [data.build_loader(ds, batch_size=10, train=True, rank=r, world_size=2, seed=1)
               for r in range(2)]
    assert all(isinstance(loader.sampler, DistributedSampler) for loader in loaders)
    shards = [list(loader.sampler) for loader in loaders]
    assert len(shards[0]) == len(shards[1]) == 50 and not set(shards[0]) & set(shards[1])
    loaders[0].sampler.set_epoch(1)
    assert list(loaders[0].sampler) != shards[0]
    assert len(loaders[0]) == 5


def test_distributed_eval_shards_are_disjoint_and_cover_everything():
    ds = synthetic.SyntheticObjects("val", num_images=101)
    loaders = [data.build_loader(ds, batch_size=8, train=False, rank=r, world_size=2)
               for r in range(2)]
    shards = [list(loader.sampler) for loader in loaders]
    assert sorted(shards[0] + shards[1]) == list(range(101))
    assert sum(len(_labels(loader)) for loader in loaders) == 101
    assert sorted(_labels(loaders[0]) + _labels(loaders[1])) == sorted(ds.targets)
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        data.build_loader(ds, batch_size=8, train=False, rank=2, world_size=2)


# ----------------------------------------------------------------------------- ImageNet-ReaL
NUMBER_OF_CLASS = [(7919 * k) % data.REAL_IMAGES + 1 for k in range(1000)]  # distinct, shuffled


@pytest.fixture
def imagenet_real(tmp_path):
    """1000 wnid folders, one train and one val image each, and a real.json for them.

    Val image of class k is ILSVRC2012_val_{NUMBER_OF_CLASS[k]:08d}.JPEG. Its ReaL labels: none
    for k < 100; [k] for 100 <= k < 600; [k + 1, k + 2] (mod 1000) for k >= 600.
    """
    root = tmp_path / "imagenet"
    jpeg = tmp_path / "tiny.jpg"
    Image.new("RGB", (4, 4), (90, 120, 30)).save(jpeg, "JPEG")
    entries = [[] for _ in range(data.REAL_IMAGES)]
    for k in range(1000):
        wnid = f"n{1000000 + k:08d}"
        for split, file in (("train", "a.JPEG"),
                            ("val", f"ILSVRC2012_val_{NUMBER_OF_CLASS[k]:08d}.JPEG")):
            (root / split / wnid).mkdir(parents=True)
            (root / split / wnid / file).write_bytes(jpeg.read_bytes())
        real = [] if k < 100 else [k] if k < 600 else [(k + 1) % 1000, (k + 2) % 1000]
        entries[NUMBER_OF_CLASS[k] - 1] = real
    (tmp_path / "real.json").write_text(json.dumps(entries))
    return root, tmp_path / "real.json", entries


def test_real_labels_follow_the_file_numbers_and_score_a_known_answer(imagenet_real):
    root, real_json, entries = imagenet_real
    _, val, _ = data.build_datasets("imagenet", str(root), image_size=4)
    labels = data.read_real_labels(real_json, val)
    assert labels == [entries[NUMBER_OF_CLASS[k] - 1] for k in val.targets]
    assert labels[150] == [150] and labels[42] == [] and labels[700] == [701, 702]
    # predicting the folder label is right for 100 <= k < 600; classes k < 100 are not counted
    assert data.real_hits(torch.tensor(val.targets), labels) == (500, 900)
    assert data.real_hits(torch.tensor([3, 5, 7, 1]), [[3], [], [6, 7], [2]]) == (2, 3)
    with pytest.raises(ValueError, match=r"one predicted class per image: pred of shape "
                                         r"\(2, 2\) for 4 label lists"):
        data.real_hits(torch.zeros(2, 2), [[3], [], [6, 7], [2]])


def test_real_labels_errors(imagenet_real, tmp_path):
    root, real_json, entries = imagenet_real
    _, val, _ = data.build_datasets("imagenet", str(root), image_size=4)
    _, subset, _ = data.build_datasets("imagenet", str(root), image_size=4, classes=2)
    with pytest.raises(ValueError, match=r"all 1000 ImageNet classes in wnid-sorted order, but "
                                         r"this validation set has 2 classes.*no --classes"):
        data.read_real_labels(real_json, subset)
    reordered = tmp_path / "reordered.txt"
    reordered.write_text("\n".join(reversed(val.class_names)))
    _, shuffled, _ = data.build_datasets("imagenet", str(root), image_size=4,
                                         classes=str(reordered))
    with pytest.raises(ValueError, match=r"wnid-sorted order, but this validation set has 1000"):
        data.read_real_labels(real_json, shuffled)
    renamed = val.samples[3][0].replace(os.path.basename(val.samples[3][0]), "photo.JPEG")
    val.samples[3] = (renamed, val.samples[3][1])
    with pytest.raises(ValueError, match=rf"validation image {renamed} is not named "
                                         r"ILSVRC2012_val_00000001\.JPEG"):
        data.read_real_labels(real_json, val)
    entries[17] = [4, 1000]
    (tmp_path / "bad_label.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"bad_label\.json: entry 17 holds label 1000, outside "
                                         r"the 1000 ImageNet classes"):
        data.read_real_labels(tmp_path / "bad_label.json", val)
    (tmp_path / "short.json").write_text(json.dumps(entries[:-1]))
    with pytest.raises(ValueError, match=r"short\.json must be a JSON list of 50000 lists"):
        data.read_real_labels(tmp_path / "short.json", val)
    (tmp_path / "text.json").write_text("not json")
    with pytest.raises(ValueError, match=r"text\.json is not JSON .*reassessed-imagenet"):
        data.read_real_labels(tmp_path / "text.json", val)
    with pytest.raises(FileNotFoundError, match=r"absent\.json does not exist; download real"):
        data.read_real_labels(tmp_path / "absent.json", val)


def test_real_top1_end_to_end_through_eval_only_and_two_shards(imagenet_real, tmp_path):
    """A ViT whose zero head predicts class 0 for every image: ReaL counts the 900 images with
    labels, of which the two of classes 998 and 999 list class 0; plain top-1 is 1 / 1000."""
    import dataclasses

    import train
    import vit
    from util import evaluate

    root, real_json, _ = imagenet_real
    model = vit.ViT(image_size=32, patch_size=8, width=32, depth=1, heads=2, mlp_dim=64,
                    num_classes=1000)  # vit.py zero-inits its head: all logits equal, argmax 0
    ckpt = {"kind": "vit", "vit_config": dataclasses.asdict(model.config), "llb_config": None,
            "model": model.state_dict(), "dataset": "imagenet"}
    torch.save(ckpt, tmp_path / "zero_head.pt")
    results = train.main(["--eval-only", str(tmp_path / "zero_head.pt"), "--device", "cpu",
                          "--data-dir", str(root), "--real-labels", str(real_json)])
    assert results["top1_visual"] == pytest.approx(100 / 1000)
    assert results["top1_real_visual"] == pytest.approx(100 * 2 / 900)
    # two ranks' shards (rank::2), evaluated apart: their ReaL counts add up to the whole
    _, val, _ = data.build_datasets("imagenet", str(root), image_size=32)
    real = data.read_real_labels(real_json, val)
    counted = 0
    hits = 0
    for rank in (0, 1):
        loader = data.build_loader(val, batch_size=64, train=False, rank=rank, world_size=2)
        shard = evaluate.evaluate(model, loader, torch.device("cpu"), contextlib.nullcontext(),
                                  real=real)
        n = sum(1 for i in loader.sampler if real[i])
        counted += n
        hits += shard["top1_real_visual"] * n / 100
    assert (round(hits), counted) == (2, 900)
