"""The named sets that torchvision reads (CIFAR-10/100 with CIFAR-100's superclasses,
Places365), and ImageNet-ReaL's labels for the ImageNet validation split. data.py builds every
dataset; these are the parts that depend on a set's own files."""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import Dataset
from torchvision import datasets as tv_datasets

from inputs.images import load_uint8

CIFAR_HINT = "pass --download or download from https://www.cs.toronto.edu/~kriz/cifar.html"
PLACES_HINT = ("pass --download or download the high-resolution Places365-Standard images and "
               "file lists from http://places2.csail.mit.edu/download.html")
REAL_URL = "https://github.com/google-research/reassessed-imagenet"
REAL_IMAGES = 50_000  # ImageNet-1k validation images, ILSVRC2012_val_00000001 .. 00050000
REAL_CLASSES = 1000


# ----------------------------------------------------------------------------- torchvision sets
def build_cifar(name: str, root: str, *, train_tf: Callable, val_tf: Callable,
                download: bool) -> tuple[Dataset, Dataset, list[str], list | None, list | None]:
    """(train, val, class names, coarse_of_class, coarse_names): superclasses for cifar100."""
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
        raise RuntimeError(f"{name}: download into {root} failed ({err}); check the network "
                           f"(a proxy?) or {CIFAR_HINT.split(' or ', 1)[1]}") from err
    for split in (train, val):  # decoded arrays already: loaders default to 0 workers
        split.in_memory = True
    if name == "cifar10":
        return train, val, list(train.classes), None, None
    coarse_of_class, coarse_names = read_cifar100_hierarchy(data_dir,
                                                            num_classes=len(train.classes))
    return train, val, list(train.classes), coarse_of_class, coarse_names


def read_cifar100_hierarchy(data_dir: Path, *, num_classes: int) -> tuple[list, list]:
    """coarse_of_class (checked consistent over every sample of train and test), coarse_names."""
    def load(file: str) -> dict:
        with open(data_dir / file, "rb") as f:  # the archive's python-2 pickles
            entry = pickle.load(f, encoding="latin1")
        return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}

    coarse_of_class = [-1] * num_classes
    for file in ("train", "test"):
        entry = load(file)
        for fine, coarse in zip(entry["fine_labels"], entry["coarse_labels"]):
            if coarse_of_class[fine] not in (-1, coarse):
                raise RuntimeError(f"{data_dir / file}: fine class {fine} appears under "
                                   f"superclasses {coarse_of_class[fine]} and {coarse}; the file "
                                   f"is corrupted, delete {data_dir} and {CIFAR_HINT}")
            coarse_of_class[fine] = coarse
    if -1 in coarse_of_class:
        raise RuntimeError(f"{data_dir}: fine class {coarse_of_class.index(-1)} has no samples, "
                           f"so its superclass is unknown; delete {data_dir} and {CIFAR_HINT}")
    return coarse_of_class, list(load("meta")["coarse_label_names"])


def build_places365(root: str, *, train_tf: Callable, val_tf: Callable, download: bool,
                    load: Callable = load_uint8) -> tuple[Dataset, Dataset, list[str]]:
    """Places365-Standard at high resolution (small=False: the paper feeds 224/384 px)."""
    needed = ["categories_places365.txt", "places365_train_standard.txt", "places365_val.txt",
              "data_large_standard", "val_large"]
    missing = [n for n in needed if not (Path(root) / n).exists()]
    if missing and not download:
        raise FileNotFoundError(f"places365: {root} lacks {missing}; expected layout "
                                f"{root}/{{{','.join(needed)}}}. Fix: {PLACES_HINT}")
    try:
        sets = [tv_datasets.Places365(root, split=split, small=False, download=download,
                                      transform=tf, loader=load)
                for split, tf in (("train-standard", train_tf), ("val", val_tf))]
    except (RuntimeError, OSError) as err:
        raise RuntimeError(f"places365: cannot load {root} ({err}); {PLACES_HINT}") from err
    return sets[0], sets[1], list(sets[0].classes)


# ------------------------------------------------------------------------------ ImageNet-ReaL
def read_real_labels(path: str | Path, val_set: Dataset) -> list[list[int]]:
    """Each image's ImageNet-ReaL labels (possibly none), in `val_set`'s sample order.

    `path` is real.json of google-research/reassessed-imagenet: a JSON list of 50,000 label
    lists, entry i for ILSVRC2012_val_{i+1:08d}.JPEG. Images are matched by that file number.
    """
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
                         f"classes {class_names[:3]}...; evaluate --dataset imagenet with all "
                         "1000 class folders (no --classes subset) to use them")
    labels = []
    for file, _ in val_set.samples:
        match = re.fullmatch(r"ILSVRC2012_val_(\d{8})\.jpe?g", Path(file).name, re.IGNORECASE)
        if match is None or not 1 <= int(match.group(1)) <= REAL_IMAGES:
            raise ValueError(f"ReaL labels are matched by file name, but validation image {file} "
                             "is not named ILSVRC2012_val_00000001.JPEG .. _00050000.JPEG; keep "
                             "the official validation file names")
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
