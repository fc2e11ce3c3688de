"""Tests for data.py's image files: image modes, image folders, iNat 2018, their transforms."""
import json
import os
import struct
import zlib

import numpy as np  # only to write 16-bit and float images with exact pixel values
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF
from torchvision.transforms.v2 import functional as TF2

import data
from inputs import transforms

SPEC = {"resize_size": 40, "crop_size": 36, "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}


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


def _textured_folder(root, *, sizes=((32, 32),), per_class=6):
    """3 classes of smooth random images (a blurred 8x8 grid), sizes cycling through `sizes`."""
    g = torch.Generator().manual_seed(0)
    for split in ("train", "val"):
        for c in range(3):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(per_class):
                h, w = sizes[i % len(sizes)]
                grid = torch.randint(0, 256, (1, 3, 8, 8), generator=g).float()
                img = torch.nn.functional.interpolate(grid, size=(h, w), mode="bilinear")
                pixels = img[0].round().byte().permute(1, 2, 0).numpy()  # (H, W, 3)
                Image.fromarray(pixels).save(root / split / f"c{c}" / f"{i}.png")
    return root


# ----------------------------------------------------------------------------- image modes
def _rgb(path):
    return np.asarray(data.load_rgb(str(path)))  # (H, W, 3) uint8


def _png16_rgb(path, rgb):
    """A 16-bit RGB PNG written chunk by chunk (PIL has no 16-bit RGB mode to save from)."""
    def chunk(kind, body):
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)
    height, width, _ = rgb.shape
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in rgb)  # filter 0 per row
    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)  # depth 16, colour type 2
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path, suffix):
    values = np.array([[0, 257, 1000, 32768, 60000, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / f"g{suffix}")
    assert Image.open(tmp_path / f"g{suffix}").mode == "I;16"
    rgb = _rgb(tmp_path / f"g{suffix}")
    assert rgb[0, :, 0].tolist() == [0, 1, 4, 128, 233, 255]  # round(v * 255 / 65535)
    assert (rgb == rgb[..., :1]).all()  # gray: R = G = B


def test_32_bit_integer_and_float_images_are_scaled_or_refused(tmp_path):
    Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32)).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    assert _rgb(tmp_path / "i.tif")[0, :, 1].tolist() == [0, 128, 255]
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    assert _rgb(tmp_path / "f.tif")[0, :, 2].tolist() == [0, 128, 255]
    Image.fromarray(np.array([[0, 70000]], dtype=np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(RuntimeError, match=r"wide\.tif .*mode I pixel values span \[0, 70000\], "
                                           r"outside the 0\.\.65535.*16-bit PNG"):
        data.load_rgb(str(tmp_path / "wide.tif"))
    Image.fromarray(np.array([[0.0, 255.0]], dtype=np.float32)).save(tmp_path / "f255.tif")
    with pytest.raises(RuntimeError, match=r"f255\.tif .*mode F .*outside the 0\.\.1 "):
        data.load_rgb(str(tmp_path / "f255.tif"))


def test_16_bit_rgb_png_keeps_the_high_byte(tmp_path):
    values = np.array([[[0, 257, 65535], [32768, 1000, 60000]]], dtype=np.uint16)
    _png16_rgb(tmp_path / "rgb16.png", values)
    rgb = _rgb(tmp_path / "rgb16.png")
    assert rgb.tolist() == (values // 256).tolist()  # PIL's reading: scaled, not clipped
    assert np.abs(rgb - np.rint(values.astype(np.float64) * 255 / 65535)).max() <= 1


def test_palette_alpha_cmyk_and_bilevel_modes(tmp_path):
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.putdata([0, 1])
    palette.save(tmp_path / "p.png")
    assert _rgb(tmp_path / "p.png")[0].tolist() == [[10, 20, 30], [200, 100, 50]]
    palette.save(tmp_path / "p_t.png", transparency=0)  # index 0 fully transparent
    assert _rgb(tmp_path / "p_t.png")[0].tolist() == [[255, 255, 255], [200, 100, 50]]
    rgba = Image.new("RGBA", (3, 1))
    rgba.putdata([(200, 0, 0, 255), (200, 0, 0, 0), (200, 0, 0, 128)])
    rgba.save(tmp_path / "rgba.png")
    half = [round(c * 128 / 255 + 255 * (1 - 128 / 255)) for c in (200, 0, 0)]  # over white
    assert _rgb(tmp_path / "rgba.png")[0].tolist() == [[200, 0, 0], [255, 255, 255], half]
    la = Image.new("LA", (2, 1))
    la.putdata([(40, 255), (40, 0)])
    la.save(tmp_path / "la.png")
    assert _rgb(tmp_path / "la.png")[0].tolist() == [[40, 40, 40], [255, 255, 255]]
    Image.new("CMYK", (1, 1), (255, 0, 0, 128)).save(tmp_path / "cmyk.tif")
    assert _rgb(tmp_path / "cmyk.tif")[0, 0].tolist() == [0, 127, 127]  # (255-C)(255-K)/255
    bilevel = Image.new("1", (2, 1))
    bilevel.putdata([0, 1])
    bilevel.save(tmp_path / "bw.png")
    assert _rgb(tmp_path / "bw.png")[0].tolist() == [[0, 0, 0], [255, 255, 255]]


# ----------------------------------------------------------------------------- folders
def test_folder_sizes_labels_and_paper_transforms(folder_root):
    train, val, info = data.build_datasets("folder", str(folder_root), image_size=32,
                                           augment="paper")
    assert info.class_names == ["cat", "dog", "eel"] and info.num_classes == 3
    assert (len(train), len(val)) == (15, 9)  # .JPEG counted, .txt not
    assert train.targets == [0] * 5 + [1] * 5 + [2] * 5
    assert train.samples[4][0].endswith("cat/zz.JPEG")
    for ds in (train, val):
        x, y = ds[1]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y == 0
    x, _ = val[0]  # a solid colour survives resize and crop unchanged
    mean, std = torch.tensor(transforms.IMAGENET_MEAN), torch.tensor(transforms.IMAGENET_STD)
    expected = (torch.tensor([200, 30, 90]) / 255 - mean) / std
    assert torch.allclose(x, expected[:, None, None].expand(3, 32, 32), atol=2e-2)
    assert [type(t).__name__ for t in train.transform.transforms] == [
        "Resize", "CenterCrop", "AsPIL", "PILToTensor", "ToNormalized"]
    assert type(train.transform.transforms[2].transform).__name__ == "RandAugment"
    # the authors' recipe: bilinear Resize for training, bicubic for evaluation
    assert train.transform.transforms[0].size == [37]  # round(32 * 256 / 224)
    assert train.transform.transforms[0].interpolation.value == "bilinear"
    assert val.transform.transforms[0].interpolation.value == "bicubic"
    _, default_val, default = data.build_datasets("folder", str(folder_root))
    assert default.image_size == 224 and default_val[0][0].shape == (3, 224, 224)


AUGREG = {"resize_size": 248, "crop_size": 224, "interpolation": "bicubic",  # timm, crop_pct 0.9
          "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}


def _framed(path, resize, interpolation, crop=224):
    """Resize (shorter side) -> CenterCrop -> normalized with AugReg's 0.5, in plain calls on the
    file's uint8 tensor (the default pipeline)."""
    mode = TF.InterpolationMode(interpolation)
    framed = TF2.center_crop(TF2.resize(data.load_uint8(path), resize, interpolation=mode), crop)
    return (framed.float() / 255 - 0.5) / 0.5


def test_paper_augmentation_trains_on_the_authors_256_framing_whatever_the_weights(tmp_path):
    """The authors train on Resize 256 bilinear -> CenterCrop 224 -> RandAugment(3, 9) (their
    dataset/__init__.py), also on AugReg weights whose eval resize is 248; SWAG: 384 -> 384."""
    root = _textured_folder(tmp_path / "f", sizes=((300, 260),), per_class=1)
    train, val, _ = data.build_datasets("folder", str(root), eval_spec=AUGREG, augment="paper")
    resize, crop, randaugment = train.transform.transforms[:3]
    assert (resize.size, resize.interpolation.value, crop.size) == ([256], "bilinear", (224, 224))
    assert (randaugment.transform.num_ops, randaugment.transform.magnitude) == (3, 9)
    # the framing before RandAugment is the authors' 256 one, pixel for pixel
    framing = train.transform.transforms[:2] + train.transform.transforms[3:]
    x = torch.nn.Sequential(*framing)(data.load_uint8(train.samples[0][0]))
    assert torch.allclose(x, _framed(train.samples[0][0], 256, "bilinear"), atol=1e-6)
    # evaluation keeps the weights' own framing (AugReg: 248 bicubic) by default
    assert val.transform.transforms[0].size == [248]
    swag = dict(AUGREG, resize_size=384, crop_size=384)
    train, _, _ = data.build_datasets("folder", str(root), eval_spec=swag, augment="paper")
    assert [tuple(t.size) for t in train.transform.transforms[:2]] == [(384,), (384, 384)]


def test_eval_framing_authors_is_resize_256_bicubic_center_crop_224(tmp_path):
    root = _textured_folder(tmp_path / "f", sizes=((300, 260),), per_class=1)
    _, own, _ = data.build_datasets("folder", str(root), eval_spec=AUGREG)
    _, theirs, _ = data.build_datasets("folder", str(root), eval_spec=AUGREG,
                                       eval_framing="authors")
    path = theirs.samples[0][0]
    assert torch.allclose(theirs[0][0], _framed(path, 256, "bicubic"), atol=1e-6)
    assert torch.allclose(own[0][0], _framed(path, 248, "bicubic"), atol=1e-6)
    assert not torch.allclose(own[0][0], theirs[0][0], atol=1e-2)  # a different framing
    with pytest.raises(ValueError, match=r"unknown eval_framing 'theirs'.*'weights', 'authors'"):
        data.build_datasets("folder", str(root), eval_spec=AUGREG, eval_framing="theirs")


def test_basic_and_none_augmentation_of_photo_sets(tmp_path):
    root = _textured_folder(tmp_path / "f")
    train, val, info = data.build_datasets("folder", str(root), image_size=32)
    assert info.augment == "none"  # the library's default: no augmentation unless asked
    train, val, info = data.build_datasets("folder", str(root), image_size=32, augment="basic")
    # at 32 px: the eval framing, then a crop of it padded by 4 px; a folder is never flipped
    assert [type(t).__name__ for t in train.transform.transforms][:3] == [
        "Resize", "CenterCrop", "RandomCrop"]
    draws = torch.stack([train[5][0] for _ in range(4)])
    assert draws.shape == (4, 3, 32, 32) and (draws != draws[:1]).any()
    train, val, info = data.build_datasets("folder", str(root), image_size=32, augment="none")
    assert info.augment == "none"
    for i in (0, 5, 9):  # the eval framing
        assert torch.equal(train[i][0], val.transform(data.load_uint8(train.samples[i][0])))


def test_eval_spec_sets_the_val_transform_exactly(folder_root):
    train, val, info = data.build_datasets("imagenet", str(folder_root), eval_spec=SPEC,
                                           augment="paper")
    resize, crop, _, normalize = val.transform.transforms
    assert resize.size == [40] and resize.interpolation.value == "bilinear"
    assert crop.size == (36, 36)
    assert normalize.mean == SPEC["mean"] and normalize.std == SPEC["std"]
    assert info.image_size == 36 and train[0][0].shape == val[0][0].shape == (3, 36, 36)
    # training: the authors' framing, Resize round(36 * 256 / 224) = 41, not the weights' 40
    assert train.transform.transforms[0].size == [41]


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
    assert data.build_datasets("folder", str(folder_root), classes="2")[2].class_names == [
        "cat", "dog"]


def test_class_selection_errors(folder_root, tmp_path):
    with pytest.raises(ValueError, match=r"classes=4 .*train has 3 class folders.*between 2 and 3"):
        data.build_datasets("folder", str(folder_root), classes=4)
    listing = tmp_path / "classes.txt"
    listing.write_text("cat\nn01440764\n")
    with pytest.raises(ValueError, match=r"classes\.txt.*unknown: \['n01440764'\].*'cat'"):
        data.build_datasets("folder", str(folder_root), classes=str(listing))
    with pytest.raises(FileNotFoundError, match=r"nope\.txt not found.*one class folder name"):
        data.build_datasets("folder", str(folder_root), classes=str(tmp_path / "nope.txt"))


def test_one_class_is_an_error_naming_the_folder(folder_root, tmp_path):
    with pytest.raises(ValueError, match=r"classes=1 .*between 2 and 3.*at least 2 classes"):
        data.build_datasets("folder", str(folder_root), classes=1)
    listing = tmp_path / "one.txt"
    listing.write_text("dog\n")
    with pytest.raises(ValueError, match=r"one\.txt names 1 class; .*needs at least 2 classes"):
        data.build_datasets("folder", str(folder_root), classes=str(listing))
    for split in ("train", "val"):
        (tmp_path / "single" / split / "cat").mkdir(parents=True)
        _png(tmp_path / "single" / split / "cat" / "a.png", (8, 8))
    with pytest.raises(ValueError, match=rf"folder: {tmp_path}/single/train has 1 class "
                                         r"folder\(s\) \['cat'\]; .*needs at least 2 classes"):
        data.build_datasets("folder", str(tmp_path / "single"))


def test_folder_layout_errors(folder_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"{tmp_path}/absent does not exist.*"
                                                r"train/<class>/<image>.*image-net\.org.*valprep"):
        data.build_datasets("imagenet", str(tmp_path / "absent"))
    (tmp_path / "a_file").write_text("")
    with pytest.raises(NotADirectoryError, match=rf"{tmp_path}/a_file is a file, expected a "
                                                 "folder"):
        data.build_datasets("folder", str(tmp_path / "a_file"))
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
    (tmp_path / "cat_eel.txt").write_text("cat\neel\n")
    with pytest.raises(ValueError, match=r"train/cat has no images.*\.png"):
        data.build_datasets("folder", str(folder_root), classes=str(tmp_path / "cat_eel.txt"))


def test_corrupt_image_raises_naming_the_file(folder_root):
    bad = folder_root / "val" / "dog" / "img1.png"
    bad.write_bytes(b"these bytes are not a PNG")
    _, val, _ = data.build_datasets("folder", str(folder_root), image_size=32)
    index = [p for p, _ in val.samples].index(str(bad))
    with pytest.raises(RuntimeError, match=rf"cannot read image file {bad}"):
        val[index]  # when the image is read


# ----------------------------------------------------------------------------- iNat 2018
def _write_inat(root, split, images, categories=((7, "fern"), (3, "moss"))):
    (root / f"{split}2018.json").write_text(json.dumps({
        "images": [{"id": i, "file_name": f} for i, (f, _) in enumerate(images)],
        "annotations": [{"image_id": i, "category_id": c} for i, (_, c) in enumerate(images)],
        "categories": [{"id": c, "name": n} for c, n in categories]}))


@pytest.mark.parametrize("image_dir", ["train_val2018", "2018"])  # archive name, torchvision's
def test_inat2018_split_comes_from_the_official_json(tmp_path, image_dir):
    _write_inat(tmp_path, "train", [("train_val2018/Plantae/7/a.jpg", 7),
                                    ("train_val2018/Plantae/3/b.jpg", 3)])
    _write_inat(tmp_path, "val", [("train_val2018/Plantae/3/c.jpg", 3)])
    for name in ("7/a.jpg", "3/b.jpg", "3/c.jpg"):
        _png(tmp_path / image_dir / "Plantae" / name, (40, 40))
    train, val, info = data.build_datasets("inat2018", str(tmp_path), image_size=32)
    assert info.class_names == ["moss", "fern"] and train.targets == [1, 0] and val.targets == [0]
    assert val[0][0].shape == (3, 32, 32)


def test_one_class_set_is_an_error(tmp_path):
    for split in ("train", "val"):
        _write_inat(tmp_path, split, [(f"train_val2018/Plantae/3/{split}.jpg", 3)], [(3, "moss")])
        _png(tmp_path / "train_val2018" / "Plantae" / "3" / f"{split}.jpg", (40, 40))
    with pytest.raises(ValueError, match=rf"inat2018: {tmp_path} has 1 class; a classifier needs "
                                         "at least 2 classes"):
        data.build_datasets("inat2018", str(tmp_path))


def test_inat2018_missing_json_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"lacks .*train2018\.json.*expected layout.*"
                                                r"visipedia/inat_comp/tree/master/2018"):
        data.build_datasets("inat2018", str(tmp_path))

