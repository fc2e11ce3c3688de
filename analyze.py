"""What an LLB checkpoint learned: latent-object maps, object usage, class-centroid geometry.

    python train.py --analyze RUN/last.pt [the data options used for training]

The paper's claim: a ViT arranges classes by what they look like (visually similar but
semantically unrelated classes lie close in ViT space), while LLB's non-visual branch, which
sees only latent-object ids (A N_emb) and is trained only by the labels, arranges them by the
labels' own structure. One pass over the validation split (eval mode, no grad) measures that.
Everything is written next to CKPT (its run directory):

  latent_objects.png   8 validation images (one per class, the first met), each beside its patch
                       grid coloured by the argmax latent object of each patch: LLB step 1's
                       quantization. Same colour = same object in every image (colours follow
                       object usage rank: the 20 most used get 20 high-contrast colours).
  latent_objects.txt   the legend (most used objects: id, RGB, share of patches) and layout.
  centroids_visual.png, centroids_nonvisual.png
                       K x K cosine similarity of the class centroids (mean feature over the
                       class's validation images) of feat_v = LN(c_v) (the ViT's space) and of
                       feat_n = LN(c_n) (LLB's non-visual space); blue -1, white 0, red +1, grey:
                       class without images; colour bar on the right (+1 top, -1 bottom). Classes
                       in the same order in both, grouped by superclass when the set has them
                       (CIFAR-100; black lines between superclasses), else by class id.
  analysis.json        object usage (objects used as an argmax, perplexity exp(H(p~)) of the mean
                       assignment p~: the effective number of objects, cf. L_div = -H(p~)),
                       top-1 of p_V, p_N, p_O, agreement of the visual and non-visual heads, the
                       mean off-diagonal centroid cosine per space, and the mean centroid cosine
                       within vs across superclasses (null without a hierarchy). On CIFAR-100 the
                       superclasses are semantic groups, which the claim predicts LLB's space
                       pulls together more than the ViT's does; on the synthetic set they are the
                       look-alike twins (same shape), which the ViT places close and the labels
                       do not relate.
"""
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.utils import make_grid, save_image
from tqdm import tqdm

import checkpoint
import train

NUM_IMAGES, PAIRS_PER_ROW, PAIR_GAP, PADDING, MIN_IMAGE_PX = 8, 4, 2, 12, 128
HEATMAP_PX, BAR_GAP, BAR_WIDTH = 480, 8, 24
# Kelly's 22 colours of maximum contrast without white and black: for the 20 most used objects
KELLY = ("F3C300 875692 F38400 A1CAF1 BE0032 C2B280 848482 008856 E68FAC 0067A5 "
         "F99379 604E97 F6A600 B3446C DCD300 882D17 8DB600 654522 E25822 2B3D26").split()
BLUE, WHITE, RED, GREY = (33, 102, 172), (255, 255, 255), (178, 24, 43), (128, 128, 128)


# ----------------------------------------------------------------------------- measures
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
    pred = [s.argmax(1) if s.ndim == 2 else s for s in (scores_v, scores_n)]
    v, n = (p == target for p in pred)
    counts = {"both_right": v & n, "only_visual": v & ~n, "only_nonvisual": ~v & n, "both_wrong": ~v & ~n}
    counts = {k: int(m.sum()) for k, m in counts.items()}
    total = len(target)
    return {"counts": counts, "percent": {k: 100 * c / total for k, c in counts.items()}, "total": total}


# ----------------------------------------------------------------------------- pictures
def heatmap(sim: torch.Tensor, scale: int = 1) -> torch.Tensor:
    """uint8 (3, H*scale, W*scale): blue (-1) - white (0) - red (+1), NaN grey; nearest upscale."""
    v = sim.float().clamp(-1, 1)[..., None]  # (H, W, 1)
    white, end = torch.tensor(WHITE, dtype=torch.float), torch.tensor([BLUE, RED], dtype=torch.float)
    rgb = white + (end[(v[..., 0] > 0).long()] - white) * v.abs()  # (H, W, 3)
    rgb[sim.isnan()] = torch.tensor(GREY, dtype=torch.float)
    img = rgb.round().to(torch.uint8).permute(2, 0, 1)
    return img.repeat_interleave(scale, 1).repeat_interleave(scale, 2)


def similarity_picture(sim: torch.Tensor, groups: list | None = None) -> torch.Tensor:
    """Heatmap of an ordered (K, K) similarity, black lines where `groups` (the superclass of each
    row, in order) changes, and a colour bar (+1 top, -1 bottom) on the right."""
    scale = max(2, math.ceil(HEATMAP_PX / len(sim)))
    img = heatmap(sim, scale)
    for i in range(1, len(sim)) if groups else ():
        if groups[i] != groups[i - 1]:
            img[:, i * scale, :] = img[:, :, i * scale] = 0
    side = img.shape[1]
    bar = heatmap(torch.linspace(1, -1, side)[:, None].expand(side, BAR_WIDTH))
    gap = torch.full((3, side, BAR_GAP), 255, dtype=torch.uint8)
    return torch.cat([img, gap, bar], dim=2)


