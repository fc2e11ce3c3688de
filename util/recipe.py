"""The recipe of a training stage: every setting it uses, resolved once, in one record.

train.py's command line, the checkpoint a run resumes or builds on, and the defaults below go in;
one `Recipe` per stage comes out. It is printed at start, saved in every checkpoint
(`ckpt["recipe"]`) and as the first line of metrics.jsonl, and the training code reads its
settings from it alone, so a run can be reproduced from its checkpoint.

Precedence, field by field: the command line > the checkpoint resumed (or evaluated) >
the dataset's demo defaults (synthetic) > the stage's defaults (STAGE_DEFAULTS) > the field's
default in `Recipe`. Also here: every stage's plan (`plan`), the runtime defaults (device,
amp, out-dir), the loaders a recipe describes and its autocast context. The optimizer and the
learning-rate schedule sit beside the loop, in train.py.
"""
import os
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

import torch

import data
import llb
import vit
from inputs import pretrained as pretrained_weights
from inputs.synthetic import SYNTHETIC_CLASSES
from inputs.transforms import CIFAR_STATS
from util import distributed, fit
from util.checkpoint import saved_recipe

# Which defaults a stage takes (the `defaults` field of a Recipe):
#   scratch:  a ViT trained from scratch, the DeiT-style AdamW setting (Touvron et al., 2021)
#   finetune: a ViT from released weights or a checkpoint: the same with a 10x smaller lr
#   llb:      LLB on a frozen ViT, the authors' recipe exactly (their code): Adam with coupled L2
#             on every trainable parameter, no gradient clipping, no warmup, cosine over the whole
#             run down to eta_min 5e-5, evaluation in fp32
STAGE_DEFAULTS = {
    "scratch": dict(optimizer="adamw", lr=1e-3, min_lr=0.0, weight_decay=0.05, decay_all=False,
                    warmup_epochs=1.0, clip_grad=1.0, eval_amp=True),
    "finetune": dict(optimizer="adamw", lr=1e-4, min_lr=0.0, weight_decay=0.05, decay_all=False,
                     warmup_epochs=1.0, clip_grad=1.0, eval_amp=True),
    "llb": dict(optimizer="adam", lr=1e-4, min_lr=5e-5, weight_decay=1e-4, decay_all=True,
                warmup_epochs=0.0, clip_grad=0.0, eval_amp=False),
}
# The CPU demo (synthetic set) is sized to finish in minutes on 2 cores; its LLB stage uses a
# larger lr and fewer objects than the ImageNet recipe, which it cannot train to a plateau in time.
DEMO = dict(epochs=12, llb_epochs=4, llb_lr=1e-3, num_objects=64,  # epochs: of a ViT stage
            model="micro", patch_size=8)  # patch 8: one patch is one cell of the synthetic grid
NATIVE_SIZE = {"synthetic": 32, "cifar10": 32, "cifar100": 32}  # the sets' own image sizes
PHOTO_SIZE = fit.PHOTO_SIZE  # the input size of other sets, as the paper's
# A ViT from scratch on images of at most SMALL_IMAGE px: the `tiny` preset with patch SMALL_PATCH
# (a 32 px image is then 8 x 8 patches); on larger images the `base` preset with its own patch.
SMALL_IMAGE, SMALL_PATCH = fit.PATCH_BY_SIZE[0]  # the same small-image rule as a folder's
SMALL_PRESET, LARGE_PRESET = "tiny", fit.LARGE_PRESET
# Memory of one synthetic image while the set is generated (float32, 3 x 32 x 32)
SYNTHETIC_IMAGE_BYTES = 4 * 3 * 32 * 32
# Fields a resumed run may change: where files are, not what is trained.
SAFE_TO_CHANGE = ("data_dir", "weights_file", "backbone")


