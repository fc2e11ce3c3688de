"""Train a ViT, LLB on a frozen ViT, or both; on one process or many (DDP); resume; evaluate.

    python train.py                                   # CPU demo: synthetic set, ViT then LLB
    python train.py --dataset cifar100 --data-dir data --download
    python train.py --method llb --dataset imagenet --data-dir /data/imagenet \\
        --pretrained vit_b_16:IMAGENET1K_SWAG_E2E_V1 --gpus 4   # the authors' 4 x 128
    torchrun --nnodes 2 --nproc-per-node 8 train.py --method llb ...   # multi-node: same flags
    python train.py --eval-only runs/x/last.pt        # on the data the checkpoint was trained on

`--method vit+llb` (default) is `--method vit` into <out-dir>/vit, then `--method llb` on that
frozen ViT into <out-dir>. Each stage resolves its settings once into a Recipe (util/recipe.py),
printed at start and saved in every checkpoint. It writes last.pt (after every epoch, before
evaluating it), best.pt (best validation top-1), metrics.jsonl (the recipe, then one line per
epoch) and results.json (the LAST epoch's numbers: nothing is selected on the validation split).
Speed and memory: benchmark.py. What LLB learned: analyze.py.
"""
import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

import data
import llb
import vit
from inputs import pretrained, transforms
from plotting import curves
from util import checks, cli, distributed, estimate, evaluate, recipe, rundir
from util.checkpoint import (capture, check_same_data, configs_of, load_checkpoint,
                             model_from_checkpoint, restore, save_checkpoint)
from util.distributed import is_master

LOG_EVERY = 10  # steps between reads of the loss on the host (each read waits for the device)


# ----------------------------------------------------------------------------- options


