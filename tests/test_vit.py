"""Tests for vit.py: logits parity with torchvision, presets, pooling, torchvision weights, errors.

The tests marked vit_attention / vit_block grade Attention.forward (Eqs. 5-8) and Block.forward
(Eqs. 2-3) alone (`pytest -m vit_attention`): each compares the one module with plain torch ops
written here, the block's attention itself computed by hand. Attention is graded on both of its
paths, the fused kernel and the written-out one (`fused = False`), the latter with
F.scaled_dot_product_attention made to fail. timm and MAE weights: test_pretrained.py.
"""
import functools
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.vision_transformer import interpolate_embeddings

import vit
from inputs import pretrained


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Make every parameter non-trivial: torchvision zero-inits the head and ones-inits LayerNorms,
    which would hide a wrong head or a skipped/misplaced LayerNorm."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if ".ln" in name or "encoder.ln" in name:  # LayerNorm: weight around 1, bias around 0
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
            else:
                p.add_(0.02 * noise)
    return model.eval()


# ----------------------------------------------------------------------------- graded units


def ref_attention(attn, z, dropout=0.0):
    """ViT Eqs. (5)-(8) by hand: an explicit softmax per head, heads concatenated, then U_msa.

    dropout > 0: F.dropout on the attention weights of Eq. (6), as in training."""
    b, n, d = z.shape
    h = attn.heads
    q, k, v = (z @ attn.qkv.weight.T + attn.qkv.bias).split(d, dim=-1)  # Eq. (5), (b, n, d) each
    q, k, v = (t.reshape(b, n, h, d // h).transpose(1, 2) for t in (q, k, v))  # (b, h, n, d / h)
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h), dim=-1)  # Eq. (6)
    weights = F.dropout(weights, p=dropout)
    heads = (weights @ v).transpose(1, 2).reshape(b, n, d)  # Eq. (7), heads side by side
    return heads @ attn.proj.weight.T + attn.proj.bias  # Eq. (8)


def graded_inputs(heads, seed=0):
    """A module with non-trivial parameters (LayerNorms too) and its input z (2, 7, 24)."""
    torch.manual_seed(seed)
    block = vit.Block(width=24, heads=heads, mlp_dim=48)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.3 * torch.randn(p.shape))
    return block.eval(), torch.randn(2, 7, 24)


def refuse_fused_kernel(*args, **kwargs):
    raise AssertionError("Attention.fused is False but F.scaled_dot_product_attention was "
                         "called: write ViT Eqs. (6)-(7) out, softmax(q k^T / sqrt(D_h)) v")


def pick_path(attn, fused, monkeypatch):
    """attn on the chosen path; the written-out one must not call the fused kernel."""
    attn.fused = fused
    if not fused:
        monkeypatch.setattr(F, "scaled_dot_product_attention", refuse_fused_kernel)
    return attn


@pytest.mark.vit_attention
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "written_out"])
@pytest.mark.parametrize("heads", [1, 3])
def test_attention_is_eqs_5_to_8(heads, fused, monkeypatch):
    block, z = graded_inputs(heads)
    attn = pick_path(block.attn, fused, monkeypatch)
    out = attn(z)
    assert out.shape == z.shape
    torch.testing.assert_close(out, ref_attention(attn, z), atol=1e-5, rtol=1e-4)


