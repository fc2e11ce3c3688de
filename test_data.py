"""Tests for data.py. Every dataset is built in a tmp dir in its real on-disk format."""
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
import synthetic

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


@pytest.fixture
def folder_root(tmp_path):
    """root/{train,val}/{cat,dog,eel}/ with images of different sizes and formats."""
    root = tmp_path / "folder"
    for split, count in (("train", 4), ("val", 2)):
        for c, name in enumerate(("cat", "dog", "eel")):
            for i in range(count):
                _png(root / split / name / f"img{i}.png", (20 + 7 * i, 30 + 3 * c))
            Image.new("RGB", (25, 25)).save(root / split / name / "zz.JPEG", "JPEG")
            (root / split / name / "notes.txt").write_text("not an image")
    return root


# ----------------------------------------------------------------------------- synthetic
def test_synthetic_is_deterministic_per_seed():
    a, b = data.SyntheticObjects("train", num_images=300, seed=3), data.SyntheticObjects(
        "train", num_images=300, seed=3)
    assert torch.equal(a.images, b.images) and a.targets == b.targets
    c = data.SyntheticObjects("train", num_images=300, seed=4)
    assert not torch.equal(a.images, c.images)
    val = data.SyntheticObjects("val", num_images=300, seed=3)
    assert not torch.equal(a.images, val.images)


def test_synthetic_build_sizes_balance_and_items():
    train, val, info = data.build_datasets("synthetic", seed=0)
    assert (len(train), len(val)) == (6000, 1000)
    assert info.num_classes == 10 and info.image_size == 32 and info.in_memory
    assert len(info.class_names) == 10 and len(info.coarse_of_class) == 10
    for ds, n in ((train, 600), (val, 100)):
        assert torch.bincount(torch.tensor(ds.targets)).tolist() == [n] * 10
    assert train.images.dtype == torch.uint8 and train.images.shape == (6000, 3, 32, 32)
    x, y = train[0]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and isinstance(y, int)
    assert x.min() >= -1 and x.max() <= 1  # (x - 0.5) / 0.5 of values in [0, 1]
    assert x.std() > 0.1


def test_synthetic_label_follows_the_ranking_rule():
    ds = data.SyntheticObjects("train", num_images=2000, seed=1)
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
    with pytest.raises(ValueError, match="no augmentation"):
        data.build_datasets("synthetic", randaugment=True)


