"""Tests for llb.py: each LLB equation against an independent computation written here.

Expectations are recomputed from the model's parameters with plain torch ops (F.layer_norm,
matmuls, an explicit softmax attention); the code under test is never used to build them.
Tiny backbones throughout: 16 px, P = 4 -> N = 16 patches, D = 32, K = 5 classes, O = 16.

The tests marked step1 .. step4 grade one LLB step each (`pytest -m step2`): each feeds its step
inputs built here, with the branch's blocks computed by `ref_block` (so vit.py's Attention and
Block, graded in test_vit.py, do not matter), and so fails only when that step is wrong. The
unmarked tests check the assembled model end to end.
"""
import functools
import math
from dataclasses import asdict

import pytest
import torch
import torch.nn.functional as F

import llb
import vit

B, N, D, K, O = 4, 16, 32, 5, 16  # noqa: E741 batch, tokens, width, classes, objects O


def make_backbone(depth=3, dropout=0.0):
    torch.manual_seed(0)
    bb = vit.ViT(image_size=16, patch_size=4, width=D, depth=depth, heads=2, mlp_dim=64,
                 num_classes=K, dropout=dropout)
    with torch.no_grad():
        bb.head.weight.normal_(std=0.5)  # vit.py zero-inits its head: make p_V non-uniform
    return bb


def make(backbone=None, *, perturb=True, **kw):
    """A tiny LLB. perturb: add N(0, 0.3) to every parameter (backbone and branch), so that the
    checks below run away from the init's near-symmetric regime (c_n = 0 and weights of std 0.02
    give logits_n that barely depend on the input)."""
    backbone = make_backbone() if backbone is None else backbone
    torch.manual_seed(1)
    model = llb.LLB(backbone, **(dict(num_objects=O, depth=3) | kw))
    if perturb:
        g = torch.Generator().manual_seed(5)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


