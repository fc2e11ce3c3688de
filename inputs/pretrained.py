"""Released ViT weights as a `vit.ViT`: torchvision, timm and MAE checkpoints, by name.

    load(name, *, weights_file=None, **overrides) -> vit.ViT   the weights, converted and checked
    eval_spec(name) -> dict      the weights' eval transform: resize_size, crop_size,
                                 interpolation, mean, std (what data.py's eval_spec takes)
    num_classes(name) -> int     classes of the released head
    architecture(name) -> dict   ViTConfig fields of the weights: vit.ViT(**architecture(name))
    from_torchvision(...), from_timm(...), from_mae(...)  converters, for any file of their layout

Names: torchvision "ARCH:WEIGHTS" (e.g. "vit_b_16:IMAGENET1K_SWAG_E2E_V1") and MAE's
"mae:vit_base_patch16" / "mae:vit_large_patch16" download into torch.hub's cache (or take
weights_file); "timm:TAG" (the tags of _TIMM below) are on the Hugging Face hub only: weights_file.
`overrides` are ViTConfig fields: `image_size` (the position embedding is interpolated as the
weights' own library does), `num_classes` (a new zero-initialised head), dropout rates; the file
itself must hold the named weights (size, depth, classes, pooling). Files: .pth/.bin through
torch.load(weights_only=True), .safetensors with safetensors; timm itself is never imported.
"""
import math
import os
from collections import namedtuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import vit
from inputs.transforms import IMAGENET_MEAN, IMAGENET_STD

_WIDTH_TO_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}  # heads are not visible in shapes


# ----------------------------------------------------------------------------- key layouts
# torchvision's VisionTransformer        our name
#   class_token                          class_token
#   encoder.pos_embedding                pos_embed
#   conv_proj.*                          patch_embed.proj.*
#   encoder.layers.encoder_layer_i.      blocks.i.
#     ln_1.*, ln_2.*                       norm1.*, norm2.*
#     self_attention.in_proj_{weight,bias}  attn.qkv.{weight,bias}
#     self_attention.out_proj.*            attn.proj.*
#     mlp.0.*, mlp.3.* (< 0.13: mlp.linear_1/2)  mlp.fc1.*, mlp.fc2.*
#   encoder.ln.*                         norm.*
#   heads.head.*                         head.*
#
# timm's VisionTransformer, and the MAE repository's (models_vit.py subclasses timm 0.3's: the
# same names): ours but for two.
#   cls_token                            class_token
#   norm.* (class token)                 norm.*, with pool="token"
#   fc_norm.* (global average pooling;   norm.*, with pool="avg"
#     timm's norm is then an Identity, MAE deletes it: no norm.* in the file)
#   pos_embed, patch_embed.proj.*, blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*,
#   head.*                               the same


def _torchvision_key(ours: str) -> str:
    """Our parameter name -> torchvision's, e.g. blocks.3.attn.qkv.weight -> ...in_proj_weight."""
    fixed = {"patch_embed.proj": "conv_proj", "class_token": "class_token",
             "pos_embed": "encoder.pos_embedding", "norm": "encoder.ln", "head": "heads.head"}
    for a, b in fixed.items():
        if ours == a or ours.startswith(a + "."):
            return b + ours[len(a):]
    _, i, rest = ours.split(".", 2)  # "blocks", layer index, the rest
    rest = {"attn.qkv.weight": "self_attention.in_proj_weight",
            "attn.qkv.bias": "self_attention.in_proj_bias"}.get(rest, rest)
    for a, b in (("norm1", "ln_1"), ("norm2", "ln_2"), ("attn.proj", "self_attention.out_proj"),
                 ("mlp.fc1", "mlp.0"), ("mlp.fc2", "mlp.3")):
        rest = rest.replace(a, b)
    return f"encoder.layers.encoder_layer_{i}.{rest}"


def _timm_key(ours: str, pool: str) -> str:
    """Our parameter name -> timm's (and MAE's): class_token -> cls_token, norm -> fc_norm."""
    if ours == "class_token":
        return "cls_token"
    if ours.startswith("norm.") and pool == "avg":
        return "fc_" + ours  # norm.weight -> fc_norm.weight
    return ours


