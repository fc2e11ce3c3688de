"""Released ViT weights as a `vit.ViT`: torchvision, timm (AugReg) and MAE checkpoints, by name.

    load(name, *, weights_file=None, **overrides) -> vit.ViT   the weights, converted and checked
    eval_spec(name), num_classes(name), architecture(name)     their eval transform, classes and
                                                               ViTConfig fields (no download)
    from_torchvision(...), from_timm(...), from_mae(...)       converters, any file of the layout

Names: torchvision "ARCH:WEIGHTS" (e.g. "vit_b_16:IMAGENET1K_SWAG_E2E_V1"), "timm:TAG" (from the
Hugging Face hub) and "mae:MODEL" are downloaded into torch.hub's cache, or read from weights_file.
`overrides` are ViTConfig fields: `image_size` (the position embedding is interpolated as the
weights' own library does), `num_classes` (a new zero-initialised head), dropout rates. timm
itself is never imported.
"""
import math
import os
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models import get_model_weights

import vit
from inputs.transforms import IMAGENET_MEAN, IMAGENET_STD

_WIDTH_TO_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}  # heads are not visible in shapes


# ----------------------------------------------------------------------------- key layouts
# Our parameter names -> a file's: each pair replaced in turn (i: the block index).
# torchvision's VisionTransformer (class_token: the same):
_TORCHVISION_KEYS = (
    ("pos_embed", "encoder.pos_embedding"),
    ("patch_embed.proj.", "conv_proj."),
    ("blocks.", "encoder.layers.encoder_layer_"),  # blocks.i. -> encoder.layers.encoder_layer_i.
    ("norm1.", "ln_1."),
    ("norm2.", "ln_2."),
    ("attn.qkv.", "self_attention.in_proj_"),  # attn.qkv.weight -> self_attention.in_proj_weight
    ("attn.proj.", "self_attention.out_proj."),
    ("mlp.fc1.", "mlp.0."),  # torchvision < 0.13: mlp.linear_1
    ("mlp.fc2.", "mlp.3."),  # torchvision < 0.13: mlp.linear_2
    ("norm.", "encoder.ln."),
    ("head.", "heads.head."),
)
# timm's VisionTransformer, and the MAE repository's (models_vit.py subclasses timm 0.3's: the
# same names): ours but for the class token, and for global average pooling, whose LayerNorm is
# fc_norm (timm's norm is then an Identity; MAE deletes it: no norm.* in the file).
_TIMM_KEYS = {"token": (("class_token", "cls_token"),),
              "avg": (("class_token", "cls_token"), ("norm.", "fc_norm."))}


def _file_key(ours: str, *, layout: str, pool: str = "token") -> str:
    """Our parameter name -> the file's, e.g. blocks.3.mlp.fc1.weight -> torchvision's
    encoder.layers.encoder_layer_3.mlp.0.weight."""
    for a, b in _TORCHVISION_KEYS if layout == "torchvision" else _TIMM_KEYS[pool]:
        ours = ours.replace(a, b)
    return ours


