"""Tests for inputs/pretrained.py with timm as the oracle: timm and MAE files load with timm's
logits.

timm is a test-only dependency (pretrained.py never imports it), as minGPT tests against HF
transformers. torchvision weights: test_vit.py.
"""
import os
import subprocess
import sys
import urllib.error

import pytest
import safetensors.torch
import timm
import torch
import torchvision
from timm.data import create_transform, resolve_data_config
from timm.layers import resample_abs_pos_embed
from timm.models import get_pretrained_cfg
from timm.models.vision_transformer import checkpoint_filter_fn

from inputs import pretrained

TIMM_TAGS = ["vit_base_patch16_224.augreg_in1k", "vit_base_patch16_224.augreg_in21k_ft_in1k",
             "vit_base_patch16_224.augreg2_in21k_ft_in1k",
             "vit_large_patch16_224.augreg_in21k_ft_in1k"]
MAE_URL = "https://dl.fbaipublicfiles.com/mae/finetune/mae_finetuned_vit_base.pth"


def timm_model(arch: str, **kwargs) -> torch.nn.Module:
    """timm's model with random weights, every one non-trivial: LayerNorm gains around 1 and
    biases around 0, every other tensor N(0, 0.02) (none zero, as timm's init leaves some), so
    a skipped or misplaced LayerNorm, a wrong pooling or a wrong head changes the logits.
    Built on the meta device, then filled: timm's own init of ViT-L takes tens of seconds."""
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False, **kwargs)
    model.to_empty(device="cpu")
    assert not list(model.buffers())  # nothing left unfilled
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:  # norm1, norm2, norm, fc_norm
                p.normal_(1.0 if name.endswith("weight") else 0.0, 0.1, generator=g)
            else:
                p.normal_(0.0, 0.02, generator=g)
    return model.eval()


def mae_keys(depth: int) -> set:
    """The MAE repository's fine-tuned ViT (models_vit.py, global_pool=True): timm 0.3 names,
    fc_norm, and no final norm (deleted)."""
    keys = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
            "fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"}
    parts = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
    return keys | {f"blocks.{i}.{part}.{kind}" for i in range(depth) for part in parts
                   for kind in ("weight", "bias")}


def save(state: dict, path) -> str:
    """A state dict as timm's hub files hold it: .safetensors, or torch.save for .bin/.pth."""
    if str(path).endswith(".safetensors"):
        safetensors.torch.save_file(state, str(path))
    else:
        torch.save(state, path)
    return str(path)


# ----------------------------------------------------------------------------- parity


@pytest.mark.parametrize("tag, file, batch", [
    ("vit_base_patch16_224.augreg_in21k_ft_in1k", "pytorch_model.bin", 2),
    ("vit_base_patch16_224.augreg2_in21k_ft_in1k", "model.safetensors", 2),
    ("vit_large_patch16_224.augreg_in21k_ft_in1k", "pytorch_model.bin", 1),
], ids=["base.bin", "base.safetensors", "large.bin"])
def test_timm_file_by_name_gives_timm_logits(tmp_path, tag, file, batch):
    """The hub's files, .bin and .safetensors, loaded by name: timm's logits within 1e-5."""
    name = f"timm:{tag}"
    reference = timm_model(tag.split(".")[0])
    x = torch.randn(batch, 3, 224, 224)
    with torch.no_grad():
        expected = reference(x)
    path = save(reference.state_dict(), tmp_path / file)
    del reference  # the large model: keep one copy in memory at a time
    ours = pretrained.load(name, weights_file=path).eval()
    assert ours.config.pool == "token"
    with torch.no_grad():
        got = ours(x)
    assert expected.abs().max() > 0.1  # the perturbation made the logits non-trivial
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_timm_avg_pool_gives_timm_logits_and_features():
    """global_pool="avg", fc_norm=True: mean of the patch tokens, then fc_norm, then the head."""
    reference = timm_model("vit_base_patch16_224", depth=2, global_pool="avg", fc_norm=True)
    ours = pretrained.from_timm(reference.state_dict()).eval()
    assert ours.config.pool == "avg"
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        z = reference.forward_features(x)  # (B, 1 + N, D), unnormed: timm's norm is an Identity
        features = reference.forward_head(z, pre_logits=True)
        _, blocks = ours(x, return_blocks=True)
        torch.testing.assert_close(ours.features(blocks[-1]), features, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=0)