# ----------------------------------------------------------------------------- CIFAR
def test_cifar10_sizes_labels_and_transforms(cifar_root):
    root, _ = cifar_root
    train, val, info = data.build_datasets("cifar10", str(root))
    assert (len(train), len(val)) == (100, 20) and info.num_classes == 10
    assert info.class_names[3] == "c10_3" and info.in_memory and info.image_size == 32
    assert data.build_loader(train, batch_size=10, train=True).num_workers == 0
    assert train.targets[:3] == [0, 1, 2] and val.targets[:3] == [5, 6, 7]
    x, y = val[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 5
    mean, std = data.CIFAR_STATS["cifar10"]
    expected = (torch.tensor(val.data[0]).permute(2, 0, 1) / 255 - torch.tensor(mean)[:, None,
                                                                                       None])
    assert torch.allclose(x, expected / torch.tensor(std)[:, None, None], atol=1e-5)
    big_train, big_val, big = data.build_datasets("cifar10", str(root), image_size=64)
    assert big.image_size == 64 and big_train[0][0].shape == big_val[0][0].shape == (3, 64, 64)
    spec_train, spec_val, spec = data.build_datasets("cifar10", str(root), eval_spec=SPEC)
    assert spec.image_size == 36 and spec_train[1][0].shape == spec_val[1][0].shape == (3, 36, 36)


def test_cifar100_exposes_superclasses(cifar_root):
    root, coarse_of = cifar_root
    train, val, info = data.build_datasets("cifar100", str(root), randaugment=True)
    assert info.num_classes == 100 and info.coarse_of_class == coarse_of
    assert info.coarse_names == [f"coarse{k}" for k in range(20)]
    assert train.coarse_targets == [coarse_of[t] for t in train.targets]
    assert val.coarse_targets == [coarse_of[t] for t in val.targets]
    assert train[0][0].shape == (3, 32, 32)


def test_cifar100_inconsistent_superclass_is_an_error(cifar_root):
    root, coarse_of = cifar_root
    test_file = root / "cifar-100-python" / "test"
    with open(test_file, "rb") as f:
        entry = pickle.load(f)
    entry["coarse_labels"][0] = (entry["coarse_labels"][0] + 1) % 20
    _pickle(test_file, entry)
    with pytest.raises(RuntimeError, match=r"cifar-100-python.*test.*superclasses.*cifar\.html"):
        data.build_datasets("cifar100", str(root))


def test_missing_cifar_says_path_layout_and_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}/cifar-10-batches-py.*data_batch_1.*"
                                                r"--download.*kriz/cifar\.html"):
        data.build_datasets("cifar10", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python.*meta.*--download"):
        data.build_datasets("cifar100", str(tmp_path))


# ----------------------------------------------------------------------------- folders
def test_folder_sizes_labels_and_photo_transforms(folder_root):
    train, val, info = data.build_datasets("folder", str(folder_root), image_size=32)
    assert info.class_names == ["cat", "dog", "eel"] and info.num_classes == 3
    assert (len(train), len(val)) == (15, 9) and not info.in_memory  # .JPEG counted, .txt not
    assert train.targets == [0] * 5 + [1] * 5 + [2] * 5
    assert train.samples[4][0].endswith("cat/zz.JPEG")
    for ds in (train, val):
        x, y = ds[1]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 0
    x, _ = val[0]  # a solid colour survives resize and crop unchanged
    mean, std = torch.tensor(data.IMAGENET_MEAN), torch.tensor(data.IMAGENET_STD)
    expected = (torch.tensor([200, 30, 90]) / 255 - mean) / std
    assert torch.allclose(x, expected[:, None, None].expand(3, 32, 32), atol=2e-2)
    assert [type(t).__name__ for t in train.transform.transforms] == [
        "Resize", "CenterCrop", "RandAugment", "ToTensor", "Normalize"]
    assert train.transform.transforms[0].size == 37  # round(32 * 256 / 224)
    _, default_val, default = data.build_datasets("folder", str(folder_root))
    assert default.image_size == 224 and default_val[0][0].shape == (3, 224, 224)


def test_eval_spec_sets_the_val_transform_exactly(folder_root):
    train, val, info = data.build_datasets("imagenet", str(folder_root), eval_spec=SPEC)
    resize, crop, to_tensor, normalize = val.transform.transforms
    assert resize.size == 40 and resize.interpolation.value == "bilinear" and crop.size == (36, 36)
    assert normalize.mean == SPEC["mean"] and normalize.std == SPEC["std"]
    assert info.image_size == 36 and train[0][0].shape == val[0][0].shape == (3, 36, 36)


def test_class_subsets_and_max_per_class(folder_root, tmp_path):
    train, val, info = data.build_datasets("folder", str(folder_root), image_size=32, classes=2)
    assert info.class_names == ["cat", "dog"] and set(train.targets) == set(val.targets) == {0, 1}
    listing = tmp_path / "classes.txt"
    listing.write_text("# my subset\neel\n\ncat  # felines\n")
    train, val, info = data.build_datasets("folder", str(folder_root), image_size=32,
                                           classes=str(listing), max_per_class=2)
    assert info.class_names == ["eel", "cat"] and info.num_classes == 2
    assert [(os.path.basename(p), y) for p, y in train.samples] == [
        ("img0.png", 0), ("img1.png", 0), ("img0.png", 1), ("img1.png", 1)]
    assert [p.split(os.sep)[-2] for p, _ in val.samples] == ["eel", "eel", "cat", "cat"]
    assert data.build_datasets("folder", str(folder_root), classes="1")[2].class_names == ["cat"]


def test_class_selection_errors(folder_root, tmp_path):
    with pytest.raises(ValueError, match=r"classes=4 .*train has 3 class folders.*between 1 and 3"):
        data.build_datasets("folder", str(folder_root), classes=4)
    listing = tmp_path / "classes.txt"
    listing.write_text("cat\nn01440764\n")
    with pytest.raises(ValueError, match=r"classes\.txt.*unknown: \['n01440764'\].*'cat'"):
        data.build_datasets("folder", str(folder_root), classes=str(listing))
    with pytest.raises(FileNotFoundError, match=r"nope\.txt not found.*one class folder name"):
        data.build_datasets("folder", str(folder_root), classes=str(tmp_path / "nope.txt"))
    with pytest.raises(ValueError, match="classes selects subsets of imagenet and folder, not synthetic"):
        data.build_datasets("synthetic", classes=3)
    with pytest.raises(ValueError, match="max_per_class selects subsets of imagenet, folder and synthetic, not cifar10"):
        data.build_datasets("cifar10", str(tmp_path), max_per_class=3)


def test_synthetic_superclasses_group_the_look_alike_twins():
    _, _, info = data.build_datasets("synthetic", max_per_class=1)
    # twins sit 6 ranks apart: class c and class c + 6 are decided by the same shape
    for c in range(4):
        assert info.coarse_of_class[c] == info.coarse_of_class[c + 6]
        assert info.class_names[c + 6].startswith(info.class_names[c].split(",")[0].split(" +")[0])
    assert len(set(info.coarse_of_class)) == 6 and info.coarse_names[info.coarse_of_class[0]] == "square"


def test_synthetic_max_per_class_keeps_classes_balanced():
    train, val, _ = data.build_datasets("synthetic", max_per_class=7)
    for split in (train, val):
        assert sorted(split.targets) == sorted(list(range(10)) * 7)


def test_folder_layout_errors(folder_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}/absent does not exist.*"
                                                r"train/<class>/<image>.*image-net\.org.*valprep"):
        data.build_datasets("imagenet", str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty is empty.*expected layout"):
        data.build_datasets("folder", str(tmp_path / "empty"))
    (tmp_path / "only_train" / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"missing split folder .*only_train/val"):
        data.build_datasets("folder", str(tmp_path / "only_train"))
    (folder_root / "val" / "dog" / "img0.png").rename(folder_root / "val" / "img0.png")
    for f in (folder_root / "val" / "dog").iterdir():
        f.unlink()
    (folder_root / "val" / "dog").rmdir()
    with pytest.raises(ValueError, match=r"val lacks class folders \['dog'\].*valprep\.sh"):
        data.build_datasets("imagenet", str(folder_root))
    for f in (folder_root / "train" / "cat").iterdir():
        f.unlink()
    with pytest.raises(ValueError, match=r"train/cat has no images.*\.png"):
        data.build_datasets("folder", str(folder_root), classes=1)


def test_corrupt_image_raises_naming_the_file(folder_root):
    bad = folder_root / "train" / "dog" / "img2.png"
    bad.write_bytes(b"these bytes are not a PNG")
    train, _, _ = data.build_datasets("folder", str(folder_root), image_size=32)
    index = [p for p, _ in train.samples].index(str(bad))
    with pytest.raises(RuntimeError, match=rf"cannot read image file {bad}"):
        train[index]


# ----------------------------------------------------------------------------- places, inat
def test_places365_uses_torchvision_layout(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.places365, "check_integrity",
                        lambda path, md5=None: os.path.isfile(path))
    (tmp_path / "categories_places365.txt").write_text("/a/airfield 0\n/b/bakery 1\n")
    (tmp_path / "places365_train_standard.txt").write_text(
        "/a/airfield/00000001.jpg 0\n/b/bakery/00000001.jpg 1\n")
    (tmp_path / "places365_val.txt").write_text("Places365_val_00000001.jpg 1\n")
    for path in ("data_large_standard/a/airfield/00000001.jpg",
                 "data_large_standard/b/bakery/00000001.jpg", "val_large/Places365_val_00000001.jpg"):
        _png(tmp_path / path, (60, 50))
    train, val, info = data.build_datasets("places365", str(tmp_path), image_size=32)
    assert info.class_names == ["/a/airfield", "/b/bakery"] and (len(train), len(val)) == (2, 1)
    assert train[1][0].shape == (3, 32, 32) and train[1][1] == 1 and val[0][1] == 1


def test_places365_missing_files_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"places365: {tmp_path} lacks .*categories_"
                                                r"places365\.txt.*--download.*places2"):
        data.build_datasets("places365", str(tmp_path))


