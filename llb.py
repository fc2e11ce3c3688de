"""LLB, Label-focused Latent-object Biasing, on top of the ViT of vit.py, written from scratch.

Paper: "Label-Focused Inductive Bias over Latent Object Features in Visual Classification",
Kang, Bae, Kim, ICLR 2024. A (frozen) ViT gives V_l = [v_l^0 .. v_l^N], the output of block l
(v_l^0 is its class token). LLB adds a branch in four steps (grep "LLB step k"):

    1. latent object extraction      p^i = Softmax(MLP(v_l^i) / tau),  i = 1..N,  p^i in R^O
                                     L_div = -H(p~),  H(p) = -sum_o p_o log p_o,  p~ = mean of p^i
    2. visual dependency disconnect  N_0 = Disconnect(A, N_emb) = A N_emb,  A = [p^1 .. p^N]
    3. non-visual feature structure  N_{L_N} = g([c_n || N_0]; W),  p_N = Softmax(MLP_N(c_n))
    4. integration                   p_O = alpha p_V + (1 - alpha) p_N,  p_V = Softmax(MLP_V(c_v))

    training loss                    L = CE(p_N, y) + lambda L_div     (only the branch learns)

Symbol map (code name -> paper symbol):
    layer -> l;  num_objects -> O;  tau -> tau;  alpha -> alpha;  diversity_weight -> lambda
    extractor + to_objects -> the "MLP" of step 1 (one transformer block, then Linear D -> O)
    assign -> A = [p^1 .. p^N], (B, N, O);  object_embed -> N_emb, (O, D), "E" in comments below
    object_tokens -> N_0, (B, N, D);  class_token -> c_n;  blocks -> g;  head -> MLP_N
    logits_v / logits_n -> the logits of p_V / p_N;  probs -> p_O
    feat_v -> LN(c_v), the backbone's normed class token;  feat_n -> LN(c_n) after g
Shapes: B batch, N patch tokens (+1 class token), D width, O latent objects, K classes.
"""
import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import vit


@dataclass
class LLBConfig:
    layer: int  # l: the branch reads z_l = output of block l (1-based); default L - 1 (11 of 12)
    num_objects: int = 2048  # O: number of latent objects (rows of E = N_emb)
    depth: int = 6  # LLB layers, counting the extractor block (authors' code): depth - 1 blocks in g
    tau: float = 0.1  # softmax temperature of the assignment p^i
    alpha: float = 0.8  # integration weight of the visual probabilities p_V
    diversity_weight: float = 0.5  # lambda, weight of L_div in the loss
    diversity_mode: str = "batch"  # p~ averaged over patches and batch ("batch") or per image ("image")
    disconnect: bool = True  # ablation: False -> N_0 = the extractor's patch outputs (no A E)
    diversity: bool = True  # ablation: False -> loss without lambda L_div (L_div still reported)
    pos_embed: bool = False  # ablation: True -> learnable position embedding on [c_n || N_0]
    integrate: bool = True  # ablation: False -> probs = p_N alone
    freeze_backbone: bool = True  # the paper's setting: only the branch learns