def test_mae_checkpoint_gives_timm_logits(tmp_path):
    """The MAE layout: timm's avg-pool model's tensors under the MAE checkpoint's names and
    wrapping, {"model": state dict}, as its main_finetune.py saves it."""
    reference = timm_model("vit_base_patch16_224", global_pool="avg", fc_norm=True)
    state = reference.state_dict()
    assert set(state) == mae_keys(12)  # same names: timm 0.3's, fc_norm, no final norm
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = reference(x)
    path = tmp_path / "mae_finetuned_vit_base.pth"
    torch.save({"model": state}, path)
    del reference, state
    ours = pretrained.load("mae:vit_base_patch16", weights_file=str(path)).eval()
    assert ours.config.pool == "avg"
    with torch.no_grad():
        torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=0)


def test_image_size_override_resizes_as_timm():
    """224 -> 384: the position embedding as timm's resample_abs_pos_embed, logits as timm's
    own 384 px model loading the same state dict."""
    source = timm_model("vit_tiny_patch16_224", depth=1)
    ours = pretrained.from_timm(source.state_dict(), image_size=384).eval()
    resized = resample_abs_pos_embed(source.pos_embed.detach(), [24, 24])
    torch.testing.assert_close(ours.pos_embed.detach(), resized, atol=1e-6, rtol=0)
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=1, img_size=384)
    reference.load_state_dict(checkpoint_filter_fn(source.state_dict(), reference))
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference.eval()(x), atol=1e-5, rtol=0)


def test_new_num_classes_gets_a_fresh_head():
    source = timm_model("vit_tiny_patch16_224", depth=2, global_pool="avg", fc_norm=True)
    model = pretrained.from_mae({"model": source.state_dict()}, num_classes=10)
    assert model.head.weight.shape == (10, 192)
    assert torch.count_nonzero(model.head.weight) == 0  # new head, zero-initialised
    assert torch.equal(model.norm.weight, source.fc_norm.weight)  # fc_norm -> norm
    assert torch.equal(model.blocks[1].attn.qkv.weight, source.blocks[1].attn.qkv.weight)


# ----------------------------------------------------------------------------- the names' facts


@pytest.mark.parametrize("tag", TIMM_TAGS)
def test_timm_table_is_timms_own_pretrained_cfg(tag):
    """Eval transform, classes, hub file and architecture of each name, as timm states them."""
    cfg = get_pretrained_cfg(tag)
    name = f"timm:{tag}"
    transform = create_transform(**resolve_data_config(pretrained_cfg=cfg.to_dict()))
    resize, crop = transform.transforms[:2]
    spec = pretrained.eval_spec(name)
    assert spec["resize_size"] == resize.size
    assert (spec["crop_size"], spec["crop_size"]) == tuple(crop.size)
    assert spec["interpolation"] == resize.interpolation.value == cfg.interpolation
    assert (spec["mean"], spec["std"]) == (cfg.mean, cfg.std)
    assert pretrained.num_classes(name) == cfg.num_classes
    assert cfg.hf_hub_id == f"timm/{tag}"  # where the load error sends the user
    with torch.device("meta"):
        model = timm.create_model(cfg.architecture, pretrained=False)
    arch = pretrained.architecture(name)
    assert arch["width"] == model.embed_dim
    assert arch["depth"] == len(model.blocks)
    assert arch["heads"] == model.blocks[0].attn.num_heads
    assert arch["mlp_dim"] == model.blocks[0].mlp.fc1.out_features
    assert (arch["patch_size"], arch["patch_size"]) == model.patch_embed.patch_size
    assert (arch["image_size"], arch["image_size"]) == model.patch_embed.img_size
    assert arch["pool"] == model.global_pool == "token"


