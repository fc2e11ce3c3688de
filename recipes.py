"""Every default of a training run, in one place, read top to bottom.

A training stage ("vit": a ViT; "llb": LLB on a frozen ViT) runs with one `Recipe`: every setting
it uses, resolved before anything is built, printed at start and saved in every checkpoint, so
that a run can be reproduced from its checkpoint alone. Each setting comes from the first of:
the command line (train.py), the checkpoint that --resume continues, the named recipe (RECIPES,
`--recipe NAME`), the data (`derived_from_data`), the stage's defaults (STAGES), the Recipe
field's default; for LLB llb.LLBConfig's (the authors' recipe), for the ViT's sizes vit.PRESETS.
`python train.py --help` prints them all (`defaults_table`).
"""
import os
import textwrap
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from statistics import median

import torch

import data
import llb
import vit
from inputs import pretrained
from inputs.synthetic import SYNTHETIC_CLASSES
from util.checkpoint import saved_recipe


@dataclass(kw_only=True)
class Recipe:
    """Every setting of one training stage, as used (fields without a default: always resolved)."""

    stage: str  # "vit" or "llb": what this stage trains (its folder and checkpoint kind)
    defaults: str  # the STAGES entry that filled the stage's settings: scratch, finetune or llb
    # data
    dataset: str = "synthetic"  # a name of data.DATASETS
    data_dir: str | None = None  # root of the dataset's files (None: synthetic, in memory)
    classes: str | None = None  # imagenet/folder subset: the first K classes, or a file of names
    max_per_class: int | None = None  # subset: at most M images per class
    image_size: int  # H = W of the model's input (`input_size`)
    augment: str  # training augmentation: paper, basic or none (`default_augment`)
    # evaluation framing: "weights", the released weights' own eval transform (AugReg: Resize
    # 248); "authors", Resize 256 bicubic -> CenterCrop 224 (SWAG 384 -> 384)
    eval_framing: str = "weights"
    # model
    model: str | None = None  # vit.PRESETS name of a ViT from scratch (None: weights, checkpoint)
    patch_size: int | None = None  # P of a ViT from scratch (None: the preset's)
    pretrained: str | None = None  # released weights the backbone starts from
    weights_file: str | None = None  # a local copy of those weights
    backbone: str | None = None  # the checkpoint the stage starts from (a ViT, or LLB's backbone)
    dropout: float = 0.0  # ViT dropout (LLB's frozen backbone runs in eval mode)
    llb: dict | None = None  # llb.LLBConfig fields of an LLB stage (layer resolved), else None
    # optimization: the stage's (STAGES)
    optimizer: str  # adamw (decoupled weight decay) or adam (coupled L2)
    lr: float  # peak learning rate
    min_lr: float  # floor of the cosine decay (the authors' eta_min for LLB)
    weight_decay: float  # decay coefficient
    decay_all: bool  # decay every trainable parameter (else matrices only, as nanoGPT)
    warmup_epochs: float  # linear warmup before the cosine decay
    clip_grad: float  # max gradient norm (0: no clipping)
    eval_amp: bool  # evaluate under autocast too (False: fp32, as the authors)
    # optimization: every stage's
    epochs: int = 70  # the paper's 70
    batch_size: int = 128  # per process: the paper's per GPU
    label_smoothing: float = 0.0  # of the cross-entropy
    seed: int = 0  # model init, data order, augmentations
    # runtime
    world_size: int = 1  # processes; the global batch is batch_size * world_size
    amp: str  # autocast for training: bf16, fp16 (with loss scaling) or off (`default_amp`)
    # where a value came from when not from the command line, the checkpoint or a fixed default,
    # e.g. {"epochs": "recipe demo"}: printed beside it, never compared on --resume
    origin: dict = field(default_factory=dict)

    def describe(self) -> str:
        """The recipe as printed at start: `name=value (origin)` pairs, wrapped at 100."""
        said = {k: f" ({why})" for k, why in self.origin.items()}
        pairs = [f"{k}={v}{said.get(k, '')}" for k, v in asdict(self).items()
                 if k not in ("llb", "origin") and v is not None]
        pairs += [f"llb.{k}={v}{said.get(k, '')}" for k, v in (self.llb or {}).items()]
        lines = []
        line = "recipe:"
        for pair in pairs:
            if len(line) + len(pair) + 1 > 100:
                lines.append(line)
                line = "   "
            line += " " + pair
        return "\n".join(lines + [line])


