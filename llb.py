"""LLB, Label-focused Latent-object Biasing, on top of the ViT of vit.py, written from scratch.

Paper: "Label-Focused Inductive Bias over Latent Object Features in Visual Classification",
Kang, Bae, Kim, ICLR 2024. A (frozen) ViT gives V_l = [v_l^0 .. v_l^N], the output of block l
(v_l^0 is its class token). LLB adds a branch in four steps, one method each (`extract_objects`,
`disconnect`, `structure`, `integrate`, called in turn by `forward`; grep "LLB step k"):

    1. latent object extraction      p^i = Softmax(MLP(v_l^i) / tau),  i = 1..N,  p^i in R^O
                                     L_div = -H(p~),  H(p) = -sum_o p_o log p_o,  p~ = mean of p^i
    2. visual dependency disconnect  N_0 = Disconnect(A, N_emb) = A N_emb,  A = [p^1 .. p^N]
    3. non-visual feature structure  N_{L_N} = g([c_n || N_0]; W),  p_N = Softmax(MLP_N(c_n))
    4. integration                   p_O = alpha p_V + (1 - alpha) p_N,  p_V = Softmax(MLP_V(c_v))

    training loss                    L = CE(p_N, y) + lambda L_div     (only the branch learns)

Whose formula: the four steps, A, N_emb, L_div = -H(p~) and the integration are the poster's.
The temperature `/ tau` of step 1 (tau = 0.1) and the loss's form L = CE + lambda L_div
(lambda = 0.5) are the authors' code's (their model and train script), not the poster's text.

Symbol map (code name -> paper symbol):
    layer -> l;  num_objects -> O;  tau -> tau;  alpha -> alpha;  diversity_weight -> lambda
    extractor + to_objects -> the "MLP" of step 1 (one transformer block, then Linear D -> O)
    assign -> A = [p^1 .. p^N], (B, N, O);  object_embed -> N_emb, (O, D)
    object_tokens -> N_0, (B, N, D);  class_token -> c_n;  blocks -> g;  head -> MLP_N
    logits_v / logits_n -> the logits of p_V / p_N;  probs -> p_O
    feat_v -> what the visual head reads: LN(c_v), the backbone's normed class token, or on an
              average-pooling backbone (MAE) LN(mean of its N patch tokens), not a class token
    feat_n -> LN(c_n) after g, the branch's class token, on every backbone (MAE included)
Shapes: B batch, N patch tokens (+1 class token), D width, O latent objects, K classes.
"""
import contextlib
import math
from dataclasses import dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

import vit


