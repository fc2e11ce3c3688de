"""Train a ViT, LLB on a frozen ViT, or both; on one process or many (DDP); resume; evaluate.

    python train.py                                        # the CPU demo: synthetic, ViT then LLB
    python train.py --dataset cifar100 --data-dir data --download
    python train.py --recipe swag-b16 --data-dir /data/imagenet --gpus 4   # a paper row, 4 x 128
    torchrun --nnodes 2 --nproc-per-node 8 train.py --recipe swag-b16 ...  # multi-node: same flags
    python train.py --eval-only runs/x/last.pt             # on the data it was trained on

`--method vit+llb` (default) is `--method vit` into <out-dir>/vit, then `--method llb` on that
frozen ViT into <out-dir>. Each stage resolves its settings into a Recipe (recipes.py), printed
and saved in every checkpoint, and writes last.pt (every epoch, before evaluating it), best.pt,
metrics.jsonl, curves.png and results.json (the LAST epoch's: nothing is selected on the
validation split). Speed and memory: benchmark.py. What LLB learned: analyze.py.
"""
import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path

import torch
from tqdm import tqdm

import data
import llb
import recipes
import vit
from inputs import pretrained
from inputs.transforms import AUGMENTS, EVAL_FRAMINGS
from plotting import curves
from util import cli, distributed, evaluate, rundir
from util.checkpoint import (capture, check_same_data, configs_of, load_checkpoint,
                             model_from_checkpoint, restore, save_checkpoint)
from util.cli import FRACTION, NON_NEGATIVE, POSITIVE, at_least
from util.distributed import is_master

LOG_EVERY = 10  # steps between reads of the loss on the host (each read waits for the device)
EVAL_COST = 1 / 3  # evaluating an image (forward only), in units of its share of a training step
LONG_RUN_S = 3600  # a CPU stage expected to take longer is printed with what shortens it
EPOCH_SEEDS = 1_000_003  # a prime above any epoch count: (seed, epoch, rank) -> one seed


# ----------------------------------------------------------------------------- options


