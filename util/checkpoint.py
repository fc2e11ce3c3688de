"""A run's files: checkpoints written atomically and read with weights_only=True, and the
out-dir guarded against overwriting a run by accident.

A checkpoint is a dict: kind ("vit" | "llb"), vit_config and llb_config (the dataclasses as
dicts: enough to rebuild the model without the command line), recipe (every setting the stage
used: recipe.Recipe as a dict), model (state dict), optimizer, scaler, epoch (completed),
best_top1, dataset, rng (torch, python and CUDA RNG states).
"""
import os
import pickle
import random
import zipfile
from dataclasses import asdict
from pathlib import Path

import torch

import llb
import vit

# The files a training stage writes into its folder (train.py)
RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "results.json", "curves.png")


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
    """A checkpoint's dict; mmap=True reads tensors lazily (for a look at its recipe)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found (train.py writes "
                                f"<out-dir>/last.pt, best.pt)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError) as err:
        raise ValueError(f"cannot read checkpoint {path}: truncated, or not a file written by "
                         f"torch.save ({(str(err).strip() or type(err).__name__).splitlines()[0]})"
                         ) from err


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


def saved_recipe(path) -> tuple[dict | None, dict]:
    """(recipe, vit_config) of a checkpoint; checkpoints older than recipes have no recipe."""
    ckpt = load_checkpoint(path, mmap=True)
    if "vit_config" not in ckpt:
        model_from_checkpoint(ckpt, source=str(path))  # raises: not a train.py checkpoint
    return ckpt.get("recipe"), ckpt["vit_config"]


def prepare_out_dir(out_dir, folders: list[Path], *, resume: bool, overwrite: bool) -> None:
    """Refuse to overwrite a run by accident; check the folders can be written; before any work."""
    found = [f for d in folders for f in (d / name for name in RUN_FILES) if f.exists()]
    if found and not (resume or overwrite):
        held = "; ".join(f"{d}: " + ", ".join(f.name for f in found if f.parent == d)
                         for d in folders if any(f.parent == d for f in found))
        raise ValueError(f"{out_dir} already holds a run ({held}); nothing was changed. Continue "
                         f"it with --resume, replace it with --overwrite, or pick another "
                         f"--out-dir.")
    if overwrite and found:
        print(f"--overwrite: removing {', '.join(map(str, found))}")
        for f in found:
            f.unlink()
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / ".write_test"
            probe.write_bytes(b"0" * 4096)
            probe.unlink()
        except OSError as err:
            raise OSError(f"cannot write to the output folder {folder} ({err.strerror}): pick "
                          f"another --out-dir, or free space / fix its permissions") from err


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