# ----------------------------------------------------------------------------- the defaults

# The stage's defaults (`Recipe.defaults`), by what the stage starts from. A ViT from scratch:
# the DeiT-style AdamW setting (Touvron et al., 2021)
SCRATCH = dict(optimizer="adamw", lr=1e-3, min_lr=0.0, weight_decay=0.05, decay_all=False,
               warmup_epochs=1.0, clip_grad=1.0, eval_amp=True)
STAGES = {
    "scratch": SCRATCH,
    # a ViT from released weights or a checkpoint: scratch's, with a 10x smaller peak lr
    "finetune": SCRATCH | dict(lr=SCRATCH["lr"] / 10),
    # LLB on a frozen ViT: the authors' recipe exactly (their code). Adam with coupled L2 on every
    # trainable parameter, no gradient clipping, no warmup, cosine decay over the whole run down
    # to their eta_min 5e-5, evaluation in fp32
    "llb": dict(optimizer="adam", lr=1e-4, min_lr=5e-5, weight_decay=1e-4, decay_all=True,
                warmup_epochs=0.0, clip_grad=0.0, eval_amp=False),
}

# Named recipes: `--recipe NAME`, the command line's options on top. Keys are train.py's options;
# llb_epochs and llb_lr are the LLB stage's.
PAPER_ROW = dict(method="llb", dataset="imagenet", eval_framing="authors")
RECIPES = {
    # The CPU demo on the synthetic set (used there when --recipe is not given): about 2 minutes
    # on 2 cores. Patch 8: one patch is one cell of the synthetic grid. 24 ViT epochs: some seeds
    # and thread counts sit near chance for 4-8 epochs before they climb; 12 left such a run 25
    # points short, 24 reach the plateau on seeds 0-4 at 1, 2 and 4 threads
    # (docs/demo_seeds.md). Note: the LLB stage's lr and objects are this project's; in 4
    # epochs it cannot train 2,048 objects at the paper's lr 1e-4 to a plateau.
    "demo": dict(dataset="synthetic", model="micro", patch_size=8, epochs=24, llb_epochs=4,
                 llb_lr=1e-3, num_objects=64),
    # The paper's ImageNet-1k rows (docs/reproducing.md): LLB on released weights (downloaded, or
    # --weights-file FILE), evaluated on the authors' framing
    "vit-b16-in1k": PAPER_ROW | dict(pretrained="timm:vit_base_patch16_224.augreg_in1k"),
    "vit-b16-in21k": PAPER_ROW | dict(pretrained="timm:vit_base_patch16_224.augreg_in21k_ft_in1k"),
    "vit-l16-in21k": PAPER_ROW | dict(
        pretrained="timm:vit_large_patch16_224.augreg_in21k_ft_in1k"),
    "mae-b16": PAPER_ROW | dict(pretrained="mae:vit_base_patch16"),
    "mae-l16": PAPER_ROW | dict(pretrained="mae:vit_large_patch16"),
    "swag-b16": PAPER_ROW | dict(pretrained="vit_b_16:IMAGENET1K_SWAG_E2E_V1"),
}
# The input size when neither the weights nor a backbone fix it: the sets' own 32 px, else 224
NATIVE_SIZE = {"synthetic": 32, "cifar10": 32, "cifar100": 32}
PHOTO_SIZE = 224  # the paper's input size, and the largest a folder's images suggest
# A ViT from scratch on images up to SMALL_IMAGE px: `tiny` with patch 4 (32 px: 8 x 8 patches);
# on larger ones `base` with its own patch 16
SMALL_IMAGE = 64
SMALL_PATCH = 4
SMALL_PRESET = "tiny"
LARGE_PRESET = "base"

