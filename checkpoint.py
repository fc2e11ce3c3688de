"""Checkpoints of train.py: what they hold, written atomically, read with weights_only=True.

A checkpoint is a dict: kind ("vit" | "llb"), vit_config and llb_config (the dataclasses as
dicts: enough to rebuild the model without the command line), model (state dict), optimizer,
scaler, epoch (completed), best_top1, dataset, args, rng (torch and python RNG states).
"""
import os
from dataclasses import asdict
from pathlib import Path

import torch

import llb
import vit


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic: a crash while writing never leaves a truncated file in place of a good one."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found (train.py writes <out-dir>/last.pt, best.pt)")
    return torch.load(path, map_location="cpu", weights_only=True)


def model_from_checkpoint(ckpt: dict, *, num_classes: int | None = None, source: str = "checkpoint"):
    """Rebuild the ViT or LLB a checkpoint holds; a wrong class count says what differs."""
    if not isinstance(ckpt, dict) or "vit_config" not in ckpt:
        raise ValueError(f"{source} is not a train.py checkpoint (no 'vit_config'); for torchvision "
                         f"weights use --pretrained ARCH:WEIGHTS --weights-file {source}")
    cfg = ckpt["vit_config"]
    if num_classes is not None and cfg["num_classes"] != num_classes:
        raise ValueError(f"{source} holds a {cfg['num_classes']}-class model (trained on "
                         f"{ckpt['dataset']}) but the dataset has {num_classes} classes")
    model = vit.ViT(vit.ViTConfig(**cfg))
    if ckpt["kind"] == "llb":
        model = llb.LLB(model, **ckpt["llb_config"])
    model.load_state_dict(ckpt["model"])
    return model


def configs_of(model) -> dict:
    """The configs that define a model (not wrapped in DDP or torch.compile)."""
    if isinstance(model, llb.LLB):
        return {"vit_config": asdict(model.backbone.config), "llb_config": asdict(model.config)}
    return {"vit_config": asdict(model.config), "llb_config": None}


def check_same_model(ckpt: dict, model, path) -> None:
    """--resume into a different model fails, naming each differing field."""
    for key, mine in configs_of(model).items():
        theirs = ckpt.get(key)
        if theirs != mine:
            diff = ({k: (theirs[k], v) for k, v in mine.items() if theirs[k] != v}
                    if theirs and mine else (theirs, mine))
            raise ValueError(f"{path} is from another model: {key} differs (checkpoint, this run): {diff}")