@dataclass
class Recipe:
    stage: str  # "vit" or "llb": what this stage trains (its folder and checkpoint kind)
    defaults: str  # which STAGE_DEFAULTS filled the unset options: scratch, finetune or llb
    # data
    dataset: str = "synthetic"  # a name of data.DATASETS
    data_dir: str | None = None  # root of the dataset's files (None: synthetic, in memory)
    classes: str | None = None  # imagenet/folder subset: first K classes, or a file of names
    max_per_class: int | None = None  # subset: at most M images per class
    image_size: int = 32  # H = W of the model's input
    augment: str = "none"  # training augmentation: paper, basic or none (inputs/transforms.py)
    # evaluation framing (transforms.EVAL_FRAMINGS): "weights", the released weights' own eval
    # transform (AugReg: Resize 248); "authors", Resize 256 bicubic -> CenterCrop 224 (SWAG 384)
    eval_framing: str = "weights"
    # model
    model: str | None = None  # ViT preset of a ViT from scratch (None: from weights/checkpoint)
    patch_size: int | None = None  # P of a ViT from scratch
    pretrained: str | None = None  # released weights the backbone starts from
    weights_file: str | None = None  # local copy of those weights
    backbone: str | None = None  # checkpoint the stage starts from (a ViT, or LLB's backbone)
    dropout: float = 0.0  # ViT dropout (0 for LLB's frozen backbone)
    llb: dict | None = None  # llb.LLBConfig fields of an LLB stage (layer resolved), else None
    # optimization
    optimizer: str = "adamw"  # adamw (decoupled weight decay) or adam (coupled L2)
    lr: float = 1e-3  # peak learning rate
    min_lr: float = 0.0  # floor of the cosine decay (the authors' eta_min for LLB)
    weight_decay: float = 0.05  # decay coefficient
    decay_all: bool = False  # decay every trainable parameter (else matrices only, as nanoGPT)
    warmup_epochs: float = 0.0  # linear warmup before the cosine decay
    epochs: int = 70  # the paper's 70
    batch_size: int = 128  # per process (the paper's per GPU)
    world_size: int = 1  # processes; global batch = batch_size * world_size
    clip_grad: float = 1.0  # max gradient norm (0: no clipping)
    label_smoothing: float = 0.0  # of the cross-entropy
    amp: str = "off"  # autocast dtype for training: bf16, fp16 (with loss scaling) or off
    eval_amp: bool = True  # evaluate under autocast too (False: fp32, as the authors)
    seed: int = 0  # model init, data order, augmentations
    # where the values not given came from, when not from a fixed default (util/fit.py), e.g.
    # {"image_size": "median side 25 px of 160 images"}: printed, never compared on --resume
    origin: dict = field(default_factory=dict)

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def describe(self) -> str:
        """The recipe as printed at start: one `name value` pair per field, grouped."""
        said = {k: f" ({why})" for k, why in self.origin.items()}
        pairs = [f"{k}={v}{said.get(k, '')}" for k, v in asdict(self).items()
                 if k not in ("llb", "origin") and v is not None]
        pairs += [f"llb.{k}={v}{said.get(k, '')}" for k, v in (self.llb or {}).items()]
        lines = []
        line = "recipe:"
        for pair in pairs:  # wrapped at 100 characters
            if len(line) + len(pair) + 1 > 100:
                lines.append(line)
                line = "   "
            line += " " + pair
        return "\n".join(lines + [line])


def default_of(name: str):
    """The single default of a Recipe field that does not depend on the stage."""
    return next(f.default for f in fields(Recipe) if f.name == name)


def llb_default(name: str):
    return next(f.default for f in fields(llb.LLBConfig) if f.name == name)


# ----------------------------------------------------------------------------- resolving


