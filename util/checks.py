"""What is wrong with a program's options, said before anything is built: the numeric ranges
(`out_of_range`, for every program) and train.py's combinations (`check_options`). These only
check; util/recipe.py resolves.
"""
import math

import torch

import llb
from util import distributed, recipe

# The numeric options' ranges: (options, test, the range as said in the error)
OPTION_RANGES = [
    (("epochs", "llb_epochs", "batch_size", "image_size", "max_per_class", "gpus", "num_objects",
      "llb_depth", "patch_size", "steps"), lambda v: v >= 1, ">= 1"),
    (("lr", "llb_lr"), lambda v: v > 0, "> 0"),
    (("min_lr", "weight_decay", "warmup_epochs", "clip_grad", "workers"), lambda v: v >= 0,
     ">= 0"),
    (("dropout", "label_smoothing"), lambda v: 0 <= v < 1, "in [0, 1)"),
]


def out_of_range(args) -> str | None:
    """The first numeric option outside its range (OPTION_RANGES), or not finite (inf and nan
    pass some tests of a range), for any program's options."""
    for name, value in vars(args).items():
        if isinstance(value, float) and not math.isfinite(value):
            return f"--{name.replace('_', '-')} must be a finite number, got {value}"
    for names, ok, allowed in OPTION_RANGES:
        for name in names:
            value = getattr(args, name, None)
            if value is not None and not ok(value):
                return f"--{name.replace('_', '-')} must be {allowed}, got {value}"
    return None


def check_options(args) -> str | None:
    """What is wrong with the options, before anything is built (it changes nothing)."""
    problem = out_of_range(args)
    if problem:
        return problem
    if args.pretrained and args.backbone:
        return "--pretrained and --backbone both give the backbone: pick one"
    if args.weights_file and not args.pretrained:
        return "--weights-file needs --pretrained NAME (which says what the file holds)"
    if args.method == "llb" and not (args.pretrained or args.backbone or args.eval_only):
        return ("--method llb needs a backbone: --pretrained NAME or --backbone CKPT "
                "(or use --method vit+llb to train one first)")
    if args.method == "vit+llb" and args.backbone:
        return "--backbone with --method vit+llb: use --method llb to put LLB on an existing ViT"
    if (args.llb_epochs, args.llb_lr) != (None, None) and args.method != "vit+llb":
        return "--llb-epochs/--llb-lr set the LLB stage of --method vit+llb; use --epochs/--lr"
    if args.pretrained and (args.model or args.patch_size):
        return "--model/--patch-size come from --pretrained weights; drop them"
    if args.resume and args.overwrite:
        return "--resume continues the run in --out-dir, --overwrite replaces it: pick one"
    if args.eval_only and (args.resume or args.overwrite):
        return "--eval-only writes nothing: drop --resume/--overwrite"
    cuda = torch.cuda.device_count()
    if args.device is None and args.gpus > 1 and cuda == 0:
        return (f"--gpus {args.gpus} but this machine has no CUDA GPU; to run {args.gpus} CPU "
                f"processes (gloo), add --device cpu")
    if (args.device or recipe.default_device()) == "cuda" and args.gpus > cuda:
        return f"--gpus {args.gpus} but this machine has {cuda} CUDA GPU(s)"
    problem = distributed.environment_problem()
    if problem:
        return problem
    demo = (args.dataset or recipe.default_of("dataset")) == "synthetic"
    try:  # the LLB options alone; the layer against the backbone's depth comes in plan()
        llb.LLBConfig(**recipe.llb_options(args, None, demo))
    except ValueError as err:
        return str(err)
    return None