# Derived from a folder, or an ImageNet subset, trained from scratch (`derived_from_data`)
SIZE_SAMPLE = 256  # image headers read to find the median side
PATCH_BY_SIZE = ((SMALL_IMAGE, SMALL_PATCH), (128, 8))  # (median side up to, patch)
LARGE_PATCH = 16  # above: the presets' own patch
MIN_PATCHES_PER_SIDE = 4
# (training images below, preset): a 10-class folder of 1,437 scans trains a ViT-micro in minutes
PRESET_BY_IMAGES = ((10_000, "micro"), (100_000, "tiny"), (1_000_000, "small"))
MIN_STEPS_PER_EPOCH = 4  # the batch is capped so that an epoch has at least this many steps
OBJECTS_PER_CLASS = llb.LLBConfig.num_objects / 1000  # the paper's for ImageNet's 1,000 classes
MIN_OBJECTS = RECIPES["demo"]["num_objects"]  # the demo's, for its 10 classes
# Fewer training images a class: the printed recipe says a ViT from scratch learns little from
# so few (docs/real_images.md's 4 a class: ViT-micro 40%, pixel logistic regression 90%)
FEW_PER_CLASS = 20

SAFE_TO_CHANGE = ("data_dir", "weights_file", "backbone")  # on --resume: where files are
SYNTHETIC_IMAGE_BYTES = 4 * 3 * 32 * 32  # a synthetic image while generated (float32)


def default_augment(dataset: str, *, from_weights: bool, backbone_augment: str | None) -> str:
    """The training augmentation when --augment is not given.

    synthetic: none (a flip or crop would move the marks that tell twin objects apart); CIFAR:
    basic (pad-4 crop + flip); photo sets: the paper's RandAugment on released weights (the
    authors' setting), else what the backbone checkpoint was trained with; from scratch, none on
    a folder (a ViT-micro on 1,437 digit scans: 96% top-1 with none, 42% with `basic`'s pad-crop,
    docs/real_images.md), basic on the large photo sets."""
    if dataset == "synthetic":
        return "none"
    if dataset in NATIVE_SIZE:
        return "basic"
    if from_weights:
        return "paper"
    if backbone_augment is not None:
        return backbone_augment
    return "none" if dataset == "folder" else "basic"


def named_recipe(name: str | None, dataset: str | None) -> tuple[str | None, dict]:
    """(name, a copy of its settings): --recipe NAME, else "demo" on its dataset, else none."""
    if name is None and (dataset or Recipe.dataset) == RECIPES["demo"]["dataset"]:
        name = "demo"
    return name, dict(RECIPES.get(name, {}))


def default_device() -> str:
    """--device when not given: cuda when this machine has it."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_amp(device: str) -> str:
    """--amp when not given: bf16 autocast on cuda, none on a CPU."""
    return "bf16" if device == "cuda" else "off"


COMPILE_BACKEND = "inductor"  # train.py --compile without a BACKEND: torch.compile's own


def autocast(amp: str, device: torch.device, *, enabled: bool = True):
    """The autocast context of a recipe's `amp` ("bf16", "fp16" or "off") on `device`."""
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled and amp != "off")


def defaults_table() -> str:
    """Every default and where it is set, as train.py --help prints it."""
    def line(name: str, values: dict) -> str:
        pairs = " ".join(f"{k}={v}" for k, v in values.items())
        return textwrap.fill(pairs, 100, initial_indent=f"  {name}: ", subsequent_indent=" " * 6)

    plain = {f.name: f.default for f in fields(Recipe) if f.default not in (MISSING, None)}
    return "\n".join([
        "Each setting comes from the first of (recipes.py): the command line; the checkpoint of",
        "--resume; the named recipe; a folder's images; the stage's defaults; the field's.",
        "", f"named recipes (--recipe NAME; demo on the {Recipe.dataset} set by default):",
        *(line(name, values) for name, values in RECIPES.items()),
        "", "the stage's defaults (a ViT from scratch, from weights or a checkpoint, LLB):",
        *(line(name, values) for name, values in STAGES.items()),
        "", "every stage's, and LLB's (layer None: the backbone's depth - 1):",
        line("Recipe", plain), line("llb.LLBConfig", asdict(llb.LLBConfig()))])