@dataclass
class LLBConfig:
    """Every LLB setting and its default (the authors' recipe for ViT-B/16), checked on creation.

    `layer` depends on the backbone: None means L - 1; `for_backbone(depth)` resolves and checks it.
    """

    # l: the branch reads z_l, output of block l (1-based); None: L - 1. The paper gives l = 11
    # for ViT-B (12 blocks) only. Note: L - 1 on other depths (23 on ViT-L/MAE-L) is our choice,
    # not published; the authors' code defaults to 11 on every size.
    layer: int | None = None
    num_objects: int = 2048  # O: number of latent objects (rows of N_emb)
    depth: int = 6  # LLB layers, the extractor block included (authors' code): g has depth - 1
    tau: float = 0.1  # softmax temperature of the assignment p^i
    alpha: float = 0.8  # integration weight of the visual probabilities p_V
    diversity_weight: float = 0.5  # lambda, weight of L_div in the loss
    diversity_mode: str = "batch"  # p~ over patches and batch ("batch", authors') or per image
    # Note: the ablations' two constructions below are this project's; the authors' public code
    # has no such switches and the paper does not say how its rows were built.
    disconnect: bool = True  # ablation: False -> N_0 = the extractor's patch outputs (no A N_emb)
    diversity: bool = True  # ablation: False -> loss without lambda L_div (L_div still reported)
    pos_embed: bool = False  # ablation: True -> learnable position embedding on [c_n || N_0]
    integrate: bool = True  # ablation: False -> probs = p_N alone
    freeze_backbone: bool = True  # the paper's setting: only the branch learns

    def __post_init__(self):
        # What can be checked without the backbone (layer <= L: see for_backbone)
        if self.layer is not None and (not isinstance(self.layer, int) or self.layer < 1):
            raise ValueError(f"LLB layer must be an int >= 1 (the backbone block whose output z_l "
                             f"feeds LLB), or None for L - 1, got {self.layer!r}")
        if self.num_objects < 2:
            raise ValueError(f"LLB num_objects must be >= 2 (O latent objects), "
                             f"got {self.num_objects!r}")
        if self.depth < 2:
            raise ValueError(f"LLB depth must be >= 2 (the extractor block plus at least one block "
                             f"of g, else c_n sees no object), got {self.depth!r}")
        if not 0 < self.tau < math.inf:
            raise ValueError(f"LLB tau must be finite and > 0 (softmax temperature), "
                             f"got {self.tau!r}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"LLB alpha must be in [0, 1] (weight of p_V), got {self.alpha!r}")
        if not 0 <= self.diversity_weight < math.inf:
            raise ValueError(f"LLB diversity_weight must be finite and >= 0 (lambda), "
                             f"got {self.diversity_weight!r}")
        if self.diversity_mode not in ("batch", "image"):
            raise ValueError(f"LLB diversity_mode must be 'batch' or 'image', "
                             f"got {self.diversity_mode!r}")

    def for_backbone(self, depth: int) -> "LLBConfig":
        """A copy with `layer` resolved for a backbone of `depth` blocks and checked against it."""
        # the paper: block 11 of ViT-B's 12; L - 1 on other depths is our choice (see `layer`)
        layer = max(depth - 1, 1) if self.layer is None else self.layer
        if layer > depth:
            raise ValueError(f"LLB layer must be an int in 1..{depth} (the backbone block whose "
                             f"output z_l feeds LLB), got {layer!r}")
        return replace(self, layer=layer)


@dataclass
class LLBOutput:
    logits_v: torch.Tensor  # (B, K) backbone head on its last block: logits of p_V
    logits_n: torch.Tensor  # (B, K) new head on c_n: logits of p_N (trained by CE)
    probs: torch.Tensor  # (B, K) p_O, probabilities (for eval/argmax), fp32
    assign: torch.Tensor  # (B, N, O) A, rows p^i sum to 1, fp32
    object_tokens: torch.Tensor  # (B, N, D) N_0
    feat_v: torch.Tensor  # (B, D) backbone.features(z_L) fed to the visual head: LN(c_v), or
    #                       LN(mean of the N patch tokens) on an average-pooling backbone
    feat_n: torch.Tensor  # (B, D) norm(c_n) after g, fed to the new head


def diversity_loss(assign: torch.Tensor, mode: str = "batch") -> torch.Tensor:
    """LLB Eq. L_div = -H(p~) from A (B, N, O). "batch": one p~ over patches and batch (the
    authors' code); "image": p~_b per image (the poster), L_div = mean_b -H(p~_b)."""
    if mode not in ("batch", "image"):
        raise ValueError(f"diversity_mode must be 'batch' or 'image', got {mode!r}")
    p = assign.float()  # fp32 even under bf16 autocast: entropies of small probabilities
    p_mean = p.mean(dim=(0, 1)) if mode == "batch" else p.mean(dim=1)  # (O,) or (B, O)
    # LLB Eq. H(p) = -sum_o p_o log p_o; clamp: a safe log (finite value and gradient at p_o = 0)
    entropy = -(p_mean * p_mean.clamp_min(1e-12).log()).sum(dim=-1)  # () or (B,)
    return -entropy.mean()


def _init_linear(module: nn.Module):
    """As vit.py: truncated normal(0.02) weights, zero biases, for every Linear inside."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)


class LLB(nn.Module):
    """A vit.ViT plus the LLB branch. forward(x) -> LLBOutput; loss(out, y) -> (total, stats).

    `LLB(backbone)`, `LLB(backbone, config)` or `LLB(backbone, num_objects=64, ...)`: any
    LLBConfig field as a keyword overrides `config` (default LLBConfig(), the authors' recipe).
    """

    def __init__(self, backbone: vit.ViT, config: LLBConfig | None = None, **overrides):
        super().__init__()
        if not isinstance(backbone, vit.ViT):
            raise TypeError(f"backbone must be a vit.ViT, got {type(backbone).__name__}")
        valid = [f.name for f in fields(LLBConfig)]
        unknown = sorted(set(overrides) - set(valid))
        if unknown:
            raise TypeError(f"unknown LLB option(s) {unknown}; valid options: {', '.join(valid)}")
        v = backbone.config
        base = LLBConfig() if config is None else config
        self.config = c = replace(base, **overrides).for_backbone(v.depth)  # layer: an int now
        self.backbone = backbone.requires_grad_(not c.freeze_backbone)
        D = v.width
        # Note: the new blocks use dropout 0, whatever the backbone's rates (the branch is small).
        block = dict(width=D, heads=v.heads, mlp_dim=v.mlp_dim)
        self.extractor = vit.Block(**block)  # step 1's "MLP", part 1: one block on all of V_l
        self.to_objects = nn.Linear(D, c.num_objects)  # step 1's "MLP", part 2: D -> O
        # Note: with disconnect=False, N_emb does not exist (an unused parameter breaks DDP).
        self.object_embed = (nn.Parameter(torch.empty(c.num_objects, D))
                             if c.disconnect else None)  # N_emb
        self.class_token = nn.Parameter(torch.zeros(1, 1, D))  # c_n
        self.pos_embed = (nn.Parameter(torch.empty(1, 1 + v.num_patches, D))
                          if c.pos_embed else None)  # ablation only; the paper uses none
        self.blocks = nn.ModuleList(vit.Block(**block) for _ in range(c.depth - 1))  # g
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.head = nn.Linear(D, v.num_classes)  # MLP_N
        self.reset_parameters()
        self.train()  # puts a frozen backbone in eval mode (see train())

    def reset_parameters(self):
        """Init the branch only (the backbone is left as given)."""
        for m in (self.extractor, self.to_objects, self.blocks, self.head):
            # Note: the head too, not zero as vit.py's (a zero head stalls the rest at step 1).
            # One init on every backbone: the authors' SWAG branch (their torchvision-based model)
            # starts from a zero head and Xavier-uniform MLPs instead; not copied (a departure).
            _init_linear(m)
        if self.object_embed is not None:
            nn.init.xavier_normal_(self.object_embed)  # as the authors' code
        nn.init.zeros_(self.class_token)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def train(self, mode: bool = True):
        """A frozen backbone stays in eval mode (dropout off), whatever `mode` is."""
        super().train(mode)
        if self.config.freeze_backbone:
            self.backbone.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer gets: the branch alone, or everything when unfrozen."""
        return [p for p in self.parameters() if p.requires_grad]

    def unreached_parameters(self) -> list[str]:
        """The trainable parameters that the loss never reaches (no gradient): to_objects when
        neither N_0 = A N_emb nor L_div uses A (the ablations w/o disconnection and w/o L_div
        together). DDP must then look for unused parameters at each step (train.py)."""
        if self.config.disconnect or self.config.diversity:
            return []
        return [f"to_objects.{name}" for name, _ in self.to_objects.named_parameters()]

    # ------------------------------------------------------------------------- the four steps

    def extract_objects(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """LLB step 1, latent object extraction: p^i = Softmax(MLP(v_l^i) / tau), i = 1..N.

        "MLP" is the authors' one transformer block (`self.extractor`, on all of V_l, class token
        included) followed by the Linear D -> O (`self.to_objects`, on the N patch tokens only).
        In: z_l (B, 1 + N, D), the output of backbone block l, class token at index 0.
        Out: assign A = [p^1 .. p^N] (B, N, O), each row sums to 1, computed in float32 even
        under autocast (the Linear too); and the extractor's patch outputs (B, N, D), which the
        "w/o disconnection" ablation uses instead of N_0.
        """
        h = self.extractor(z)  # (B, 1 + N, D)
        patches = h[:, 1:]  # (B, N, D): class token excluded
        # Note: fp32 even under autocast: / tau = 0.1 sharpens the logits 10x, and with bf16
        # logits 1.5% of patches changed their argmax object at ViT-B/16 sizes (the command:
        # docs/reproducing.md, "Where this departs").
        with torch.autocast(z.device.type, enabled=False):
            logits = self.to_objects(patches.float())  # (B, N, O)
            # LLB step 1: p^i = Softmax(MLP(v_l^i) / tau)
            assign = torch.softmax(logits / self.config.tau, dim=-1)  # (B, N, O)
        return assign, patches

    def disconnect(self, assign: torch.Tensor) -> torch.Tensor:
        """LLB step 2, visual dependency disconnection: N_0 = Disconnect(A, N_emb) = A N_emb.

        Each patch becomes a mix of the learnable object embeddings N_emb (`self.object_embed`,
        (O, D)) weighted by its assignment: no visual feature passes through.
        In: assign A (B, N, O). Out: object_tokens N_0 (B, N, D).
        """
        # LLB step 2: N_0 = A N_emb, (B, N, O) @ (O, D) -> (B, N, D)
        return assign.to(self.object_embed.dtype) @ self.object_embed

    def structure(self, object_tokens: torch.Tensor) -> torch.Tensor:
        """LLB step 3, non-visual feature structuring: N_{L_N} = g([c_n || N_0]; W).

        Prepend the learnable class token c_n (`self.class_token`, (1, 1, D)) to N_0, add
        `self.pos_embed` if the ablation has one (the paper has none), run the blocks of g
        (`self.blocks`), and return the LayerNorm (`self.norm`) of the class token c_n.
        In: object_tokens N_0 (B, N, D). Out: feat_n = LN(c_n) (B, D), input of MLP_N.
        """
        B = object_tokens.shape[0]
        # LLB step 3: g([c_n || N_0]; W), the blocks of g over the class token and N_0
        s = torch.cat([self.class_token.expand(B, -1, -1), object_tokens], dim=1)  # (B, 1 + N, D)
        if self.pos_embed is not None:
            s = s + self.pos_embed  # ablation "w/ Pos."; without it g is permutation-equivariant
        for block in self.blocks:
            s = block(s)  # (B, 1 + N, D)
        # LLB step 3: feat_n = LN(c_n), token 0 after g, on every backbone
        # Note: not pooled on MAE either, as the authors' code runs (docs/reproducing.md)
        return self.norm(s[:, 0])  # (B, D)

    def integrate(self, logits_v: torch.Tensor, logits_n: torch.Tensor) -> torch.Tensor:
        """LLB step 4, integration: p_O = alpha p_V + (1 - alpha) p_N.

        p_V = Softmax(logits_v), p_N = Softmax(logits_n), in float32; with the "w/o integration"
        ablation (config.integrate False), p_O = p_N.
        In: logits_v (B, K), logits_n (B, K). Out: probs p_O (B, K), float32, rows sum to 1.
        """
        p_v = torch.softmax(logits_v.float(), dim=-1)  # (B, K)
        p_n = torch.softmax(logits_n.float(), dim=-1)  # (B, K)
        if not self.config.integrate:
            return p_n
        # LLB step 4: p_O = alpha p_V + (1 - alpha) p_N, (B, K)
        return self.config.alpha * p_v + (1 - self.config.alpha) * p_n

    # ------------------------------------------------------------------------- model and loss

    def forward(self, x: torch.Tensor) -> LLBOutput:
        """The paper's Fig. 2: the backbone, then the four steps, then the heads."""
        c = self.config
        # Frozen: no autograd graph through the backbone (where LLB saves time and memory).
        with torch.no_grad() if c.freeze_backbone else contextlib.nullcontext():
            # only the blocks read here, z_l and z_L (all L of them: memory grows with depth)
            blocks = (c.layer, self.backbone.config.depth)  # l and L
            logits_v, (z_l, z_last) = self.backbone(x, return_blocks=blocks)
            # logits_v (B, K); z_l, z_last (B, 1 + N, D)
            feat_v = self.backbone.features(z_last)  # (B, D): what the visual head sees
            del z_last  # not kept through the branch
        # LLB step 1: A (B, N, O) from z_l, the output of block l (1-based)
        assign, patch_features = self.extract_objects(z_l)
        # LLB step 2: N_0 = A N_emb (B, N, D)
        if c.disconnect:
            object_tokens = self.disconnect(assign)
        else:
            # ablation "w/o disconnection": visual features go on; A then only feeds L_div
            # (so with diversity=False too, to_objects is unused: see unreached_parameters)
            object_tokens = patch_features
        # LLB step 3: LN(c_n) after g (B, D), then the logits of p_N = Softmax(MLP_N(c_n))
        feat_n = self.structure(object_tokens)
        logits_n = self.head(feat_n)  # (B, K)
        # LLB step 4: p_O (B, K)
        probs = self.integrate(logits_v, logits_n)
        # Note: the authors' code fed such mixed probabilities to CrossEntropyLoss as if they were
        # logits; here probs are probabilities (eval, argmax) and training uses CE on logits_n.
        return LLBOutput(logits_v=logits_v, logits_n=logits_n, probs=probs, assign=assign,
                         object_tokens=object_tokens, feat_v=feat_v, feat_n=feat_n)

    def loss(self, out: LLBOutput, target: torch.Tensor, *, label_smoothing: float = 0.0):
        """L = CE(p_N, y) + lambda L_div -> (total, stats).

        stats: detached 0-dim float32 tensors "ce", "diversity", ("ce_visual" when unfrozen),
        "total", and "top1" (% of the batch p_N gets right). Nothing is read back to the host:
        the caller does (`.item()`) when it logs.
        """
        c = self.config
        ce = F.cross_entropy(out.logits_n.float(), target, label_smoothing=label_smoothing)
        # LLB Eq. L_div; default "batch" as the authors' code: one batch-level marginal p~ that
        # asks the batch as a whole to use many objects (a per-image p~ forces every image to).
        # Under DDP, p~ is over each device's own batch (no all-reduce).
        l_div = diversity_loss(out.assign, c.diversity_mode)
        # LLB Eq. L = CE + lambda L_div
        total = ce + c.diversity_weight * l_div if c.diversity else ce
        stats = {"ce": ce, "diversity": l_div}  # L_div reported even when the switch is off
        if not c.freeze_backbone:
            # Note: not in the paper (which freezes the backbone). Unfrozen, without this term the
            # blocks after `layer` and the visual head get no gradient (the authors' code then
            # crashes under DDP with unused parameters) while p_V, used by step 4, drifts.
            ce_v = F.cross_entropy(out.logits_v.float(), target, label_smoothing=label_smoothing)
            total = total + ce_v
            stats["ce_visual"] = ce_v
        stats["total"] = total
        stats = {name: value.detach().float() for name, value in stats.items()}
        hits = out.logits_n.detach().argmax(dim=-1) == target  # (B,)
        stats["top1"] = 100 * hits.float().mean()
        return total, stats