@dataclass
class LLBOutput:
    logits_v: torch.Tensor  # (B, K) backbone head on its last block: logits of p_V
    logits_n: torch.Tensor  # (B, K) new head on c_n: logits of p_N (trained by CE)
    probs: torch.Tensor  # (B, K) p_O, probabilities (for eval/argmax), fp32
    assign: torch.Tensor  # (B, N, O) A, rows p^i sum to 1, fp32
    object_tokens: torch.Tensor  # (B, N, D) N_0
    feat_v: torch.Tensor  # (B, D) backbone.norm(z_L[:, 0]), fed to the visual head
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
    """A vit.ViT plus the LLB branch. forward(x) -> LLBOutput; loss(out, y) -> (total, parts)."""

    def __init__(self, backbone: vit.ViT, *, layer: int | None = None, num_objects: int = 2048,
                 depth: int = 6, tau: float = 0.1, alpha: float = 0.8, diversity_weight: float = 0.5,
                 diversity_mode: str = "batch", disconnect: bool = True, diversity: bool = True,
                 pos_embed: bool = False, integrate: bool = True, freeze_backbone: bool = True):
        super().__init__()
        if not isinstance(backbone, vit.ViT):
            raise TypeError(f"backbone must be a vit.ViT, got {type(backbone).__name__}")
        v = backbone.config
        layer = max(v.depth - 1, 1) if layer is None else layer  # the paper: block 11 of ViT-B's 12
        checks = [
            (isinstance(layer, int) and 1 <= layer <= v.depth, "layer", f"an int in 1..{v.depth} "
             f"(the backbone block whose output z_l feeds LLB)", layer),
            (num_objects >= 2, "num_objects", ">= 2 (O latent objects)", num_objects),
            (depth >= 2, "depth", ">= 2 (the extractor block plus at least one block of g, "
             "else c_n sees no object)", depth),
            (tau > 0, "tau", "> 0 (softmax temperature)", tau),
            (0 <= alpha <= 1, "alpha", "in [0, 1] (weight of p_V)", alpha),
            (diversity_weight >= 0, "diversity_weight", ">= 0 (lambda)", diversity_weight),
            (diversity_mode in ("batch", "image"), "diversity_mode", "'batch' or 'image'", diversity_mode),
        ]
        for ok, name, valid, got in checks:
            if not ok:
                raise ValueError(f"LLB {name} must be {valid}, got {got!r}")
        self.config = c = LLBConfig(layer, num_objects, depth, tau, alpha, diversity_weight,
                                    diversity_mode, disconnect, diversity, pos_embed, integrate,
                                    freeze_backbone)
        self.backbone = backbone.requires_grad_(not freeze_backbone)
        D = v.width
        # Note: the new blocks use dropout 0, whatever the backbone's rates (the branch is small).
        block = dict(width=D, heads=v.heads, mlp_dim=v.mlp_dim)
        self.extractor = vit.Block(**block)  # step 1's "MLP", part 1: one block on all of V_l
        self.to_objects = nn.Linear(D, num_objects)  # step 1's "MLP", part 2: D -> O
        # Note: with disconnect=False, E does not exist (an unused parameter breaks DDP).
        self.object_embed = nn.Parameter(torch.empty(num_objects, D)) if disconnect else None  # E
        self.class_token = nn.Parameter(torch.zeros(1, 1, D))  # c_n
        self.pos_embed = (nn.Parameter(torch.empty(1, 1 + v.num_patches, D))
                          if pos_embed else None)  # ablation only; the paper uses none
        self.blocks = nn.ModuleList(vit.Block(**block) for _ in range(depth - 1))  # g
        self.norm = nn.LayerNorm(D, eps=1e-6)
        self.head = nn.Linear(D, v.num_classes)  # MLP_N
        self.reset_parameters()
        self.train()  # puts a frozen backbone in eval mode (see train())

    def reset_parameters(self):
        """Init the branch only (the backbone is left as given)."""
        for m in (self.extractor, self.to_objects, self.blocks, self.head):
            # Note: the head too, not zero as vit.py's (a zero head stalls the rest at step 1)
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

    def branch(self, z: torch.Tensor) -> dict:
        """LLB steps 1-3 from z_l (B, 1 + N, D), class token at index 0.

        Returns a dict with "assign" A (B, N, O), "object_tokens" N_0 (B, N, D),
        "feat_n" (B, D) and "logits_n" (B, K).
        """
        c = self.config
        B, N1, D = z.shape  # batch, 1 + patch tokens, width
        # LLB step 1: p^i = Softmax(MLP(v_l^i) / tau); the block sees all of V_l (authors' code),
        # the Linear only the N patch tokens (class token excluded)
        h = self.extractor(z)  # (B, 1 + N, D)
        # Note: fp32 softmax, since / tau = 0.1 sharpens the logits 10x (bf16 autocast safe)
        assign = torch.softmax(self.to_objects(h[:, 1:]).float() / c.tau, dim=-1)  # (B, N, O)
        # LLB step 2: N_0 = Disconnect(A, E) = A E, no visual feature passes through
        if c.disconnect:
            tokens = assign.to(self.object_embed.dtype) @ self.object_embed  # (B, N, D)
        else:
            # ablation "w/o disconnection": visual features go on; A then only feeds L_div
            # (so with diversity=False too, to_objects is unused: find_unused_parameters under DDP)
            tokens = h[:, 1:]  # (B, N, D)
        # LLB step 3: N_{L_N} = g([c_n || N_0]; W), then p_N's logits from c_n
        s = torch.cat([self.class_token.expand(B, -1, -1), tokens], dim=1)
        # s: (B, 1 + N, D)
        if self.pos_embed is not None:
            s = s + self.pos_embed  # ablation "w/ Pos."; without it g is permutation-equivariant
        for block in self.blocks:
            s = block(s)  # (B, 1 + N, D)
        feat_n = self.norm(s[:, 0])  # (B, D)
        return dict(assign=assign, object_tokens=tokens, feat_n=feat_n, logits_n=self.head(feat_n))

    def forward(self, x: torch.Tensor) -> LLBOutput:
        c = self.config
        # Frozen: no autograd graph through the backbone (where LLB saves time and memory).
        with torch.no_grad() if c.freeze_backbone else contextlib.nullcontext():
            logits_v, zs = self.backbone(x, return_blocks=True)  # (B, K), L x (B, 1 + N, D)
            feat_v = self.backbone.norm(zs[-1][:, 0])  # (B, D): what the visual head sees
        b = self.branch(zs[c.layer - 1])  # z_l = output of block l (1-based)
        # LLB step 4: p_O = alpha p_V + (1 - alpha) p_N
        p_v = torch.softmax(logits_v.float(), dim=-1)  # (B, K)
        p_n = torch.softmax(b["logits_n"].float(), dim=-1)  # (B, K)
        probs = c.alpha * p_v + (1 - c.alpha) * p_n if c.integrate else p_n
        # Note: the authors' code fed such mixed probabilities to CrossEntropyLoss as if they were
        # logits; here probs are probabilities (eval, argmax) and training uses CE on logits_n.
        return LLBOutput(logits_v=logits_v, logits_n=b["logits_n"], probs=probs,
                         assign=b["assign"], object_tokens=b["object_tokens"], feat_v=feat_v,
                         feat_n=b["feat_n"])

    def loss(self, out: LLBOutput, target: torch.Tensor, *, label_smoothing: float = 0.0):
        """L = CE(p_N, y) + lambda L_div -> (total tensor, parts dict of floats)."""
        c = self.config
        ce = F.cross_entropy(out.logits_n.float(), target, label_smoothing=label_smoothing)
        # LLB Eq. L_div; default "batch" as the authors' code: one batch-level marginal p~ that
        # asks the batch as a whole to use many objects (a per-image p~ forces every image to).
        # Under DDP, p~ is over each device's own batch (no all-reduce).
        l_div = diversity_loss(out.assign, c.diversity_mode)
        # LLB Eq. L = CE + lambda L_div
        total = ce + c.diversity_weight * l_div if c.diversity else ce
        parts = {"ce": ce, "diversity": l_div}  # L_div reported even when the switch is off
        if not c.freeze_backbone:
            # Note: not in the paper (which freezes the backbone). Unfrozen, without this term the
            # blocks after `layer` and the visual head get no gradient (the authors' code then
            # crashes under DDP with unused parameters) while p_V, used by step 4, drifts.
            ce_v = F.cross_entropy(out.logits_v.float(), target, label_smoothing=label_smoothing)
            total = total + ce_v
            parts["ce_visual"] = ce_v
        parts["total"] = total
        values = torch.stack([v.detach().float() for v in parts.values()]).tolist()  # one sync
        return total, dict(zip(parts, values))
