"""Image files for data.py: decoding any PIL mode to RGB, image-folder datasets, decode-once.

`load_rgb(path)` decodes one file to 8-bit RGB: 16-bit and float modes are scaled to 0..255
(PIL's own `convert("RGB")` clips them, turning a 16-bit scan white), transparent pixels are
composited onto white. `load_uint8(path)` gives the same pixels as a uint8 tensor (3, H, W), a
JPEG decoded by torchvision.io (libjpeg-turbo: PIL's pixels, faster per core), so that the
transforms run on tensors (data.py's PIPELINES). `ImageFiles` is a list of (path, label) pairs
that either streams (decodes each item when it is read, every epoch) or, after `decode()`,
holds every image once as a uint8 tensor (N, 3, H, W) and runs only the random part of its
transform per item.
`build_image_folder` reads root/{train,val}/<class>/<image> into two ImageFiles,
`build_inat2018` iNaturalist 2018 with its official JSON split.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import datasets as tv_datasets
from torchvision import io as tv_io
from torchvision.transforms import v2

# torchvision's ImageFolder extensions, compared lower-cased
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# Full-scale value of the wide single-channel modes: PIL opens 16-bit PNG/TIFF as "I;16*" or "I"
# (32-bit int holding 0..65535), float TIFF as "F" (taken as 0..1, torchvision's float convention).
FULL_SCALE = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535,
              "F": 1.0}
TRANSPARENT_BACKGROUND = (255, 255, 255)  # transparent pixels shown on white, as a web page does
DECODE_WORKERS_FROM = 2048  # decode() uses worker processes for sets of this many images or more
# torchvision.io's JPEG decoder (deprecated since torchvision 0.29 in favour of TorchCodec, still
# there in the pinned 0.29.1); without it load_uint8 decodes with PIL, the same pixels, slower
DECODE_JPEG = getattr(tv_io, "decode_jpeg", None)

IMAGENET_HINT = ("download ILSVRC2012 from https://image-net.org and arrange val/ into class "
                 "folders, e.g. with the valprep.sh script")
FOLDER_HINT = "arrange the images as root/train/<class>/<image> and root/val/<class>/<image>"
INAT_URL = "https://github.com/visipedia/inat_comp/tree/master/2018"


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
        background = Image.new("RGBA", image.size, TRANSPARENT_BACKGROUND + (255,))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK ((255 - C)(255 - K) / 255), YCbCr, RGB


def _unreadable(path: str, err: Exception) -> RuntimeError:
    return RuntimeError(f"cannot read image file {path} ({err}); replace or delete it (it is "
                        "never skipped silently)")


def load_rgb(path: str) -> Image.Image:
    """Decode an image; failure raises instead of skipping, which would shift labels."""
    try:
        with Image.open(path) as image:
            return to_rgb(image)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise _unreadable(path, err) from err


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


def image_size(path: str) -> tuple[int, int]:
    """(width, height) from the file's header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise _unreadable(path, err) from err


def split_framing(transform: v2.Compose) -> tuple[list, list]:
    """(leading Resize / CenterCrop steps, the rest): the first give the same result every epoch."""
    steps = list(transform.transforms)
    n = 0
    while n < len(steps) and isinstance(steps[n], (v2.Resize, v2.CenterCrop)):
        n += 1
    return steps[:n], steps[n:]


