"""Datasets, transforms and loaders for the LLB reference implementation.

`build_datasets(name, root, ...)` returns `(train_set, val_set, DataInfo)` with items
`(normalized float32 tensor (3, H, W), int label)`; `build_loader(...)` shuffles (and shards with
DistributedSampler) for training and gives each rank a disjoint, unpadded shard for evaluation.
Names: `synthetic` (default, in memory), `cifar10`, `cifar100` (with its 20 superclasses),
`imagenet` and `folder` (root/{train,val}/<class>/<image>), `places365` (torchvision, high
resolution), `inat2018` (torchvision images, official train2018.json / val2018.json split).

Transforms follow the authors' recipe: train = Resize 256 -> CenterCrop 224 -> RandAugment(3, 9)
-> normalize; eval = Resize 256 (bicubic) -> CenterCrop 224. With `eval_spec` (the eval transform
of pretrained torchvision weights) sizes, interpolation, mean and std come from the weights.

The default set, `synthetic`, is generated in memory by synthetic.py.
"""
from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision import datasets as tv_datasets
from torchvision import transforms as T

from synthetic import (RANKING, SHAPE_NAMES, SYNTHETIC_CLASSES, SYNTHETIC_MEAN, SYNTHETIC_STD,
                       SyntheticObjects)

DATASETS = ("synthetic", "cifar10", "cifar100", "imagenet", "folder", "places365", "inat2018")

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CIFAR_STATS = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
               "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")  # compared lower-cased
INTERPOLATIONS = {"bilinear": T.InterpolationMode.BILINEAR,
                  "bicubic": T.InterpolationMode.BICUBIC, "nearest": T.InterpolationMode.NEAREST}

CIFAR_HINT = "pass --download or download from https://www.cs.toronto.edu/~kriz/cifar.html"
IMAGENET_HINT = ("download ILSVRC2012 from https://image-net.org and arrange val/ into class "
                 "folders, e.g. with the valprep.sh script")
FOLDER_HINT = "arrange the images as root/train/<class>/<image> and root/val/<class>/<image>"
PLACES_HINT = ("pass --download or download the high-resolution Places365-Standard images and "
               "file lists from http://places2.csail.mit.edu/download.html")
INAT_URL = "https://github.com/visipedia/inat_comp/tree/master/2018"


@dataclass
class DataInfo:
    name: str
    num_classes: int
    image_size: int  # H == W of the tensors the transforms produce
    class_names: list[str]
    coarse_of_class: list[int] | None = None  # superclass id of each fine class
    coarse_names: list[str] | None = None
    in_memory: bool = False  # data already in RAM: loaders default to 0 workers


# ----------------------------------------------------------------------------------- transforms
def _framing(spec: dict) -> list:
    return [T.Resize(spec["resize_size"], interpolation=INTERPOLATIONS[spec["interpolation"]]),
            T.CenterCrop(spec["crop_size"])]


def make_transforms(name: str, *, image_size: int | None, eval_spec: dict | None,
                    randaugment: bool) -> tuple[Callable, Callable, int]:
    """(train transform, val transform, output size) for dataset `name`."""
    if name == "synthetic" or name in CIFAR_STATS:  # native 32 px; augment before any resize
        (mean, std), framing, size = CIFAR_STATS.get(name, (SYNTHETIC_MEAN, SYNTHETIC_STD)), [], 32
        if eval_spec:
            framing, size = _framing(eval_spec), eval_spec["crop_size"]
            mean, std = eval_spec["mean"], eval_spec["std"]
        elif image_size and image_size != 32:  # nearest keeps the synthetic cells crisp
            mode = INTERPOLATIONS["nearest" if name == "synthetic" else "bicubic"]
            framing, size = [T.Resize(image_size, interpolation=mode)], image_size
        if name == "synthetic":  # already float tensors; never augmented (see SyntheticObjects)
            transform = T.Compose(framing + [T.Normalize(mean, std)])
            return transform, transform, size
        augment = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
        augment += [T.RandAugment(num_ops=3, magnitude=9)] if randaugment else []
        train_steps, val_steps = augment + framing, framing
    else:  # photo sets: the authors' recipe, RandAugment always on
        size = image_size or 224
        spec = eval_spec or {"resize_size": round(size * 256 / 224), "crop_size": size,
                             "interpolation": "bicubic", "mean": IMAGENET_MEAN, "std": IMAGENET_STD}
        val_steps, size, mean, std = _framing(spec), spec["crop_size"], spec["mean"], spec["std"]
        train_steps = val_steps + [T.RandAugment(num_ops=3, magnitude=9)]
    tensor = [T.ToTensor(), T.Normalize(mean, std)]
    return T.Compose(train_steps + tensor), T.Compose(val_steps + tensor), size