def parse_args(argv=None) -> argparse.Namespace:
    """The command line. Options left out stay None: recipes.resolve fills them per stage."""
    p = argparse.ArgumentParser(description=__doc__, epilog=recipes.defaults_table(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=("vit+llb", "vit", "llb"),
                   help="what to train (default: the recipe's, else vit+llb)")
    p.add_argument("--recipe", choices=list(recipes.RECIPES),
                   help="a named recipe, options given here on top (list below; demo on the "
                        "synthetic set)")
    g = p.add_argument_group("data").add_argument
    g("--dataset", choices=data.DATASETS, help="default synthetic (built in, no download)")
    g("--data-dir", help="root of the dataset's files")
    g("--download", action="store_true", help="download CIFAR / Places365 / iNat2018")
    g("--image-size", type=at_least(1),
      help="default: the weights' crop, a folder's median side, else the dataset's own")
    g("--classes", help="imagenet/folder subset: the first K classes, or a file of names")
    g("--max-per-class", type=at_least(1), help="imagenet/folder/synthetic: M images per class")
    g("--augment", choices=AUGMENTS, help="training augmentation (default: recipes."
      "default_augment: paper on released weights, none on synthetic or a folder, else basic)")
    g("--eval-framing", choices=EVAL_FRAMINGS, help="evaluation: the weights' own transform "
      "(AugReg: Resize 248) or the authors' (Resize 256 bicubic -> CenterCrop 224; SWAG 384)")
    g("--workers", type=at_least(0), help="loader processes per rank (data.default_workers)")
    g("--real-labels", help="ImageNet-ReaL real.json: also report ReaL top-1")
    g = p.add_argument_group("model").add_argument
    g("--model", choices=list(vit.PRESETS), help="ViT preset from scratch (default: by the data)")
    g("--patch-size", type=at_least(1), help="patch of a ViT from scratch (default: by size)")
    g("--pretrained", help="released weights: torchvision ARCH:WEIGHTS (e.g. "
      "vit_b_16:IMAGENET1K_SWAG_E2E_V1), timm:TAG or mae:MODEL (inputs/pretrained.py)")
    g("--weights-file", help="a local copy of the --pretrained weights (no download)")
    g("--backbone", help="a checkpoint of --method vit to start from (or to put LLB on)")
    g("--dropout", type=FRACTION, help="ViT dropout")
    g = p.add_argument_group("LLB (defaults: llb.LLBConfig, the authors' recipe)").add_argument
    g("--layer", type=at_least(1), help="backbone block l that feeds LLB (default: depth - 1: "
      "the paper's 11 on ViT-B; on other depths our choice, unpublished)")
    g("--num-objects", type=at_least(1), help="O latent objects")
    g("--llb-depth", dest="depth", type=at_least(1), help="LLB layers, the extractor included")
    g("--tau", type=POSITIVE, help="assignment temperature")
    g("--alpha", type=float, help="weight of p_V in p_O")
    g("--diversity-weight", type=NON_NEGATIVE, help="lambda, weight of L_div")
    g("--diversity-mode", choices=("batch", "image"), help="average of p~ over patches and "
      "batch (the authors' code) or per image (the poster)")
    off = dict(action="store_false", default=None)  # None: not given; False: switched off
    g("--no-disconnect", dest="disconnect", **off, help="ablation: N_0 = visual tokens")
    g("--no-diversity", dest="diversity", **off, help="ablation: no L_div")
    g("--pos-embed", action="store_true", default=None, help="ablation: position embedding")
    g("--no-integrate", dest="integrate", **off, help="ablation: p_O = p_N")
    g("--unfreeze", dest="freeze_backbone", **off, help="train the backbone too (paper: frozen)")
    g = p.add_argument_group("optimization (defaults: the stage's, recipes.STAGES)").add_argument
    g("--epochs", type=at_least(1))
    g("--llb-epochs", type=at_least(1), help="the LLB stage's (default: --epochs, the recipe's)")
    g("--batch-size", type=at_least(1), help="per process")
    g("--lr", type=POSITIVE, help="peak learning rate")
    g("--llb-lr", type=POSITIVE, help="the LLB stage's (default: --lr, else the recipe's)")
    g("--min-lr", type=NON_NEGATIVE, help="floor of the cosine decay")
    g("--optimizer", choices=("adamw", "adam"), help="adamw: decoupled decay; adam: coupled L2")
    g("--weight-decay", type=NON_NEGATIVE)
    g("--decay-all", action=argparse.BooleanOptionalAction,
      help="decay every parameter (else matrices only)")
    g("--warmup-epochs", type=NON_NEGATIVE, help="linear warmup before the cosine decay")
    g("--clip-grad", type=NON_NEGATIVE, help="max gradient norm (0: off)")
    g("--label-smoothing", type=FRACTION)
    g("--eval-amp", action=argparse.BooleanOptionalAction, help="evaluate under autocast too")
    g = p.add_argument_group("runtime").add_argument
    g("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    g("--gpus", type=at_least(1), default=1, help="processes to start on this machine (DDP)")
    g("--amp", choices=("bf16", "fp16", "off"), help="autocast: default bf16 on cuda, else off")
    g("--compile", nargs="?", const=recipes.COMPILE_BACKEND, metavar="BACKEND",
      help=f"torch.compile the model (BACKEND: default {recipes.COMPILE_BACKEND}; aot_eager "
           f"needs no C++ compiler)")
    g("--seed", type=int)
    g("--out-dir", help="default: runs/<dataset>_<method>")
    g("--resume", action="store_true", help="continue from <out-dir>/last.pt")
    g("--overwrite", action="store_true", help="replace the run files already in --out-dir")
    g("--eval-only", metavar="CKPT", help="evaluate a checkpoint and exit")
    g("--debug", action="store_true", help="show tracebacks of errors")
    args = p.parse_args(argv)
    # the program's options that a named recipe may set, then the runtime's defaults
    _, named = recipes.named_recipe(args.recipe, args.dataset)
    if args.method is None:
        args.method = named.get("method", "vit+llb")
    problem = check_options(args, named)
    if problem:
        p.error(problem)
    args.filled = [name for name in ("device", "amp") if getattr(args, name) is None]
    if args.device is None:
        args.device = recipes.default_device()
    if args.amp is None:
        args.amp = recipes.default_amp(args.device)
    args.world_size = int(os.environ.get("WORLD_SIZE", args.gpus))
    if args.out_dir is None:
        dataset = args.dataset or named.get("dataset", recipes.Recipe.dataset)
        args.out_dir = f"runs/{dataset}_{args.method.replace('+', '_')}"
    return args


def check_options(args, named: dict) -> str | None:
    """What is wrong with the options' combination, before anything is built."""
    weights = args.pretrained or named.get("pretrained")
    said = "--pretrained" if args.pretrained else f"--recipe {args.recipe} (its --pretrained)"
    if weights and args.backbone:
        return f"{said} and --backbone both give the backbone: pick one"
    if args.weights_file and not weights:
        return "--weights-file needs --pretrained NAME (which says what the file holds)"
    if args.method == "llb" and not (weights or args.backbone or args.eval_only):
        return ("--method llb needs a backbone: --pretrained NAME or --backbone CKPT "
                "(or use --method vit+llb to train one first)")
    if args.method == "vit+llb" and args.backbone:
        return "--backbone with --method vit+llb: use --method llb to put LLB on an existing ViT"
    if (args.llb_epochs, args.llb_lr) != (None, None) and args.method != "vit+llb":
        return "--llb-epochs/--llb-lr set the LLB stage of --method vit+llb; use --epochs/--lr"
    if weights and (args.model or args.patch_size):
        return f"--model/--patch-size come from the weights of {said}; drop them"
    if args.resume and args.overwrite:
        return "--resume continues the run in --out-dir, --overwrite replaces it: pick one"
    if args.eval_only and (args.resume or args.overwrite):
        return "--eval-only writes nothing: drop --resume/--overwrite"
    cuda = torch.cuda.device_count()
    if args.device is None and args.gpus > 1 and cuda == 0:
        return (f"--gpus {args.gpus} but this machine has no CUDA GPU; to run {args.gpus} CPU "
                f"processes (gloo), add --device cpu")
    if (args.device or recipes.default_device()) == "cuda" and args.gpus > cuda:
        return f"--gpus {args.gpus} but this machine has {cuda} CUDA GPU(s)"
    problem = distributed.environment_problem()
    if problem:
        return problem
    given = {f.name: getattr(args, f.name) for f in fields(llb.LLBConfig)}
    try:  # the LLB options alone; the layer against the backbone's depth comes in plan()
        llb.LLBConfig(**{k: v for k, v in given.items() if v is not None})
    except ValueError as err:
        return str(err)
    return None


# ----------------------------------------------------------------------------- building


def build_model(r: recipes.Recipe, num_classes: int) -> torch.nn.Module:
    """The stage's model, seeded: a ViT (preset, released weights or checkpoint), or LLB on one."""
    torch.manual_seed(r.seed)  # the same init on every rank (DDP also broadcasts it)
    if r.backbone:  # --backbone, or the ViT stage of vit+llb
        model = model_from_checkpoint(load_checkpoint(r.backbone), num_classes=num_classes,
                                      source=r.backbone)
        model = model.backbone if isinstance(model, llb.LLB) else model
    elif r.pretrained:
        model = pretrained.load(r.pretrained, weights_file=r.weights_file,
                                num_classes=num_classes, dropout=r.dropout)
    else:
        patch = {} if r.patch_size is None else {"patch_size": r.patch_size}
        model = vit.create_vit(r.model, image_size=r.image_size, num_classes=num_classes,
                               dropout=r.dropout, **patch)
    return llb.LLB(model, **r.llb) if r.stage == "llb" else model


# ----------------------------------------------------------------------------- the optimizer


def build_optimizer(params: list, *, name: str, lr: float, weight_decay: float,
                    decay_all: bool, device: torch.device) -> torch.optim.Optimizer:
    """Adam(W) over `params`; weight decay on every parameter (decay_all: the authors' LLB,
    `Adam(params, weight_decay=1e-4)`) or on matrices and embeddings only (as nanoGPT)."""
    if decay_all:
        groups = [{"params": params, "weight_decay": weight_decay}]
    else:
        groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    # Note: Adam adds weight_decay * w to the gradient (coupled L2); AdamW decays w directly.
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return cls(groups, lr=lr, fused=device.type == "cuda")


def seed_epoch(seed: int, epoch: int) -> None:
    """Seed the random draws of an epoch (dropout, augmentation on the device or in the main
    process) from (seed, epoch, rank): each rank draws its own masks, and a resumed run, on every
    rank, the draws of a straight one. Note: torch.manual_seed seeds every CUDA device too."""
    rank, world = distributed.rank_of()
    mixed = (seed * EPOCH_SEEDS + epoch) * world + rank
    torch.manual_seed(mixed)
    random.seed(mixed)


def lr_at(step: int, *, total: int, warmup: int, peak: float, floor: float = 0.0) -> float:
    """Linear warmup to `peak`, then cosine decay to `floor` at `total` steps (the whole run:
    the authors' T_max of 10 epochs for a 70-epoch run is a defect not copied here)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- loops


def train_epoch(net, loader, optimizer, scaler, r: recipes.Recipe, *, epoch: int,
                timed: tuple | None = None) -> dict:
    """One pass over this rank's shard: the sums of the loss statistics over its steps (tensors
    on the device; nothing is read back per step) and "steps". timed: (epochs left, validation
    steps) in a stage's first epoch, whose expected time is then printed."""
    model = evaluate.unwrap(net)
    device = next(model.parameters()).device
    net.train()
    loader.sampler.set_epoch(epoch)  # the order is a function of (seed, epoch): resume = straight
    seed_epoch(r.seed, epoch)  # so are the draws of dropout and augmentation, on each rank its own
    steps = len(loader)
    warmup = round(r.warmup_epochs * steps)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    autocast = recipes.autocast(r.amp, device)
    sums = None  # running sums of the loss statistics, on the device
    first_bad = torch.full((), -1, device=device)  # the first step with a non-finite loss
    bar = tqdm(loader, desc=f"[{r.stage}] epoch {epoch + 1}/{r.epochs}", leave=False,
               disable=not is_master())
    for i, (x, y) in enumerate(bar):
        if timed and i == 1:  # timed from the second step: the first warms up (and compiles)
            started = clock(device)
        # the learning rate is a function of the step (resuming needs no scheduler state)
        step = epoch * steps + i
        lr = lr_at(step, total=r.epochs * steps, warmup=warmup, peak=r.lr, floor=r.min_lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # forward and loss: both models, one call
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with autocast:
            out = net(x)
        loss, stats = model.loss(out, y, label_smoothing=r.label_smoothing)
        # backward (scaled under fp16), clip the gradient, step
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if r.clip_grad > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, r.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        # statistics stay on the device; the first non-finite step is remembered there
        values = torch.stack(list(stats.values()))
        sums = values if sums is None else sums + values
        first_bad = torch.where((first_bad < 0) & ~loss.detach().isfinite(), step, first_bad)
        if i % LOG_EVERY == LOG_EVERY - 1 or i == steps - 1:  # one host sync per LOG_EVERY steps
            means = dict(zip(stats, (sums / (i + 1)).tolist()))
            check_finite(int(first_bad), epoch, means["total"], r)
            bar.set_postfix(loss=f"{means['total']:.3f}", acc=f"{means['top1']:.1f}",
                            lr=f"{lr:.2g}")
            # the first read back: the steps since the first give the stage's expected time
            if timed and 0 < i < LOG_EVERY and is_master():
                step_s = (time.perf_counter() - started) / i
                tqdm.write(expected_time(r, step_s, steps, *timed, cpu=device.type == "cpu"))
    return dict(zip(stats, sums)) | {"steps": steps}


def clock(device: torch.device) -> float:
    """Seconds, once the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def expected_time(r: recipes.Recipe, step_s: float, steps: int, epochs: int, val_steps: int,
                  *, cpu: bool) -> str:
    """The stage's expected wall time; on a CPU, when long, what shortens it."""
    seconds = epochs * (steps + val_steps * EVAL_COST) * step_s
    said = (f"[{r.stage}] expected {tqdm.format_interval(seconds)} for {epochs} epochs x {steps} "
            f"steps ({step_s:.3g} s a step, timed as this run runs; evaluation estimated)")
    if cpu and seconds > LONG_RUN_S:
        model = f", now {r.model}" if r.model else ""
        said += (f"\nover {LONG_RUN_S // 3600} h on a CPU; shorter: fewer epochs (--epochs, now "
                 f"{r.epochs}; --llb-epochs), smaller images (--image-size, now {r.image_size}),"
                 f" a smaller model (--model{model}; see vit.PRESETS), or a GPU (--device cuda)")
    return said


def check_finite(first_bad: int, epoch: int, loss: float, r: recipes.Recipe) -> None:
    """Stop at a non-finite loss, before the epoch is saved, with what to try."""
    if first_bad < 0:
        return
    tries = [f"a lower --lr than {r.lr:g}"]
    if r.clip_grad == 0:
        tries.append("gradient clipping (--clip-grad 1)")
    if r.amp == "fp16":
        tries.append("--amp bf16 instead of fp16")
    kept = "the checkpoint of the last finished epoch is kept" if epoch else "nothing was saved"
    raise RuntimeError(f"non-finite loss ({loss}) at step {first_bad} (epoch {epoch + 1}); "
                       f"stopped before saving this epoch: {kept}. Try {', or '.join(tries)}.")


# ----------------------------------------------------------------------------- a stage


def run_stage(r: recipes.Recipe, folder: Path, loaders: tuple, device, args, real=None,
              run: rundir.RunDir | None = None) -> dict:
    """Train one stage to its last epoch (resuming if asked); returns that epoch's results.
    run: the out-dir, told when the model is built (--overwrite replaces the old run then)."""
    train_loader, val_loader, info = loaders
    # the files every rank reads: the same on every node (else say so, on every rank alike)
    resumed = [folder / "last.pt", folder / "best.pt"] if args.resume else []
    distributed.check_same_files([p for p in (r.backbone, r.weights_file) if p] + resumed)
    # build the model, its optimizer and the fp16 loss scaler
    model = build_model(r, info.num_classes).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(params, name=r.optimizer, lr=r.lr, device=device,
                                weight_decay=r.weight_decay, decay_all=r.decay_all)
    scaler = torch.amp.GradScaler(device.type, enabled=r.amp == "fp16")
    # resume: the state after the last saved epoch
    start = 0
    best = -1.0
    if args.resume and (folder / "last.pt").exists():
        ckpt = load_checkpoint(folder / "last.pt")
        restore(ckpt, model, optimizer, scaler, folder / "last.pt")
        check_same_data(ckpt, info.class_names, folder / "last.pt")
        start = ckpt["epoch"]
        best = ckpt["best_top1"]  # as of the epoch before: last.pt is saved before evaluating
        if (folder / "best.pt").exists():
            best = max(best, load_checkpoint(folder / "best.pt", mmap=True)["best_top1"])
    if run is not None:
        run.started(model)
    # wrap: DDP across processes, then compile; `model` keeps the state dict and the loss
    net = model
    if r.world_size > 1:
        # DDP waits for every parameter's gradient, unless told that some get none (slower)
        unreached = model.unreached_parameters() if isinstance(model, llb.LLB) else []
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=bool(unreached))
    if args.compile:
        net = torch.compile(net, backend=args.compile)
    eval_autocast = recipes.autocast(r.amp, device, enabled=r.eval_amp)
    if is_master():
        start_log(r, folder, start, info, train_loader, val_loader, params, device)
    # the loop: train an epoch, save it, evaluate it, log it
    results = {}
    for epoch in range(start, r.epochs):
        t0 = time.time()
        timed = (r.epochs - start, len(val_loader)) if epoch == start else None
        sums = train_epoch(net, train_loader, optimizer, scaler, r, epoch=epoch, timed=timed)
        state = dict(kind=r.stage, **configs_of(model), recipe=asdict(r), epoch=epoch + 1,
                     best_top1=best, dataset=info.name,
                     class_names=list(info.class_names), **capture(model, optimizer, scaler))
        if is_master():  # saved before evaluating: a failing evaluation loses no training
            save_checkpoint(folder / "last.pt", state)
        seconds = time.time() - t0
        results = evaluate.evaluate(net, val_loader, device, eval_autocast, real=real)
        top1 = results.get("top1_integrated", results["top1_visual"])  # best.pt's criterion
        if is_master() and top1 > best:
            save_checkpoint(folder / "best.pt", state | {"best_top1": top1})
        best = max(best, top1)
        # the epoch's mean loss statistics over every rank's steps
        steps = distributed.all_sum([sums.pop("steps")], device)[0]
        totals = distributed.all_sum(torch.stack(list(sums.values())).tolist(), device)
        means = {name: total / steps for name, total in zip(sums, totals)}
        if is_master():
            log_epoch(r, folder, epoch, means, results, steps * r.batch_size / seconds, seconds)
    # finish: evaluate a stage resumed after its end, check the replicas, write results.json
    if not results:
        results = evaluate.evaluate(net, val_loader, device, eval_autocast, real=real)
    distributed.check_replicas(model)
    metrics = ("top1", "top5", "top1_real") if real is not None else ("top1", "top5")
    results = {f"{m}_{p}": results.get(f"{m}_{p}") for p in evaluate.PREDICTIONS for m in metrics}
    if is_master():
        summary = dict(results, stage=r.stage, dataset=info.name, epochs=r.epochs)
        (folder / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    return results


def start_log(r, folder: Path, start: int, info, train_loader, val_loader, params, device):
    """Print the stage's data and recipe; begin metrics.jsonl with the recipe (or a resume)."""
    print(f"[{r.stage}] {info.name}: {len(train_loader.dataset)} train / "
          f"{len(val_loader.dataset)} val images, {info.num_classes} classes, {info.image_size} px"
          f" | {sum(p.numel() for p in params):,} trainable parameters | {r.epochs} epochs x "
          f"{len(train_loader)} steps, global batch {r.batch_size * r.world_size} "
          f"({r.world_size} x {r.batch_size}), {device.type}")
    print(r.describe())
    if start:
        print(f"[{r.stage}] resumed from {folder / 'last.pt'} at epoch {start}/{r.epochs}")
    line = {"resumed_after_epoch": start} if start else {"recipe": asdict(r)}
    with open(folder / "metrics.jsonl", "a" if start else "w") as f:
        f.write(json.dumps(line) + "\n")


def log_epoch(r, folder: Path, epoch: int, means: dict, results: dict, img_s: float, seconds):
    """One line of metrics.jsonl and one printed line per epoch."""
    record = dict(stage=r.stage, epoch=epoch + 1, train_loss=means["total"],
                  train_top1=means["top1"], **{f"train_{k}": v for k, v in means.items()
                                               if k not in ("total", "top1")},
                  **results, img_s=img_s, time_s=seconds)
    with open(folder / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    curves.write_curves(folder / "metrics.jsonl", folder / "curves.png",
                        title=f"{folder}: {r.stage} stage on {r.dataset} (validation split)")
    val = "  ".join(f"{p} {results['top1_' + p]:.1f}"
                    for p in evaluate.PREDICTIONS if "top1_" + p in results)
    tqdm.write(f"[{r.stage}] epoch {epoch + 1}/{r.epochs}  loss {means['total']:.3f}  train "
               f"{means['top1']:.1f}%  val top-1: {val}  |  {img_s:.0f} img/s  {seconds:.1f} s")


# ----------------------------------------------------------------------------- the program


def main(argv=None) -> dict | None:
    """The program; raises on bad input (cli.run turns that into one printed paragraph)."""
    args = parse_args(argv)
    if args.eval_only:
        with distributed.group(args.device) as (rank, world, device):
            return evaluate.evaluate_checkpoint(args, device)
    # plan every stage before starting processes or building anything; then the out-dir
    planned = recipes.plan(args)
    folders = [folder for _, folder in planned]
    if args.gpus > 1 and "RANK" not in os.environ:
        with rundir.for_training(args, folders):  # held while the processes run
            return distributed.launch(entry, argv, args.gpus)
    with distributed.group(args.device) as (rank, world, device):
        with rundir.for_training(args, folders) as run:  # the lock; rank 0 of torchrun's
            random.seed(planned[0][0].seed)
            loaders = data.build_loaders(planned[0][0], rank=rank, world=world,
                                         workers=args.workers, device=device,
                                         download=args.download)
            real = evaluate.read_real(args, loaders[1])
            for r, folder in planned:
                try:
                    results = run_stage(r, folder, loaders, device, args, real, run)
                except KeyboardInterrupt:
                    raise cli.Interrupted(rundir.interrupted(folder, argv)) from None
        if is_master():
            evaluate.print_table(results, f"{planned[-1][0].dataset} validation, {args.method}, "
                                 f"results in {Path(args.out_dir) / 'results.json'}")
        return results


def entry(argv=None) -> int:
    """The command line's entry: main() with user errors as one paragraph (see util/cli.py)."""
    return cli.run(main, argv)


if __name__ == "__main__":
    sys.exit(entry())