# ------------------------------------------------------------------------------------- dataset
class ImageFiles(Dataset):
    """(path, label) pairs, streamed (decoded when read) or, after decode(), held in memory.
    `load` decodes a file: load_uint8 (a tensor) or load_rgb (a PIL image, the reference)."""

    def __init__(self, *, samples: list[tuple[str, int]], class_names: list[str],
                 transform: v2.Compose, load: Callable = load_uint8) -> None:
        self.samples = samples
        self.load = load
        self.class_names = class_names
        self.transform = transform
        self.targets = [label for _, label in samples]
        self.images: torch.Tensor | None = None  # uint8 (N, 3, H, W) once decode() ran
        self.per_item: Callable = transform  # what __getitem__ applies to a row of self.images

    @property
    def in_memory(self) -> bool:
        """True once decoded: loaders then default to 0 worker processes."""
        return self.images is not None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if self.images is not None:
            return self.per_item(self.images[index]), self.targets[index]
        path, label = self.samples[index]
        return self.transform(self.load(path)), label

    def decoded_size(self, *, budget_bytes: int) -> tuple[int, int] | None:
        """(H, W) every image has after the framing if all N fit the budget as uint8, else None.

        A center crop fixes the size; without framing every file must have the same size (read
        from the headers, only when the first image's size times N fits the budget).
        """
        framing, _ = split_framing(self.transform)
        if framing and isinstance(framing[-1], v2.CenterCrop):
            size = tuple(framing[-1].size)
        elif framing or not self.samples:
            return None  # a Resize alone keeps each image's aspect ratio: sizes differ
        else:
            width, height = image_size(self.samples[0][0])
            if len(self) * 3 * height * width > budget_bytes:
                return None
            if any(image_size(path) != (width, height) for path, _ in self.samples[1:]):
                return None
            size = (height, width)
        fits = len(self) * 3 * size[0] * size[1] <= budget_bytes
        return size if fits else None

    def decode(self, size: tuple[int, int]) -> None:
        """Decode every image once, framing it exactly as streaming does, into memory."""
        framing, rest = split_framing(self.transform)
        decoder = ImageFiles(samples=self.samples, class_names=self.class_names,
                             transform=v2.Compose(framing + [v2.PILToTensor()]), load=self.load)
        workers = min(8, os.cpu_count() or 1) if len(self) >= DECODE_WORKERS_FROM else 0
        loader = DataLoader(decoder, batch_size=256, num_workers=workers)
        images = torch.empty(len(self), 3, *size, dtype=torch.uint8)  # (N, 3, H, W)
        start = 0
        for batch, _ in loader:
            images[start:start + len(batch)] = batch
            start += len(batch)
        self.images = images
        self.per_item = v2.Compose(rest)


def decode_within_budget(sets: list[ImageFiles], *, budget_bytes: int) -> None:
    """Decode each set, in order, whose uint8 images fit what is left of the budget."""
    left = budget_bytes
    for dataset in sets:
        size = dataset.decoded_size(budget_bytes=left)
        if size is not None:
            dataset.decode(size)
            left -= dataset.images.numel()


# ------------------------------------------------------------------------------------- folders
def _class_folders(split_dir: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and e.name[0] != ".")


def _image_files(class_dir: Path, max_per_class: int | None) -> list[str]:
    images = [e for e in os.scandir(class_dir)  # scandir: no stat per file
              if os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS]
    names = sorted(e.name for e in images if e.is_file())
    broken = sorted(e.name for e in images if e.is_symlink() and not e.is_file())
    if broken:  # a link whose target is gone: is_file() is False, and it would vanish silently
        raise FileNotFoundError(f"{class_dir} holds {len(broken)} broken symbolic link(s) to "
                                f"images ({', '.join(broken[:3])}): their targets do not exist. "
                                f"Mount or restore the targets, or delete the links.")
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


def read_superclasses(path: str | Path, class_names: list[str]) -> tuple[list[int], list[str]]:
    """(coarse_of_class, coarse_names) of a user's grouping of `class_names`: a JSON object
    {class name: group} or a text file of `class<TAB>group` lines (blank lines and # comments
    skipped). Every class needs a group; names unknown to the dataset are an error. Groups are
    numbered in order of their first class."""
    path = Path(path)
    formats = ("a JSON object {\"class name\": \"group\"} or a text file of class<TAB>group "
               "lines, one per class")
    if not path.is_file():
        raise FileNotFoundError(f"superclasses file {path} does not exist; expected {formats}. "
                                f"Fix the path given to --superclasses")
    text = path.read_text()
    if text.lstrip().startswith("{"):
        try:
            group_of = json.loads(text)
        except ValueError as err:
            raise ValueError(f"superclasses file {path} is not valid JSON ({err}); expected "
                             f"{formats}") from err
        if not all(isinstance(g, (str, int)) for g in group_of.values()):
            raise ValueError(f"superclasses file {path}: every group must be a name (a string), "
                             f"expected {formats}")
        group_of = {name: str(group) for name, group in group_of.items()}
    else:
        group_of = {}
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = [p.strip() for p in line.split("\t")]
            if len(parts) != 2 or not all(parts):
                raise ValueError(f"superclasses file {path}, line {number}: {line!r} is not "
                                 f"class<TAB>group; expected {formats}")
            group_of[parts[0]] = parts[1]
    known = set(class_names)
    unknown = [n for n in group_of if n not in known]
    if unknown:
        raise ValueError(f"superclasses file {path} names {len(unknown)} class(es) this dataset "
                         f"does not have: {unknown[:5]}; its {len(class_names)} classes are "
                         f"named like {class_names[:3]} (folder names, e.g. ImageNet wnids). "
                         f"Fix the names in {path}")
    missing = [n for n in class_names if n not in group_of]
    if missing:
        raise ValueError(f"superclasses file {path} gives no group to {len(missing)} of the "
                         f"dataset's {len(class_names)} classes: {missing[:5]}; every class "
                         f"needs one. Add them to {path} (a group of their own if need be)")
    names = list(dict.fromkeys(group_of[c] for c in class_names))  # first appearance order
    index = {g: i for i, g in enumerate(names)}
    return [index[group_of[c]] for c in class_names], names

