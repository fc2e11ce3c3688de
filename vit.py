"""A compact Vision Transformer, written from scratch: the model only (released weights are
loaded by inputs/pretrained.py).

Paper: "An Image is Worth 16x16 Words", Dosovitskiy et al., ICLR 2021 (arXiv:2010.11929).
Equations (1)-(4) are Sec. 3.1 of the paper; (5)-(8) are its Appendix A (self-attention):

    (1) z_0  = [x_class; x_p^1 E; ...; x_p^N E] + E_pos     E: (P*P*C, D), E_pos: (N+1, D)
    (2) z'_l = MSA(LN(z_{l-1})) + z_{l-1}                    l = 1..L
    (3) z_l  = MLP(LN(z'_l)) + z'_l                          l = 1..L
    (4) y    = LN(z_L^0)                                     then logits = head(y)
        or, with pool="avg", y = LN(mean_i z_L^i), i = 1..N  (global average pooling, as MAE)
    (5) [q, k, v] = z U_qkv          (6) attn = softmax(q k^T / sqrt(D_h))
    (7) SA(z) = attn v               (8) MSA(z) = [SA_1(z); ...; SA_H(z)] U_msa

Symbols used throughout: B batch, N patch tokens (+1 class token), D width, H heads,
L depth, P patch size. `forward(x, return_blocks=True)` also returns z_1..z_L, the output of
every block (`return_blocks=(l, L)`: those two only), which is where LLB branches off (llb.py).
Grep for "ViT Eq. (k)" to find each one.
The parameter names are timm's (except class_token), so inputs/pretrained.py's converters stay
small.
"""
import math
from dataclasses import dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F


# ----------------------------------------------------------------------------- parts


class PatchEmbed(nn.Module):
    """Cut the image into P x P patches and project each to D: the x_p^i E of Eq. (1).

    A Conv2d with kernel = stride = P is exactly "flatten each patch, multiply by E".
    """

    def __init__(self, *, patch_size: int, channels: int, width: int):
        super().__init__()
        self.proj = nn.Conv2d(channels, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)  # (B, C, H, W) -> (B, D, H/P, W/P)
        return x.flatten(2).transpose(1, 2)  # (B, N, D), patches in row-major order


class Attention(nn.Module):
    """Multi-head self-attention, MSA in ViT Eq. (2), computed as ViT Eqs. (5)-(8).

    `fused` picks how Eqs. (6)-(7) run: True (the default), in one call to PyTorch's fused
    kernel F.scaled_dot_product_attention (faster, lighter on memory); False, written out step
    by step. Both compute the same equations. Set it on one module (`block.attn.fused = False`)
    or on the class (`vit.Attention.fused = False`); it is not part of ViTConfig or checkpoints.
    """

    fused = True  # Eqs. (6)-(7) in F.scaled_dot_product_attention; False: written out

    def __init__(self, *, width: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.qkv = nn.Linear(width, 3 * width)  # U_qkv for all heads at once (one matmul)
        self.proj = nn.Linear(width, width)  # U_msa

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """MSA(z) by ViT Eqs. (5)-(8), H = `self.heads` heads of size D_h = D / H:

            (5) [q, k, v] = z U_qkv                  U_qkv = `self.qkv`, (D, 3 D), all heads
            (6) attn = softmax(q k^T / sqrt(D_h))    per head, over the N keys: (B, H, N, N)
            (7) SA(z) = attn v                       per head: (B, N, D_h)
            (8) MSA(z) = [SA_1(z); ...; SA_H(z)] U_msa     U_msa = `self.proj`, (D, D)

        q, k, v of head h are channels h D_h .. (h + 1) D_h - 1 of each third of z U_qkv.
        With `self.fused` False, Eqs. (6)-(7) are written out, one line each; with True, one
        F.scaled_dot_product_attention call. In: z (B, N, D), N tokens. Out: MSA(z) (B, N, D).
        Attention dropout (`self.dropout`, training only) drops entries of attn in both.
        """
        B, N, D = z.shape  # batch, tokens, width
        # ViT Eq. (5): [q, k, v] = z U_qkv, split into H heads of size D_h = D / H
        q, k, v = self.qkv(z).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        # q, k, v: (B, H, N, D_h) each
        if self.fused:
            # ViT Eqs. (6)-(7) in one fused kernel, dropout on attn as in the else branch
            p = self.dropout if self.training else 0.0
            sa = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, H, N, D_h)
        else:
            # ViT Eq. (6): attn = softmax(q k^T / sqrt(D_h)), each query over the N keys
            scores = q @ k.transpose(-2, -1) / math.sqrt(D // self.heads)  # (B, H, N, N)
            attn = torch.softmax(scores, dim=-1)  # (B, H, N, N), each row sums to 1
            attn = F.dropout(attn, p=self.dropout, training=self.training)  # attention dropout
            # ViT Eq. (7): SA(z) = attn v, every head at once
            sa = attn @ v  # (B, H, N, N) @ (B, H, N, D_h) -> (B, H, N, D_h)
        sa = sa.transpose(1, 2).reshape(B, N, D)  # (B, H, N, D_h) -> concatenated heads (B, N, D)
        # ViT Eq. (8): MSA(z) = [SA_1; ...; SA_H] U_msa
        return self.proj(sa)


class MLP(nn.Module):
    """The two-layer GELU MLP of ViT Eq. (3): D -> mlp_dim -> D."""

    def __init__(self, *, width: int, mlp_dim: int, dropout: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(width, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, width)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(F.gelu(self.fc1(x)))))  # (B, N, D)