@pytest.mark.parametrize("image_dir", ["train_val2018", "2018"])  # archive name, torchvision's
def test_inat2018_split_comes_from_the_official_json(tmp_path, image_dir):
    def write(split, images):
        (tmp_path / f"{split}2018.json").write_text(json.dumps({
            "images": [{"id": i, "file_name": f} for i, (f, _) in enumerate(images)],
            "annotations": [{"image_id": i, "category_id": c} for i, (_, c) in enumerate(images)],
            "categories": [{"id": 7, "name": "fern"}, {"id": 3, "name": "moss"}]}))
    write("train", [("train_val2018/Plantae/7/a.jpg", 7), ("train_val2018/Plantae/3/b.jpg", 3)])
    write("val", [("train_val2018/Plantae/3/c.jpg", 3)])
    for name in ("7/a.jpg", "3/b.jpg", "3/c.jpg"):
        _png(tmp_path / image_dir / "Plantae" / name, (40, 40))
    train, val, info = data.build_datasets("inat2018", str(tmp_path), image_size=32)
    assert info.class_names == ["moss", "fern"] and train.targets == [1, 0] and val.targets == [0]
    assert val[0][0].shape == (3, 32, 32)


def test_inat2018_missing_json_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing .*train2018\.json.*expected layout.*"
                                                r"visipedia/inat_comp/tree/master/2018"):
        data.build_datasets("inat2018", str(tmp_path))