def resolve(args, stage: str, *, backbone: str | None = None, base: dict | None = None,
            source: dict | None = None, first_stage: bool = True) -> Recipe:
    """The Recipe of `stage` ("vit" or "llb") from parsed options (None = not given).

    backbone: the checkpoint the stage starts from (--backbone, or the ViT stage's last.pt);
    base:   the recipe of the checkpoint this stage resumes or evaluates (unset options: its);
    source: the recipe of that backbone checkpoint (its input size, its augmentation);
    first_stage: False for the LLB stage of vit+llb, whose --llb-epochs / --llb-lr apply.
    """
    given = {k: v for k, v in vars(args).items() if v is not None}
    if not first_stage:  # the LLB stage of vit+llb: --llb-epochs / --llb-lr, else --epochs / --lr
        for name in ("epochs", "lr"):
            if f"llb_{name}" in given:
                given[name] = given[f"llb_{name}"]
        given.pop("pretrained", None)  # built on the ViT stage's checkpoint, not on the weights
        given.pop("weights_file", None)

    def pick(name: str, fallback):
        """The command line's value, else the resumed checkpoint's, else `fallback`."""
        if name in given:
            return given[name]
        if base and name in base:
            return base[name]
        return fallback

    values = {name: pick(name, default_of(name)) for name in (
        "dataset", "data_dir", "classes", "max_per_class", "eval_framing", "pretrained",
        "weights_file", "dropout", "batch_size", "world_size", "label_smoothing", "amp", "seed")}
    dataset = values["dataset"]
    demo = dataset == "synthetic"
    pretrained = values["pretrained"]
    from_weights = bool(pretrained or backbone or (base or {}).get("backbone"))
    defaults = "llb" if stage == "llb" else "finetune" if from_weights else "scratch"
    # optimization: the stage's defaults, and the demo's own epochs and LLB lr
    values |= {name: pick(name, value) for name, value in STAGE_DEFAULTS[defaults].items()}
    demo_epochs = DEMO["epochs"] if stage == "vit" else DEMO["llb_epochs"]
    values["epochs"] = pick("epochs", demo_epochs if demo else default_of("epochs"))
    if demo and stage == "llb":
        values["lr"] = pick("lr", DEMO["llb_lr"])
    # a folder or an ImageNet subset from scratch: sizes from the data (util/fit.py), after the
    # command line and the checkpoint; a stage on a backbone keeps the backbone's input size
    scratch_backbone = stage == "llb" and bool((source or {}).get("model"))
    fitted = fit.fit(values, from_weights=from_weights and not scratch_backbone,
                     size_given=given.get("image_size"))
    origin = {}

    def pick_fitted(name: str, value, fallback):
        """pick(), with the data's value (and where it came from) before the fixed fallback."""
        if value is None or name in given or (base and name in base):
            return pick(name, fallback)
        origin[name] = fitted.origin[name]
        return value

    if fitted.batch_cap is not None and fitted.batch_cap < values["batch_size"]:
        values["batch_size"] = pick_fitted("batch_size", fitted.batch_cap, values["batch_size"])
    # data: the input size and augmentation follow the weights the stage starts from
    values["image_size"] = pick_fitted("image_size", None if stage == "llb" else fitted.image_size,
                                       native_size(dataset, pretrained, source))
    values["augment"] = pick("augment", default_augment(
        dataset, pretrained=bool(pretrained), backbone_augment=(source or {}).get("augment")))
    # model: a preset when training from scratch, else what the weights define
    values["backbone"] = backbone if backbone else (base or {}).get("backbone")
    values["model"] = None
    values["patch_size"] = None
    if not from_weights:
        values["model"] = pick_fitted("model", fitted.model,
                                      default_preset(dataset, values["image_size"]))
        values["patch_size"] = pick_fitted("patch_size", fitted.patch_size,
                                           default_patch(dataset, values["image_size"]))
    values["llb"] = None
    if stage == "llb":
        derived = {}
        if scratch_backbone:  # a ViT from scratch under it: objects and depth from the data
            derived = fitted.llb(vit.PRESETS[source["model"]]["depth"], llb_default("depth"))
        values["llb"] = llb_options(args, base, demo, derived)
        theirs = (base or {}).get("llb") or {}
        flags = {"num_objects": "num_objects", "depth": "llb_depth"}
        origin |= {k: fitted.origin[k] for k in derived
                   if getattr(args, flags[k]) is None and k not in theirs}
    if values["warmup_epochs"] > values["epochs"]:  # 1e308 would overflow the step count
        raise ValueError(f"the {stage} stage's warmup of {values['warmup_epochs']:g} epochs is "
                         f"longer than its {values['epochs']} epochs: lower --warmup-epochs")
    if values["min_lr"] > values["lr"]:
        raise ValueError(f"the {stage} stage's floor of the learning rate, {values['min_lr']:g}, "
                         f"is above its peak {values['lr']:g}: lower --min-lr or raise --lr")
    return Recipe(stage=stage, defaults=defaults, origin=origin, **values)


