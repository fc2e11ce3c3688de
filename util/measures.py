"""What analyze.py measures on the features and predictions it collects: class centroids and
their cosine similarities, within- versus across-superclass similarity, a 2-D PCA of the
centroids, latent-object usage, and the agreement of two heads. Plain torch, no pictures."""
import math

import torch
import torch.nn.functional as F


def class_centroids(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean feature of each class, (K, D); NaN rows for classes without any sample."""
    sums = torch.zeros(num_classes, features.shape[1], dtype=torch.float64)
    sums.index_add_(0, labels, features.double())
    counts = torch.bincount(labels, minlength=num_classes).double()[:, None]
    return (sums / counts).float()  # 0 / 0 = NaN for empty classes


def cosine_matrix(centroids: torch.Tensor) -> torch.Tensor:
    """(K, K) cosine similarity of the rows; NaN rows give NaN rows and columns."""
    unit = F.normalize(centroids, dim=1)
    return unit @ unit.T


def class_order(num_classes: int, coarse_of_class: list | None = None) -> list[int]:
    """Class ids grouped by superclass (stable: class id order inside each), else 0..K-1."""
    if coarse_of_class is None:
        return list(range(num_classes))
    return sorted(range(num_classes), key=lambda c: coarse_of_class[c])


def superclass_similarity(sim: torch.Tensor, coarse_of_class: list) -> dict:
    """Mean of sim over off-diagonal class pairs within one superclass and across superclasses
    (NaN entries skipped; None where there is no such pair)."""
    coarse = torch.as_tensor(coarse_of_class)
    same = coarse[:, None] == coarse[None, :]
    off = ~torch.eye(len(coarse), dtype=torch.bool) & ~sim.isnan()

    def mean(mask):
        return sim[mask].double().mean().item() if mask.any() else None
    return {"within": mean(same & off), "across": mean(~same & off)}


def pca_2d(centroids: torch.Tensor) -> tuple[torch.Tensor, list[float]]:
    """The rows (K, D), each scaled to unit length (the cosine geometry of the heatmaps), centred
    and projected on their first two principal axes: (K, 2) (NaN rows stay NaN, and are left
    out of the fit) and the share of the variance of each axis. Signs: each axis points to the
    row with the largest |coordinate| on it."""
    unit = F.normalize(centroids.double(), dim=1)
    present = ~unit.isnan().any(dim=1)
    x = unit[present] - unit[present].mean(dim=0)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    # an axis without variance (2 rows have one axis; rounding leaves ~1e-17 on the other): 0
    axes = vh[:2] * (s[:2, None] > 1e-9 * s[:1, None])  # (2, D) or fewer rows
    axes = torch.cat([axes, axes.new_zeros(2 - len(axes), axes.shape[1])])
    coords = x @ axes.T  # (n, 2)
    flip = coords.gather(0, coords.abs().argmax(dim=0, keepdim=True)).sign()  # (1, 2)
    coords = coords * torch.where(flip == 0, 1.0, flip)
    variance = s.square()
    share = (variance[:2] / variance.sum().clamp_min(1e-300)).tolist()
    out = torch.full((len(unit), 2), float("nan"), dtype=torch.float64)
    out[present] = coords
    return out.float(), share + [0.0] * (2 - len(share))


def object_usage(argmax_counts: torch.Tensor, mean_assign: torch.Tensor) -> dict:
    """Objects used as some patch's argmax, and the perplexity exp(H(p~)) of the mean assignment
    p~ (1 when every patch picks one object, k when p~ is uniform over k objects)."""
    p = mean_assign.double() / mean_assign.sum()
    entropy = -(p * p.clamp_min(1e-300).log()).sum()
    return {"num_objects": len(argmax_counts), "used": int((argmax_counts > 0).sum()),
            "perplexity": math.exp(entropy.item())}


def agreement(scores_v: torch.Tensor, scores_n: torch.Tensor, target: torch.Tensor) -> dict:
    """Counts and % of images both heads get right, only the visual (p_V), only the non-visual
    (p_N), neither. Scores (B, K) or already predicted class ids (B,)."""
    v = (scores_v.argmax(1) if scores_v.ndim == 2 else scores_v) == target
    n = (scores_n.argmax(1) if scores_n.ndim == 2 else scores_n) == target
    masks = {"both_right": v & n, "only_visual": v & ~n, "only_nonvisual": ~v & n,
             "both_wrong": ~v & ~n}
    counts = {k: int(m.sum()) for k, m in masks.items()}
    total = len(target)
    percent = {k: 100 * c / total for k, c in counts.items()}
    return {"counts": counts, "percent": percent, "total": total}


# ----------------------------------------------------------------------------- latent objects
# against known contents: the contingency table n_co of contents c (rows) x latent objects o
# (columns), n patches in all, p_co = n_co / n, p_c and p_o its row and column sums
def contingency(contents: torch.Tensor, objects: torch.Tensor, num_contents: int,
                num_objects: int) -> torch.Tensor:
    """(C, O) int64 counts n_co of the patches of content c whose argmax object is o; contents
    and objects: ids of the same patches, any matching shape."""
    pair = contents.flatten().long() * num_objects + objects.flatten().long()
    return torch.bincount(pair, minlength=num_contents * num_objects).view(num_contents,
                                                                          num_objects)


def entropy(counts: torch.Tensor) -> float:
    """H = -sum_i p_i log p_i (nats) of the distribution p = counts / sum(counts)."""
    p = counts.double().flatten() / counts.sum()
    # H = -sum_i p_i log p_i, with 0 log 0 = 0
    return -(p * p.clamp_min(1e-300).log()).sum().item()


def nmi(table: torch.Tensor) -> float:
    """Normalized mutual information of a (C, O) contingency table, in [0, 1]:
    NMI = I(C; O) / ((H(C) + H(O)) / 2), with I(C; O) = H(C) + H(O) - H(C, O)
    (the arithmetic normalization, scikit-learn's default). 1: the objects are the contents up
    to naming; 0: independent. With one content and one object (H(C) = H(O) = 0) it is 1."""
    h_c = entropy(table.sum(1))
    h_o = entropy(table.sum(0))
    if h_c + h_o <= 1e-12:
        return 1.0
    # I(C; O) = H(C) + H(O) - H(C, O);  NMI = I(C; O) / ((H(C) + H(O)) / 2)
    mutual = h_c + h_o - entropy(table)
    return max(0.0, mutual / ((h_c + h_o) / 2))  # max: rounding below 0 when independent


def purity(table: torch.Tensor) -> float:
    """purity = (1/n) sum_o max_c n_co: the share of patches whose object's most common content
    is their own. 1 when every object holds a single content."""
    # purity = (1/n) sum_o max_c n_co
    return (table.max(0).values.sum() / table.sum()).item()


def content_coverage(table: torch.Tensor, share: float) -> list[dict]:
    """Per content c (row of a (C, O) table): its patches n_c = sum_o n_co; its most common
    object o* = argmax_o n_co and that object's share n_co* / n_c; and the fewest objects that
    take `share` of its patches: the smallest k with (sum of the k largest n_co) >= share * n_c.
    Share and count are None for a content without patches."""
    out = []
    for row in table:
        n_c = int(row.sum())
        if n_c == 0:
            out.append({"patches": 0, "top_object": None, "top_share": None, "objects_for": None})
            continue
        ranked = row.sort(descending=True).values.cumsum(0)  # (O,) patches of the k largest
        # k = min {k : sum of the k largest n_co >= share * n_c}; top share = max_o n_co / n_c
        needed = int((ranked < share * n_c - 1e-9).sum()) + 1
        out.append({"patches": n_c, "top_object": int(row.argmax()),
                    "top_share": int(row.max()) / n_c, "objects_for": needed})
    return out