@pytest.mark.vit_attention
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "written_out"])
def test_attention_is_permutation_equivariant(fused, monkeypatch):
    block, z = graded_inputs(heads=3)
    attn = pick_path(block.attn, fused, monkeypatch)
    perm = torch.randperm(z.shape[1], generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(attn(z[:, perm]), attn(z)[:, perm], atol=1e-5, rtol=1e-4)


@pytest.mark.vit_attention
def test_written_out_attention_drops_the_weights_of_eq_6_in_training(monkeypatch):
    block, z = graded_inputs(heads=3)
    attn = pick_path(block.attn, False, monkeypatch)
    attn.dropout = 0.5
    torch.testing.assert_close(attn(z), ref_attention(attn, z), atol=1e-5, rtol=1e-4)  # eval
    attn.train()
    torch.manual_seed(7)
    out = attn(z)
    torch.manual_seed(7)  # the same random draws: F.dropout on the (B, H, N, N) weights
    expected = ref_attention(attn, z, dropout=0.5)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("width, heads, tokens", [(24, 3, 7), (768, 12, 197)],
                         ids=["small", "vit_b_16"])
def test_fused_and_written_out_attention_agree(width, heads, tokens):
    """Same outputs and same gradients (input, U_qkv, U_msa) on both paths of Attention."""
    torch.manual_seed(0)
    attn = vit.Attention(width=width, heads=heads)
    with torch.no_grad():
        for p in attn.parameters():
            p.normal_(std=width ** -0.5)  # q, k of std ~1: attention weights far from uniform
    z = torch.randn(2, tokens, width)
    direction = torch.randn(2, tokens, width)  # a random projection of the output to backprop
    results = []
    for fused in (True, False):
        attn.fused = fused
        x = z.clone().requires_grad_()
        out = attn(x)
        grads = torch.autograd.grad((out * direction).sum(), [x, *attn.parameters()])
        results.append((out, grads))
    (out_fused, grads_fused), (out_written, grads_written) = results
    torch.testing.assert_close(out_written, out_fused, atol=1e-5, rtol=1e-4)
    for written, fused in zip(grads_written, grads_fused):
        torch.testing.assert_close(written, fused, atol=1e-4, rtol=1e-4)


def test_fused_attention_drops_in_training_only():
    block, z = graded_inputs(heads=3)
    attn = block.attn
    attn.dropout = 0.5
    expected = ref_attention(attn, z)
    torch.testing.assert_close(attn(z), expected, atol=1e-5, rtol=1e-4)  # eval: no dropout
    attn.train()
    first = attn(z)
    assert not torch.allclose(first, expected, atol=1e-3)
    assert not torch.allclose(first, attn(z), atol=1e-3)  # new draws each call


@pytest.mark.vit_block
def test_block_is_eqs_2_and_3():
    block, z = graded_inputs(heads=3)
    block.attn.forward = functools.partial(ref_attention, block.attn)  # graded on its own
    out = block(z)

    def ln(t, norm):
        return F.layer_norm(t, (t.shape[-1],), norm.weight, norm.bias, norm.eps)

    z1 = z + ref_attention(block.attn, ln(z, block.norm1))  # Eq. (2)
    hidden = F.gelu(ln(z1, block.norm2) @ block.mlp.fc1.weight.T + block.mlp.fc1.bias)
    expected = z1 + hidden @ block.mlp.fc2.weight.T + block.mlp.fc2.bias  # Eq. (3)
    assert out.shape == z.shape
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_loss_is_cross_entropy_with_device_side_stats():
    torch.manual_seed(0)
    logits = torch.randn(6, 4, requires_grad=True)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    model = vit.ViT(image_size=8, patch_size=4, width=8, depth=1, heads=2, mlp_dim=8, num_classes=4)
    total, stats = model.loss(logits, y, label_smoothing=0.2)
    smooth = 0.8 * F.one_hot(y, 4) + 0.2 / 4
    expected = -(smooth * torch.log_softmax(logits, -1)).sum(-1).mean()
    torch.testing.assert_close(total, expected)
    assert set(stats) == {"ce", "total", "top1"}
    assert all(v.shape == () and not v.requires_grad for v in stats.values())
    top1 = 100 * (logits.argmax(-1) == y).sum().item() / 6
    assert stats["top1"].item() == pytest.approx(top1)
    total.backward()
    assert logits.grad.shape == (6, 4)


# ----------------------------------------------------------------------------- whole model


@pytest.mark.parametrize("builder, kwargs", [
    (torchvision.models.vit_b_16, {}),
    (torchvision.models.vit_b_32, {}),
    (torchvision.models.vit_b_16, {"image_size": 384}),
], ids=["vit_b_16", "vit_b_32", "vit_b_16@384"])
def test_logits_match_torchvision(builder, kwargs):
    torch.manual_seed(0)
    reference = perturbed(builder(**kwargs))
    ours = pretrained.from_torchvision(reference).eval()
    assert ours.config.image_size == reference.image_size
    x = torch.randn(2, 3, reference.image_size, reference.image_size)
    with torch.no_grad():
        expected = reference(x)
        got = ours(x)
    assert expected.abs().max() > 0.1  # the perturbation made the logits non-trivial
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_from_state_dict_equals_from_module():
    reference = perturbed(torchvision.models.vit_b_32())
    a = pretrained.from_torchvision(reference)
    b = pretrained.from_torchvision(reference.state_dict())  # heads inferred from the width
    assert a.config == b.config
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_position_embedding_interpolation_matches_torchvision():
    """224 -> 384: our resize equals torchvision's interpolate_embeddings, and so do the logits."""
    source = perturbed(torchvision.models.vit_b_32())
    ours = pretrained.from_torchvision(source, image_size=384).eval()
    state = interpolate_embeddings(384, 32, source.state_dict())
    reference = torchvision.models.vit_b_32(image_size=384)
    reference.load_state_dict(state)
    reference.eval()
    torch.testing.assert_close(ours.pos_embed, reference.encoder.pos_embedding, atol=1e-6, rtol=0)
    x = torch.randn(1, 3, 384, 384)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), atol=1e-5, rtol=0)