def object_colours(argmax_counts: torch.Tensor) -> torch.Tensor:
    """uint8 (O, 3): the object of usage rank r (ties by id) gets Kelly colour r for r < 20,
    else a golden-angle hue: fixed for a run, distinct for the most used objects."""
    n = len(argmax_counts)
    rank_of = torch.empty(n, dtype=torch.long)
    rank_of[torch.argsort(-argmax_counts, stable=True)] = torch.arange(n)
    kelly = torch.tensor([[int(c[i:i + 2], 16) for i in (0, 2, 4)] for c in KELLY], dtype=torch.float)
    r = torch.arange(n, dtype=torch.float)
    h, s, v = (r * 0.618034) % 1, torch.full_like(r, 0.6), 0.95 - 0.3 * (r % 2)
    k = (torch.tensor([5.0, 3.0, 1.0]) + 6 * h[:, None]) % 6  # HSV -> RGB, (n, 3)
    hsv = 255 * (v[:, None] - v[:, None] * s[:, None] * torch.minimum(k, 4 - k).clamp(0, 1))
    palette = torch.cat([kelly, hsv[len(kelly):]])[:n]
    return palette[rank_of].round().to(torch.uint8)


def object_map_grid(images: torch.Tensor, object_ids: torch.Tensor, colours: torch.Tensor,
                    scale: int) -> torch.Tensor:
    """uint8 (3, H, W): pairs [image | its patch grid coloured by object], PAIRS_PER_ROW per row.
    images (n, 3, S, S) normalized, shown min-max per image; object_ids (n, N) patch argmaxes."""
    n, size = len(images), images.shape[-1]
    lo, hi = images.amin((1, 2, 3), keepdim=True), images.amax((1, 2, 3), keepdim=True)
    shown = ((images - lo) / (hi - lo).clamp_min(1e-8) * 255).round().to(torch.uint8)
    shown = shown.repeat_interleave(scale, 2).repeat_interleave(scale, 3)  # (n, 3, S*sc, S*sc)
    g = math.isqrt(object_ids.shape[1])  # patches per side (row-major, as vit.PatchEmbed)
    maps = colours[object_ids].view(n, g, g, 3).permute(0, 3, 1, 2)  # (n, 3, g, g)
    cell = size * scale // g
    maps = maps.repeat_interleave(cell, 2).repeat_interleave(cell, 3)
    gap = torch.full((n, 3, size * scale, PAIR_GAP), 255, dtype=torch.uint8)
    pairs = torch.cat([shown, gap, maps], dim=3)
    return make_grid(pairs, nrow=PAIRS_PER_ROW, padding=PADDING, pad_value=255)


def write_png(image: torch.Tensor, path) -> None:
    """uint8 (3, H, W) to a PNG, exactly (save_image: no deprecated torchvision.io encoder)."""
    save_image(image.float() / 255, path)