# ---------------------------------------------------------------------------------- image files
def load_rgb(path: str) -> Image.Image:
    """Decode an image; failure raises instead of skipping, which would shift labels."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise RuntimeError(f"cannot read image file {path} ({err}); replace or delete it "
                           "(it is never skipped silently)") from err


class ImageFiles(Dataset):
    """(path, label) pairs decoded lazily with `load_rgb`."""

    in_memory = False

    def __init__(self, samples: list[tuple[str, int]], class_names: list[str],
                 transform: Callable) -> None:
        self.samples, self.class_names, self.transform = samples, class_names, transform
        self.targets = [label for _, label in samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self.transform(load_rgb(path)), label


def _class_folders(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and e.name[0] != ".")


def _image_files(class_dir: Path, max_per_class: int | None) -> list[str]:
    names = sorted(e.name for e in os.scandir(class_dir)  # scandir: no stat per file
                   if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS)
    return [str(class_dir / n) for n in names[:max_per_class]]


def select_classes(available: list[str], classes: int | str | None, *, source: Path) -> list[str]:
    """All classes, the first K in sorted order, or those a text file lists (in file order)."""
    if classes is None:
        return available
    if isinstance(classes, str) and classes.strip().isdigit():
        classes = int(classes)
    if isinstance(classes, int):
        if not 1 <= classes <= len(available):
            raise ValueError(f"classes={classes} but {source} has {len(available)} class folders; "
                             f"pass K between 1 and {len(available)}")
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
    return names


def build_image_folder(name: str, root: str, *, classes: int | str | None,
                       max_per_class: int | None, train_tf: Callable,
                       val_tf: Callable) -> tuple[ImageFiles, ImageFiles]:
    """root/train/<class>/* and root/val/<class>/*, labels 0..K-1 in class-list order."""
    hint = IMAGENET_HINT if name == "imagenet" else FOLDER_HINT
    layout = f"expected layout {root}/train/<class>/<image> and {root}/val/<class>/<image>"
    base = Path(root)
    if not base.is_dir() or not any(base.iterdir()):
        state = "is empty" if base.is_dir() else "does not exist"
        raise FileNotFoundError(f"{name}: data root {base} {state}; {layout}. Fix: {hint}")
    dirs = {"train": base / "train", "val": base / "val"}
    for split_dir in dirs.values():
        if not split_dir.is_dir():
            raise FileNotFoundError(f"{name}: missing split folder {split_dir}; {layout}. "
                                    f"Fix: {hint}")
    available = _class_folders(dirs["train"])
    if not available:
        raise ValueError(f"{name}: {dirs['train']} has no class folders; {layout}. Fix: {hint}")
    chosen = select_classes(available, classes, source=dirs["train"])
    val_classes = set(_class_folders(dirs["val"]))
    missing, extra = [c for c in chosen if c not in val_classes], sorted(val_classes - {*available})
    if missing or extra:
        raise ValueError(f"{name}: {dirs['val']} lacks class folders {missing[:5]} that train has "
                         f"and has {extra[:5]} that train lacks; {layout}. Fix: {hint}")
    if max_per_class is not None and max_per_class < 1:
        raise ValueError(f"max_per_class must be >= 1, got {max_per_class}")
    sets = []
    for split, transform in (("train", train_tf), ("val", val_tf)):
        samples = []
        for label, class_name in enumerate(chosen):
            files = _image_files(dirs[split] / class_name, max_per_class)
            if not files:
                raise ValueError(f"{name}: class folder {dirs[split] / class_name} has no images "
                                 f"(extensions {IMAGE_EXTENSIONS}, any case); {layout}")
            samples += [(f, label) for f in files]
        sets.append(ImageFiles(samples, chosen, transform))
    return sets[0], sets[1]


# ----------------------------------------------------------------------------- torchvision sets
def build_cifar(name: str, root: str, *, train_tf: Callable, val_tf: Callable,
                download: bool) -> tuple[Dataset, Dataset, DataInfo]:
    cls = tv_datasets.CIFAR10 if name == "cifar10" else tv_datasets.CIFAR100
    data_dir = Path(root) / cls.base_folder
    expected = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    missing = [f for f in expected if not (data_dir / f).is_file()]
    if missing and not download:
        raise FileNotFoundError(f"{name}: {data_dir} lacks {missing}; expected layout "
                                f"{data_dir}/{{{','.join(expected)}}} (the extracted python "
                                f"archive). Fix: {CIFAR_HINT}, extracting it into {root}")
    try:
        train = cls(root, train=True, transform=train_tf, download=download)
        val = cls(root, train=False, transform=val_tf)
    except RuntimeError as err:  # torchvision's MD5 check
        raise RuntimeError(f"{name}: files in {data_dir} fail torchvision's integrity check "
                           f"({err}); delete {data_dir} and {CIFAR_HINT}") from err
    except OSError as err:
        raise RuntimeError(f"{name}: download into {root} failed ({err}); {CIFAR_HINT}") from err
    info = DataInfo(name, len(train.classes), 32, list(train.classes), in_memory=True)
    if name == "cifar100":
        info.coarse_of_class, info.coarse_names, train.coarse_targets, val.coarse_targets = \
            read_cifar100_hierarchy(data_dir, num_classes=len(train.classes))
    train.in_memory = val.in_memory = True
    return train, val, info


def read_cifar100_hierarchy(data_dir: Path, *, num_classes: int) -> tuple[list, list, list, list]:
    """coarse_of_class, coarse_names and the per-sample coarse labels of train and test."""
    def load(file: str) -> dict:
        with open(data_dir / file, "rb") as f:  # the archive's python-2 pickles
            entry = pickle.load(f, encoding="latin1")
        return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}

    coarse_of_class, per_split = [-1] * num_classes, []
    for file in ("train", "test"):
        entry = load(file)
        for fine, coarse in zip(entry["fine_labels"], entry["coarse_labels"]):
            if coarse_of_class[fine] not in (-1, coarse):
                raise RuntimeError(f"{data_dir / file}: fine class {fine} appears under "
                                   f"superclasses {coarse_of_class[fine]} and {coarse}; the file "
                                   f"is corrupted, delete {data_dir} and {CIFAR_HINT}")
            coarse_of_class[fine] = coarse
        per_split.append(list(entry["coarse_labels"]))
    if -1 in coarse_of_class:
        raise RuntimeError(f"{data_dir}: fine class {coarse_of_class.index(-1)} has no samples, "
                           f"so its superclass is unknown; delete {data_dir} and {CIFAR_HINT}")
    return coarse_of_class, list(load("meta")["coarse_label_names"]), per_split[0], per_split[1]


def build_places365(root: str, *, train_tf: Callable, val_tf: Callable,
                    download: bool) -> tuple[Dataset, Dataset, list[str]]:
    """Places365-Standard at high resolution (small=False: the paper feeds 224/384 px)."""
    needed = ["categories_places365.txt", "places365_train_standard.txt", "places365_val.txt",
              "data_large_standard", "val_large"]
    missing = [n for n in needed if not (Path(root) / n).exists()]
    if missing and not download:
        raise FileNotFoundError(f"places365: {root} lacks {missing}; expected layout "
                                f"{root}/{{{','.join(needed)}}}. Fix: {PLACES_HINT}")
    try:
        sets = [tv_datasets.Places365(root, split=split, small=False, download=download,
                                      transform=tf, loader=load_rgb)
                for split, tf in (("train-standard", train_tf), ("val", val_tf))]
    except (RuntimeError, OSError) as err:
        raise RuntimeError(f"places365: cannot load {root} ({err}); {PLACES_HINT}") from err
    return sets[0], sets[1], list(sets[0].classes)


def build_inat2018(root: str, *, train_tf: Callable, val_tf: Callable,
                   download: bool) -> tuple[ImageFiles, ImageFiles, list[str]]:
    """iNaturalist 2018 with the official split (torchvision's class indexes every image)."""
    base = Path(root)
    if download:
        try:  # torchvision puts the images in root/2018/<super>/<id>/
            tv_datasets.INaturalist(root, version="2018", download=True)
        except (RuntimeError, OSError) as err:
            raise RuntimeError(f"inat2018: download into {root} failed ({err}); "
                               f"see {INAT_URL}") from err
    annotations = []
    for split in ("train2018", "val2018"):
        if not (base / f"{split}.json").is_file():
            raise FileNotFoundError(
                f"inat2018: missing {base / split}.json; expected layout {root}/train2018.json, "
                f"{root}/val2018.json and images under {root}/train_val2018/ (or {root}/2018/). "
                f"Fix: pass --download or get them from {INAT_URL}")
        annotations.append(json.loads((base / f"{split}.json").read_text()))
    categories = sorted(annotations[0]["categories"], key=lambda c: c["id"])
    label_of = {c["id"]: i for i, c in enumerate(categories)}
    names = [str(c.get("name", c["id"])) for c in categories]
    train, val = [ImageFiles(_inat_samples(base, a, label_of), names, tf)
                  for a, tf in zip(annotations, (train_tf, val_tf))]
    return train, val, names


def _inat_samples(base: Path, annotation: dict, label_of: dict) -> list[tuple[str, int]]:
    category_of = {a["image_id"]: a["category_id"] for a in annotation["annotations"]}
    renamed = not (base / "train_val2018").is_dir()  # torchvision's download names it 2018/
    samples = []
    for image in annotation["images"]:
        file = Path(image["file_name"])  # "train_val2018/<super>/<id>/<hash>.jpg"
        file = Path("2018", *file.parts[1:]) if renamed else file
        if category_of[image["id"]] not in label_of:
            raise ValueError(f"inat2018: image {file} has a category missing from "
                             f"train2018.json; re-download the annotations from {INAT_URL}")
        samples.append((str(base / file), label_of[category_of[image["id"]]]))
    if samples and not Path(samples[0][0]).is_file():
        raise FileNotFoundError(f"inat2018: image {samples[0][0]} of the annotations is missing; "
                                f"extract train_val2018.tar.gz into {base} (see {INAT_URL})")
    return samples


# --------------------------------------------------------------------------------- entry points
def _check_options(name: str, root: str | None, *, image_size: int | None,
                   eval_spec: dict | None, classes, max_per_class, randaugment: bool) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {DATASETS}")
    if root is None and name != "synthetic":
        raise ValueError(f"{name} needs root, the directory that holds (or will hold) its "
                         "files (--data-dir in train.py)")
    if classes is not None and name not in ("imagenet", "folder"):
        raise ValueError(f"classes selects subsets of imagenet and folder, not {name}")
    if max_per_class is not None and name not in ("imagenet", "folder", "synthetic"):
        raise ValueError(f"max_per_class selects subsets of imagenet, folder and synthetic, not {name}")
    if max_per_class is not None and max_per_class < 1:
        raise ValueError(f"max_per_class must be >= 1, got {max_per_class}")
    if name == "synthetic" and randaugment:
        raise ValueError("synthetic takes no augmentation (it would move the marks that tell "
                         "look-alike objects apart); drop randaugment")
    if image_size is not None and image_size < 1:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    if eval_spec is None:
        return
    keys = ("resize_size", "crop_size", "interpolation", "mean", "std")
    if any(k not in eval_spec for k in keys) or eval_spec["interpolation"] not in INTERPOLATIONS:
        raise ValueError(f"eval_spec {eval_spec} is malformed; expected keys {keys} with "
                         f"interpolation one of {tuple(INTERPOLATIONS)} (vit.py builds it from "
                         "the weights' transforms())")
    if image_size is not None and image_size != eval_spec["crop_size"]:
        raise ValueError(f"image_size={image_size} conflicts with the pretrained weights' crop "
                         f"size {eval_spec['crop_size']}; drop image_size or use matching weights")


def build_datasets(name: str, root: str | None = None, *, image_size: int | None = None,
                   eval_spec: dict | None = None, randaugment: bool = False,
                   classes: int | str | None = None, max_per_class: int | None = None,
                   download: bool = False, seed: int = 0, expected_num_classes: int | None = None,
                   weights_name: str | None = None) -> tuple[Dataset, Dataset, DataInfo]:
    """(train_set, val_set, info). Items are (image_tensor float32 (3,H,W) normalized, label int).

    `synthetic` ignores `root` (its images come from `seed`). `randaugment` adds
    RandAugment(3, 9) to CIFAR training; the photo sets always use it (the authors' recipe).
    """
    _check_options(name, root, image_size=image_size, eval_spec=eval_spec, classes=classes,
                   max_per_class=max_per_class, randaugment=randaugment)
    train_tf, val_tf, size = make_transforms(name, image_size=image_size, eval_spec=eval_spec,
                                             randaugment=randaugment)
    if name == "synthetic":  # classes are exactly balanced: M per class = 10 M images
        sizes = {} if max_per_class is None else {"num_images": SYNTHETIC_CLASSES * max_per_class}
        train = SyntheticObjects("train", seed=seed, transform=train_tf, **sizes)
        val = SyntheticObjects("val", seed=seed, transform=val_tf, **sizes)
        # Superclass = the deciding object's shape: twin classes (e.g. "red square" and its
        # greener twin) share one, so look-alike, semantically unrelated classes are grouped.
        info = DataInfo(name, SYNTHETIC_CLASSES, size, train.class_names, in_memory=True,
                        coarse_of_class=[RANKING[c] // 2 for c in range(SYNTHETIC_CLASSES)],
                        coarse_names=list(SHAPE_NAMES))
    elif name in CIFAR_STATS:
        train, val, info = build_cifar(name, root, train_tf=train_tf, val_tf=val_tf,
                                       download=download)
    elif name in ("imagenet", "folder"):
        train, val = build_image_folder(name, root, classes=classes, max_per_class=max_per_class,
                                        train_tf=train_tf, val_tf=val_tf)
        info = DataInfo(name, len(train.class_names), size, train.class_names)
    else:
        build = build_places365 if name == "places365" else build_inat2018
        train, val, class_names = build(root, train_tf=train_tf, val_tf=val_tf, download=download)
        info = DataInfo(name, len(class_names), size, class_names)
    info.image_size = size
    if expected_num_classes is not None and expected_num_classes != info.num_classes:
        raise ValueError(f"pretrained head of {weights_name or 'the weights'} has "
                         f"{expected_num_classes} classes but {name} has {info.num_classes}; use "
                         "--method vit to fine-tune a new head, or pick matching weights")
    return train, val, info


class EvalShardSampler(Sampler[int]):
    """Indices rank::world_size: disjoint shards covering the set exactly once.

    DistributedSampler pads shards with repeated samples, which would skew eval accuracy.
    """

    def __init__(self, dataset_size: int, *, rank: int, world_size: int) -> None:
        self.indices = range(rank, dataset_size, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_loader(dataset: Dataset, *, batch_size: int, train: bool, workers: int | None = None,
                 rank: int = 0, world_size: int = 1, seed: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    """Train: shuffled by a DistributedSampler (also for one process: call
    loader.sampler.set_epoch(e), so each epoch's order depends on (seed, epoch) alone and a resumed
    run sees the same batches as an uninterrupted one), last partial batch dropped.
    Eval: in order, nothing dropped, disjoint unpadded shards."""
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got batch_size="
                         f"{batch_size}, rank={rank}, world_size={world_size}")
    if train and len(dataset) // world_size < batch_size:
        raise ValueError(f"training set of {len(dataset)} images over {world_size} rank(s) is "
                         f"smaller than one batch of {batch_size}; lower the batch size")
    if workers is None:
        workers = 0 if getattr(dataset, "in_memory", False) else min(8, os.cpu_count() or 1)
    if train:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True,
                                     seed=seed, drop_last=True)
    else:
        sampler = EvalShardSampler(len(dataset), rank=rank, world_size=world_size)
    # Seeds the workers' augmentation RNGs, distinct per rank. (With workers > 0 a resumed run
    # draws other augmentations than an uninterrupted one; with 0 workers the global RNG, which
    # checkpoints restore, drives them.)
    generator = torch.Generator().manual_seed(seed * world_size + rank)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False,
                      sampler=sampler, drop_last=train, num_workers=workers,
                      persistent_workers=workers > 0, pin_memory=pin_memory, generator=generator)
