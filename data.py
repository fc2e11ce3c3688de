"""The datasets (DATASETS) and their loaders: `build_datasets` gives (train_set, val_set,
DataInfo) with items (normalized float32 (3, H, W), int label), `build_loader(s)` batch them.
Image files are decoded when an item is read (`load_uint8`), in `default_workers` loader
processes; CIFAR and the synthetic set (inputs/synthetic.py) are in memory. ImageNet-ReaL:
`read_real_labels`, `real_hits`. The transforms: inputs/transforms.py.
"""
from __future__ import annotations

import json
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision import datasets as tv_datasets
from torchvision import io as tv_io
from torchvision.transforms import v2

from inputs import pretrained
from inputs.on_device import OnDevice
from inputs.synthetic import RANKING, SHAPE_NAMES, SYNTHETIC_CLASSES, SyntheticObjects
from inputs.transforms import AUGMENTS, EVAL_FRAMINGS, INTERPOLATIONS, device_split, make_transforms
from util import distributed

DATASETS = ("synthetic", "cifar10", "cifar100", "imagenet", "folder", "places365", "inat2018")
# torchvision's ImageFolder extensions, compared lower-cased
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Full-scale value of the wide single-channel modes: PIL opens 16-bit PNG/TIFF as "I;16*" or "I"
# (32-bit int holding 0..65535), float TIFF as "F" (taken as 0..1, torchvision's float convention).
FULL_SCALE = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535,
              "F": 1.0}
# torchvision.io's JPEG decoder (deprecated since torchvision 0.29 in favour of TorchCodec, still
# there in the pinned 0.29.1); without it load_uint8 decodes with PIL, the same pixels, slower
DECODE_JPEG = getattr(tv_io, "decode_jpeg", None)

IMAGENET_HINT = ("download ILSVRC2012 from https://image-net.org and arrange val/ into class "
                 "folders, e.g. with the valprep.sh script")
INAT_URL = "https://github.com/visipedia/inat_comp/tree/master/2018"
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
PLACES_HINT = ("pass --download or download the high-resolution Places365-Standard images and "
               "file lists from http://places2.csail.mit.edu/download.html")
REAL_URL = "https://github.com/google-research/reassessed-imagenet"
REAL_IMAGES = 50_000  # ImageNet-1k validation images, ILSVRC2012_val_00000001 .. 00050000
REAL_CLASSES = 1000


@dataclass(kw_only=True)
class DataInfo:
    name: str
    num_classes: int
    image_size: int  # H == W of the tensors the transforms produce
    class_names: list[str]
    augment: str  # the training augmentation used, one of inputs/transforms.py's AUGMENTS
    coarse_of_class: list[int] | None = None  # superclass id of each fine class
    coarse_names: list[str] | None = None