def native_size(dataset: str, pretrained: str | None, source: dict | None) -> int:
    """The input size when --image-size is unset: the released weights' crop, the backbone
    checkpoint's, else the dataset's native 32 or 224."""
    if pretrained:
        return pretrained_weights.eval_spec(pretrained)["crop_size"]
    if source:
        return source["image_size"]
    return NATIVE_SIZE.get(dataset, PHOTO_SIZE)


def default_augment(name: str, *, pretrained: bool, backbone_augment: str | None = None) -> str:
    """The training augmentation when none is asked for (the only place that decides it).

    synthetic: none (a flip or crop would move the marks that tell twin objects apart); CIFAR:
    basic (pad-4 crop + flip); photo sets: the paper's RandAugment on released weights (the
    authors' setting), else what the backbone checkpoint was trained with; from scratch, none on
    a folder (a ViT-micro on 1,437 digit scans: 96% top-1 with none, 42% with `basic`'s pad-crop,
    docs/real_images.md), basic on the large photo sets."""
    if name == "synthetic" or (name == "folder" and not pretrained and backbone_augment is None):
        return "none"
    if name in CIFAR_STATS:
        return "basic"
    if pretrained:
        return "paper"
    if backbone_augment is not None:
        return backbone_augment
    return "basic"


def default_preset(dataset: str, image_size: int) -> str:
    if dataset == "synthetic":
        return DEMO["model"]
    return SMALL_PRESET if image_size <= SMALL_IMAGE else LARGE_PRESET


def default_patch(dataset: str, image_size: int) -> int | None:
    """The demo's on synthetic, SMALL_PATCH on small images, else the preset's (None)."""
    if dataset == "synthetic":
        return DEMO["patch_size"]
    return SMALL_PATCH if image_size <= SMALL_IMAGE else None


def llb_options(args, base: dict | None, demo: bool, derived: dict | None = None) -> dict:
    """LLBConfig fields: the command line, else the resumed checkpoint's, else `derived` (the
    data's num_objects and depth, util/fit.py), else LLBConfig's."""
    names = {"layer": "layer", "num_objects": "num_objects", "depth": "llb_depth", "tau": "tau",
             "alpha": "alpha", "diversity_weight": "diversity_weight",
             "diversity_mode": "diversity_mode", "pos_embed": "pos_embed"}
    switches = {"disconnect": "no_disconnect", "diversity": "no_diversity",
                "integrate": "no_integrate", "freeze_backbone": "unfreeze"}
    theirs = (base or {}).get("llb") or {}
    options = {}
    for name, flag in names.items():
        value = getattr(args, flag)
        fallback = DEMO["num_objects"] if name == "num_objects" and demo else llb_default(name)
        fallback = (derived or {}).get(name, fallback)
        options[name] = value if value is not None else theirs.get(name, fallback)
    for name, flag in switches.items():  # --no-X / --unfreeze turn a default-True switch off
        value = getattr(args, flag)
        options[name] = (not value) if value is not None else theirs.get(name, True)
    return options


def data_problem(dataset: str, data_dir, max_per_class) -> str | None:
    """Data options the dataset would ignore, or sizes that cannot fit in memory."""
    if dataset != "synthetic":
        return None
    if data_dir is not None:
        return (f"--data-dir {data_dir} with the synthetic set, which is generated in memory "
                f"and reads no files: drop --data-dir, or name the set it holds with --dataset "
                f"(folder, imagenet, cifar10, ...)")
    if max_per_class is not None:
        need = 2 * SYNTHETIC_CLASSES * max_per_class * SYNTHETIC_IMAGE_BYTES  # train + val
        have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        if need > have // 2:
            return (f"--max-per-class {max_per_class} on the synthetic set needs about "
                    f"{need / 2**30:.0f} GiB of memory (it is generated in memory), more than "
                    f"half of this machine's {have / 2**30:.0f} GiB: use at most "
                    f"{have // 2 // (2 * SYNTHETIC_CLASSES * SYNTHETIC_IMAGE_BYTES)}")
    return None