class Block(nn.Module):
    """One pre-norm transformer encoder block: ViT Eqs. (2) and (3).

    Note: pre-norm (LN inside the residual branch), as in the ViT paper, as opposed to the
    post-norm of the original Transformer (Vaswani et al., 2017).
    """

    def __init__(self, *, width: int, heads: int, mlp_dim: int, dropout: float = 0.0,
                 attention_dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width=width, heads=heads, dropout=attention_dropout)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = MLP(width=width, mlp_dim=mlp_dim, dropout=dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """One pre-norm encoder block, ViT Eqs. (2)-(3):

            (2) z' = MSA(LN(z)) + z          LN = `self.norm1`, MSA = `self.attn`
            (3) out = MLP(LN(z')) + z'       LN = `self.norm2`, MLP = `self.mlp`

        Dropout (`self.drop`) on the MSA output (the MLP drops inside). In: z = z_{l-1}
        (B, N, D). Out: z_l (B, N, D).
        """
        z = z + self.drop(self.attn(self.norm1(z)))  # ViT Eq. (2)
        return z + self.mlp(self.norm2(z))  # ViT Eq. (3)


# ----------------------------------------------------------------------------- model


@dataclass
class ViTConfig:
    image_size: int = 224  # input height = width, in pixels
    patch_size: int = 16  # P: side of a square patch; N = (image_size / P)^2 patch tokens
    width: int = 768  # D: token width
    depth: int = 12  # L: number of encoder blocks
    heads: int = 12  # H: attention heads; D must be divisible by H
    mlp_dim: int = 3072  # hidden width of each block's MLP (4 D in the paper's presets)
    num_classes: int = 1000  # outputs of the linear head
    channels: int = 3  # input channels C
    dropout: float = 0.0  # dropout after embeddings, attention and MLP (0 for fine-tuning)
    attention_dropout: float = 0.0  # dropout on the attention weights attn of Eq. (6)
    pool: str = "token"  # y of Eq. (4): "token" LN(z_L^0), or "avg" LN(mean of the N patch tokens)

    def __post_init__(self):
        for name in ("image_size", "patch_size", "width", "depth", "heads", "mlp_dim",
                     "num_classes", "channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"ViTConfig.{name} must be a positive integer, "
                                 f"got {getattr(self, name)}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not divisible by patch_size {self.patch_size}; "
                f"pick an image size that is a multiple of {self.patch_size} "
                f"(e.g. {self.image_size // self.patch_size * self.patch_size or self.patch_size})")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.pool not in ("token", "avg"):
            raise ValueError(f"ViTConfig.pool must be 'token' (class token, ViT Eq. (4)) or 'avg' "
                             f"(mean of the patch tokens), got {self.pool!r}")

    @property
    def num_patches(self) -> int:  # N
        return (self.image_size // self.patch_size) ** 2


class ViT(nn.Module):
    """Vision Transformer. `ViT(config)` or `ViT(image_size=32, patch_size=4, ...)`."""

    def __init__(self, config: ViTConfig | None = None, **fields_):
        super().__init__()
        self.config = c = replace(config or ViTConfig(), **fields_)
        self.patch_embed = PatchEmbed(patch_size=c.patch_size, channels=c.channels, width=c.width)
        self.class_token = nn.Parameter(torch.zeros(1, 1, c.width))  # x_class
        self.pos_embed = nn.Parameter(torch.zeros(1, c.num_patches + 1, c.width))  # E_pos
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            Block(width=c.width, heads=c.heads, mlp_dim=c.mlp_dim, dropout=c.dropout,
                  attention_dropout=c.attention_dropout) for _ in range(c.depth))
        self.norm = nn.LayerNorm(c.width, eps=1e-6)  # LN of Eq. (4); timm's fc_norm if pool="avg"
        self.head = nn.Linear(c.width, c.num_classes)
        self.reset_parameters()

    def reset_parameters(self):
        """From-scratch init: truncated normal(0.02) weights, zero biases, zero head."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.zeros_(self.head.weight)  # as torchvision: start from uniform class probabilities
        nn.init.zeros_(self.head.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """ViT Eq. (1): images (B, C, H, W) -> token sequence z_0 (B, 1 + N, D)."""
        size = self.config.image_size
        if x.ndim != 4 or x.shape[1] != self.config.channels or x.shape[-2:] != (size, size):
            raise ValueError(f"expected images of shape (B, {self.config.channels}, {size}, "
                             f"{size}), got {tuple(x.shape)}; resize/crop inputs to the model's "
                             f"image_size")
        patches = self.patch_embed(x)  # (B, N, D): x_p^i E
        cls = self.class_token.expand(x.shape[0], -1, -1)  # (B, 1, D): x_class
        return self.drop(torch.cat([cls, patches], dim=1) + self.pos_embed)  # (B, 1 + N, D)

    def features(self, z: torch.Tensor) -> torch.Tensor:
        """ViT Eq. (4): last block's output z_L (B, 1 + N, D) -> y (B, D), what the head reads."""
        if self.config.pool == "avg":
            # Note: global average pooling instead of the class token (the ViT paper's "GAP"
            # variant; MAE fine-tunes this way): y = LN(mean_i z_L^i) over the N patch tokens
            return self.norm(z[:, 1:].mean(dim=1))  # (B, N, D) -> (B, D)
        # ViT Eq. (4): y = LN(z_L^0), the class token
        return self.norm(z[:, 0])  # (B, D)

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        """The head on ViT Eq. (4): last block's output z_L (B, 1 + N, D) -> logits (B, classes)."""
        return self.head(self.features(z))  # logits = y W_head + b

    def forward(self, x: torch.Tensor, *, return_blocks: bool | tuple = False):
        """Logits (B, classes); with return_blocks=True also [z_1, ..., z_L], each (B, 1 + N, D);
        with a tuple of block numbers (1-based), only those: [z_l for l in return_blocks]."""
        keep = range(1, self.config.depth + 1) if return_blocks is True else return_blocks or ()
        z = self.embed(x)  # ViT Eq. (1)
        kept = {}
        for number, block in enumerate(self.blocks, start=1):
            z = block(z)  # ViT Eqs. (2)-(3)
            if number in keep:
                kept[number] = z  # kept, not recomputed: LLB reads z_l from here
        logits = self.classify(z)  # ViT Eq. (4)
        return (logits, [kept[number] for number in keep]) if return_blocks else logits

    def loss(self, logits: torch.Tensor, target: torch.Tensor, *, label_smoothing: float = 0.0):
        """Cross-entropy of the head's logits (B, classes) -> (total, stats), as llb.LLB.loss.

        stats: detached 0-dim float32 tensors "ce", "total" (the same here) and "top1" (% of the
        batch right). Nothing is read back to the host: the caller does when it logs.
        """
        ce = F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)
        hits = logits.detach().argmax(dim=-1) == target  # (B,)
        stats = {"ce": ce.detach(), "total": ce.detach(), "top1": 100 * hits.float().mean()}
        return ce, stats