# ----------------------------------------------------------------------------- conversion
def _architecture_of(state: dict, *, layout: str, source: str) -> dict:
    """ViTConfig fields read off a state dict's shapes (heads guessed from the width)."""
    cls, patch, pos, fc1, head, blocks = map(partial(_file_key, layout=layout), (
        "class_token", "patch_embed.proj.weight", "pos_embed", "blocks.0.mlp.fc1.weight",
        "head.weight", "blocks."))  # the file's names of the tensors read
    missing = [k for k in (cls, patch, pos, fc1) if k not in state]
    if missing:
        what, example = (("torchvision VisionTransformer", "torchvision.models.vit_b_16()")
                         if layout == "torchvision" else
                         ("timm ViT (with a class token)", "timm's vit_base_patch16_224()"))
        raise ValueError(f"{source} is not a {what} state dict: missing {missing} (expected keys "
                         f"like those of {example}.state_dict())")
    if head not in state:
        raise ValueError(f"{source} has no classifier head ({head}): a pretraining-only "
                         f"checkpoint? Expected a fine-tuned one")
    width, channels, patch_size, _ = state[patch].shape
    grid = math.isqrt(state[pos].shape[1] - 1)
    depth = len({k[len(blocks):].split(".")[0] for k in state if k.startswith(blocks)})
    return dict(
        image_size=grid * patch_size, patch_size=patch_size, width=width, channels=channels,
        depth=depth, heads=_WIDTH_TO_HEADS.get(width, max(1, width // 64)),
        mlp_dim=state[fc1].shape[0], num_classes=state[head].shape[0],
        pool="avg" if "fc_norm.weight" in state else "token")


def _resize_pos_embed(pos_embed: torch.Tensor, grid: int, *, layout: str) -> torch.Tensor:
    """(1, 1 + n*n, D) -> (1, 1 + grid*grid, D): bicubic over the patch grid, class slot kept,
    as the weights' own library: torchvision's interpolate_embeddings (align_corners=True),
    timm's resample_abs_pos_embed (antialias=True).
    Note: MAE files too are resized as timm does (MAE's interpolate_pos_embed has no antialias:
    the same result when enlarging, as fine-tuning at a higher resolution does)."""
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


def _convert(state: dict, overrides: dict, *, layout: str, source: str,
             name: str | None = None) -> vit.ViT:
    """A ViT of the state dict's architecture | `overrides`, each parameter taken from `state`
    by the key layout (torchvision, timm, or mae: timm's in {"model": state dict}, as the MAE
    repository saves it). With a `name`, the file itself must hold those weights."""
    if layout == "torchvision":  # the MLP's names before torchvision 0.13
        state = {k.replace("mlp.linear_1", "mlp.0").replace("mlp.linear_2", "mlp.3"): v
                 for k, v in state.items()}
    if layout == "mae":
        if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
            raise ValueError(f"{source} is not an MAE checkpoint: expected a dict {{'model': "
                             f"state dict}} as the MAE repository saves it (a bare timm state "
                             f"dict: from_timm, or a 'timm:' name)")
        state = state["model"]
    found = _architecture_of(state, layout=layout, source=source)
    if name is not None:  # the file itself, before any override; heads are not in its shapes
        expected = architecture(name)
        _check_file(found, expected, name=name, source=source)
        overrides = {"heads": expected["heads"]} | overrides
    with torch.device("meta"):  # no random init of what the weights replace (ViT-L: 300M values)
        model = vit.ViT(vit.ViTConfig(**(found | overrides)))
    c = model.config
    converted = {}
    unused = set(state)
    for ours, target in model.state_dict().items():
        key = _file_key(ours, layout=layout, pool=found["pool"])  # the file's pooling
        if key not in state:
            raise ValueError(f"{source} has no {key!r} (needed for {ours}); expected a "
                             f"{c.depth}-block ViT in {layout}'s layout")
        unused.discard(key)
        tensor = state[key]
        if ours == "pos_embed" and tensor.shape != target.shape and tensor.shape[2] == c.width:
            tensor = _resize_pos_embed(tensor, c.image_size // c.patch_size, layout=layout)
        if ours.startswith("head.") and c.num_classes != found["num_classes"]:
            # a new head for a new label set: zero, as ViT.reset_parameters initialises it
            tensor = torch.zeros_like(target, device="cpu")
        if tensor.shape != target.shape:
            raise ValueError(f"shape mismatch for {ours} ({source} {key}): weights have "
                             f"{tuple(tensor.shape)}, a ViT with {c} expects {tuple(target.shape)}")
        converted[ours] = tensor.to(target.dtype, copy=True)  # own memory, not the source's
    if unused:
        raise ValueError(f"unexpected keys {sorted(unused)[:5]} in {source}: the weights have "
                         f"parts a plain ViT with depth={c.depth} lacks (more blocks, a "
                         f"representation layer, layer scale, qk-norm, register tokens?)")
    model.load_state_dict(converted, assign=True)  # replaces the meta tensors
    return model


def _check_file(found: dict, expected: dict, *, name: str, source: str) -> None:
    """The file's own architecture (before any override) must be the named weights'."""
    fields = ("image_size", "patch_size", "width", "depth", "mlp_dim", "num_classes", "pool")
    wrong = [f for f in fields if found[f] != expected[f]]
    if wrong:
        have = ", ".join(f"{f}={found[f]}" for f in wrong)
        want = ", ".join(f"{f}={expected[f]}" for f in wrong)
        raise ValueError(f"{source} holds a ViT with {have} but {name} has {want}: "
                         f"wrong file for {name}?")


def from_torchvision(model_or_state, **overrides) -> vit.ViT:
    """A ViT holding a torchvision VisionTransformer's weights (module or state dict); heads
    from the module, else guessed from the width (or an override, as any ViTConfig field)."""
    if isinstance(model_or_state, nn.Module):
        heads = model_or_state.encoder.layers[0].self_attention.num_heads
        overrides = {"heads": heads} | overrides
        model_or_state = model_or_state.state_dict()
    return _convert(model_or_state, overrides, layout="torchvision",
                    source="torchvision state dict")


def from_timm(state, **overrides) -> vit.ViT:
    """A ViT holding a timm VisionTransformer state dict (class token; pool "avg" if fc_norm).
    Note: a timm model with global_pool="avg" and fc_norm=False (LN before pooling) has the
    same keys as a class-token one and is read as one: timm's default for "avg" is fc_norm."""
    return _convert(state, overrides, layout="timm", source="timm state dict")


def from_mae(ckpt, **overrides) -> vit.ViT:
    """A ViT holding an MAE repository checkpoint: {"model": state dict}, timm's names."""
    return _convert(ckpt, overrides, layout="mae", source="checkpoint")


# ----------------------------------------------------------------------------- names
# The timm tags and their presets; their facts, copied from timm 1.0.31's get_pretrained_cfg(TAG)
# (test_pretrained.py checks them against it): 224 px, patch 16, 1000 classes, class token.
_TIMM = {
    "vit_base_patch16_224.augreg_in1k": "base",
    "vit_base_patch16_224.augreg_in21k_ft_in1k": "base",
    "vit_base_patch16_224.augreg2_in21k_ft_in1k": "base",
    "vit_large_patch16_224.augreg_in21k_ft_in1k": "large",
}
# timm's transforms_imagenet_eval: Resize(floor(size / crop_pct)), crop_pct 0.9, CenterCrop(size)
_TIMM_EVAL = dict(resize_size=math.floor(224 / 0.9), crop_size=224, interpolation="bicubic",
                  mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

# The MAE repository's fine-tuned ImageNet-1k checkpoints (its FINETUNE.md): 224 px, patch 16,
# 1000 classes, global average pooling + fc_norm. Their eval transform (util/datasets.py):
# Resize(int(224 / (224 / 256))) = 256 bicubic, CenterCrop 224, ImageNet mean/std.
_MAE = {"vit_base_patch16": "base", "vit_large_patch16": "large"}
_MAE_URL = "https://dl.fbaipublicfiles.com/mae/finetune/mae_finetuned_vit_{}.pth"  # the preset
_MAE_EVAL = dict(resize_size=256, crop_size=224, interpolation="bicubic", mean=IMAGENET_MEAN,
                 std=IMAGENET_STD)
_TORCHVISION_ARCHS = ("vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "vit_h_14")


def _torchvision_weights(name: str):
    """'vit_b_16:IMAGENET1K_SWAG_E2E_V1' -> (architecture, torchvision WeightsEnum member)."""
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
    preset = _TIMM[key] if kind == "timm" else _MAE[key]
    return vit.PRESETS[preset] | dict(patch_size=16, image_size=224, num_classes=1000,
                                      pool="token" if kind == "timm" else "avg")


def num_classes(name: str) -> int:
    """Classes of the named weights' head."""
    return architecture(name)["num_classes"]


def eval_spec(name: str) -> dict:
    """The named weights' own eval transform (no download), as data.py's eval_spec takes it:
    resize_size, crop_size, interpolation, mean, std."""
    kind, _ = _parse(name)
    if kind == "torchvision":
        t = _torchvision_weights(name)[1].transforms()
        return dict(resize_size=t.resize_size[0], crop_size=t.crop_size[0], mean=tuple(t.mean),
                    std=tuple(t.std), interpolation=t.interpolation.value)
    return dict(_TIMM_EVAL if kind == "timm" else _MAE_EVAL)


# ----------------------------------------------------------------------------- loading
def _download(name: str, url: str, file_name: str | None = None):
    """The weights at `url` through torch.hub's download cache ($TORCH_HOME), as `file_name`."""
    try:  # check_hash: torchvision's file names carry their hash's prefix
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True,
                                                  check_hash=True, weights_only=True,
                                                  file_name=file_name)
    except OSError as err:  # no network (URLError), a refused or broken download
        raise OSError(f"cannot download the weights {name} from {url} "
                      f"({getattr(err, 'reason', err)}). Without a network: download that file "
                      f"elsewhere and pass it with --weights-file FILE") from err


def _read_file(path: str, *, name: str, url: str):
    """What a weights file holds: .safetensors, or .pth/.bin through torch.load(weights_only)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path!r} not found; expected the weights of "
                                f"{name}, published at {url}")
    safetensors = path.endswith(".safetensors")
    if safetensors:
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise ImportError(f"{path} is a .safetensors file and the safetensors package is "
                              f"not installed: pip install safetensors, or pass the .bin/.pth "
                              f"of {name}") from None
    try:
        if safetensors:
            return load_file(path, device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated file, another format renamed, a text file
        reader = "safetensors" if safetensors else "torch.load(weights_only=True)"
        raise ValueError(f"{path} is not a file {reader} can read (truncated, or another format "
                         f"renamed?): expected the .pth/.bin/.safetensors of {name} ({url}); "
                         f"{reader} says: {e}") from e


def load(name: str, *, weights_file: str | None = None, **overrides) -> vit.ViT:
    """A ViT holding the named weights, from `weights_file` or downloaded (module docstring)."""
    kind, key = _parse(name)
    if kind == "torchvision":
        url = _torchvision_weights(name)[1].url
    elif kind == "timm":  # each tag's repository holds a pytorch_model.bin (and .safetensors)
        url = f"https://huggingface.co/timm/{key}/resolve/main/pytorch_model.bin"
    else:
        url = _MAE_URL.format(_MAE[key])
    if weights_file is not None:
        held = _read_file(weights_file, name=name, url=url)
    else:  # every timm file is named pytorch_model.bin: cached under its tag
        held = _download(name, url, f"timm_{key}.bin" if kind == "timm" else None)
    source = weights_file or url
    if not isinstance(held, dict):  # a tensor or a list saved by mistake
        raise ValueError(f"{source} holds a {type(held).__name__}, not the state dict of {name}")
    return _convert(held, overrides, layout=kind, source=source, name=name)