def build_image_folder(name: str, root: str, *, classes: int | str | None,
                       max_per_class: int | None, train_tf: v2.Compose, val_tf: v2.Compose,
                       load: Callable = load_uint8) -> tuple[ImageFiles, ImageFiles]:
    """root/train/<class>/* and root/val/<class>/*, labels 0..K-1 in class-list order."""
    hint = IMAGENET_HINT if name == "imagenet" else FOLDER_HINT
    layout = f"expected layout {root}/train/<class>/<image> and {root}/val/<class>/<image>"
    base = Path(root)
    if not base.is_dir() or not any(base.iterdir()):
        state = "does not exist"
        if base.is_file():
            state = "is a file, expected a folder"
        elif base.is_dir():
            state = "is empty"
        raise FileNotFoundError(f"{name}: data root {base} {state}; {layout}. Fix: {hint}")
    dirs = {"train": base / "train", "val": base / "val"}
    for split_dir in dirs.values():
        if not split_dir.is_dir():
            raise FileNotFoundError(f"{name}: missing split folder {split_dir}; {layout}. "
                                    f"Fix: {hint}")
    available = _class_folders(dirs["train"])
    if len(available) < 2:
        raise ValueError(f"{name}: {dirs['train']} has {len(available)} class folder(s) "
                         f"{available}; a classifier needs at least 2 classes; {layout}. "
                         f"Fix: {hint}")
    chosen = select_classes(available, classes, source=dirs["train"])
    val_classes = set(_class_folders(dirs["val"]))
    missing = [c for c in chosen if c not in val_classes]
    extra = sorted(val_classes - {*available})
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
        sets.append(ImageFiles(samples=samples, class_names=chosen, transform=transform,
                               load=load))
    return sets[0], sets[1]


def folder_summary(root: str, *, classes: int | str | None, max_per_class: int | None,
                   sample: int) -> dict | None:
    """What the training split of root/train/<class>/* holds, read cheaply: the number of
    images and classes, and the shorter side of up to `sample` images spread evenly over it
    (from the file headers). None when the folder cannot be read: data.build_datasets then
    says what is wrong with it."""
    train = Path(root) / "train"
    try:
        chosen = select_classes(_class_folders(train), classes, source=train)
        files = [f for name in chosen for f in _image_files(train / name, max_per_class)]
    except (OSError, ValueError):
        return None
    if len(chosen) < 2 or not files:
        return None
    picked = files[::max(1, len(files) // sample)][:sample]
    try:
        sides = [min(image_size(f)) for f in picked]
    except RuntimeError:
        return None
    return dict(images=len(files), classes=len(chosen), sides=sides)


# -------------------------------------------------------------------------------- iNat 2018
def build_inat2018(root: str, *, train_tf: Callable, val_tf: Callable, download: bool,
                   load: Callable = load_uint8) -> tuple[ImageFiles, ImageFiles, list[str]]:
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
    train, val = [ImageFiles(samples=_inat_samples(base, a, label_of), class_names=names,
                             transform=tf, load=load)
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