# ----------------------------------------------------------------------------- the command
def run(args, device) -> dict:
    """`train.py --analyze CKPT`: one pass over the validation split, files next to CKPT.
    Single process: under --gpus N / torchrun, rank 0 does it all and the others return {}."""
    if torch.distributed.is_initialized() and torch.distributed.get_rank() > 0:
        return {}
    ckpt = checkpoint.load_checkpoint(args.analyze)
    if ckpt.get("kind") != "llb":
        raise ValueError(f"--analyze needs an LLB checkpoint, but {args.analyze} holds a "
                         f"{ckpt.get('kind')!r} model (no latent objects). Train LLB on it with: "
                         f"python train.py --method llb --backbone {args.analyze} [data options]")
    _, val_loader, info = train.build_data(args)
    if ckpt["dataset"] != info.name or ckpt["vit_config"]["image_size"] != info.image_size:
        raise ValueError(f"{args.analyze} was trained on {ckpt['dataset']} at "
                         f"{ckpt['vit_config']['image_size']} px, but the options give {info.name} at "
                         f"{info.image_size} px: pass the data options used for training")
    model = checkpoint.model_from_checkpoint(ckpt, num_classes=info.num_classes, source=args.analyze)
    model.to(device).eval()
    autocast = train.autocast_for(args, device)
    O, K = model.config.num_objects, info.num_classes
    counts, assign_sum = torch.zeros(O, dtype=torch.long), torch.zeros(O, dtype=torch.float64)
    keep = {k: [] for k in ("feat_v", "feat_n", "pred_v", "pred_n", "pred_o", "y")}
    picked = {}  # label -> (image, patch object ids), first image met of each class
    with torch.no_grad():
        for x, y in tqdm(val_loader, desc="analyze", leave=False):
            with autocast:
                out = model(x.to(device))
            ids = out.assign.argmax(-1).cpu()  # (B, N)
            counts += torch.bincount(ids.flatten(), minlength=O)
            assign_sum += out.assign.double().sum((0, 1)).cpu()
            for name, t in (("feat_v", out.feat_v), ("feat_n", out.feat_n), ("y", y),
                            ("pred_v", out.logits_v.argmax(1)), ("pred_n", out.logits_n.argmax(1)),
                            ("pred_o", out.probs.argmax(1))):
                keep[name].append(t.float().cpu() if name.startswith("feat") else t.cpu())
            for i, label in enumerate(y.tolist()):
                if len(picked) < NUM_IMAGES and label not in picked:
                    picked[label] = (x[i].float().cpu(), ids[i])
    k = {name: torch.cat(v) for name, v in keep.items()}
    y, total = k["y"], len(k["y"])
    run_dir = Path(args.analyze).parent

    # 1-2. latent objects: picture, legend, usage
    colours = object_colours(counts)
    scale = max(1, math.ceil(MIN_IMAGE_PX / info.image_size))
    labels = list(picked)
    grid = object_map_grid(torch.stack([picked[c][0] for c in labels]),
                           torch.stack([picked[c][1] for c in labels]), colours, scale)
    write_png(grid, run_dir / "latent_objects.png")
    usage = object_usage(counts, assign_sum)
    share = counts.double() / counts.sum()
    top = torch.argsort(-counts, stable=True)[:20].tolist()
    side, g = info.image_size * scale, math.isqrt(model.backbone.config.num_patches)
    lines = [f"latent_objects.png: {len(labels)} validation images of {info.name} (the first of each "
             f"class met), each shown min-max normalized at {side} px (x{scale}, nearest) beside its "
             f"{g}x{g} patch grid coloured by the argmax latent object of each patch (LLB step 1, "
             f"{O} objects). {PAIRS_PER_ROW} [image | objects] pairs per row, left to right:",
             *(f"  {i + 1}. class {c} ({info.class_names[c]})" for i, c in enumerate(labels)),
             f"objects used as an argmax on the validation set: {usage['used']} of {O}; perplexity "
             f"of the mean assignment: {usage['perplexity']:.2f}",
             "most used objects (colours: ranks beyond 20 get golden-angle hues):",
             f"{'object':>8}  {'RGB':<16}{'share of patches':>18}",
             *(f"{o:>8}  {str(tuple(colours[o].tolist())):<16}{100 * share[o]:>17.2f}%"
               for o in top if counts[o] > 0)]
    (run_dir / "latent_objects.txt").write_text("\n".join(lines) + "\n")

    # 3-4. class centroids in the visual and non-visual spaces
    order = class_order(K, info.coarse_of_class)
    groups = [info.coarse_of_class[c] for c in order] if info.coarse_of_class else None
    mean_sim, superclass = {}, {} if info.coarse_of_class else None
    for space, feat in (("visual", k["feat_v"]), ("nonvisual", k["feat_n"])):
        sim = cosine_matrix(class_centroids(feat, y, K))
        write_png(similarity_picture(sim[order][:, order], groups), run_dir / f"centroids_{space}.png")
        off = ~torch.eye(K, dtype=torch.bool) & ~sim.isnan()
        mean_sim[space] = sim[off].double().mean().item() if off.any() else None
        if superclass is not None:
            superclass[space] = superclass_similarity(sim, info.coarse_of_class)

    # 5. agreement of the heads
    agree = agreement(k["pred_v"], k["pred_n"], y)
    top1 = {h: 100 * (k[p] == y).double().mean().item()
            for h, p in (("visual", "pred_v"), ("nonvisual", "pred_n"), ("integrated", "pred_o"))}
    coarse_names = [info.coarse_names[g] for g in groups] if groups and info.coarse_names else None
    results = {"checkpoint": str(args.analyze), "dataset": info.name, "val_images": total,
               "object_usage": usage, "top1": top1, "agreement": agree,
               "mean_centroid_similarity": mean_sim, "superclass_similarity": superclass,
               "heatmap_classes": [info.class_names[c] for c in order],
               "heatmap_superclasses": coarse_names}
    (run_dir / "analysis.json").write_text(json.dumps(results, indent=2) + "\n")

    print(f"\n{args.analyze} on {info.name} validation ({total} images); files in {run_dir}/")
    print(f"latent objects used: {usage['used']} of {O}, perplexity {usage['perplexity']:.2f}")
    print("top-1: " + "  ".join(f"{train.HEADS[h]} {v:.2f}" for h, v in top1.items()))
    print(f"{'p_V vs p_N':<16}{'images':>8}{'%':>8}")
    for name, c in agree["counts"].items():
        print(f"{name.replace('_', ' '):<16}{c:>8}{agree['percent'][name]:>8.2f}")
    for space in mean_sim:
        print(f"{space} class centroids: mean cosine {mean_sim[space]:.3f}" + (
            "  within / across superclasses {within:.3f} / {across:.3f}".format(**superclass[space])
            if superclass and None not in superclass[space].values() else ""))
    return results