def images(n=B, seed=2):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def labels(n=B, seed=3):
    return torch.randint(0, K, (n,), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- by-hand references


def ref_layer_norm(t, ln):
    return F.layer_norm(t, (t.shape[-1],), ln.weight, ln.bias, ln.eps)


def ref_linear(t, lin):
    return t @ lin.weight.T + lin.bias


def ref_block(blk, z):
    """A pre-norm ViT block written out: z + MSA(LN(z)), then + MLP(LN(.))."""
    b, n, d = z.shape
    h = blk.attn.heads
    q, k, v = ref_linear(ref_layer_norm(z, blk.norm1), blk.attn.qkv).split(d, dim=-1)
    q, k, v = (t.reshape(b, n, h, d // h).transpose(1, 2) for t in (q, k, v))  # (b, h, n, d/h)
    sa = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // h), dim=-1) @ v  # (b, h, n, d/h)
    z = z + ref_linear(sa.transpose(1, 2).reshape(b, n, d), blk.attn.proj)
    hidden = F.gelu(ref_linear(ref_layer_norm(z, blk.norm2), blk.mlp.fc1))
    return z + ref_linear(hidden, blk.mlp.fc2)


def z_layer(model, x):
    """z_l from the backbone (vit.py, tested in test_vit.py), not from the code under test."""
    with torch.no_grad():
        return model.backbone(x, return_blocks=True)[1][model.config.layer - 1]


def ref_assign(model, z):
    logits = ref_linear(ref_block(model.extractor, z)[:, 1:], model.to_objects)  # (B, N, O)
    e = torch.exp(logits / model.config.tau - (logits / model.config.tau).amax(-1, keepdim=True))
    return e / e.sum(-1, keepdim=True)


def ref_entropy(p):
    return -torch.special.xlogy(p, p).sum(-1)  # 0 log 0 = 0


def ref_blocks(model):
    """Run the branch's vit.Blocks (extractor and g) as ref_block: a step's test then depends on
    that step's code alone, not on vit.py's Attention / Block (graded by test_vit.py)."""
    for blk in (model.extractor, *model.blocks):
        blk.forward = functools.partial(ref_block, blk)
    return model


def random_tokens(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- graded steps


@pytest.mark.step1
def test_step1_extract_objects():
    model = ref_blocks(make())
    z = random_tokens((B, 1 + N, D), seed=10)  # z_l: class token + N patch tokens
    assign, patches = model.extract_objects(z)
    assert assign.shape == (B, N, O) and assign.dtype == torch.float32
    torch.testing.assert_close(assign.sum(-1), torch.ones(B, N))
    # p^i = Softmax(Linear(Block(V_l))^i / tau), i = 1..N: the block sees the class token too
    torch.testing.assert_close(assign, ref_assign(model, z), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(patches, ref_block(model.extractor, z)[:, 1:], atol=1e-5, rtol=1e-4)


@pytest.mark.step1
def test_step1_assign_is_fp32_under_bf16_autocast():
    """In bf16, logits / tau = 0.1 moved 1.5% of the argmax objects at ViT-B/16 sizes."""
    model = ref_blocks(make())
    z = random_tokens((B, 1 + N, D), seed=11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assign, patches = model.extract_objects(z)
    lin = model.to_objects
    expected = torch.softmax(ref_linear(patches.float(), lin) / model.config.tau, dim=-1)
    assert assign.dtype == torch.float32
    torch.testing.assert_close(assign, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.step2
def test_step2_disconnect_is_assign_times_object_embed():
    model = ref_blocks(make())
    assign = torch.softmax(random_tokens((B, N, O), seed=12), dim=-1)  # A: rows sum to 1
    tokens = model.disconnect(assign)
    assert tokens.shape == (B, N, D)
    expected = torch.einsum("bno,od->bnd", assign, model.object_embed)  # N_0 = A N_emb
    torch.testing.assert_close(tokens, expected, atol=1e-6, rtol=1e-5)


@pytest.mark.step2
def test_step2_a_one_hot_assignment_picks_rows_of_object_embed():
    model = ref_blocks(make())
    objects = torch.randint(0, O, (B, N), generator=torch.Generator().manual_seed(13))
    tokens = model.disconnect(F.one_hot(objects, O).float())  # (B, N, O) -> (B, N, D)
    torch.testing.assert_close(tokens, model.object_embed[objects], atol=1e-6, rtol=0)


def ref_structure(model, tokens):
    """g([c_n || N_0]) by hand, then LN of c_n."""
    s = torch.cat([model.class_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
    if model.pos_embed is not None:
        s = s + model.pos_embed
    for blk in model.blocks:
        s = ref_block(blk, s)
    return ref_layer_norm(s[:, 0], model.norm)  # (B, D)


@pytest.mark.step3
@pytest.mark.parametrize("pos", [False, True], ids=["paper", "pos_embed"])
def test_step3_structure_is_g_over_class_token_and_object_tokens(pos):
    model = ref_blocks(make(pos_embed=pos))
    tokens = random_tokens((B, N, D), seed=14)  # N_0
    feat_n = model.structure(tokens)
    assert feat_n.shape == (B, D)
    assert len(model.blocks) == model.config.depth - 1
    torch.testing.assert_close(feat_n, ref_structure(model, tokens), atol=1e-5, rtol=1e-4)


@pytest.mark.step3
def test_step3_is_invariant_to_token_order_only_without_pos_embed():
    tokens = random_tokens((B, N, D), seed=15)
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(16))
    for pos in (False, True):
        model = ref_blocks(make(pos_embed=pos))
        if pos:
            with torch.no_grad():
                model.pos_embed.normal_()  # a clearly non-zero position embedding
        with torch.no_grad():
            diff = (model.structure(tokens) - model.structure(tokens[:, perm])).abs().max()
        if pos:
            assert diff > 1e-2  # the position embedding ties each N_0 slot to its patch position
        else:
            assert diff < 1e-4  # g over [c_n || N_0] without positions is a set function


@pytest.mark.step4
@pytest.mark.parametrize("alpha", [1.0, 0.0, 0.3])
def test_step4_integrate_mixes_the_probabilities(alpha):
    model = ref_blocks(make(alpha=alpha))
    logits_v = 3 * random_tokens((B, K), seed=17)
    logits_n = 3 * random_tokens((B, K), seed=18)
    probs = model.integrate(logits_v, logits_n)
    e_v = logits_v.exp() / logits_v.exp().sum(-1, keepdim=True)  # p_V
    e_n = logits_n.exp() / logits_n.exp().sum(-1, keepdim=True)  # p_N
    assert probs.shape == (B, K) and probs.dtype == torch.float32
    torch.testing.assert_close(probs, alpha * e_v + (1 - alpha) * e_n)  # p_O


@pytest.mark.step4
def test_step4_without_integration_is_p_n_and_fp32():
    model = ref_blocks(make(alpha=0.3, integrate=False))
    logits_v = random_tokens((B, K), seed=19).bfloat16()
    logits_n = random_tokens((B, K), seed=20).bfloat16()
    probs = model.integrate(logits_v, logits_n)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs, torch.softmax(logits_n.float(), dim=-1))


# ----------------------------------------------------------------------------- step 1


def test_assign_is_a_softmax_over_objects_recomputed_by_hand():
    model = make()
    x = images()
    out = model(x)
    a = out.assign
    assert a.shape == (B, N, O)
    assert (a >= 0).all()
    torch.testing.assert_close(a.sum(-1), torch.ones(B, N))
    # p^i = Softmax(Linear(Block(V_l))^i / tau), i = 1..N
    torch.testing.assert_close(a, ref_assign(model, z_layer(model, x)), atol=1e-5, rtol=1e-4)


def test_layer_is_one_based_and_defaults_to_second_to_last_block():
    bb = make_backbone(depth=4)
    assert llb.LLB(bb, num_objects=O, depth=2).config.layer == 3
    model = make(layer=1)
    x = images()
    z1 = model.backbone(x, return_blocks=True)[1][0].detach()
    torch.testing.assert_close(model(x).assign, ref_assign(model, z1), atol=1e-5, rtol=1e-4)


def test_branch_init():
    torch.manual_seed(0)
    model = llb.LLB(vit.create_vit("micro", image_size=32), num_objects=512)  # D = 96, O = 512
    branch = {k: v for k, v in model.named_parameters() if not k.startswith("backbone.")}
    assert torch.equal(model.class_token, torch.zeros(1, 1, 96))  # c_n = 0
    e = model.object_embed  # Xavier normal: std = sqrt(2 / (fan_in + fan_out))
    assert e.shape == (512, 96) and abs(e.std().item() / math.sqrt(2 / (512 + 96)) - 1) < 0.05
    for k, v in branch.items():
        if k.endswith("bias"):
            assert not v.any(), k
        elif v.ndim == 2 and k != "object_embed":  # Linear weights: trunc normal(0.02)
            assert abs(v.std().item() / 0.02 - 1) < 0.15, k
    norms = [m for n, m in model.named_modules()
             if isinstance(m, torch.nn.LayerNorm) and "backbone" not in n]
    assert len(norms) == 2 * 6 + 1
    assert all(m.eps == 1e-6 and torch.all(m.weight == 1) for m in norms)


# ----------------------------------------------------------------------------- steps 2 and 3


def test_object_tokens_are_assign_times_object_embed():
    model = make()
    out = model(images())
    assert out.object_tokens.shape == (B, N, D)
    expected = torch.einsum("bno,od->bnd", out.assign, model.object_embed)  # N_0 = A N_emb
    torch.testing.assert_close(out.object_tokens, expected, atol=1e-6, rtol=1e-5)


def test_non_visual_branch_recomputed_by_hand():
    model = make()
    x = images()
    out = model(x)
    n0 = ref_assign(model, z_layer(model, x)) @ model.object_embed
    s = torch.cat([torch.zeros(B, 1, D) + model.class_token, n0], dim=1)  # [c_n || N_0]
    assert len(model.blocks) == model.config.depth - 1
    for blk in model.blocks:
        s = ref_block(blk, s)
    feat_n = ref_layer_norm(s[:, 0], model.norm)
    torch.testing.assert_close(out.feat_n, feat_n, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.logits_n, ref_linear(feat_n, model.head), atol=1e-5, rtol=1e-4)
    # the visual side: feat_v = LN(z_L^0) and logits_v = head(feat_v) of the backbone
    zl = model.backbone(x, return_blocks=True)[1][-1]
    feat_v = ref_layer_norm(zl[:, 0], model.backbone.norm)
    torch.testing.assert_close(out.feat_v, feat_v, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.logits_v, ref_linear(feat_v, model.backbone.head),
                               atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- step 4


@pytest.mark.parametrize("alpha", [1.0, 0.0, 0.3])
def test_integration_mixes_visual_and_non_visual_probabilities(alpha):
    model = make(alpha=alpha)
    x = images()
    out = model(x)
    p_v = torch.softmax(model.backbone(x), dim=-1)
    p_n = torch.softmax(out.logits_n, dim=-1)
    assert out.probs.shape == (B, K)
    if alpha == 1.0:
        assert torch.allclose(out.probs, p_v, rtol=0, atol=1e-7)
    elif alpha == 0.0:
        assert torch.allclose(out.probs, p_n, rtol=0, atol=1e-7)
    else:
        torch.testing.assert_close(out.probs, alpha * p_v + (1 - alpha) * p_n)
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(B))


# ----------------------------------------------------------------------------- loss


@pytest.mark.parametrize("mode", ["batch", "image"])
def test_loss_is_ce_plus_lambda_times_negative_entropy(mode):
    model = make(diversity_mode=mode, diversity_weight=0.7)
    y = labels()
    out = model(images())
    total, parts = model.loss(out, y, label_smoothing=0.1)
    a = out.assign.detach()
    if mode == "batch":
        l_div = -ref_entropy(a.mean(dim=(0, 1)))  # one p~ over patches and batch
    else:
        l_div = -ref_entropy(a.mean(dim=1)).mean()  # p~_b per image, then mean over b
    logp = torch.log_softmax(out.logits_n.detach(), dim=-1)
    smooth = 0.9 * F.one_hot(y, K) + 0.1 / K
    ce = -(smooth * logp).sum(-1).mean()
    torch.testing.assert_close(total.detach(), ce + 0.7 * l_div)
    assert set(parts) == {"ce", "diversity", "total", "top1"}
    for v in parts.values():  # detached 0-dim fp32 tensors: read back only when logged
        assert v.shape == () and v.dtype == torch.float32 and not v.requires_grad
    torch.testing.assert_close(parts["ce"], ce)
    torch.testing.assert_close(parts["diversity"], l_div)
    torch.testing.assert_close(parts["total"], total.detach())
    assert -math.log(O) - 1e-5 <= parts["diversity"].item() <= 0
    top1 = 100 * (out.logits_n.argmax(-1) == y).sum().item() / B  # % of the batch p_N gets right
    assert parts["top1"].item() == pytest.approx(top1)


def test_loss_and_backward_make_no_host_sync(monkeypatch):
    """The training step reads nothing back to the host (no .item()/.tolist())."""
    model = make(freeze_backbone=False)  # the unfrozen loss has the most terms
    backbone = make_backbone()
    x = images()
    y = labels()

    def host_sync(*args, **kwargs):
        raise AssertionError("host sync in the training step")

    with monkeypatch.context() as m:
        for name in ("item", "tolist", "__float__", "__bool__"):
            m.setattr(torch.Tensor, name, host_sync)
        with pytest.raises(AssertionError, match="host sync"):
            float(torch.ones(()))  # the patch is in effect
        total, stats = model.loss(model(x), y, label_smoothing=0.1)
        total.backward()
        total_v, stats_v = backbone.loss(backbone(x), y, label_smoothing=0.1)
        total_v.backward()
    assert set(stats) == {"ce", "diversity", "ce_visual", "total", "top1"}
    assert set(stats_v) == {"ce", "total", "top1"}
    assert all(p.grad is not None for p in model.trainable_parameters())
    assert all(p.grad is not None for p in backbone.parameters())


# ----------------------------------------------------------------------------- frozen / unfrozen


def test_frozen_backbone_is_untouched_and_the_branch_learns():
    model = make(perturb=False)  # from the real init
    before_bb = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    before_branch = {k: v.clone() for k, v in model.named_parameters()
                     if not k.startswith("backbone.")}
    assert all(not p.requires_grad for p in model.backbone.parameters())
    assert len(model.trainable_parameters()) == len(before_branch)
    out = model(images())
    assert not out.logits_v.requires_grad and not out.feat_v.requires_grad  # no graph built
    assert out.logits_n.requires_grad
    # under no_grad, not only frozen
    assert not model(images().requires_grad_()).logits_v.requires_grad
    total, _ = model.loss(out, labels())
    total.backward()
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-2)
    opt.step()
    assert all(p.grad is None for p in model.backbone.parameters())
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, before_bb[k]), k
    for k, p in model.named_parameters():
        if not k.startswith("backbone."):
            assert not torch.equal(p, before_branch[k]), f"{k} did not learn"


def test_unfrozen_backbone_gets_gradients_and_visual_ce():
    model = make(freeze_backbone=False)
    assert all(p.requires_grad for p in model.backbone.parameters())
    y = labels()
    out = model(images())
    assert out.logits_v.requires_grad
    total, parts = model.loss(out, y)
    assert set(parts) == {"ce", "diversity", "ce_visual", "total", "top1"}
    torch.testing.assert_close(parts["ce_visual"], F.cross_entropy(out.logits_v.detach(), y))
    torch.testing.assert_close(parts["total"],
                               parts["ce"] + 0.5 * parts["diversity"] + parts["ce_visual"])
    total.backward()
    for k, p in model.backbone.named_parameters():  # every block, the visual head included
        assert p.grad is not None and p.grad.abs().sum() > 0, k
    model.train()
    assert model.backbone.training


def test_train_mode_keeps_a_frozen_backbone_in_eval():
    model = make(backbone=make_backbone(dropout=0.5))
    model.train()
    assert model.training and model.extractor.training
    assert all(not m.training for m in model.backbone.modules())
    x = images()
    torch.testing.assert_close(model(x).logits_v, model(x).logits_v, rtol=0, atol=0)  # dropout off
    model.eval()
    assert not model.extractor.training and not model.backbone.training


# ----------------------------------------------------------------------------- ablation switches


def outputs_and_loss(model, x, y):
    out = model(x)
    return out, model.loss(out, y)


def test_integrate_false_changes_only_probs():
    ref = make()
    abl = make(integrate=False)
    abl.load_state_dict(ref.state_dict())
    x = images()
    y = labels()
    o1, (t1, _) = outputs_and_loss(ref, x, y)
    o2, (t2, _) = outputs_and_loss(abl, x, y)
    for f in ("logits_v", "logits_n", "assign", "object_tokens", "feat_v", "feat_n"):
        assert torch.equal(getattr(o1, f), getattr(o2, f)), f
    assert torch.equal(t1, t2)
    assert torch.allclose(o2.probs, torch.softmax(o2.logits_n, -1), rtol=0, atol=1e-7)
    assert not torch.allclose(o1.probs, o2.probs)


def test_diversity_false_changes_only_the_loss_total():
    ref = make()
    abl = make(diversity=False)
    abl.load_state_dict(ref.state_dict())
    x = images()
    y = labels()
    o1, (_, p1) = outputs_and_loss(ref, x, y)
    o2, (t2, p2) = outputs_and_loss(abl, x, y)
    for f in ("logits_v", "logits_n", "probs", "assign", "object_tokens"):
        assert torch.equal(getattr(o1, f), getattr(o2, f)), f
    assert torch.equal(p2["total"], p2["ce"]) and torch.equal(t2, F.cross_entropy(o2.logits_n, y))
    assert torch.equal(p1["diversity"], p2["diversity"]) and torch.equal(p1["ce"], p2["ce"])
    assert not torch.equal(p1["total"], p2["total"])


def test_disconnect_false_feeds_the_extractors_patch_outputs():
    ref = make()
    abl = make(disconnect=False)
    missing, unexpected = abl.load_state_dict(ref.state_dict(), strict=False)
    assert missing == [] and unexpected == ["object_embed"]
    x = images()
    o1 = ref(x)
    o2 = abl(x)
    assert torch.equal(o1.logits_v, o2.logits_v) and torch.equal(o1.assign, o2.assign)
    h = ref_block(abl.extractor, z_layer(abl, x))
    torch.testing.assert_close(o2.object_tokens, h[:, 1:], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(o1.logits_n, o2.logits_n)
    assert torch.isfinite(abl.loss(o2, labels())[1]["diversity"])  # L_div still computed


def test_pos_embed_true_adds_exactly_one_parameter():
    ref = make()
    abl = make(pos_embed=True)
    p1 = dict(ref.named_parameters())
    p2 = dict(abl.named_parameters())
    assert set(p2) - set(p1) == {"pos_embed"} and set(p1) <= set(p2)
    assert p2["pos_embed"].shape == (1, 1 + N, D) and p2["pos_embed"].requires_grad
    assert ref.pos_embed is None


# ----------------------------------------------------------------------------- recipe and arguments


def test_recipe_defaults_on_vit_base():
    torch.manual_seed(0)
    model = llb.LLB(vit.create_vit("base"))
    c = model.config
    got = (c.layer, c.num_objects, c.depth, c.tau, c.alpha, c.diversity_weight, c.diversity_mode)
    assert got == (11, 2048, 6, 0.1, 0.8, 0.5, "batch")
    assert c.disconnect and c.diversity and not c.pos_embed and c.integrate and c.freeze_backbone
    assert isinstance(model.extractor, vit.Block) and len(model.blocks) == 5
    d, m, o, k = 768, 3072, 2048, 1000
    block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * m + m) + (m * d + d)
    expected = (6 * block  # extractor + 5 blocks of g
                + d * o + o  # Linear D -> O
                + o * d  # N_emb
                + d  # c_n
                + 2 * d + d * k + k)  # LayerNorm + new head
    assert sum(p.numel() for p in model.trainable_parameters()) == expected
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert not model.backbone.training


@pytest.mark.parametrize("kw, pattern", [
    (dict(layer=0), r"layer must be an int >= 1"), (dict(layer=4), r"layer.*1\.\.3"),
    (dict(num_objects=1), r"num_objects.*>= 2"), (dict(depth=1), r"depth.*>= 2"),
    (dict(tau=0.0), r"tau.*> 0"), (dict(alpha=1.5), r"alpha.*\[0, 1\]"),
    (dict(alpha=-0.1), r"alpha.*\[0, 1\]"),
    (dict(diversity_weight=-1.0), r"diversity_weight.*>= 0"),
    (dict(diversity_mode="patch"), r"diversity_mode.*'batch' or 'image'"),
])
def test_bad_arguments_raise_clear_errors(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        make(**kw)
    if "layer" not in kw or kw["layer"] < 1:  # the rest is checked by the config alone
        with pytest.raises(ValueError, match=pattern):
            llb.LLBConfig(**kw)


def test_config_holds_the_defaults_and_for_backbone_resolves_the_layer():
    c = llb.LLBConfig()
    assert (c.layer, c.num_objects, c.depth, c.tau, c.alpha, c.diversity_weight) == \
        (None, 2048, 6, 0.1, 0.8, 0.5)
    assert c.for_backbone(12).layer == 11 and c.for_backbone(1).layer == 1
    assert c.layer is None  # a copy: the config itself is unchanged
    assert llb.LLBConfig(layer=3).for_backbone(12).layer == 3
    with pytest.raises(ValueError, match=r"LLB layer must be an int in 1\.\.12 .*got 99"):
        llb.LLBConfig(layer=99).for_backbone(12)  # what train.py checks at parse time


def test_config_and_keyword_overrides():
    bb = make_backbone()
    model = llb.LLB(bb, llb.LLBConfig(num_objects=O, depth=3, tau=0.5), alpha=0.5)
    assert model.config == llb.LLBConfig(layer=2, num_objects=O, depth=3, tau=0.5, alpha=0.5)
    same = llb.LLB(bb, **asdict(model.config))  # as checkpoint.model_from_checkpoint does
    assert same.config == model.config
    same.load_state_dict(model.state_dict())
    with pytest.raises(TypeError, match=r"unknown LLB option\(s\) \['num_object'\]; valid "
                                        r"options: layer, num_objects, depth, tau"):
        llb.LLB(bb, num_object=O)


def test_state_dict_names_are_those_of_earlier_checkpoints():
    names = {k for k in make(pos_embed=True).state_dict() if not k.startswith("backbone.")}
    tops = {k.split(".")[0] for k in names}
    assert tops == {"extractor", "to_objects", "object_embed", "class_token", "pos_embed",
                    "blocks", "norm", "head"}
    assert {"extractor.attn.qkv.weight", "to_objects.weight", "blocks.1.mlp.fc2.bias",
            "norm.weight", "head.bias"} <= names


# ----------------------------------------------------------------------------- training, AMP


def test_short_training_run_lowers_the_loss():
    model = make(perturb=False)
    x = images(32, seed=4)
    # 4 classes: the signs of the mean of channels 0 and 1
    y = (x[:, 0].mean(dim=(1, 2)) > 0).long() + 2 * (x[:, 1].mean(dim=(1, 2)) > 0).long()
    opt = torch.optim.Adam(model.trainable_parameters(), lr=1e-3)
    ces = []
    for _ in range(50):
        total, parts = model.loss(model(x), y)
        opt.zero_grad()
        total.backward()
        opt.step()
        ces.append(parts["ce"].item())
    assert ces[-1] < 0.7 * ces[0], ces


def test_bf16_autocast_forward_and_loss_are_finite():
    model = make()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images())
        total, parts = model.loss(out, labels())
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in parts.values())
    assert out.assign.dtype == torch.float32 and out.probs.dtype == torch.float32
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.trainable_parameters())


def test_on_an_average_pooling_backbone_the_branch_reads_its_class_token():
    """MAE-style backbone (pool="avg"): p_V is the backbone's own (pooled) prediction, while the
    branch reads LN(c_n), token 0 after g, as the authors' MAE model does (their global_pool=True
    never equals 'avg'), not the mean of its object tokens."""
    torch.manual_seed(0)
    bb = vit.ViT(image_size=16, patch_size=4, width=D, depth=3, heads=2, mlp_dim=64,
                 num_classes=K, pool="avg")
    with torch.no_grad():
        bb.head.weight.normal_(std=0.5)
    model = llb.LLB(bb, num_objects=O, depth=3).eval()
    x = images()
    out = model(x)
    assert torch.equal(out.logits_v, bb(x))
    s = torch.cat([model.class_token.expand(len(x), -1, -1), out.object_tokens], dim=1)
    for block in model.blocks:
        s = block(s)
    expected = F.layer_norm(s[:, 0], (D,), model.norm.weight, model.norm.bias, 1e-6)
    assert torch.allclose(out.feat_n, expected, atol=1e-6)
    assert torch.allclose(out.logits_n, expected @ model.head.weight.T + model.head.bias,
                          atol=1e-5)
    # the visual side pools: LN(mean of the backbone's N patch tokens), its own head on it
    _, zs = bb(x, return_blocks=True)
    pooled = F.layer_norm(zs[-1][:, 1:].mean(dim=1), (D,), bb.norm.weight, bb.norm.bias, 1e-6)
    assert torch.allclose(out.feat_v, pooled, atol=1e-6)
