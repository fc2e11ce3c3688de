"""A run's files: checkpoints written atomically and read with weights_only=True, checked to
be train.py checkpoints (the out-dir's guard and lock: rundir.py).

A checkpoint is a dict: kind ("vit" | "llb"), vit_config and llb_config (the dataclasses as
dicts: enough to rebuild the model without the command line), recipe (every setting the stage
used: recipe.Recipe as a dict), model (state dict), optimizer, scaler, epoch (completed),
best_top1, dataset, rng (torch, python and CUDA RNG states).
"""
import os
import random
from dataclasses import asdict
from pathlib import Path

import torch

import llb
import vit

# What every train.py checkpoint holds (older ones: "dataset" where newer have "recipe")
CHECKPOINT_KEYS = ("kind", "vit_config", "model")


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic: a crash while writing never leaves a truncated file in place of a good one."""
    tmp = path.with_suffix(".tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # torch reports a full disk as a RuntimeError
        tmp.unlink(missing_ok=True)
        raise OSError(f"cannot write the checkpoint {path}: disk full or not writable ({err}); "
                      f"the previous {path.name}, if any, is kept") from err


def load_checkpoint(path, *, mmap: bool = False) -> dict:
    """A train.py checkpoint's dict; mmap=True reads tensors lazily (for a look at its recipe).
    Anything else (a state dict, a tensor, a text file, a git-lfs pointer) is a ValueError."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"checkpoint {path} is a folder: give a file in it, e.g. "
                                f"{os.path.join(path, 'last.pt')} or best.pt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found (train.py writes "
                                f"<out-dir>/last.pt, best.pt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # the unpickler raises KeyError, ValueError, ... on a text file
        lfs = (" (a git-lfs pointer: run `git lfs pull`)"
               if _head(path).startswith(b"version https://git-lfs") else "")
        said = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise ValueError(f"cannot read checkpoint {path}{lfs}: truncated, or not a file written "
                         f"by torch.save ({said})") from err
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in CHECKPOINT_KEYS) or not (
            "recipe" in ckpt or "dataset" in ckpt):
        what = (f"a dict of {len(ckpt)} entries ({', '.join(map(str, list(ckpt)[:4]))}...)"
                if isinstance(ckpt, dict) else f"a {type(ckpt).__name__}")
        raise ValueError(f"{path} is not a train.py checkpoint: it holds {what}, not the dict "
                         f"with {', '.join(CHECKPOINT_KEYS)} and recipe that train.py saves "
                         f"(<out-dir>/last.pt, best.pt). For released weights (torchvision, "
                         f"timm, MAE) use --pretrained NAME --weights-file {path}")
    return ckpt


def _head(path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(64)
    except OSError:
        return b""


def model_from_checkpoint(ckpt: dict, *, num_classes: int | None = None,
                          source: str = "checkpoint"):
    """Rebuild the ViT or LLB a checkpoint holds; a wrong class count says what differs."""
    if not isinstance(ckpt, dict) or "vit_config" not in ckpt:
        raise ValueError(f"{source} is not a train.py checkpoint (no 'vit_config'); for "
                         f"released weights (torchvision, timm, MAE) use --pretrained NAME "
                         f"--weights-file {source}")
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
            diff = ({k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
                    if theirs and mine else (theirs, mine))
            raise ValueError(f"{path} is from another model: {key} differs (checkpoint, "
                             f"this run): {diff}")


def check_same_data(ckpt: dict, class_names: list, path) -> None:
    """--resume on data whose classes differ from the checkpoint's fails (the head's k-th
    output would silently mean another class)."""
    theirs = ckpt.get("class_names")
    if theirs is None or list(theirs) == list(class_names):
        return
    differ = [f"{i}: {a!r} -> {b!r}" for i, (a, b) in enumerate(zip(theirs, class_names))
              if a != b][:3]
    raise ValueError(f"--resume: {path} was trained on other classes than the data given now "
                     f"({len(theirs)} vs {len(class_names)} classes; first differences "
                     f"{', '.join(differ) or 'in the count'}): check --data-dir/--classes. To "
                     f"train this model on the new classes, start a new run from it: --backbone "
                     f"{path} --out-dir NEW")


def saved_recipe(path) -> tuple[dict | None, dict]:
    """(recipe, vit_config) of a checkpoint; checkpoints older than recipes have no recipe."""
    ckpt = load_checkpoint(path, mmap=True)
    if "vit_config" not in ckpt:
        model_from_checkpoint(ckpt, source=str(path))  # raises: not a train.py checkpoint
    return ckpt.get("recipe"), ckpt["vit_config"]


def capture(model, optimizer, scaler) -> dict:
    """What continuing exactly needs: the model, optimizer and scaler states and every RNG."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return dict(model=model.state_dict(), optimizer=optimizer.state_dict(),
                scaler=scaler.state_dict(),
                rng=dict(torch=torch.get_rng_state(), python=random.getstate(), cuda=cuda))


def restore(ckpt: dict, model, optimizer, scaler, path) -> None:
    """The inverse of capture(), into a model of the same configuration."""
    check_same_model(ckpt, model, path)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    random.setstate(ckpt["rng"]["python"])
    if ckpt["rng"]["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