# ------------------------------------------------------------------------------------ decoding
def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB of an image of any PIL mode: wide modes scaled (not clipped), alpha composited."""
    if image.mode in FULL_SCALE:
        full = FULL_SCALE[image.mode]
        values = np.asarray(image, dtype=np.float64)  # (H, W)
        if values.min() < 0 or values.max() > full:
            raise ValueError(f"mode {image.mode} pixel values span [{values.min():g}, "
                             f"{values.max():g}], outside the 0..{full:g} this mode is read as; "
                             "save the image as an 8- or 16-bit PNG")
        # 65535 (or 1.0) -> 255; 257 * k -> k exactly
        gray = np.rint(values * (255 / full)).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    # Note: a 16-bit RGB(A) PNG arrives as 8-bit RGB(A): PIL keeps each value's high byte
    # (v // 256), within one level of the exact v * 255 / 65535.
    if image.mode in ("LA", "PA", "RGBA") or "transparency" in image.info:
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))  # as a web page
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK ((255 - C)(255 - K) / 255), YCbCr, RGB


def load_rgb(path: str) -> Image.Image:
    """Decode an image (to_rgb); failure raises instead of skipping, which would shift labels."""
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise RuntimeError(f"cannot read image file {path} ({err}); replace or delete it (it is "
                           "never skipped silently)") from err


def load_uint8(path: str) -> torch.Tensor:
    """The pixels of load_rgb(path) as a uint8 tensor (3, H, W). A JPEG (its first bytes FF D8)
    is decoded by torchvision.io.decode_jpeg, whose RGB, gray and CMYK output equals PIL's; any
    other file, or a JPEG it cannot decode (e.g. truncated), goes through load_rgb."""
    try:
        with open(path, "rb") as file:  # only a JPEG is read here in full; others go to PIL
            jpeg = DECODE_JPEG is not None and file.read(2) == b"\xff\xd8"
        if jpeg:
            raw = tv_io.read_file(path)  # (file size,) uint8
            return DECODE_JPEG(raw, mode=tv_io.ImageReadMode.RGB)  # (3, H, W) uint8
    except (OSError, RuntimeError):
        pass  # load_rgb decodes it, or says what is wrong with the file
    return v2.functional.pil_to_tensor(load_rgb(path))  # (3, H, W) uint8


class ImageFiles(Dataset):
    """(path, label) pairs of image files, each decoded (load_uint8) and transformed when read."""

    def __init__(self, *, samples: list[tuple[str, int]], class_names: list[str],
                 transform: v2.Compose) -> None:
        self.samples = samples
        self.class_names = class_names
        self.transform = transform
        self.targets = [label for _, label in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self.transform(load_uint8(path)), label


# ------------------------------------------------------------------------------------- folders
def _class_folders(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and e.name[0] != ".")


def _image_files(class_dir: Path, max_per_class: int | None) -> list[str]:
    images = [e for e in os.scandir(class_dir)  # scandir: no stat per file
              if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS]
    names = sorted(e.name for e in images if e.is_file())
    broken = sorted(e.name for e in images if e.is_symlink() and not e.is_file())
    if broken:  # a link whose target is gone: is_file() is False, and it would vanish silently
        raise FileNotFoundError(f"{class_dir} holds {len(broken)} broken symbolic link(s) "
                                f"({', '.join(broken[:3])}); restore their targets or delete them")
    return [str(class_dir / n) for n in names[:max_per_class]]


def select_classes(available: list[str], classes: int | str | None, *, source: Path) -> list[str]:
    """All classes, the first K in sorted order, or those a text file lists (in file order)."""
    if classes is None:
        return available
    if isinstance(classes, str) and classes.strip().isdigit():
        classes = int(classes)
    if isinstance(classes, int):
        if not 2 <= classes <= len(available):
            raise ValueError(f"classes={classes} but {source} has {len(available)} class folders; "
                             f"pass K between 2 and {len(available)} (a classifier needs at "
                             "least 2 classes)")
        return available[:classes]
    path = Path(classes)
    if not path.is_file():
        raise FileNotFoundError(f"class list file {path} not found; expected a text file with one "
                                "class folder name (e.g. wnid n01440764) per line, or an integer K")
    names = [n for n in (line.split("#")[0].strip() for line in path.read_text().splitlines()) if n]
    unknown = [n for n in names if n not in set(available)]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(f"class list file {path} must name distinct class folders of {source}; "
                         f"it has {len(names)} names, unknown: {unknown[:5]}; valid names look "
                         f"like {available[:3]}")
    if len(names) < 2:
        raise ValueError(f"class list file {path} names {len(names)} class; a classifier needs "
                         "at least 2 classes")
    return names


def build_image_folder(name: str, root: str, *, classes: int | str | None,
                       max_per_class: int | None, train_tf: v2.Compose, val_tf: v2.Compose
                       ) -> tuple[ImageFiles, ImageFiles]:
    """root/train/<class>/* and root/val/<class>/*, labels 0..K-1 in class-list order."""
    base = Path(root)
    dirs = {"train": base / "train", "val": base / "val"}

    def layout_error(error: type[Exception], problem: str) -> Exception:
        fix = f". Fix: {IMAGENET_HINT}" if name == "imagenet" else ""
        return error(f"{name}: {problem}; expected layout {root}/train/<class>/<image> and "
                     f"{root}/val/<class>/<image>{fix}")

    if not base.is_dir() or not any(base.iterdir()):  # a file: refused by _check_options
        state = "is empty" if base.is_dir() else "does not exist"
        raise layout_error(FileNotFoundError, f"data root {base} {state}")
    for split_dir in dirs.values():
        if not split_dir.is_dir():
            raise layout_error(FileNotFoundError, f"missing split folder {split_dir}")
    available = _class_folders(dirs["train"])
    if len(available) < 2:
        raise layout_error(ValueError, f"{dirs['train']} has {len(available)} class folder(s) "
                                       f"{available}; a classifier needs at least 2 classes")
    chosen = select_classes(available, classes, source=dirs["train"])
    val_classes = set(_class_folders(dirs["val"]))
    missing = [c for c in chosen if c not in val_classes]
    extra = sorted(val_classes - {*available})
    if missing or extra:
        raise layout_error(ValueError, f"{dirs['val']} lacks class folders {missing[:5]} that "
                                       f"train has and has {extra[:5]} that train lacks")
    sets = []
    for split, transform in (("train", train_tf), ("val", val_tf)):
        samples = []
        for label, class_name in enumerate(chosen):
            files = _image_files(dirs[split] / class_name, max_per_class)
            if not files:
                raise layout_error(ValueError, f"class folder {dirs[split] / class_name} has no "
                                               f"images (extensions {IMAGE_EXTENSIONS}, any case)")
            samples += [(f, label) for f in files]
        sets.append(ImageFiles(samples=samples, class_names=chosen, transform=transform))
    return sets[0], sets[1]


def folder_summary(root: str, *, classes: int | str | None, max_per_class: int | None,
                   sample: int) -> dict | None:
    """The number of images and classes of root/train/<class>/*, and the shorter sides of up to
    `sample` images spread over it, read from the file headers; None if it cannot be read
    (build_datasets then says why)."""
    train = Path(root) / "train"
    try:
        chosen = select_classes(_class_folders(train), classes, source=train)
        files = [f for name in chosen for f in _image_files(train / name, max_per_class)]
        picked = files[::max(1, len(files) // sample)][:sample]
        sides = []
        for path in picked:
            with Image.open(path) as image:  # the header only: no pixels decoded
                sides.append(min(image.size))
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    if len(chosen) < 2 or not files:
        return None
    return dict(images=len(files), classes=len(chosen), sides=sides)


# ---------------------------------------------------------------------- downloadable named sets
def _require(name: str, folder: Path, files: list[str], fix: str) -> None:
    missing = [f for f in files if not (folder / f).exists()]
    if missing:
        raise FileNotFoundError(f"{name}: {folder} lacks {missing}; expected layout "
                                f"{folder}/{{{','.join(files)}}}. Fix: {fix}")


def build_inat2018(root: str, *, train_tf: Callable, val_tf: Callable, download: bool
                   ) -> tuple[ImageFiles, ImageFiles, list[str]]:
    """iNaturalist 2018 with the official split; labels in the order of the category ids."""
    base = Path(root)
    if download:
        try:  # torchvision puts the images in root/2018/<super>/<id>/
            tv_datasets.INaturalist(root, version="2018", download=True)
        except (RuntimeError, OSError) as err:
            raise RuntimeError(f"inat2018: download into {root} failed ({err}); "
                               f"see {INAT_URL}") from err
    _require("inat2018", base, ["train2018.json", "val2018.json"],
             f"pass --download or get them, and the images (train_val2018/), from {INAT_URL}")
    annotations = [json.loads((base / f"{s}2018.json").read_text()) for s in ("train", "val")]
    categories = sorted(annotations[0]["categories"], key=lambda c: c["id"])
    label_of = {c["id"]: i for i, c in enumerate(categories)}
    names = [str(c.get("name", c["id"])) for c in categories]
    image_dir = "train_val2018" if (base / "train_val2018").is_dir() else "2018"  # torchvision's
    sets = []
    for annotation, transform in zip(annotations, (train_tf, val_tf)):
        category_of = {a["image_id"]: a["category_id"] for a in annotation["annotations"]}
        samples = []
        for image in annotation["images"]:
            # file_name "train_val2018/<super>/<id>/<hash>.jpg", read under image_dir
            file = base / image_dir / Path(*Path(image["file_name"]).parts[1:])
            if category_of[image["id"]] not in label_of:
                raise ValueError(f"inat2018: image {file} has a category missing from "
                                 f"train2018.json; re-download the annotations from {INAT_URL}")
            samples.append((str(file), label_of[category_of[image["id"]]]))
        if samples and not Path(samples[0][0]).is_file():
            raise FileNotFoundError(f"inat2018: image {samples[0][0]} is missing; extract "
                                    f"train_val2018.tar.gz into {base} (see {INAT_URL})")
        sets.append(ImageFiles(samples=samples, class_names=names, transform=transform))
    return sets[0], sets[1], names


def build_cifar(name: str, root: str, *, train_tf: Callable, val_tf: Callable,
                download: bool) -> tuple[Dataset, Dataset, list[str], list | None, list | None]:
    """(train, val, class names, coarse_of_class, coarse_names): superclasses for cifar100."""
    cls = tv_datasets.CIFAR10 if name == "cifar10" else tv_datasets.CIFAR100
    data_dir = Path(root) / cls.base_folder
    files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    fix = f"pass --download or download from {CIFAR_URL}"
    if not download:
        _require(name, data_dir, files, f"{fix}, extracting its python version into {root}")
    try:
        train = cls(root, train=True, transform=train_tf, download=download)
        val = cls(root, train=False, transform=val_tf)
    except RuntimeError as err:  # torchvision's MD5 check
        raise RuntimeError(f"{name}: files in {data_dir} fail torchvision's integrity check "
                           f"({err}); delete {data_dir} and {fix}") from err
    except OSError as err:
        raise RuntimeError(f"{name}: download into {root} failed ({err}); check the network "
                           f"(a proxy?) or download from {CIFAR_URL}") from err
    for split in (train, val):  # decoded arrays already: loaders default to 0 workers
        split.in_memory = True
    if name == "cifar10":
        return train, val, list(train.classes), None, None
    # cifar100: each fine class's superclass, from every sample of train and test
    pairs = set()
    for file in ("train", "test"):
        with open(data_dir / file, "rb") as f:  # the archive's python-2 pickles
            entry = pickle.load(f, encoding="latin1")
        pairs |= set(zip(entry["fine_labels"], entry["coarse_labels"]))
    coarse_of = dict(pairs)
    if len(coarse_of) != len(pairs) or sorted(coarse_of) != list(range(len(train.classes))):
        raise RuntimeError(f"{data_dir}: train and test do not put each fine class under one "
                           f"superclass; the files are corrupted, delete {data_dir} and {fix}")
    coarse_of_class = [coarse_of[fine] for fine in range(len(train.classes))]
    with open(data_dir / "meta", "rb") as f:
        coarse_names = list(pickle.load(f, encoding="latin1")["coarse_label_names"])
    return train, val, list(train.classes), coarse_of_class, coarse_names


def build_places365(root: str, *, train_tf: Callable, val_tf: Callable, download: bool
                    ) -> tuple[Dataset, Dataset, list[str]]:
    """Places365-Standard at high resolution (small=False: the paper feeds 224/384 px)."""
    files = ["categories_places365.txt", "places365_train_standard.txt", "places365_val.txt",
             "data_large_standard", "val_large"]
    if not download:
        _require("places365", Path(root), files, PLACES_HINT)
    try:
        sets = [tv_datasets.Places365(root, split=split, small=False, download=download,
                                      transform=tf, loader=load_uint8)
                for split, tf in (("train-standard", train_tf), ("val", val_tf))]
    except (RuntimeError, OSError) as err:
        raise RuntimeError(f"places365: cannot load {root} ({err}); {PLACES_HINT}") from err
    return sets[0], sets[1], list(sets[0].classes)


# -------------------------------------------------------------------------------- ImageNet-ReaL
def read_real_labels(path: str | Path, val_set: Dataset) -> list[list[int]]:
    """Each image's ImageNet-ReaL labels (possibly none), in `val_set`'s sample order. `path` is
    real.json of google-research/reassessed-imagenet: entry i lists the labels of
    ILSVRC2012_val_{i+1:08d}.JPEG; images are matched by that file number."""
    path = Path(path)
    source = f"the ReaL labels file {path}"
    if not path.is_file():
        raise FileNotFoundError(f"{source} does not exist; download real.json from {REAL_URL}")
    try:
        entries = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{source} is not JSON ({err}); expected real.json of {REAL_URL}") from err
    well_formed = isinstance(entries, list) and all(
        isinstance(e, list) and all(isinstance(k, int) for k in e) for e in entries)
    if not well_formed or len(entries) != REAL_IMAGES:
        raise ValueError(f"{source} must be a JSON list of {REAL_IMAGES} lists of class indices "
                         f"(real.json of {REAL_URL})")
    bad = [(i, k) for i, e in enumerate(entries) for k in e if not 0 <= k < REAL_CLASSES]
    if bad:
        raise ValueError(f"{source}: entry {bad[0][0]} holds label {bad[0][1]}, outside the "
                         f"{REAL_CLASSES} ImageNet classes 0..{REAL_CLASSES - 1}")
    class_names = getattr(val_set, "class_names", [])
    wnids = all(re.fullmatch(r"n\d{8}", c) for c in class_names)
    if len(class_names) != REAL_CLASSES or not wnids or class_names != sorted(class_names):
        raise ValueError(f"ReaL labels are indices into all {REAL_CLASSES} ImageNet classes in "
                         f"wnid-sorted order, but this validation set has {len(class_names)} "
                         f"classes {class_names[:3]}...; evaluate --dataset imagenet, no --classes")
    labels = []
    for file, _ in val_set.samples:
        match = re.fullmatch(r"ILSVRC2012_val_(\d{8})\.jpe?g", Path(file).name, re.IGNORECASE)
        if match is None or not 1 <= int(match.group(1)) <= REAL_IMAGES:
            raise ValueError(f"ReaL labels are matched by file name, but validation image {file} "
                             "is not named ILSVRC2012_val_00000001.JPEG .. _00050000.JPEG")
        labels.append(entries[int(match.group(1)) - 1])
    return labels


def real_hits(pred: torch.Tensor, labels: list[list[int]]) -> tuple[int, int]:
    """(correct, counted): images without ReaL labels are not counted, as the ReaL paper does."""
    if pred.ndim != 1 or len(pred) != len(labels):
        raise ValueError(f"real_hits needs one predicted class per image: pred of shape "
                         f"{tuple(pred.shape)} for {len(labels)} label lists")
    predicted = pred.tolist()
    counted = [i for i, acceptable in enumerate(labels) if acceptable]
    correct = sum(predicted[i] in labels[i] for i in counted)
    return correct, len(counted)


# --------------------------------------------------------------------------------- entry points
def _check_options(name: str, root: str | None, *, image_size: int | None,
                   eval_spec: dict | None, classes, max_per_class, augment: str,
                   eval_framing: str) -> None:
    for option, value, choices in (("dataset", name, DATASETS), ("augment", augment, AUGMENTS),
                                   ("eval_framing", eval_framing, EVAL_FRAMINGS)):
        if value not in choices:
            raise ValueError(f"unknown {option} {value!r}; choose one of {choices}")
    if name != "synthetic" and root is None:
        raise ValueError(f"{name} needs root, the directory that holds (or will hold) its "
                         "files (--data-dir in train.py)")
    if name != "synthetic" and Path(root).is_file():
        raise NotADirectoryError(f"{name}: data root {root} is a file, expected a folder; pass "
                                 "the folder that holds (or will hold) the dataset's files")
    if classes is not None and name not in ("imagenet", "folder"):
        raise ValueError(f"classes selects subsets of imagenet and folder, not {name}")
    if max_per_class is not None and name not in ("imagenet", "folder", "synthetic"):
        raise ValueError(f"max_per_class selects subsets of imagenet, folder and synthetic, "
                         f"not {name}")
    if max_per_class is not None and max_per_class < 1:
        raise ValueError(f"max_per_class must be >= 1, got {max_per_class}")
    if name == "synthetic" and augment != "none":
        raise ValueError(f"synthetic takes no augmentation (it would move the marks that tell "
                         f"twins apart); got augment={augment!r}, use 'none'")
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


def build_datasets(name: str, root: str | None = None, *, image_size: int | None = None,
                   eval_spec: dict | None = None, augment: str = "none",
                   classes: int | str | None = None, max_per_class: int | None = None,
                   download: bool = False, seed: int = 0, eval_framing: str = "weights",
                   on_device: bool = False) -> tuple[Dataset, Dataset, DataInfo]:
    """(train_set, val_set, info) of dataset `name` under `root` (`synthetic`: none, its images
    come from `seed`). `augment`, `eval_spec` (the released weights' eval transform) and
    `eval_framing`: see make_transforms. `on_device`: items stay uint8, and each set's
    `batch_transform` (device_split) finishes a batch on the device, in build_loader."""
    _check_options(name, root, image_size=image_size, eval_spec=eval_spec, classes=classes,
                   max_per_class=max_per_class, augment=augment, eval_framing=eval_framing)
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
    elif name in ("cifar10", "cifar100"):
        train, val, class_names, coarse_of_class, coarse_names = build_cifar(
            name, root, train_tf=train_tf, val_tf=val_tf, download=download)
    elif name in ("imagenet", "folder"):
        train, val = build_image_folder(name, root, classes=classes, max_per_class=max_per_class,
                                        train_tf=train_tf, val_tf=val_tf)
        class_names = train.class_names
    else:
        build = build_places365 if name == "places365" else build_inat2018
        train, val, class_names = build(root, train_tf=train_tf, val_tf=val_tf, download=download)
    if len(class_names) < 2:
        raise ValueError(f"{name}: {root} has {len(class_names)} class; a classifier needs at "
                         "least 2 classes")
    train.batch_transform = train_tail
    val.batch_transform = val_tail
    info = DataInfo(name=name, num_classes=len(class_names), image_size=size,
                    class_names=class_names, augment=augment, coarse_of_class=coarse_of_class,
                    coarse_names=coarse_names)
    return train, val, info


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
    """Train: shuffled by a DistributedSampler, also for one process (call
    loader.sampler.set_epoch(e): the order depends on (seed, epoch) alone, so a resumed run sees
    the same batches), last partial batch dropped. Eval: in order, nothing dropped, each rank
    the shard rank::world_size. A set with a `batch_transform` has its batches moved to `device`
    and finished there (inputs/on_device.OnDevice)."""
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
    else:  # disjoint and unpadded (DistributedSampler pads with repeats, skewing accuracy)
        sampler = range(rank, len(dataset), world_size)
    # Seeds the workers' augmentation RNGs, distinct per rank. (With workers > 0 a resumed run
    # draws other augmentations; with 0 workers or on the device the global RNG, reseeded from
    # (seed, epoch, rank) at each epoch by train.seed_epoch, draws the same.)
    generator = torch.Generator().manual_seed(seed * world_size + rank)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=train,
                        num_workers=workers, persistent_workers=workers > 0,
                        pin_memory=pin_memory, generator=generator)
    tail = getattr(dataset, "batch_transform", None)
    return loader if tail is None else OnDevice(loader, device, tail)


def build_loaders(r, *, rank: int, world: int, workers: int | None, device: torch.device,
                  download: bool = False, train: bool = True) -> tuple:
    """(train loader, val loader, DataInfo) of a recipe's data options (recipes.Recipe); both
    stages of a run share them. train=False (evaluation): no training loader, None in its place.
    On CUDA, RandAugment and the normalize run on the GPU (inputs/on_device.py)."""
    spec = pretrained.eval_spec(r.pretrained) if r.pretrained else None
    # --download: rank 0 first, then the first rank of each other node (a check of the files
    # where --data-dir is shared, a download where each node has its own disk), then the rest
    first_of_node = int(os.environ.get("LOCAL_RANK", "0")) == 0
    turn = 0 if rank == 0 else 1 if first_of_node else 2
    before, after = (turn, 2 - turn) if download else (0, 0)  # barriers around this rank's turn
    for _ in range(before):
        distributed.barrier()
    train_set, val_set, info = build_datasets(
        r.dataset, r.data_dir, image_size=None if spec else r.image_size, eval_spec=spec,
        augment=r.augment, classes=r.classes, max_per_class=r.max_per_class,
        download=download and turn < 2, seed=r.seed, eval_framing=r.eval_framing,
        on_device=device.type == "cuda")
    for _ in range(after):
        distributed.barrier()
    # LLB keeps the released head: the data must have its label set
    head = pretrained.num_classes(r.pretrained) if r.pretrained and r.stage == "llb" else None
    if head is not None and head != info.num_classes:
        raise ValueError(f"pretrained head of {r.pretrained} has {head} classes but {r.dataset} "
                         f"has {info.num_classes}; use --method vit to fine-tune a new head, or "
                         "pick matching weights")
    loader = dict(workers=workers, rank=rank, world_size=world, seed=r.seed,
                  pin_memory=device.type == "cuda", batch_size=r.batch_size, device=device)
    train_loader = build_loader(train_set, train=True, **loader) if train else None
    return train_loader, build_loader(val_set, train=False, **loader), info