def _torchvision_names(state) -> dict:
    """torchvision < 0.13 named the MLP layers mlp.linear_1/2; today's names are mlp.0/3."""
    return {k.replace("mlp.linear_1", "mlp.0").replace("mlp.linear_2", "mlp.3"): v
            for k, v in state.items()}


# ----------------------------------------------------------------------------- architecture
def _missing(state: dict, needed: tuple, *, source: str, layout: str, example: str) -> None:
    missing = [k for k in needed if k not in state]
    if missing:
        raise ValueError(f"{source} is not a {layout} state dict: missing {missing} (expected "
                         f"keys like those of {example}.state_dict())")


def _architecture_of(state: dict, *, layout: str, source: str) -> dict:
    """ViTConfig fields read off a state dict's shapes (heads guessed from the width)."""
    if layout == "torchvision":
        keys = dict(patch="conv_proj.weight", pos="encoder.pos_embedding", head="heads.head.weight",
                    fc1="encoder.layers.encoder_layer_0.mlp.0.weight", block="encoder.layers.")
        needed = ("class_token", keys["patch"], keys["pos"], keys["fc1"], keys["head"])
        _missing(state, needed, source=source, layout="torchvision VisionTransformer",
                 example="torchvision.models.vit_b_16()")
    else:
        keys = dict(patch="patch_embed.proj.weight", pos="pos_embed", head="head.weight",
                    fc1="blocks.0.mlp.fc1.weight", block="blocks.")
        needed = ("cls_token", keys["patch"], keys["pos"], keys["fc1"])
        _missing(state, needed, source=source, layout="timm ViT (with a class token)",
                 example="timm's vit_base_patch16_224()")
        if keys["head"] not in state:
            raise ValueError(f"{source} has no classifier head (head.weight): a pretraining-only "
                             f"checkpoint? Expected a fine-tuned one")
    width, channels, patch, _ = state[keys["patch"]].shape
    grid = math.isqrt(state[keys["pos"]].shape[1] - 1)
    blocks = {k[len(keys["block"]):].split(".")[0] for k in state if k.startswith(keys["block"])}
    return dict(
        image_size=grid * patch, patch_size=patch, width=width, channels=channels,
        depth=len(blocks), heads=_WIDTH_TO_HEADS.get(width, max(1, width // 64)),
        mlp_dim=state[keys["fc1"]].shape[0], num_classes=state[keys["head"]].shape[0],
        pool="avg" if "fc_norm.weight" in state else "token")


def _check_file(found: dict, expected: dict, *, name: str, source: str) -> None:
    """The file's own architecture (before any override) must be the named weights'."""
    fields = ("image_size", "patch_size", "width", "depth", "mlp_dim", "num_classes", "pool")
    wrong = [f for f in fields if found[f] != expected[f]]
    if wrong:
        have = ", ".join(f"{f}={found[f]}" for f in wrong)
        want = ", ".join(f"{f}={expected[f]}" for f in wrong)
        raise ValueError(f"{source} holds a ViT with {have} but {name} has {want}: "
                         f"wrong file for {name}?")


# ----------------------------------------------------------------------------- conversion
def _resize_pos_embed(pos_embed: torch.Tensor, grid: int, *, layout: str) -> torch.Tensor:
    """(1, 1 + n*n, D) -> (1, 1 + grid*grid, D): bicubic over the patch grid, class slot kept.

    As the weights' own library: torchvision's interpolate_embeddings (align_corners=True),
    timm's resample_abs_pos_embed (antialias=True).
    Note: MAE files too are resized as timm does (MAE's interpolate_pos_embed has no antialias:
    the same result when enlarging, as fine-tuning at a higher resolution does).
    """
    cls = pos_embed[:, :1]  # (1, 1, D)
    patches = pos_embed[:, 1:]  # (1, n*n, D)
    n = math.isqrt(patches.shape[1])
    D = patches.shape[2]
    patches = patches.reshape(1, n, n, D).permute(0, 3, 1, 2)  # (1, D, n, n)
    torchvision = layout == "torchvision"
    patches = F.interpolate(patches, size=(grid, grid), mode="bicubic",
                            align_corners=torchvision, antialias=not torchvision)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, D)  # (1, grid*grid, D)
    return torch.cat([cls, patches], dim=1)


def _convert(state: dict, found: dict, overrides: dict, *, layout: str, source: str) -> vit.ViT:
    """A ViT of `found` | `overrides`, each parameter taken from `state` by the key table."""
    with torch.device("meta"):  # no random init of what the weights replace (ViT-L: 300M values)
        model = vit.ViT(vit.ViTConfig(**(found | overrides)))
    c = model.config
    converted = {}
    unused = set(state)
    for name, target in model.state_dict().items():
        if layout == "torchvision":
            key = _torchvision_key(name)
        else:
            key = _timm_key(name, found["pool"])  # the file's pooling, not an overridden one
        if key not in state:
            raise ValueError(f"{source} has no {key!r} (needed for {name}); expected a "
                             f"{c.depth}-block ViT in {layout}'s layout")
        unused.discard(key)
        tensor = state[key]
        if name == "pos_embed" and tensor.shape != target.shape and tensor.shape[2] == c.width:
            tensor = _resize_pos_embed(tensor, c.image_size // c.patch_size, layout=layout)
        if name.startswith("head.") and c.num_classes != found["num_classes"]:
            # a new head for a new label set: zero, as ViT.reset_parameters initialises it
            tensor = torch.zeros_like(target, device="cpu")
        if tensor.shape != target.shape:
            raise ValueError(f"shape mismatch for {name} ({source} {key}): weights have "
                             f"{tuple(tensor.shape)}, a ViT with {c} expects {tuple(target.shape)}")
        converted[name] = tensor.to(target.dtype, copy=True)  # own memory, not the source's
    if unused:
        raise ValueError(f"unexpected keys {sorted(unused)[:5]} in {source}: the weights have "
                         f"parts a plain ViT with depth={c.depth} lacks (more blocks, a "
                         f"representation layer, layer scale, qk-norm, register tokens?)")
    model.load_state_dict(converted, assign=True)  # replaces the meta tensors
    return model


def from_torchvision(model_or_state, **overrides) -> vit.ViT:
    """A ViT holding the weights of a torchvision VisionTransformer (module or state dict).

    The architecture is read off the tensors' shapes (heads from the module, else from the
    width); overrides as in the module docstring, and `heads`.
    """
    source = "torchvision state dict"
    if isinstance(model_or_state, nn.Module):
        heads = model_or_state.encoder.layers[0].self_attention.num_heads
        overrides = {"heads": heads} | overrides
        model_or_state = model_or_state.state_dict()
    state = _torchvision_names(model_or_state)
    found = _architecture_of(state, layout="torchvision", source=source)
    return _convert(state, found, overrides, layout="torchvision", source=source)


def from_timm(state, **overrides) -> vit.ViT:
    """A ViT holding a timm VisionTransformer state dict (class token; pool "avg" if fc_norm).

    Note: a timm model with global_pool="avg" and fc_norm=False (LN before pooling) has the
    same keys as a class-token one and is read as one: timm's default for "avg" is fc_norm.
    """
    state = dict(state)
    found = _architecture_of(state, layout="timm", source="timm state dict")
    return _convert(state, found, overrides, layout="timm", source="timm state dict")


def _unwrap_mae(ckpt, source: str) -> dict:
    """The MAE repository saves {"model": state dict, ...}; the state dict in timm 0.3 names."""
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise ValueError(f"{source} is not an MAE checkpoint: expected a dict {{'model': state "
                         f"dict}} as the MAE repository saves it (a bare timm state dict: "
                         f"from_timm, or a 'timm:' name)")
    return dict(ckpt["model"])


def from_mae(ckpt, **overrides) -> vit.ViT:
    """A ViT holding an MAE repository checkpoint: {"model": state dict}, timm's names."""
    state = _unwrap_mae(ckpt, "checkpoint")
    found = _architecture_of(state, layout="timm", source="MAE checkpoint")
    return _convert(state, found, overrides, layout="timm", source="MAE checkpoint")


# ----------------------------------------------------------------------------- names
# The timm tags' facts, copied from timm 1.0.31's `timm.models.get_pretrained_cfg(TAG)`
# (test_pretrained.py checks this table against it). Their torch files (model.safetensors,
# pytorch_model.bin) are published on the Hugging Face hub only: https://huggingface.co/timm/TAG.
_Timm = namedtuple("_Timm", "preset patch_size image_size crop_pct interpolation mean std classes")
_HALF = (0.5, 0.5, 0.5)  # AugReg's mean and std
_TIMM = {
    "vit_base_patch16_224.augreg_in1k": _Timm("base", 16, 224, 0.9, "bicubic", _HALF, _HALF, 1000),
    "vit_base_patch16_224.augreg_in21k_ft_in1k":
        _Timm("base", 16, 224, 0.9, "bicubic", _HALF, _HALF, 1000),
    "vit_base_patch16_224.augreg2_in21k_ft_in1k":
        _Timm("base", 16, 224, 0.9, "bicubic", _HALF, _HALF, 1000),
    "vit_large_patch16_224.augreg_in21k_ft_in1k":
        _Timm("large", 16, 224, 0.9, "bicubic", _HALF, _HALF, 1000),
}

# The MAE repository's fine-tuned ImageNet-1k checkpoints (its FINETUNE.md): 224 px, 1000
# classes, global average pooling + fc_norm. Their eval transform (util/datasets.py):
# Resize(int(224 / (224 / 256))) = 256 bicubic, CenterCrop 224, ImageNet mean/std.
_MAE_URL = "https://dl.fbaipublicfiles.com/mae/finetune/"
_MAE = {
    "vit_base_patch16": ("base", _MAE_URL + "mae_finetuned_vit_base.pth"),
    "vit_large_patch16": ("large", _MAE_URL + "mae_finetuned_vit_large.pth"),
}
_MAE_EVAL = dict(resize_size=256, crop_size=224, interpolation="bicubic", mean=IMAGENET_MEAN,
                 std=IMAGENET_STD)
_TORCHVISION_ARCHS = ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14")


def _torchvision_weights(name: str):
    """'vit_b_16:IMAGENET1K_SWAG_E2E_V1' -> (architecture, torchvision WeightsEnum member)."""
    from torchvision.models import get_model_weights

    arch, _, tag = name.partition(":")
    if arch not in _TORCHVISION_ARCHS or not tag:
        raise ValueError(f"unknown weights {name!r}; expected 'ARCH:WEIGHTS' with ARCH one of "
                         f"{', '.join(_TORCHVISION_ARCHS)}, e.g. 'vit_b_16:IMAGENET1K_SWAG_E2E_V1' "
                         f"(torchvision), or 'timm:TAG', or 'mae:MODEL'")
    enum = get_model_weights(arch)
    if tag not in enum.__members__:
        raise ValueError(f"unknown weights {tag!r} for {arch}; torchvision has "
                         f"{', '.join(m for m in enum.__members__ if m != 'DEFAULT')}")
    return arch, enum[tag]


def _parse(name: str) -> tuple[str, str]:
    """'timm:TAG' -> ("timm", TAG); 'mae:MODEL' -> ("mae", MODEL); else ("torchvision", name)."""
    kind, _, key = name.partition(":")
    table = {"timm": _TIMM, "mae": _MAE}.get(kind)
    if table is None:
        _torchvision_weights(name)  # raises for an unknown name
        return "torchvision", name
    if key not in table:
        raise ValueError(f"unknown {kind} weights {key!r}; known: {', '.join(table)} "
                         f"(another file of the same layout: pretrained.from_{kind})")
    return kind, key


def architecture(name: str) -> dict:
    """The ViTConfig fields of the named weights: vit.ViT(**architecture(name)) fits them."""
    kind, key = _parse(name)
    if kind == "torchvision":
        arch, weights = _torchvision_weights(name)
        return vit.PRESETS[arch] | dict(image_size=weights.meta["min_size"][0],
                                        num_classes=len(weights.meta["categories"]), pool="token")
    if kind == "timm":
        t = _TIMM[key]
        return vit.PRESETS[t.preset] | dict(patch_size=t.patch_size, image_size=t.image_size,
                                            num_classes=t.classes, pool="token")
    return vit.PRESETS[_MAE[key][0]] | dict(patch_size=16, image_size=224, num_classes=1000,
                                            pool="avg")


def num_classes(name: str) -> int:
    """Classes of the named weights' head."""
    return architecture(name)["num_classes"]


def eval_spec(name: str) -> dict:
    """The named weights' own eval transform, in data.py's eval_spec format (no download)."""
    kind, key = _parse(name)
    if kind == "torchvision":
        t = _torchvision_weights(name)[1].transforms()
        return dict(resize_size=t.resize_size[0], crop_size=t.crop_size[0], mean=tuple(t.mean),
                    std=tuple(t.std), interpolation=t.interpolation.value)
    if kind == "timm":
        t = _TIMM[key]
        # timm's transforms_imagenet_eval: Resize(floor(size / crop_pct)), CenterCrop(size)
        return dict(resize_size=math.floor(t.image_size / t.crop_pct), crop_size=t.image_size,
                    interpolation=t.interpolation, mean=t.mean, std=t.std)
    return dict(_MAE_EVAL)


# ----------------------------------------------------------------------------- loading
def _url(kind: str, key: str) -> str:
    """Where the named weights' file is published."""
    if kind == "torchvision":
        return _torchvision_weights(key)[1].url
    if kind == "timm":
        return f"https://huggingface.co/timm/{key} (model.safetensors or pytorch_model.bin)"
    return _MAE[key][1]


def _download(kind: str, key: str):
    """The named weights through torch.hub's download cache ($TORCH_HOME), where published so."""
    try:
        if kind == "torchvision":
            weights = _torchvision_weights(key)[1]
            return weights.get_state_dict(progress=True, check_hash=True, weights_only=True)
        if kind == "mae":
            return torch.hub.load_state_dict_from_url(_MAE[key][1], map_location="cpu",
                                                      progress=True, weights_only=True)
    except OSError as err:  # no network (URLError), a refused or broken download
        name = key if kind == "torchvision" else f"{kind}:{key}"
        raise OSError(f"cannot download the weights {name} from {_url(kind, key)} "
                      f"({getattr(err, 'reason', err)}). Without a network: download that file "
                      f"elsewhere and pass it with --weights-file FILE") from err
    raise ValueError(f"timm:{key} is published on the Hugging Face hub only: download it from "
                     f"{_url(kind, key)} and pass the file as weights_file "
                     f"(train.py: --weights-file FILE)")


def _read_file(path: str, *, name: str, url: str):
    """What a weights file holds: .safetensors, or .pth/.bin through torch.load(weights_only)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} not found; expected the weights of "
                                f"{name}, published at {url}")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ImportError(f"{path} is a .safetensors file and the safetensors package is "
                              f"not installed: pip install safetensors, or pass the .bin/.pth "
                              f"of {name}") from None
        try:
            return load_file(path, device="cpu")
        except Exception as e:  # safetensors' SafetensorError on a truncated or foreign file
            raise ValueError(f"{path} is not a readable .safetensors file (truncated, or another "
                             f"format renamed): expected the weights of {name} ({url}); "
                             f"safetensors says: {e}") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the unpickler raises KeyError, ... on a text file
        raise ValueError(f"{path} is not a file torch.load(weights_only=True) can read: expected "
                         f"the .pth/.bin/.safetensors of {name} ({url}); torch says: {e}") from e


def load(name: str, *, weights_file: str | None = None, **overrides) -> vit.ViT:
    """A ViT holding the named weights, from `weights_file` or downloaded (module docstring)."""
    kind, key = _parse(name)
    url = _url(kind, key)
    if weights_file is None:
        held = _download(kind, key)
    else:
        held = _read_file(weights_file, name=name, url=url)
    source = weights_file or url
    if not isinstance(held, dict):  # a tensor or a list saved by mistake
        raise ValueError(f"{source} holds a {type(held).__name__}, not the state dict of {name}")
    if kind == "torchvision":
        state = _torchvision_names(held)
    elif kind == "mae":
        state = _unwrap_mae(held, source)
    else:
        state = dict(held)
    layout = "torchvision" if kind == "torchvision" else "timm"
    found = _architecture_of(state, layout=layout, source=source)
    expected = architecture(name)
    _check_file(found, expected, name=name, source=source)  # the file itself, before overrides
    overrides = {"heads": expected["heads"]} | overrides
    return _convert(state, found, overrides, layout=layout, source=source)