# ----------------------------------------------------------------------------- from the data


def patch_for(side: float) -> int:
    return next((patch for bound, patch in PATCH_BY_SIZE if side <= bound), LARGE_PATCH)


def size_for(side: float, patch: int) -> int:
    """The median side rounded to a multiple of the patch, within the bounds above."""
    whole = max(MIN_PATCHES_PER_SIDE, round(side / patch)) * patch
    return min(whole, PHOTO_SIZE // patch * patch)


def preset_for(images: int) -> str:
    return next((name for bound, name in PRESET_BY_IMAGES if images < bound), LARGE_PRESET)


def batch_cap(images: int, world_size: int) -> int:
    return max(1, images // (world_size * MIN_STEPS_PER_EPOCH))


def objects_for(classes: int) -> int:
    return max(MIN_OBJECTS, round(OBJECTS_PER_CLASS * classes))


def derived_from_data(dataset: str, data_dir: str | None, *, classes, max_per_class,
                      world_size: int, from_weights: bool, size_given: int | None) -> dict:
    """What a folder (or an ImageNet subset) trained from scratch suggests, from its training
    split's image count, class count and median side (`data.folder_summary`): {name: (value,
    where it came from)} for image_size, patch_size, model, batch_size (a cap) and num_objects
    (the rules above); {} for other data, or when the folder cannot be read (data.build_datasets
    then says why)."""
    subset = classes is not None or max_per_class is not None
    ours = dataset == "folder" or (dataset == "imagenet" and subset)
    if from_weights or not ours or not data_dir:
        return {}
    summary = data.folder_summary(data_dir, classes=classes, max_per_class=max_per_class,
                                  sample=SIZE_SAMPLE)
    if summary is None:
        return {}
    images = summary["images"]
    side = median(summary["sides"])
    read = f"median side {side:g} px of {len(summary['sides'])} images"
    patch = patch_for(side if size_given is None else size_given)
    per_class = images / summary["classes"]
    few = ""
    if per_class < FEW_PER_CLASS:
        few = (f"; only {per_class:.0f} a class: from scratch a ViT learns little from so few, "
               "fine-tune released weights (--pretrained)")
    return {
        "image_size": (size_for(side, patch), f"{read}, a multiple of the patch"),
        "patch_size": (patch, read if size_given is None else "the image size"),
        "model": (preset_for(images), f"{images} training images{few}"),
        "batch_size": (batch_cap(images, world_size), f"capped: {images} training images, >= "
                                                      f"{MIN_STEPS_PER_EPOCH} steps an epoch"),
        "num_objects": (objects_for(summary["classes"]),
                        f"{summary['classes']} classes x {OBJECTS_PER_CLASS:g}, >= {MIN_OBJECTS}"),
    }


# ----------------------------------------------------------------------------- resolving


def resolve(args, stage: str, *, backbone: str | None = None, base: dict | None = None,
            source: dict | None = None, first_stage: bool = True) -> Recipe:
    """The Recipe of `stage` ("vit" or "llb") from train.py's options (None: not given).
    backbone: the checkpoint it starts from; base: the recipe of the checkpoint it resumes;
    source: the backbone's recipe (its size, augmentation, model); first_stage: False for
    vit+llb's LLB stage, which builds on the ViT stage, not on --pretrained."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    if not first_stage:
        given.pop("pretrained", None)
        given.pop("weights_file", None)
    base = base or {}
    origin = {}

    def pick(name: str, fallback, why: str | None = None):
        """The command line's, the checkpoint's, the named recipe's, else `fallback` (`why`)."""
        if name in given:
            return given[name]
        if name in base:
            return base[name]
        if name in named:
            origin[name] = f"recipe {recipe_name}"
            return named[name]
        if why is not None:
            origin[name] = why
        return fallback

    # the named recipe; an LLB stage takes llb_epochs and llb_lr for epochs and lr
    recipe_name, named = named_recipe(args.recipe, given.get("dataset", base.get("dataset")))
    if stage == "llb":
        for name in ("epochs", "lr"):
            for settings in (given, named):
                if f"llb_{name}" in settings:
                    settings[name] = settings[f"llb_{name}"]
    values = {name: pick(name, getattr(Recipe, name)) for name in (
        "dataset", "data_dir", "classes", "max_per_class", "eval_framing", "pretrained",
        "weights_file", "dropout", "epochs", "batch_size", "label_smoothing", "seed")}
    values["world_size"] = args.world_size
    values["amp"] = args.amp
    dataset = values["dataset"]
    from_weights = bool(values["pretrained"] or backbone or base.get("backbone"))
    defaults = "llb" if stage == "llb" else "finetune" if from_weights else "scratch"
    values |= {name: pick(name, value) for name, value in STAGES[defaults].items()}

    # the data's suggestions (a folder from scratch); a stage on a backbone keeps its input size
    scratch_backbone = stage == "llb" and bool((source or {}).get("model"))
    derived = derived_from_data(
        dataset, values["data_dir"], classes=values["classes"],
        max_per_class=values["max_per_class"], world_size=values["world_size"],
        from_weights=from_weights and not scratch_backbone, size_given=given.get("image_size"))
    if "batch_size" in derived and derived["batch_size"][0] < values["batch_size"]:
        values["batch_size"] = pick("batch_size", *derived["batch_size"])
    # the input size: the data's, the weights' crop, the backbone's, else the dataset's own
    if stage == "vit" and "image_size" in derived:
        size = derived["image_size"]
    elif values["pretrained"]:
        size = (pretrained.eval_spec(values["pretrained"])["crop_size"], None)
    elif source:
        size = (source["image_size"], None)
    else:
        size = (NATIVE_SIZE.get(dataset, PHOTO_SIZE), None)
    values["image_size"] = pick("image_size", *size)
    augment = default_augment(dataset, from_weights=bool(values["pretrained"]),
                              backbone_augment=(source or {}).get("augment"))
    values["augment"] = pick("augment", augment)

    # the model: a preset when training from scratch, else what the weights define
    values["backbone"] = backbone if backbone else base.get("backbone")
    values["model"] = None
    values["patch_size"] = None
    if not from_weights:
        small = values["image_size"] <= SMALL_IMAGE
        preset = derived.get("model", (SMALL_PRESET if small else LARGE_PRESET, None))
        values["model"] = pick("model", *preset)
        patch = derived.get("patch_size", (SMALL_PATCH if small else None, None))
        values["patch_size"] = pick("patch_size", *patch)
    values["llb"] = None
    if stage == "llb":
        depth = None
        if derived:  # no deeper than the ViT under it (the authors' 6 is for a 12-block ViT-B)
            depth = min(llb.LLBConfig.depth, vit.PRESETS[source["model"]]["depth"])
        values["llb"] = llb_options(args, base.get("llb") or {}, named, derived, depth, origin,
                                    recipe_name)
    if values["warmup_epochs"] > values["epochs"]:  # 1e308 would overflow the step count
        raise ValueError(f"the {stage} stage's warmup of {values['warmup_epochs']:g} epochs is "
                         f"longer than its {values['epochs']} epochs: lower --warmup-epochs")
    if values["min_lr"] > values["lr"]:
        raise ValueError(f"the {stage} stage's floor of the learning rate, {values['min_lr']:g}, "
                         f"is above its peak {values['lr']:g}: lower --min-lr or raise --lr")
    return Recipe(stage=stage, defaults=defaults, origin=origin, **values)


def llb_options(args, theirs: dict, named: dict, derived: dict, depth: int | None,
                origin: dict, recipe_name: str | None) -> dict:
    """llb.LLBConfig's fields of an LLB stage: the command line (train.py's options carry the
    fields' names), the resumed checkpoint's, the named recipe's, the data's, LLBConfig's."""
    options = {}
    for f in fields(llb.LLBConfig):
        value = getattr(args, f.name)
        if value is None:
            value = theirs.get(f.name)
        if value is None and f.name in named:
            value = named[f.name]
            origin[f.name] = f"recipe {recipe_name}"
        if value is None and f.name == "num_objects" and "num_objects" in derived:
            value, origin[f.name] = derived["num_objects"]
        if value is None and f.name == "depth" and depth is not None:
            value = depth
            origin[f.name] = "at most the backbone's depth"
        options[f.name] = f.default if value is None else value
    return options


def check_resume(recipe: Recipe, saved: dict, path) -> None:
    """--resume into a different recipe fails, naming each option that differs."""
    mine = asdict(recipe)
    saved = filled(saved)
    differ = [f"{k}: checkpoint {saved.get(k)!r}, this command {mine[k]!r}" for k in mine
              if k not in SAFE_TO_CHANGE + ("origin",) and saved.get(k) != mine[k]]
    if differ:
        raise ValueError(f"--resume: {path} was trained with other options, and resuming would "
                         f"mix two recipes: {'; '.join(differ)}. Drop those options (unset "
                         f"options are taken from the checkpoint), or start a new run in "
                         f"another --out-dir.")


def filled(saved: dict) -> dict:
    """A checkpoint's recipe with the fields it predates filled in: its stage's defaults and
    the fields' defaults (e.g. eval_framing "weights" for a checkpoint older than the option)."""
    stage = STAGES.get(saved.get("defaults"), {})
    plain = {f.name: f.default for f in fields(Recipe) if f.default is not MISSING}
    return plain | stage | saved


def data_problem(dataset: str, data_dir, max_per_class) -> str | None:
    """Data options the dataset would ignore, or sizes that cannot fit in memory."""
    if dataset != "synthetic":
        return None
    if data_dir is not None:
        return (f"--data-dir {data_dir} with the synthetic set, which is generated in memory "
                f"and reads no files: drop --data-dir, or name the set it holds with --dataset "
                f"(folder, imagenet, cifar10, ...)")
    if max_per_class is not None:
        per_image = 2 * SYNTHETIC_CLASSES * SYNTHETIC_IMAGE_BYTES  # train + val, each class
        have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        if max_per_class * per_image > have // 2:
            return (f"--max-per-class {max_per_class} on the synthetic set needs about "
                    f"{max_per_class * per_image / 2**30:.0f} GiB of memory (it is generated in "
                    f"memory), more than half of this machine's {have / 2**30:.0f} GiB: use at "
                    f"most {have // 2 // per_image}")
    return None


# ----------------------------------------------------------------------------- planning


def plan(args) -> list[tuple[Recipe, Path]]:
    """Each stage's recipe and folder, resolved and checked before anything is built."""
    out = Path(args.out_dir)
    stages = [(args.method, out)]
    if args.method == "vit+llb":  # the ViT stage into <out>/vit, then LLB on it into <out>
        stages = [("vit", out / "vit"), ("llb", out)]
    source, source_vit = saved_recipe(args.backbone) if args.backbone else (None, None)
    if source is None and source_vit is not None:  # an older checkpoint: its size at least
        source = {"image_size": source_vit["image_size"]}
    planned = []
    for i, (stage, folder) in enumerate(stages):
        last = folder / "last.pt"
        base = saved_recipe(last)[0] if args.resume and last.exists() else None
        backbone = args.backbone if i == 0 else str(stages[0][1] / "last.pt")
        r = resolve(args, stage, backbone=backbone, base=base, source=source,
                    first_stage=i == 0)
        if base is not None:
            check_resume(r, base, last)
        if r.llb is not None:  # --layer against the backbone, for both stages of vit+llb
            depth = backbone_depth(planned[0][0] if planned else r, source_vit)
            r.llb = asdict(llb.LLBConfig(**r.llb).for_backbone(depth))
        problem = data_problem(r.dataset, r.data_dir, r.max_per_class)
        if problem:
            raise ValueError(problem)
        planned.append((r, folder))
        source = asdict(r)
    return planned


def backbone_depth(recipe: Recipe, source_vit_config: dict | None) -> int:
    """Depth L of the backbone a recipe builds (its LLB `layer` must be in 1..L)."""
    if recipe.model is not None:
        return vit.PRESETS[recipe.model]["depth"]
    if recipe.pretrained:
        return pretrained.architecture(recipe.pretrained)["depth"]
    return source_vit_config["depth"]
