"""Defaults that fit the data: the settings recipe.resolve derives from an image folder.

A folder (`--dataset folder`) or an ImageNet-style subset (`--dataset imagenet` with `--classes`
or `--max-per-class`) trained from scratch takes, for each of these options the command line
leaves unset, a value read from its training split (`data.folder_summary`: the number of
images and classes, and the image sides from the files' headers, `SIZE_SAMPLE` images at most):

  image size  the median shorter side, rounded to a multiple of the patch (at least
              MIN_PATCHES_PER_SIDE patches a side, at most PHOTO_SIZE px)
  patch size  PATCH_BY_SIZE: the smallest patch whose size bound the median side is within
  preset      PRESET_BY_IMAGES: a model no larger than the number of training images supports
  batch       the stage's batch, capped so that an epoch has at least MIN_STEPS_PER_EPOCH steps
  LLB objects OBJECTS_PER_CLASS per class (the paper's 2,048 for ImageNet's 1,000 classes),
              at least MIN_OBJECTS (the demo's 64 for its 10 classes)
  LLB depth   at most the backbone's depth (the authors' 6 is for a 12-block ViT-B)

Released weights (`--pretrained`) and the full ImageNet set keep their own recipe (224 px,
ViT-B, 2,048 objects). `Fitted.origin` says, for the recipe's printout, where each value came from.
"""
from dataclasses import dataclass, field
from statistics import median

from data import folder_summary

SIZE_SAMPLE = 256  # image headers read to find the median side
PHOTO_SIZE = 224  # the largest size derived, as the paper's input
PATCH_BY_SIZE = ((64, 4), (128, 8))  # (median side up to, patch); larger images: 16
LARGE_PATCH = 16
MIN_PATCHES_PER_SIDE = 4
# (training images below, preset): a 10-class folder of 1,437 scans trains a ViT-micro in minutes
PRESET_BY_IMAGES = ((10_000, "micro"), (100_000, "tiny"), (1_000_000, "small"))
LARGE_PRESET = "base"
MIN_STEPS_PER_EPOCH = 4
OBJECTS_PER_CLASS = 2048 / 1000
MIN_OBJECTS = 64
# Fewer training images per class than this: the recipe's printout says that a ViT from scratch
# learns little from so few (the 60-image folder of docs/real_images.md, 4 a class: ViT-micro 40%,
# a logistic regression on pixels 90%) and that released weights (--pretrained) are the way
FEW_PER_CLASS = 20


@dataclass
class Fitted:
    """Values derived from the data (None: not derived) and, per name, where each came from."""
    image_size: int | None = None
    patch_size: int | None = None
    model: str | None = None
    batch_cap: int | None = None  # the largest batch per process the training split supports
    num_objects: int | None = None
    origin: dict = field(default_factory=dict)

    def llb(self, backbone_depth: int, default_depth: int) -> dict:
        """The LLB options derived ({} when nothing is): objects, and a depth no deeper than
        the ViT it is put on."""
        if self.num_objects is None:
            return {}
        return dict(num_objects=self.num_objects, depth=min(default_depth, backbone_depth))


def fits_the_data(dataset: str, *, classes, max_per_class, from_weights: bool) -> bool:
    """Whether the settings come from the data: a folder, or an ImageNet subset, from scratch."""
    if from_weights:
        return False
    subset = classes is not None or max_per_class is not None
    return dataset == "folder" or (dataset == "imagenet" and subset)


def patch_for(side: float) -> int:
    return next((patch for bound, patch in PATCH_BY_SIZE if side <= bound), LARGE_PATCH)


def preset_for(images: int) -> str:
    return next((name for bound, name in PRESET_BY_IMAGES if images < bound), LARGE_PRESET)


def size_for(side: float, patch: int) -> int:
    """The median side rounded to a multiple of the patch, within the bounds above."""
    whole = max(MIN_PATCHES_PER_SIDE, round(side / patch)) * patch
    return min(whole, PHOTO_SIZE // patch * patch)


def objects_for(classes: int) -> int:
    return max(MIN_OBJECTS, round(OBJECTS_PER_CLASS * classes))


def batch_cap(images: int, world_size: int) -> int:
    return max(1, images // (world_size * MIN_STEPS_PER_EPOCH))


def fit(values: dict, *, from_weights: bool, size_given: int | None) -> Fitted:
    """What the training split suggests for a stage's data options `values` (dataset,
    data_dir, classes, max_per_class, world_size); an empty Fitted when the settings do not come
    from the data or the folder cannot be read (data.build_datasets then says why)."""
    classes = values["classes"]
    max_per_class = values["max_per_class"]
    if not fits_the_data(values["dataset"], classes=classes, max_per_class=max_per_class,
                         from_weights=from_weights) or not values["data_dir"]:
        return Fitted()
    summary = folder_summary(values["data_dir"], classes=classes, max_per_class=max_per_class,
                             sample=SIZE_SAMPLE)
    if summary is None:
        return Fitted()
    images = summary["images"]
    side = median(summary["sides"])
    patch = patch_for(side if size_given is None else size_given)
    size = size_for(side, patch)
    cap = batch_cap(images, values["world_size"])
    read = f"median side {side:g} px of {len(summary['sides'])} images"
    per_class = images / summary["classes"]
    few = (f"; only {per_class:.0f} a class: from scratch a ViT learns little from so few, "
           "fine-tune released weights (--pretrained)" if per_class < FEW_PER_CLASS else "")
    return Fitted(
        image_size=size, patch_size=patch, model=preset_for(images), batch_cap=cap,
        num_objects=objects_for(summary["classes"]),
        origin=dict(image_size=f"{read}, a multiple of the patch",
                    patch_size=f"{read}" if size_given is None else "the image size",
                    model=f"{images} training images{few}",
                    batch_size=f"capped: {images} training images, >= {MIN_STEPS_PER_EPOCH} "
                               f"steps an epoch",
                    num_objects=f"{summary['classes']} classes x {OBJECTS_PER_CLASS:g}, "
                                f">= {MIN_OBJECTS}",
                    depth="at most the backbone's depth"))