def test_new_num_classes_gets_a_fresh_head():
    source = perturbed(torchvision.models.vit_b_32())
    model = pretrained.from_torchvision(source, num_classes=10)
    assert model.head.weight.shape == (10, 768)
    assert torch.count_nonzero(model.head.weight) == 0  # new head, zero-initialised
    assert torch.equal(model.blocks[3].mlp.fc1.weight,
                       source.encoder.layers.encoder_layer_3.mlp[0].weight)


def test_vit_b_16_parameter_count():
    # 86,567,656 as torchvision's ViT_B_16_Weights.IMAGENET1K_V1.meta["num_params"] states
    assert sum(p.numel() for p in vit.create_vit("base").parameters()) == 86_567_656
    assert sum(p.numel() for p in vit.create_vit("vit_b_16").parameters()) == 86_567_656


def test_presets_and_overrides():
    expected = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12),
                "large": (1024, 24, 16), "huge": (1280, 32, 16)}
    for name, (width, depth, heads) in expected.items():
        c = vit.ViTConfig(**vit.PRESETS[name])
        got = (c.width, c.depth, c.heads, c.mlp_dim, c.patch_size)
        assert got == (width, depth, heads, 4 * width, 16)
    assert vit.ViTConfig(**vit.PRESETS["vit_h_14"]).patch_size == 14
    assert vit.ViTConfig(**vit.PRESETS["vit_l_32"]).depth == 24
    # CIFAR: 32x32 inputs with patch 4 -> 64 patch tokens + the class token
    model = vit.create_vit("tiny", image_size=32, patch_size=4, num_classes=10, depth=2)
    logits, blocks = model(torch.randn(3, 3, 32, 32), return_blocks=True)
    assert logits.shape == (3, 10)
    assert len(blocks) == 2 and all(z.shape == (3, 65, 192) for z in blocks)


def test_block_outputs_are_the_blocks_applied_in_turn():
    torch.manual_seed(0)
    model = vit.ViT(image_size=16, patch_size=4, width=32, depth=3, heads=2, mlp_dim=64,
                    num_classes=5)
    torch.nn.init.normal_(model.head.weight)
    x = torch.randn(2, 3, 16, 16)
    logits, blocks = model(x, return_blocks=True)
    z = model.embed(x)
    for block, z_l in zip(model.blocks, blocks):
        z = block(z)
        assert torch.equal(z, z_l)
    assert torch.equal(logits, model(x))
    # ViT Eq. (4): the head reads the LayerNorm of the class token of the last block
    assert torch.allclose(logits, model.head(model.norm(blocks[-1][:, 0])))
    # only the blocks asked for (what LLB keeps: z_l and z_L), in the order asked
    again, chosen = model(x, return_blocks=(2, 3, 2))
    assert torch.equal(again, logits) and len(chosen) == 3
    assert all(torch.equal(z, blocks[n - 1]) for z, n in zip(chosen, (2, 3, 2)))


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_features_pool_the_class_token_or_the_patch_tokens(pool):
    """ViT Eq. (4), y = LN(z_L^0), or with pool="avg" y = LN(mean over the N patch tokens)."""
    torch.manual_seed(0)
    model = vit.ViT(image_size=16, patch_size=4, width=32, depth=2, heads=2, mlp_dim=64,
                    num_classes=5, pool=pool)
    torch.nn.init.normal_(model.head.weight)
    torch.nn.init.normal_(model.norm.bias)
    z = torch.randn(3, 17, 32)  # (B, 1 + N, D)
    pooled = z[:, 0] if pool == "token" else z[:, 1:].mean(dim=1)  # (B, D)
    torch.testing.assert_close(model.features(z), model.norm(pooled))
    assert torch.equal(model.classify(z), model.head(model.features(z)))
    # the tokens y does not read leave it unchanged
    ignored = slice(1, None) if pool == "token" else slice(0, 1)
    shifted = z.clone()
    shifted[:, ignored] += 3.0
    assert torch.equal(model.features(shifted), model.features(z))
    x = torch.randn(2, 3, 16, 16)
    logits, blocks = model(x, return_blocks=True)
    assert torch.equal(logits, model.classify(blocks[-1]))


def test_pool_must_be_token_or_avg():
    with pytest.raises(ValueError, match=r"pool must be 'token' .* or 'avg' .*got 'max'"):
        vit.ViTConfig(pool="max")