def test_architecture_and_eval_spec_of_torchvision_and_mae():
    arch = pretrained.architecture("vit_b_16:IMAGENET1K_SWAG_E2E_V1")
    with torch.device("meta"):
        reference = torchvision.models.vit_b_16(image_size=384)
    assert (arch["image_size"], arch["patch_size"], arch["width"], arch["mlp_dim"]) == (
        reference.image_size, reference.patch_size, reference.hidden_dim, reference.mlp_dim)
    assert arch["depth"] == len(reference.encoder.layers)
    assert arch["heads"] == reference.encoder.layers[0].self_attention.num_heads
    assert pretrained.num_classes("vit_b_16:IMAGENET1K_SWAG_E2E_V1") == 1000
    # MAE: its models_vit.py sizes, global pooling; util/datasets.py's eval transform
    for name, width, depth in (("mae:vit_base_patch16", 768, 12),
                               ("mae:vit_large_patch16", 1024, 24)):
        arch = pretrained.architecture(name)
        assert (arch["width"], arch["depth"], arch["patch_size"]) == (width, depth, 16)
        assert arch["pool"] == "avg"
        assert pretrained.eval_spec(name) == dict(
            resize_size=256, crop_size=224, interpolation="bicubic",
            mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


# ----------------------------------------------------------------------------- errors


def test_wrong_file_is_refused_naming_it(tmp_path):
    path = save(timm_model("vit_tiny_patch16_224", depth=1, num_classes=10).state_dict(),
                tmp_path / "tiny.bin")
    message = (r"tiny\.bin holds a ViT with width=192, depth=1, mlp_dim=768, num_classes=10 but "
               r"timm:vit_base_patch16_224\.augreg_in1k has width=768, depth=12, mlp_dim=3072, "
               r"num_classes=1000: wrong file")
    with pytest.raises(ValueError, match=message):
        pretrained.load("timm:vit_base_patch16_224.augreg_in1k", weights_file=path)
    with pytest.raises(ValueError, match=r"wrong file"):  # also when asking for a new head
        pretrained.load("timm:vit_base_patch16_224.augreg_in1k", weights_file=path,
                        num_classes=10, depth=1, width=192, heads=3, mlp_dim=768)
    # a class-token file given as an MAE name: wrapped right, pooled wrong
    mae = tmp_path / "mae.pth"
    torch.save({"model": torch.load(path, weights_only=True)}, mae)
    with pytest.raises(ValueError, match=r"mae\.pth holds a ViT with .*pool=token but "
                                         r"mae:vit_base_patch16 has .*pool=avg"):
        pretrained.load("mae:vit_base_patch16", weights_file=str(mae))


def test_mae_file_layout_errors(tmp_path):
    state = timm_model("vit_tiny_patch16_224", depth=1, global_pool="avg").state_dict()
    bare = save(state, tmp_path / "bare.pth")
    with pytest.raises(ValueError, match=r"bare\.pth is not an MAE checkpoint: expected a dict "
                                         r"\{'model': state dict\}"):
        pretrained.load("mae:vit_base_patch16", weights_file=bare)
    headless = tmp_path / "mae_pretrain_vit_base.pth"
    torch.save({"model": {k: v for k, v in state.items() if not k.startswith("head.")}}, headless)
    with pytest.raises(ValueError, match=r"mae_pretrain_vit_base\.pth has no classifier head"):
        pretrained.load("mae:vit_base_patch16", weights_file=str(headless))


def test_downloads_and_their_absence(monkeypatch):
    """Every named file comes through torch.hub's cache from where it is published (hashes
    checked where the file name carries one; timm's cached under its tag); without a network
    the message says how to give the file instead."""
    def offline(url, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(OSError, match=r"cannot download the weights timm:vit_base_patch16_224\."
                                      r"augreg_in1k from https://huggingface\.co/timm/vit_base_"
                                      r"patch16_224\.augreg_in1k/resolve/main/pytorch_model\.bin "
                                      r"\(no network\).*--weights-file FILE"):
        pretrained.load("timm:vit_base_patch16_224.augreg_in1k")
    calls = []
    small = timm_model("vit_tiny_patch16_224", depth=1, global_pool="avg").state_dict()
    ten_classes = torchvision.models.vit_b_32(num_classes=10).state_dict()

    def fake_download(url, **kwargs):
        calls.append((url, kwargs["weights_only"], kwargs["check_hash"], kwargs["file_name"]))
        return {"model": small} if url == MAE_URL else small if "timm" in url else ten_classes

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    with pytest.raises(ValueError, match=r"mae_finetuned_vit_base\.pth holds a ViT with width=192"):
        pretrained.load("mae:vit_base_patch16")
    with pytest.raises(ValueError, match=r"vit_b_32-d86f8d99\.pth holds a ViT with num_classes=10"):
        pretrained.load("vit_b_32:IMAGENET1K_V1")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin holds a ViT with width=192"):
        pretrained.load("timm:vit_base_patch16_224.augreg_in1k")
    tv_url = torchvision.models.ViT_B_32_Weights.IMAGENET1K_V1.url
    timm_url = "https://huggingface.co/timm/vit_base_patch16_224.augreg_in1k/resolve/main/"
    assert calls == [(MAE_URL, True, True, None), (tv_url, True, True, None),
                     (timm_url + "pytorch_model.bin", True, True,
                      "timm_vit_base_patch16_224.augreg_in1k.bin")]


def test_unreadable_files(tmp_path, monkeypatch):
    garbage = tmp_path / "pytorch_model.bin"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match=r"pytorch_model\.bin is not a file torch\.load\("
                                         r"weights_only=True\) can read"):
        pretrained.load("timm:vit_base_patch16_224.augreg_in1k", weights_file=str(garbage))
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors' not found.*huggingface\.co"):
        pretrained.load("timm:vit_base_patch16_224.augreg_in1k",
                        weights_file=str(tmp_path / "nope.safetensors"))
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "safetensors", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ImportError, match=r"model\.safetensors is a \.safetensors file .*"
                                          r"pip install safetensors, or pass the \.bin/\.pth"):
        pretrained.load("timm:vit_base_patch16_224.augreg_in1k", weights_file=str(path))


