"""A run's checkpoints, the dicts train.py saves: written atomically, read with weights_only=True
and checked to be train.py's (the out-dir's guard and lock: rundir.py)."""
import os
import random
from dataclasses import asdict
from pathlib import Path

import torch

import llb
import vit

CHECKPOINT_KEYS = ("kind", "vit_config", "model", "dataset")  # in every train.py checkpoint


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
    if not os.path.isfile(path):  # missing, or a folder
        folder = path if os.path.isdir(path) else "<out-dir>"
        raise FileNotFoundError(f"checkpoint file {path} not found: give one train.py writes, "
                                f"{os.path.join(folder, 'last.pt')} or best.pt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # the unpickler raises KeyError, ValueError, ... on a text file
        with open(path, "rb") as f:
            lfs = f.read(64).startswith(b"version https://git-lfs")
        said = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise ValueError(f"cannot read checkpoint {path}"
                         f"{' (a git-lfs pointer: run `git lfs pull`)' if lfs else ''}: truncated, "
                         f"or not a file written by torch.save ({said})") from err
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in CHECKPOINT_KEYS):
        what = (f"a dict of {len(ckpt)} entries ({', '.join(map(str, list(ckpt)[:4]))}...)"
                if isinstance(ckpt, dict) else f"a {type(ckpt).__name__}")
        raise ValueError(f"{path} is not a train.py checkpoint (<out-dir>/last.pt, best.pt): it "
                         f"holds {what}, not a dict with {', '.join(CHECKPOINT_KEYS)}. For "
                         f"released weights (torchvision, timm, MAE) use --pretrained NAME "
                         f"--weights-file {path}")
    return ckpt


def model_from_checkpoint(ckpt: dict, *, num_classes: int, source: str):
    """Rebuild the ViT or LLB a checkpoint holds; a wrong class count says what differs."""
    cfg = ckpt["vit_config"]
    if cfg["num_classes"] != num_classes:
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


def check_same_data(ckpt: dict, class_names: list, path) -> None:
    """--resume on other classes fails: the head's k-th output would silently mean another."""
    theirs = list(ckpt.get("class_names", class_names))  # older checkpoints have no names
    if theirs != list(class_names):
        differ = [f"{i}: {a!r} -> {b!r}" for i, (a, b) in enumerate(zip(theirs, class_names))
                  if a != b][:3] or ["in the count"]
        raise ValueError(f"--resume: {path} was trained on other classes ({len(theirs)} vs "
                         f"{len(class_names)} now; first differences {', '.join(differ)}): "
                         f"check --data-dir/--classes, or train it on the new classes in a new "
                         f"run: --backbone {path} --out-dir NEW")


def saved_recipe(path) -> tuple[dict | None, dict]:
    """(recipe, vit_config) of a checkpoint; checkpoints older than recipes have no recipe."""
    ckpt = load_checkpoint(path, mmap=True)
    return ckpt.get("recipe"), ckpt["vit_config"]


def capture(model, optimizer, scaler) -> dict:
    """What continuing exactly needs: the model, optimizer and scaler states and every RNG."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return dict(model=model.state_dict(), optimizer=optimizer.state_dict(),
                scaler=scaler.state_dict(),
                rng=dict(torch=torch.get_rng_state(), python=random.getstate(), cuda=cuda))


def restore(ckpt: dict, model, optimizer, scaler, path) -> None:
    """The inverse of capture(), into a model of the checkpoint's configuration: another one
    (--resume --backbone OTHER, or a checkpoint older than recipes) fails, naming each field."""
    for key, mine in configs_of(model).items():
        theirs = ckpt.get(key)
        if theirs != mine:
            diff = ({k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
                    if theirs and mine else (theirs, mine))
            raise ValueError(f"{path} is from another model: {key} (checkpoint, this run): {diff}")
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scaler.load_state_dict(ckpt["scaler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    random.setstate(ckpt["rng"]["python"])
    # Note: not the CUDA states: they are rank 0's, of its node's GPUs; every rank reseeds its
    # draws at the start of each epoch from (seed, epoch, rank) anyway (train.seed_epoch)