def test_patches_are_flattened_in_row_major_order():
    """Eq. (1) as written: patch i is x_p^i E with E the flattened conv kernel."""
    model = vit.ViT(image_size=8, patch_size=4, width=8, depth=1, heads=2, mlp_dim=8, num_classes=2)
    x = torch.randn(1, 3, 8, 8)
    E = model.patch_embed.proj.weight.reshape(8, -1)  # (D, C*P*P)
    patches = x.unfold(2, 4, 4).unfold(3, 4, 4)  # (1, C, 2, 2, P, P)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(1, 4, -1)  # (1, N, C*P*P), row-major
    expected = patches @ E.T + model.patch_embed.proj.bias
    torch.testing.assert_close(model.patch_embed(x), expected, atol=1e-5, rtol=0)


def test_load_pretrained_from_local_file(tmp_path):
    source = perturbed(torchvision.models.vit_b_32())
    path = tmp_path / "vit_b_32.pth"
    torch.save(source.state_dict(), path)
    model = pretrained.load("vit_b_32:IMAGENET1K_V1", weights_file=str(path)).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), source(x), atol=1e-5, rtol=0)


def test_eval_spec_is_the_weights_own_transform():
    spec = pretrained.eval_spec("vit_b_16:IMAGENET1K_SWAG_E2E_V1")
    assert spec == dict(resize_size=384, crop_size=384, interpolation="bicubic",
                        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    spec = pretrained.eval_spec("vit_b_16:IMAGENET1K_V1")
    assert (spec["resize_size"], spec["crop_size"], spec["interpolation"]) == (256, 224, "bilinear")


# ----------------------------------------------------------------------------- errors


def test_unknown_preset():
    with pytest.raises(ValueError, match=r"unknown ViT preset 'bse'.*expected one of .*base"):
        vit.create_vit("bse")
    with pytest.raises(ValueError, match=r"unknown ViT option.*'widht'.*valid options"):
        vit.create_vit("base", widht=10)


@pytest.mark.parametrize("name, message", [
    ("vit_b_16:NOPE", r"unknown weights 'NOPE' for vit_b_16; torchvision has .*IMAGENET1K_V1"),
    ("vit_x_16:IMAGENET1K_V1", r"expected 'ARCH:WEIGHTS' with ARCH one of vit_b_16"),
    ("vit_b_16", r"expected 'ARCH:WEIGHTS'"),
])
def test_unknown_weight_names(name, message):
    with pytest.raises(ValueError, match=message):
        pretrained.eval_spec(name)
    with pytest.raises(ValueError, match=message):
        pretrained.load(name, weights_file="unused.pth")


def test_missing_weight_file(tmp_path):
    missing = str(tmp_path / "nope.pth")
    with pytest.raises(FileNotFoundError,
                       match=r"nope\.pth.*not found.*https://download\.pytorch\.org"):
        pretrained.load("vit_b_16:IMAGENET1K_V1", weights_file=missing)


def test_wrong_file_for_weights(tmp_path):
    path = tmp_path / "b32.pth"
    torch.save(torchvision.models.vit_b_32(num_classes=10).state_dict(), path)
    with pytest.raises(ValueError, match=r"b32\.pth holds a ViT with num_classes=10 but "
                                         r"vit_b_32:IMAGENET1K_V1 has num_classes=1000"):
        pretrained.load("vit_b_32:IMAGENET1K_V1", weights_file=str(path))
    with pytest.raises(ValueError, match=r"wrong file"):  # also when the caller asks for a new head
        pretrained.load("vit_b_32:IMAGENET1K_V1", weights_file=str(path), num_classes=10)


def test_shape_mismatch():
    state = torchvision.models.vit_b_32().state_dict()
    state["encoder.layers.encoder_layer_2.mlp.0.weight"] = torch.zeros(100, 768)
    with pytest.raises(ValueError, match=r"shape mismatch for blocks\.2\.mlp\.fc1\.weight"
                                         r".*\(100, 768\).*\(3072, 768\)"):
        pretrained.from_torchvision(state)
    with pytest.raises(ValueError, match=r"not a torchvision VisionTransformer state dict"):
        pretrained.from_torchvision({"weight": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"shape mismatch for patch_embed"):
        pretrained.from_torchvision(torchvision.models.vit_b_32().state_dict(), patch_size=16)


def test_image_size_not_divisible_by_patch():
    with pytest.raises(ValueError, match=r"image_size 225 is not divisible by patch_size 16"
                                         r".*multiple of 16"):
        vit.create_vit("base", image_size=225)
    model = vit.create_vit("micro", image_size=32, patch_size=8)
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, 32, 32\), "
                                         r"got \(1, 3, 28, 28\)"):
        model(torch.randn(1, 3, 28, 28))