# ----------------------------------------------------------------------------- presets

# Widths/depths: ViT-B, L, H from ViT paper Table 1; ViT-Ti, S from DeiT (Touvron et al., 2021),
# Table 1. All default to 224 px and P = 16; `micro` is this project's own, sized so the
# CPU demo (train.py with no arguments) trains in seconds.
_SIZES = {
    "micro": dict(width=96, depth=4, heads=3, mlp_dim=384),
    "tiny": dict(width=192, depth=12, heads=3, mlp_dim=768),
    "small": dict(width=384, depth=12, heads=6, mlp_dim=1536),
    "base": dict(width=768, depth=12, heads=12, mlp_dim=3072),
    "large": dict(width=1024, depth=24, heads=16, mlp_dim=4096),
    "huge": dict(width=1280, depth=32, heads=16, mlp_dim=5120),
}
PRESETS = {name: dict(size) for name, size in _SIZES.items()} | {
    # torchvision.models.vit_* builders, same names (torchvision's default 224 px)
    "vit_b_16": _SIZES["base"] | dict(patch_size=16),
    "vit_b_32": _SIZES["base"] | dict(patch_size=32),
    "vit_l_16": _SIZES["large"] | dict(patch_size=16),
    "vit_l_32": _SIZES["large"] | dict(patch_size=32),
    "vit_h_14": _SIZES["huge"] | dict(patch_size=14),
}


def create_vit(name: str, **overrides) -> ViT:
    """A ViT from a preset name, any ViTConfig field overridden.

    Example: create_vit("tiny", image_size=32, patch_size=4).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown ViT preset {name!r}; expected one of {', '.join(PRESETS)}")
    valid = {f.name for f in fields(ViTConfig)}
    unknown = set(overrides) - valid
    if unknown:
        raise ValueError(f"unknown ViT option(s) {sorted(unknown)}; valid options: {sorted(valid)}")
    return ViT(ViTConfig(**(PRESETS[name] | overrides)))