def test_layouts_are_told_apart():
    tv_state = torchvision.models.vit_b_32().state_dict()
    with pytest.raises(ValueError, match=r"not a timm ViT \(with a class token\) state dict: "
                                         r"missing \['cls_token', 'patch_embed\.proj\.weight'"):
        pretrained.from_timm(tv_state)
    scaled = timm_model("vit_tiny_patch16_224", depth=1, init_values=1e-5)  # layer scale
    with pytest.raises(ValueError, match=r"unexpected keys \['blocks\.0\.ls1\.gamma', "
                                         r"'blocks\.0\.ls2\.gamma'\]"):
        pretrained.from_timm(scaled.state_dict())


@pytest.mark.parametrize("name, message", [
    ("timm:vit_base_patch16_224.nope", r"unknown timm weights 'vit_base_patch16_224\.nope'; "
                                       r"known: vit_base_patch16_224\.augreg_in1k"),
    ("mae:vit_huge_patch14", r"unknown mae weights 'vit_huge_patch14'; known: vit_base_patch16"),
    ("vit_b_17:X", r"ARCH one of vit_b_16.*'timm:TAG', or 'mae:MODEL'"),
])
def test_unknown_names(name, message):
    for function in (pretrained.eval_spec, pretrained.architecture, pretrained.load):
        with pytest.raises(ValueError, match=message):
            function(name)


def test_runtime_never_imports_timm(tmp_path):
    """timm is the tests' oracle only: naming, reading and converting its files needs none."""
    state = timm_model("vit_tiny_patch16_224", depth=1).state_dict()
    path = save(state, tmp_path / "t.safetensors")
    code = ("import sys\nfrom inputs import pretrained\n"
            "pretrained.eval_spec('timm:vit_base_patch16_224.augreg_in1k')\n"
            f"pretrained.from_timm(pretrained._read_file({path!r}, name='t', url='u'))\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'timm'))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_no_network_says_to_pass_the_file(monkeypatch):
    import urllib.error

    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(OSError, match=r"cannot download the weights mae:vit_base_patch16 from "
                                      r"https://dl\.fbaipublicfiles\.com/.*--weights-file FILE"):
        pretrained.load("mae:vit_base_patch16")