def default_device() -> str:
    """--device when unset: cuda when this machine has it."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_amp(device: str) -> str:
    """--amp when unset: bf16 autocast on cuda, none on a CPU."""
    return "bf16" if device == "cuda" else "off"


def resolve_runtime(args) -> None:
    """Fill train.py's runtime options left unset (after check_options): device, amp, the
    number of processes (torchrun's WORLD_SIZE, else --gpus) and the out-dir."""
    args.filled = [name for name in ("device", "amp") if getattr(args, name) is None]
    if args.device is None:
        args.device = default_device()
    if args.amp is None:
        args.amp = default_amp(args.device)
    args.world_size = int(os.environ.get("WORLD_SIZE", args.gpus))
    if args.out_dir is None:
        dataset = args.dataset or default_of("dataset")
        args.out_dir = f"runs/{dataset}_{args.method.replace('+', '_')}"


def check_resume(recipe: Recipe, saved: dict, path) -> None:
    """--resume into a different recipe fails, naming each option that differs."""
    mine = asdict(recipe)
    # a field newer than the checkpoint (e.g. eval_framing) counts as its default there
    saved = {f.name: f.default for f in fields(Recipe) if f.default is not MISSING} | saved
    differ = [f"{k}: checkpoint {saved.get(k)!r}, this command {mine[k]!r}" for k in mine
              if k not in SAFE_TO_CHANGE + ("origin",) and saved.get(k) != mine[k]]
    if differ:
        raise ValueError(f"--resume: {path} was trained with other options, and resuming would "
                         f"mix two recipes: {'; '.join(differ)}. Drop those options (unset "
                         f"options are taken from the checkpoint), or start a new run in "
                         f"another --out-dir.")


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


# ----------------------------------------------------------------------------- what it builds


def build_loaders(r: Recipe, *, rank: int, world: int, workers: int | None,
                  device: torch.device, download: bool = False, train: bool = True):
    """(train loader, val loader, DataInfo) of a recipe's data options; shared by both stages.
    train=False (evaluation): no training loader, None in its place."""
    problem = data_problem(r.dataset, r.data_dir, r.max_per_class)
    if problem:  # --eval-only and analyze.py: options given over a checkpoint's
        raise ValueError(problem)
    spec = pretrained_weights.eval_spec(r.pretrained) if r.pretrained else None
    expected = None
    if r.pretrained and r.stage == "llb":  # LLB keeps the released head: same label set
        expected = pretrained_weights.num_classes(r.pretrained)
    if download and rank > 0:
        distributed.barrier()  # wait for rank 0's download, then read it
    train_set, val_set, info = data.build_datasets(
        r.dataset, r.data_dir, image_size=None if spec else r.image_size, eval_spec=spec,
        augment=r.augment, classes=r.classes,
        max_per_class=r.max_per_class, download=download and rank == 0, seed=r.seed,
        expected_num_classes=expected, weights_name=r.pretrained, eval_framing=r.eval_framing,
        on_device=device.type == "cuda")  # RandAugment and normalize on the GPU (on_device.py)
    if download and rank == 0:
        distributed.barrier()
    loader = dict(workers=workers, rank=rank, world_size=world, seed=r.seed,
                  pin_memory=device.type == "cuda", batch_size=r.batch_size, device=device)
    train_loader = data.build_loader(train_set, train=True, **loader) if train else None
    return train_loader, data.build_loader(val_set, train=False, **loader), info


def autocast(amp: str, device: torch.device, *, enabled: bool = True):
    """The autocast context of `amp` ("bf16", "fp16" or "off") on `device`."""
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled and amp != "off")


def backbone_depth(recipe: Recipe, source_vit_config: dict | None) -> int:
    """Depth L of the backbone a recipe builds (its LLB `layer` must be in 1..L)."""
    if recipe.model is not None:
        return vit.PRESETS[recipe.model]["depth"]
    if recipe.pretrained:
        return pretrained_weights.architecture(recipe.pretrained)["depth"]
    return source_vit_config["depth"]
