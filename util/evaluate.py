"""Evaluation: top-1 / top-5 of each prediction (p_V, p_N, p_O) over a split, on N processes.

`evaluate(net, loader, device, autocast)` is what train.py runs after every epoch;
`evaluate_checkpoint(args, device)` is `train.py --eval-only CKPT`, on the data options the
checkpoint was trained on unless the command line gives others.
"""
import os
from dataclasses import fields

import torch

import data
import llb
import recipes
from util import distributed
from util.checkpoint import load_checkpoint, model_from_checkpoint
from util.distributed import is_master

# What an evaluation may take from the command line instead of the checkpoint's recipe
DATA_OPTIONS = ("dataset", "data_dir", "classes", "max_per_class", "image_size",
                "eval_framing")
EVAL_OPTIONS = DATA_OPTIONS + ("batch_size", "amp")
PREDICTIONS = {"visual": "p_V (ViT head)", "nonvisual": "p_N (LLB head)",
               "integrated": "p_O (integrated)"}


def scores_of(out) -> dict:
    """Each prediction's scores: logits or probabilities (argmax and top-k agree)."""
    if isinstance(out, llb.LLBOutput):
        return {"visual": out.logits_v, "nonvisual": out.logits_n, "integrated": out.probs}
    return {"visual": out}


def unwrap(net: torch.nn.Module) -> torch.nn.Module:
    """The model inside torch.compile and DDP wrappers (it owns the state dict and the loss)."""
    net = getattr(net, "_orig_mod", net)
    return getattr(net, "module", net)


@torch.no_grad()
def evaluate(net, loader, device, autocast, real: list | None = None) -> dict:
    """Top-1 / top-5 (%) of each prediction over the whole split, summed across ranks.
    real: ImageNet-ReaL label lists in the split's order (data.read_real_labels); adds
    top1_real_<prediction> over the images that have ReaL labels."""
    net.eval()
    # every rank sums the same counts, also one whose shard is empty (a split smaller than
    # the ranks): the predictions are the model's, not those of a first batch
    names = list(PREDICTIONS) if isinstance(unwrap(net), llb.LLB) else ["visual"]
    correct = {n: torch.zeros(2, dtype=torch.long, device=device) for n in names}  # top-1, top-5
    total = 0
    predicted = {n: [] for n in names}  # argmax of each batch, kept on the device (for ReaL)
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        with autocast:
            scores = scores_of(net(x))
        for name, s in scores.items():
            top5 = s.topk(min(5, s.shape[1]), dim=1).indices == y[:, None]  # (B, 5)
            correct[name] += torch.stack([top5[:, 0].sum(), top5.any(dim=1).sum()])
            if real is not None:
                predicted[name].append(s.argmax(1))
        total += len(y)
    counts = [v for n in names for v in correct[n].tolist()] + [total]
    if real is not None:  # this rank's images are rank::world of the split (data.build_loader)
        mine = [real[i] for i in loader.sampler]
        for n in names:
            pred = torch.cat(predicted[n]).cpu() if predicted[n] else torch.zeros(0, dtype=int)
            counts += data.real_hits(pred, mine)
    sums = distributed.all_sum(counts, device)
    # sums: (top-1, top-5) hits per prediction, the image count, then (ReaL hits, ReaL images)
    images = sums[2 * len(names)]
    real_sums = sums[2 * len(names) + 1:]
    results = {}
    for i, name in enumerate(names):
        results[f"top1_{name}"] = 100 * sums[2 * i] / images
        results[f"top5_{name}"] = 100 * sums[2 * i + 1] / images
        if real is not None:
            hits, counted = real_sums[2 * i], real_sums[2 * i + 1]
            results[f"top1_real_{name}"] = 100 * hits / counted if counted else None
    return results


def print_table(results: dict, title: str) -> None:
    real = any(k.startswith("top1_real_") for k in results)
    print(f"\n{title}\n{'prediction':<22}{'top-1':>8}{'top-5':>8}" + ("  ReaL top-1" * real))
    for name, label in PREDICTIONS.items():
        if results.get(f"top1_{name}") is not None:
            line = f"{label:<22}{results[f'top1_{name}']:>8.2f}{results[f'top5_{name}']:>8.2f}"
            value = results.get(f"top1_real_{name}")
            print(line + (f"{value:>13.2f}" if value is not None else ""))


def read_real(args, val_loader) -> list | None:
    """--real-labels FILE: ImageNet-ReaL labels of the validation split, in its order."""
    if args.real_labels is None:
        return None
    return data.read_real_labels(args.real_labels, val_loader.dataset)


def checkpoint_recipe(ckpt: dict, path, args) -> recipes.Recipe:
    """The recipe a checkpoint was trained with; the evaluation options given on the command
    line (EVAL_OPTIONS that are not None in `args`) replace its own. Says which came from where."""
    saved = ckpt.get("recipe") or {  # a checkpoint older than recipes: its data, no augmentation
        "dataset": ckpt["dataset"], "image_size": ckpt["vit_config"]["image_size"],
        "augment": "none", "defaults": "llb" if ckpt["kind"] == "llb" else "scratch"}
    known = {f.name for f in fields(recipes.Recipe)}
    saved = {"stage": ckpt["kind"]} | {k: v for k, v in recipes.filled(saved).items()
                                      if k in known}
    given = {k: getattr(args, k) for k in EVAL_OPTIONS if getattr(args, k, None) is not None}
    if is_master():
        taken = [f"{k}={saved[k]}" for k in DATA_OPTIONS if k not in given and k in saved]
        filled = getattr(args, "filled", ())  # defaults of this device, not typed
        typed = {k: v for k, v in given.items() if k not in filled}
        device = {k: v for k, v in given.items() if k in filled}
        print(f"data options from {path}: {', '.join(taken) or 'none'}"
              + (f"; from the command line: {typed}" if typed else "")
              + (f"; this device's default: {device}" if device else ""))
    r = recipes.Recipe(**(saved | given))
    problem = recipes.data_problem(r.dataset, r.data_dir, r.max_per_class)
    if problem:  # options given over the checkpoint's
        raise ValueError(problem)
    return r


def evaluate_checkpoint(args, device) -> dict:
    """--eval-only CKPT: on the data options it was trained on, unless given here."""
    ckpt = load_checkpoint(args.eval_only)
    r = checkpoint_recipe(ckpt, args.eval_only, args)
    world = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    _, val_loader, info = data.build_loaders(r, rank=rank, world=world, workers=args.workers,
                                             device=device, train=False)
    model = model_from_checkpoint(ckpt, num_classes=info.num_classes, source=args.eval_only)
    real = read_real(args, val_loader)
    results = evaluate(model.to(device), val_loader, device,
                       recipes.autocast(r.amp, device, enabled=r.eval_amp), real=real)
    if is_master():
        print_table(results, f"{args.eval_only} on {info.name} validation "
                             f"({len(val_loader.dataset)} images, eval framing "
                             f"{r.eval_framing})")
    return results