# ----------------------------------------------------------------------------- option errors
def test_bad_options_are_errors(folder_root):
    with pytest.raises(ValueError, match="unknown dataset 'mnist'.*synthetic"):
        data.build_datasets("mnist")
    with pytest.raises(ValueError, match="cifar10 needs root"):
        data.build_datasets("cifar10")
    with pytest.raises(ValueError, match="eval_spec .* malformed.*resize_size"):
        data.build_datasets("synthetic", eval_spec={"crop_size": 3})
    with pytest.raises(ValueError, match="image_size=64 conflicts .* crop size 36"):
        data.build_datasets("synthetic", image_size=64, eval_spec=SPEC)
    with pytest.raises(ValueError, match=r"vit_b_16:IMAGENET1K_V1 has 1000 classes but folder "
                                         r"has 3; use --method vit.*matching weights"):
        data.build_datasets("folder", str(folder_root), expected_num_classes=1000,
                            weights_name="vit_b_16:IMAGENET1K_V1")


# ----------------------------------------------------------------------------- loaders
def _labels(loader):
    return torch.cat([y for _, y in loader]).tolist()


def test_train_loader_shuffles_by_seed_and_drops_last():
    ds = data.SyntheticObjects("val", num_images=100)
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


def test_eval_loader_keeps_order_and_everything(folder_root):
    train, val, _ = data.build_datasets("folder", str(folder_root), image_size=32)
    loader = data.build_loader(val, batch_size=4, train=False, workers=0, pin_memory=False)
    assert _labels(loader) == val.targets  # 9 items, last batch of 1 kept
    auto = data.build_loader(train, batch_size=4, train=True)
    assert auto.num_workers == min(8, os.cpu_count()) and auto.persistent_workers


def test_distributed_train_loader_uses_distributed_sampler():
    ds = data.SyntheticObjects("val", num_images=101)
    loaders = [data.build_loader(ds, batch_size=10, train=True, rank=r, world_size=2, seed=1)
               for r in range(2)]
    assert all(isinstance(l.sampler, DistributedSampler) for l in loaders)
    shards = [list(l.sampler) for l in loaders]
    assert len(shards[0]) == len(shards[1]) == 50 and not set(shards[0]) & set(shards[1])
    loaders[0].sampler.set_epoch(1)
    assert list(loaders[0].sampler) != shards[0]
    assert len(loaders[0]) == 5


def test_distributed_eval_shards_are_disjoint_and_cover_everything():
    ds = data.SyntheticObjects("val", num_images=101)
    loaders = [data.build_loader(ds, batch_size=8, train=False, rank=r, world_size=2)
               for r in range(2)]
    shards = [list(l.sampler) for l in loaders]
    assert sorted(shards[0] + shards[1]) == list(range(101))
    assert sum(len(_labels(l)) for l in loaders) == 101
    assert sorted(_labels(loaders[0]) + _labels(loaders[1])) == sorted(ds.targets)
    with pytest.raises(ValueError, match="rank=2, world_size=2"):
        data.build_loader(ds, batch_size=8, train=False, rank=2, world_size=2)