def parse_args(argv=None) -> argparse.Namespace:
    """The command line. Options left unset stay None: recipe.resolve fills them per stage."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=("vit+llb", "vit", "llb"), default="vit+llb",
                   help="what to train (default vit+llb)")
    g = p.add_argument_group("data").add_argument
    g("--dataset", choices=data.DATASETS, help="default: synthetic (built in, no download)")
    g("--data-dir", help="root of the dataset's files")
    g("--download", action="store_true", help="download CIFAR / Places365 / iNat2018")
    sizes = ", ".join(f"{k} {v}" for k, v in recipe.NATIVE_SIZE.items())
    g("--image-size", type=int, help=f"default: the weights' crop; a folder's median side "
      f"(util/fit.py); else the dataset's ({sizes}, else {recipe.PHOTO_SIZE})")
    g("--classes", help="imagenet/folder subset: the first K classes, or a file of names")
    g("--max-per-class", type=int, help="imagenet/folder/synthetic subset: M images per class")
    g("--augment", choices=transforms.AUGMENTS, help="training augmentation (default: see "
      "recipe.default_augment: paper on weights, none on synthetic or a folder, else basic)")
    g("--eval-framing", choices=transforms.EVAL_FRAMINGS, help=f"evaluation framing: weights "
      f"(their own eval transform; AugReg: Resize 248) or authors (Resize 256 bicubic -> "
      f"CenterCrop 224; SWAG 384); default {recipe.default_of('eval_framing')}, saved in the "
      "recipe")
    g("--workers", type=int, help="loader processes per rank (default: data.default_workers)")
    g("--real-labels", help="ImageNet-ReaL real.json: also report ReaL top-1")
    g = p.add_argument_group("model").add_argument
    g("--model", choices=list(vit.PRESETS), help=f"ViT preset (default: {recipe.DEMO['model']} "
      f"on synthetic; on a folder by its number of images, util/fit.py; {recipe.SMALL_PRESET} "
      f"up to {recipe.SMALL_IMAGE} px, else {recipe.LARGE_PRESET})")
    g("--patch-size", type=int, help=f"default: {recipe.DEMO['patch_size']} on synthetic, by size "
      f"on a folder, {recipe.SMALL_PATCH} up to {recipe.SMALL_IMAGE} px, else the preset's")
    g("--pretrained", help="released weights: torchvision ARCH:WEIGHTS (e.g. "
      "vit_b_16:IMAGENET1K_SWAG_E2E_V1), timm:TAG or mae:MODEL (see inputs/pretrained.py)")
    g("--weights-file", help="a local copy of the --pretrained weights (no download)")
    g("--backbone", help="a checkpoint of --method vit to start from (or to put LLB on)")
    g("--dropout", type=float, help=f"ViT dropout (default {recipe.default_of('dropout')})")
    g = p.add_argument_group("LLB (defaults: llb.LLBConfig, the authors' recipe)").add_argument
    g("--layer", type=int, help="backbone block l that feeds LLB (default: depth - 1: the "
      "paper's 11 on ViT-B; on other depths our choice, unpublished)")
    objects = recipe.llb_default("num_objects")
    g("--num-objects", type=int, help=f"O latent objects (default {objects}; "
      f"{recipe.DEMO['num_objects']} on synthetic; per class on a folder, util/fit.py)")
    g("--llb-depth", type=int, help=f"LLB layers, extractor included (default "
      f"{recipe.llb_default('depth')}; at most the backbone's on a folder)")
    g("--tau", type=float, help=f"assignment temperature (default {recipe.llb_default('tau')})")
    g("--alpha", type=float, help=f"weight of p_V in p_O (default {recipe.llb_default('alpha')})")
    g("--diversity-weight", type=float,
      help=f"lambda, weight of L_div (default {recipe.llb_default('diversity_weight')})")
    g("--diversity-mode", choices=("batch", "image"),
      help=f"average of p~ (default {recipe.llb_default('diversity_mode')})")
    flag = dict(action="store_true", default=None)
    g("--no-disconnect", **flag, help="ablation: N_0 = visual tokens")
    g("--no-diversity", **flag, help="ablation: no L_div")
    g("--pos-embed", **flag, help="ablation: position embedding on the LLB tokens")
    g("--no-integrate", **flag, help="ablation: p_O = p_N")
    g("--unfreeze", **flag, help="train the backbone too (paper: frozen)")
    g = p.add_argument_group("optimization (defaults: recipe.STAGE_DEFAULTS)").add_argument
    g("--epochs", type=int, help=f"default: {recipe.default_of('epochs')} (paper); on synthetic "
      f"{recipe.DEMO['epochs']} for a ViT, {recipe.DEMO['llb_epochs']} for LLB")
    g("--llb-epochs", type=int, help=f"the LLB stage of vit+llb (default: --epochs; "
      f"{recipe.DEMO['llb_epochs']} on synthetic)")
    g("--batch-size", type=int,
      help=f"per process (default {recipe.default_of('batch_size')}, the paper's per GPU)")
    g("--lr", type=float, help="peak learning rate")
    g("--llb-lr", type=float, help="the LLB stage of vit+llb (default: --lr, else its own)")
    g("--min-lr", type=float, help="floor of the cosine decay")
    g("--optimizer", choices=("adamw", "adam"), help="adamw: decoupled decay; adam: coupled L2")
    g("--weight-decay", type=float)
    g("--decay-all", action=argparse.BooleanOptionalAction,
      help="decay every parameter (else matrices only)")
    g("--warmup-epochs", type=float, help="linear warmup before the cosine decay")
    g("--clip-grad", type=float, help="max gradient norm (0: off)")
    g("--label-smoothing", type=float, help=f"default {recipe.default_of('label_smoothing')}")
    g("--eval-amp", action=argparse.BooleanOptionalAction, help="evaluate under autocast too")
    g = p.add_argument_group("runtime").add_argument
    g("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    g("--gpus", type=int, default=1, help="processes to start on this machine (DDP)")
    g("--amp", choices=("bf16", "fp16", "off"), help="autocast: default bf16 on cuda, else off")
    g("--compile", action="store_true", help="torch.compile the model")
    g("--seed", type=int, help=f"default {recipe.default_of('seed')}")
    g("--out-dir", help="default: runs/<dataset>_<method>")
    g("--resume", action="store_true", help="continue from <out-dir>/last.pt")
    g("--overwrite", action="store_true", help="replace the run files already in --out-dir")
    g("--eval-only", metavar="CKPT", help="evaluate a checkpoint and exit")
    g("--debug", action="store_true", help="show tracebacks of errors")
    args = p.parse_args(argv)
    problem = checks.check_options(args)
    if problem:
        p.error(problem)
    recipe.resolve_runtime(args)
    return args


# ----------------------------------------------------------------------------- building


def build_model(r: recipe.Recipe, num_classes: int) -> torch.nn.Module:
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


def unwrap(net: torch.nn.Module) -> torch.nn.Module:
    """The model inside torch.compile and DDP wrappers (it owns the state dict and the loss)."""
    net = getattr(net, "_orig_mod", net)
    return getattr(net, "module", net)


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


def lr_at(step: int, *, total: int, warmup: int, peak: float, floor: float = 0.0) -> float:
    """Linear warmup to `peak`, then cosine decay to `floor` at `total` steps (the whole run:
    the authors' T_max of 10 epochs for a 70-epoch run is a defect not copied here)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- loops


def train_epoch(net, loader, optimizer, scaler, r: recipe.Recipe, *, epoch: int) -> dict:
    """One pass over this rank's shard. Returns the sums of the loss statistics over its steps
    (a tensor per name, on the device) and "steps"; nothing is read back per step."""
    model = unwrap(net)
    device = next(model.parameters()).device
    net.train()
    loader.sampler.set_epoch(epoch)  # the order is a function of (seed, epoch): resume = straight
    steps = len(loader)
    warmup = round(r.warmup_epochs * steps)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    autocast = recipe.autocast(r.amp, device)
    sums = None  # running sums of the loss statistics, on the device
    first_bad = torch.full((), -1, device=device)  # the first step with a non-finite loss
    bar = tqdm(loader, desc=f"[{r.stage}] epoch {epoch + 1}/{r.epochs}{estimate.left()}",
               leave=False, disable=not is_master())
    for i, (x, y) in enumerate(bar):
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
    return dict(zip(stats, sums)) | {"steps": steps}


def check_finite(first_bad: int, epoch: int, loss: float, r: recipe.Recipe) -> None:
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


def run_stage(r: recipe.Recipe, folder: Path, loaders: tuple, device, args, real=None,
              run: rundir.RunDir | None = None) -> dict:
    """Train one stage to its last epoch (resuming if asked); returns that epoch's results.
    run: the out-dir, told once the model is built (--overwrite replaces the old run then)."""
    train_loader, val_loader, info = loaders
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
        net = torch.nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        net = torch.compile(net)
    eval_autocast = recipe.autocast(r.amp, device, enabled=r.eval_amp)
    if is_master():
        start_log(r, folder, start, info, train_loader, val_loader, params, device)
    # the loop: train an epoch, save it, evaluate it, log it
    results = {}
    for epoch in range(start, r.epochs):
        t0 = time.time()
        sums = train_epoch(net, train_loader, optimizer, scaler, r, epoch=epoch)
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
          f"{len(train_loader)} steps, global batch {r.global_batch} ({r.world_size} x "
          f"{r.batch_size}), {device.type}")
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
        rank, world, device = distributed.setup(args.device)
        try:
            return evaluate.evaluate_checkpoint(args, device)
        finally:
            distributed.teardown()
    # plan every stage before starting processes or building anything; then the out-dir
    planned = recipe.plan(args)
    folders = [folder for _, folder in planned]
    if args.gpus > 1 and "RANK" not in os.environ:
        with rundir.for_training(args, folders):  # held while the processes run
            return distributed.launch(entry, argv, args.gpus)
    rank, world, device = distributed.setup(args.device)
    try:
        with rundir.for_training(args, folders) as run:  # the lock; rank 0 of torchrun's
            random.seed(planned[0][0].seed)
            loaders = recipe.build_loaders(planned[0][0], rank=rank, world=world,
                                           workers=args.workers, device=device,
                                           download=args.download)
            real = evaluate.read_real(args, loaders[1])
            estimate.announce(planned, loaders, device, build_model)  # rank 0: expected time
            for r, folder in planned:
                try:
                    results = run_stage(r, folder, loaders, device, args, real, run)
                except KeyboardInterrupt:
                    raise cli.Interrupted(rundir.interrupted(folder, argv)) from None
        if is_master():
            evaluate.print_table(results, f"{planned[-1][0].dataset} validation, {args.method}, "
                                 f"results in {Path(args.out_dir) / 'results.json'}")
        return results
    finally:
        distributed.teardown()


def entry(argv=None) -> int:
    """The command line's entry: main() with user errors as one paragraph (see util/cli.py)."""
    return cli.run(main, argv)


if __name__ == "__main__":
    sys.exit(entry())
