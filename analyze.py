"""What an LLB checkpoint learned: latent-object maps, object usage, class-centroid geometry.

    python analyze.py RUN/last.pt       # on the data it was trained on (or --dataset ...)

One pass over the validation split (`collect`); `write_report` writes next to CKPT (or into
--out-dir) latent_objects.png and .txt, centroids_{visual,nonvisual,pca}.png and analysis.json:
pictures that explain themselves (docs/pictures.md shows them, and the paper's claim they test).
On the synthetic set, when its patches are the grid's cells (the demo's patch 8), also
latent_objects_vs_contents.png: the latent objects against what was drawn in each patch.
"""
import argparse
import json
import math
import sys
from pathlib import Path

import torch
from tqdm import tqdm

import data
import recipes
from inputs.synthetic import BACKGROUND, CONTENT_NAMES, GRID, SyntheticObjects
from inputs.transforms import EVAL_FRAMINGS
from plotting import figures
from util import checkpoint, cli, evaluate, measures, rundir
from util.cli import at_least

NUM_IMAGES = 8  # latent_objects.png: the first image of each of the first 8 classes met
PAIRS_PER_ROW = 4
MIN_IMAGE_PX = 128  # images shown at least this large (nearest upscale)
LEGEND_OBJECTS = 20  # the most used objects named in the legend, one Kelly colour each
COVERAGE = 0.9  # per drawn content: how many latent objects take this share of its patches
HEADS = {"visual": "p_V", "nonvisual": "p_N", "integrated": "p_O"}
PREDICTION = {"visual": "pred_v", "nonvisual": "pred_n", "integrated": "pred_o"}  # collect's keys
SPACES = {"visual": ("feat_v", "the ViT's visual space: feat_v, what its head reads (LN(c_v), "
                               "or LN(mean of the patch tokens) on an average-pooling backbone)"),
          "nonvisual": ("feat_n", "LLB's non-visual space: feat_n = LN(c_n), its class token")}


# ----------------------------------------------------------------------------- one pass
def collect(model, loader, device, autocast, *, keep_patches: bool = False) -> dict:
    """One pass of an LLB `model` (eval mode) over `loader`: per image the features
    (feat_v, feat_n: (n, D)), labels y and predicted classes pred_v, pred_n, pred_o (n,); per
    object its argmax count and summed assignment (O,); the first image of each of the first
    NUM_IMAGES classes met (images (m, 3, S, S), image_objects (m, N) patch argmaxes,
    image_index (m,) its position in y); keep_patches: every image's patch argmaxes too
    (patch_objects (n, N))."""
    num_objects = model.config.num_objects
    counts = torch.zeros(num_objects, dtype=torch.long)
    assign_sum = torch.zeros(num_objects, dtype=torch.float64)
    keep = {k: [] for k in ("feat_v", "feat_n", "pred_v", "pred_n", "pred_o", "y")}
    if keep_patches:
        keep["patch_objects"] = []
    picked = {}  # label -> (image, patch object ids, position), first image met of each class
    seen = 0
    with torch.no_grad():
        for x, y in tqdm(loader, desc="analyze", leave=False):
            with autocast:
                out = model(x.to(device))
            ids = out.assign.argmax(-1).cpu()  # (B, N)
            counts += torch.bincount(ids.flatten(), minlength=num_objects)
            assign_sum += out.assign.double().sum((0, 1)).cpu()
            keep["feat_v"].append(out.feat_v.float().cpu())
            keep["feat_n"].append(out.feat_n.float().cpu())
            for head, scores in evaluate.scores_of(out).items():
                keep[PREDICTION[head]].append(scores.argmax(1).cpu())
            keep["y"].append(y.cpu())
            if keep_patches:
                keep["patch_objects"].append(ids.int())
            for i, label in enumerate(y.tolist()):
                if len(picked) < NUM_IMAGES and label not in picked:
                    picked[label] = (x[i].float().cpu(), ids[i], seen + i)
            seen += len(y)
    images, image_objects, image_index = zip(*picked.values())
    return {**{name: torch.cat(v) for name, v in keep.items()}, "object_counts": counts,
            "assign_sum": assign_sum, "images": torch.stack(images),
            "image_objects": torch.stack(image_objects), "image_index": torch.tensor(image_index)}


# ----------------------------------------------------------------------------- the report
def latent_objects_picture(collected: dict, *, info, checkpoint_path, usage: dict,
                           run_dir: Path) -> None:
    """latent_objects.png (labelled) and latent_objects.txt (its legend as text)."""
    counts = collected["object_counts"]
    num_objects = usage["num_objects"]
    colours = figures.colours_by_rank(counts)
    scale = max(1, math.ceil(MIN_IMAGE_PX / info.image_size))
    tiles = figures.patch_pairs(collected["images"], collected["image_objects"], colours,
                                scale=scale)
    g = math.isqrt(collected["image_objects"].shape[1])
    names = info.class_names
    shown = collected["image_index"].tolist()  # the images' positions in collected["y"]
    classes = [int(collected["y"][i]) for i in shown]

    def predicted(head, i):
        pred = int(collected[PREDICTION[head]][i])
        return f"{names[pred]} ({'right' if pred == int(collected['y'][i]) else 'WRONG'})"
    captions = [[f"class {k}: {names[k]}", *(f"{HEADS[h]}: {predicted(h, i)}" for h in HEADS)]
                for i, k in zip(shown, classes)]
    share = counts.double() / counts.sum()
    ranked = torch.argsort(-counts, stable=True)[:LEGEND_OBJECTS].tolist()
    top = [o for o in ranked if counts[o] > 0]
    items = [(colours[o].tolist(), f"object {o}: {100 * share[o]:.1f}%") for o in top]
    title = (f"Latent objects (LLB step 1) of {checkpoint_path} on the {info.name} validation "
             f"split: each image beside its {g}x{g} patches, each coloured by its latent object "
             f"(argmax of p^i over {num_objects}); one colour is one object in every image.")
    notes = (f"Legend: the {len(top)} most used objects, share of validation patches; "
             f"{usage['used']} of {num_objects} are used (beyond the legend: other hues). "
             f"Perplexity of the mean assignment (effective number of objects): "
             f"{usage['perplexity']:.1f}. Under each image: its class and the predictions of "
             f"p_V (ViT head), p_N (LLB head), p_O (integrated).")
    image, _ = figures.tile_figure(tiles, captions=captions, title=title, columns=PAIRS_PER_ROW,
                                   legend_items=items, notes=notes)
    image.save(run_dir / "latent_objects.png")
    lines = [f"latent_objects.png: {len(tiles)} {info.name} validation images (the first of each "
             f"class met), min-max normalized, x{scale} nearest, beside their {g}x{g} patches "
             f"coloured by latent object (of {num_objects}); {PAIRS_PER_ROW} per row, in order:",
             *(f"  {n + 1}. class {k} ({names[k]})" for n, k in enumerate(classes)),
             f"objects used as an argmax on the validation set: {usage['used']} of {num_objects}; "
             f"perplexity of the mean assignment: {usage['perplexity']:.2f}",
             "most used objects (colours: ranks beyond 20 get golden-angle hues):",
             f"{'object':>8}  {'RGB':<16}{'share of patches':>18}",
             *(f"{o:>8}  {str(tuple(colours[o].tolist())):<16}{100 * share[o]:>17.2f}%"
               for o in top)]
    (run_dir / "latent_objects.txt").write_text("\n".join(lines) + "\n")


def centroid_picture(sim: torch.Tensor, *, space: str, info, checkpoint_path, order: list,
                     groups: list | None, superclass: dict | None, run_dir: Path) -> None:
    """centroids_<space>.png: the (K, K) cosine matrix in `order`, labelled."""
    feature, where = SPACES[space]
    title = (f"Class centroids in {where}, of {checkpoint_path} on the {info.name} validation "
             f"split: cosine similarity of the mean {feature} of each class's images.")
    notes = "Rows and columns: the same classes in the same order"
    if groups:
        notes += ", grouped by superclass (black lines between superclasses, named on the left)"
    if superclass and None not in superclass.values():
        notes += ("; mean cosine within / across superclasses: {within:.3f} / {across:.3f}"
                  .format(**superclass))
    notes += "."
    if len(order) > figures.MAX_NAMED:
        notes += (" Too many classes to name: numbers are positions in analysis.json's "
                  "heatmap_classes.")
    if sim.isnan().any():
        notes += " Grey: a class without validation images."
    image, _ = figures.heatmap_figure(sim[order][:, order], title=title,
                                      labels=[f"{c}: {info.class_names[c]}" for c in order],
                                      groups=groups, group_names=info.coarse_names, notes=notes)
    image.save(run_dir / f"centroids_{space}.png")


def centroid_pca_picture(centroids: dict, *, info, checkpoint_path, run_dir: Path) -> dict:
    """centroids_pca.png: the class centroids of both spaces projected on their own first two
    principal axes, one panel each, points coloured by superclass and named; returns each
    space's share of the variance on the two axes."""
    present = [k for k in range(info.num_classes) if not centroids["visual"][k].isnan().any()]
    groups = info.coarse_of_class or [0] * info.num_classes
    names = info.coarse_names or ["all classes"]
    sizes = torch.bincount(torch.tensor([groups[k] for k in present]), minlength=len(names))
    palette = figures.colours_by_rank(sizes).tolist()  # the largest groups: the first colours
    panels = []
    shares = {}
    for space, (feature, where) in SPACES.items():
        points, share = measures.pca_2d(centroids[space])
        shares[space] = share
        panels.append({"points": points[present], "title": f"{feature}: {where.split(':')[0]}",
                       "x_title": f"PC1 ({100 * share[0]:.0f}% of variance)",
                       "y_title": f"PC2 ({100 * share[1]:.0f}% of variance)"})
    title = (f"Class centroids of {checkpoint_path} on the {info.name} validation split, in 2-D "
             f"(left: feat_v, the ViT's space; right: feat_n, LLB's non-visual space): the mean "
             f"feature of each class at unit length, on the first two principal axes of its space.")
    notes = ("Each point is a class" + (f" ({len(present)} classes: too many to name)"
                                        if len(present) > figures.MAX_POINT_LABELS else ", named")
             + ("; colour: its superclass (legend)." if info.coarse_of_class else
                "; one colour: no superclasses given (analyze.py --superclasses FILE)."))
    missing = info.num_classes - len(present)
    notes += f" Left out: {missing} class(es) without validation images." if missing else ""
    items = [(palette[g], f"{name} ({int(sizes[g])})") for g, name in enumerate(names)
             if sizes[g] > 0]
    image, _ = figures.scatter_figure(panels, title=title,
                                      labels=[info.class_names[k] for k in present],
                                      colours=[palette[groups[k]] for k in present],
                                      legend_items=items, notes=notes)
    image.save(run_dir / "centroids_pca.png")
    return shares


# ----------------------------------------------------------------------------- drawn contents
def patch_contents(val_set, *, image_size: int, patch_size: int
                   ) -> tuple[torch.Tensor | None, str | None]:
    """What was drawn in each patch of each validation image, (n, N) content ids (CONTENT_NAMES),
    where that is known: on the synthetic set when its patches are its GRID x GRID cells. Else
    None, and a line saying why (None when the set has no drawn contents to compare with)."""
    if not isinstance(val_set, SyntheticObjects):
        return None, None
    if image_size != GRID * patch_size:
        return None, (f"latent objects vs drawn contents: skipped, the patches are not the "
                      f"synthetic set's cells ({patch_size} px patches on {image_size} px images "
                      f"make {image_size // patch_size}x{image_size // patch_size}, the cells "
                      f"{GRID}x{GRID}: patch size = image size / {GRID}, the demo's 8 on 32 px)")
    return val_set.cell_contents(), None


def contents_measures(table: torch.Tensor) -> dict:
    """analysis.json's "contents" of a (contents, objects) contingency table: NMI and purity over
    all patches and over the patches that hold an object (background left out), and per content
    its patches, its most common object and that one's share, and the objects for COVERAGE."""
    objects_only = table[torch.arange(len(table)) != BACKGROUND]
    coverage = measures.content_coverage(table, COVERAGE)
    return {"all_patches": {"nmi": measures.nmi(table), "purity": measures.purity(table)},
            "object_patches": {"nmi": measures.nmi(objects_only),
                               "purity": measures.purity(objects_only)},
            "coverage_share": COVERAGE,
            "per_content": {name: c for name, c in zip(CONTENT_NAMES, coverage)}}


def contents_picture(table: torch.Tensor, found: dict, *, info, checkpoint_path,
                     run_dir: Path) -> list[int]:
    """latent_objects_vs_contents.png: the drawn contents (rows) x the latent objects some patch
    picks (columns, grouped by their main content), each column the shares of that object's
    patches; returns the objects in their column order."""
    used = (table.sum(0) > 0).nonzero().flatten().tolist()
    main = table.argmax(0)  # (O,) the content most of an object's patches hold
    order = sorted(used, key=lambda o: (int(main[o]), -int(table[main[o], o]), o))
    shares = table[:, order].double() / table[:, order].sum(0)  # (C, used): columns sum to 1
    rows = [["0", "-", "-"] if c["patches"] == 0 else
            [f"{c['patches']:,}", f"{100 * c['top_share']:.0f}%", str(c["objects_for"])]
            for c in found["per_content"].values()]
    num_objects = table.shape[1]
    every, objects = found["all_patches"], found["object_patches"]
    title = (f"Latent objects (LLB step 1) of {checkpoint_path} against what was drawn, on the "
             f"{info.name} validation split: each patch is one grid cell; rows are what the "
             f"cell holds, columns the latent object it goes to (argmax of p^i over "
             f"{num_objects}). A column shows what its object's patches hold (it sums to 100%); "
             f"columns are grouped by their object's main content (black lines).")
    notes = (f"Normalized mutual information {every['nmi']:.2f} over all patches, "
             f"{objects['nmi']:.2f} over the patches holding an object (1: the objects are the "
             f"contents; 0: unrelated); purity {every['purity']:.2f} (objects only: "
             f"{objects['purity']:.2f}), the share of patches in their object's main content. "
             f"Right: per content its patches, the share its most common object takes, and how "
             f"many objects take {100 * COVERAGE:.0f}% of them. {len(used)} of {num_objects} "
             f"objects are some patch's argmax; the others are not shown. A faded object (a "
             f"marked one drawn without its mark) counts as the plain twin it looks like.")
    if len(order) > figures.MAX_NAMED:
        notes += (" Too many objects to name: the columns are analysis.json's "
                  "contents.object_order, left to right.")
    image, _ = figures.matrix_figure(
        shares, title=title, row_labels=list(CONTENT_NAMES),
        col_labels=[f"object {o}" for o in order], col_groups=[int(main[o]) for o in order],
        table=rows,
        table_header=["patches", "top object takes", f"objects for {100 * COVERAGE:.0f}%"],
        bar_title="share of a column's patches (what its object holds)", notes=notes)
    image.save(run_dir / "latent_objects_vs_contents.png")
    return order


def write_report(collected: dict, *, info, checkpoint_path, run_dir: Path,
                 options: dict | None = None, contents: torch.Tensor | None = None) -> dict:
    """The pictures, latent_objects.txt and analysis.json (with main's `options`, when given) of
    `collect`'s output in `run_dir`, and a printed summary; returns what analysis.json holds.
    `contents` (n, N): what was drawn in each patch (`patch_contents`), against collect's
    patch_objects (keep_patches=True)."""
    y = collected["y"]
    num_classes = info.num_classes
    usage = measures.object_usage(collected["object_counts"], collected["assign_sum"])
    latent_objects_picture(collected, info=info, checkpoint_path=checkpoint_path, usage=usage,
                           run_dir=run_dir)
    found = None
    if contents is not None:  # the latent objects against what was drawn in each patch
        table = measures.contingency(contents, collected["patch_objects"], len(CONTENT_NAMES),
                                     usage["num_objects"])
        found = contents_measures(table)
        found["object_order"] = contents_picture(table, found, info=info,
                                                 checkpoint_path=checkpoint_path, run_dir=run_dir)

    # class centroids in the visual and non-visual spaces
    order = measures.class_order(num_classes, info.coarse_of_class)
    groups = [info.coarse_of_class[k] for k in order] if info.coarse_of_class else None
    mean_sim = {}
    superclass = {}
    centroids = {}
    for space, (feature, _) in SPACES.items():
        centroids[space] = measures.class_centroids(collected[feature], y, num_classes)
        sim = measures.cosine_matrix(centroids[space])
        off = ~torch.eye(num_classes, dtype=torch.bool) & ~sim.isnan()
        mean_sim[space] = sim[off].double().mean().item() if off.any() else None
        superclass[space] = (measures.superclass_similarity(sim, info.coarse_of_class)
                             if groups else None)
        centroid_picture(sim, space=space, info=info, checkpoint_path=checkpoint_path, order=order,
                         groups=groups, superclass=superclass[space], run_dir=run_dir)
    pca_share = None
    present = int((~centroids["visual"].isnan().any(dim=1)).sum())
    if present >= 2:
        pca_share = centroid_pca_picture(centroids, info=info, checkpoint_path=checkpoint_path,
                                         run_dir=run_dir)
    else:  # nothing to place against anything
        print(f"centroids_pca.png not drawn: only {present} class has validation images")

    top1 = {h: 100 * (collected[PREDICTION[h]] == y).double().mean().item() for h in HEADS}
    coarse_names = [info.coarse_names[g] for g in groups] if groups and info.coarse_names else None
    results = {"checkpoint": str(checkpoint_path), "dataset": info.name, "val_images": len(y),
               "object_usage": usage, "top1": top1,
               "agreement": measures.agreement(collected["pred_v"], collected["pred_n"], y),
               "mean_centroid_similarity": mean_sim,
               "superclass_similarity": superclass if groups else None,
               "pca_variance_share": pca_share,
               "heatmap_classes": [info.class_names[k] for k in order],
               "heatmap_superclasses": coarse_names, "contents": found}
    if options is not None:
        results["options"] = options
    (run_dir / "analysis.json").write_text(json.dumps(results, indent=2) + "\n")
    print_summary(results, run_dir)
    return results


def print_summary(results: dict, run_dir: Path) -> None:
    usage = results["object_usage"]
    agree = results["agreement"]
    superclass = results["superclass_similarity"]
    print(f"\n{results['checkpoint']} on {results['dataset']} validation ({results['val_images']} "
          f"images); files in {run_dir}/")
    print(f"latent objects used: {usage['used']} of {usage['num_objects']}, perplexity "
          f"{usage['perplexity']:.2f}")
    print("top-1: " + "  ".join(f"{HEADS[h]} {v:.2f}" for h, v in results["top1"].items()))
    print(f"{'p_V vs p_N':<16}{'images':>8}{'%':>8}")
    for name, count in agree["counts"].items():
        print(f"{name.replace('_', ' '):<16}{count:>8}{agree['percent'][name]:>8.2f}")
    for space, mean in results["mean_centroid_similarity"].items():
        if mean is None:  # no pair of classes with validation images
            continue
        print(f"{space} class centroids: mean cosine {mean:.3f}" + (
            "  within / across superclasses {within:.3f} / {across:.3f}".format(**superclass[space])
            if superclass and None not in superclass[space].values() else ""))
    found = results["contents"]
    if found is None:
        return
    every, objects = found["all_patches"], found["object_patches"]
    print(f"latent objects vs drawn contents: NMI {every['nmi']:.3f} (object patches "
          f"{objects['nmi']:.3f}), purity {every['purity']:.3f} ({objects['purity']:.3f})")
    share = f"objects {100 * found['coverage_share']:.0f}%"
    print(f"{'content':<26}{'patches':>8}{'top object':>12}{'its share':>11}{share:>13}")
    for name, c in found["per_content"].items():
        if c["patches"] == 0:
            print(f"{name:<26}{0:>8}")
            continue
        print(f"{name:<26}{c['patches']:>8}{c['top_object']:>12}{100 * c['top_share']:>10.1f}%"
              f"{c['objects_for']:>13}")


# ----------------------------------------------------------------------------- superclasses
def read_superclasses(path: str | Path, class_names: list[str]) -> tuple[list[int], list[str]]:
    """(coarse_of_class, coarse_names) of a grouping of `class_names`: a JSON object
    {class name: group} or `class<TAB>group` lines (blank lines and # comments skipped), one
    group for every class of the dataset. Groups are numbered in order of their first class."""
    path = Path(path)
    formats = ("a JSON object {\"class name\": \"group\"} or a text file of class<TAB>group "
               "lines, one per class")
    if not path.is_file():
        raise FileNotFoundError(f"superclasses file {path} does not exist; expected {formats}. "
                                f"Fix the path given to --superclasses")
    text = path.read_text()
    if text.lstrip().startswith("{"):
        try:
            group_of = json.loads(text)
        except ValueError as err:
            raise ValueError(f"superclasses file {path} is not valid JSON ({err}); expected "
                             f"{formats}") from err
        if not all(isinstance(g, (str, int)) for g in group_of.values()):
            raise ValueError(f"superclasses file {path}: every group must be a name (a string), "
                             f"expected {formats}")
        group_of = {name: str(group) for name, group in group_of.items()}
    else:
        group_of = {}
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = [p.strip() for p in line.split("\t")]
            if len(parts) != 2 or not all(parts):
                raise ValueError(f"superclasses file {path}, line {number}: {line!r} is not "
                                 f"class<TAB>group; expected {formats}")
            group_of[parts[0]] = parts[1]
    known = set(class_names)
    unknown = [n for n in group_of if n not in known]
    if unknown:
        raise ValueError(f"superclasses file {path} names {len(unknown)} class(es) this dataset "
                         f"does not have: {unknown[:5]}; its {len(class_names)} classes are named "
                         f"like {class_names[:3]} (folder names, e.g. ImageNet wnids). Fix the "
                         f"names in {path}")
    missing = [n for n in class_names if n not in group_of]
    if missing:
        raise ValueError(f"superclasses file {path} gives no group to {len(missing)} of the "
                         f"dataset's {len(class_names)} classes: {missing[:5]}; every class "
                         f"needs one. Add them to {path} (a group of their own if need be)")
    names = list(dict.fromkeys(group_of[c] for c in class_names))  # first appearance order
    return [names.index(group_of[c]) for c in class_names], names


# ----------------------------------------------------------------------------- the command
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("checkpoint", help="an LLB checkpoint of train.py (its folder receives the files)")
    add("--dataset", choices=data.DATASETS, help="default: the checkpoint's")
    add("--data-dir", help="default: the checkpoint's")
    add("--classes", help="default: the checkpoint's")
    add("--max-per-class", type=at_least(1), help="default: the checkpoint's")
    add("--image-size", type=at_least(1), help="default: the checkpoint's")
    add("--eval-framing", choices=EVAL_FRAMINGS, help="the weights' own eval transform or "
        "the authors' (Resize 256 bicubic -> CenterCrop 224); default: the checkpoint's")
    add("--superclasses", metavar="FILE", help="a grouping of the classes: JSON {class: group} "
        "or class<TAB>group lines (default: the dataset's own, CIFAR-100 and synthetic)")
    add("--batch-size", type=at_least(1), help="default: the checkpoint's")
    add("--workers", type=at_least(0), help="loader processes (default: data.default_workers)")
    add("--device", choices=("cuda", "cpu"), help="default: cuda when available")
    add("--amp", choices=("bf16", "fp16", "off"), help="default: the checkpoint's")
    add("--out-dir", help="where the files go (default: the checkpoint's folder)")
    add("--overwrite", action="store_true", help="replace an analysis made with other options")
    add("--debug", action="store_true", help="show tracebacks of errors")
    args = p.parse_args(argv)
    if args.device is None:
        args.device = recipes.default_device()
    return args


def check_analysis(folder: Path, options: dict, overwrite: bool) -> None:
    """Refuse to replace an analysis made with other options (analysis.json's "options") unless
    --overwrite; the same options may be rerun."""
    path = folder / "analysis.json"
    if overwrite or not path.exists():
        return
    try:
        old = json.loads(path.read_text()).get("options")
    except (OSError, ValueError, AttributeError):
        old = None
    if old == options:
        return
    differ = ("made before analyses recorded their options" if not isinstance(old, dict) else
              "; ".join(f"{k}: {old.get(k)!r} there, {v!r} now" for k, v in options.items()
                        if old.get(k) != v))
    raise ValueError(f"{folder} already holds an analysis with other options ({differ}); "
                     f"nothing was changed. Replace it with --overwrite, or write this one "
                     f"elsewhere with --out-dir.")


def main(argv=None) -> dict:
    """`python analyze.py CKPT`: one pass over the validation split the checkpoint was trained
    with (or the one given), files next to CKPT; returns what analysis.json holds."""
    args = parse_args(argv)
    device = torch.device(args.device)
    ckpt = checkpoint.load_checkpoint(args.checkpoint)
    if ckpt.get("kind") != "llb":
        raise ValueError(f"analyze.py needs an LLB checkpoint, but {args.checkpoint} holds a "
                         f"{ckpt.get('kind')!r} model (no latent objects). Train LLB on it with: "
                         f"python train.py --method llb --backbone {args.checkpoint}")
    r = evaluate.checkpoint_recipe(ckpt, args.checkpoint, args)
    out = Path(args.out_dir if args.out_dir is not None else Path(args.checkpoint).parent)
    options = {"checkpoint": str(Path(args.checkpoint).resolve())} | {
        k: getattr(r, k) for k in evaluate.DATA_OPTIONS + ("amp",)}
    with rundir.RunDir(out, [out], program="analyze.py", guard=False):
        check_analysis(out, options, args.overwrite)
        _, val_loader, info = data.build_loaders(r, rank=0, world=1, workers=args.workers,
                                                 device=device, train=False)
        if args.superclasses is not None:  # checked before the model runs
            info.coarse_of_class, info.coarse_names = read_superclasses(args.superclasses,
                                                                        info.class_names)
        if ckpt["vit_config"]["image_size"] != info.image_size:
            raise ValueError(f"{args.checkpoint} was trained at "
                             f"{ckpt['vit_config']['image_size']} px, but the options give "
                             f"{info.image_size} px: drop --image-size")
        contents, skipped = patch_contents(val_loader.dataset, image_size=info.image_size,
                                           patch_size=ckpt["vit_config"]["patch_size"])
        if skipped is not None:
            print(skipped)
        model = checkpoint.model_from_checkpoint(ckpt, num_classes=info.num_classes,
                                                 source=args.checkpoint)
        model.to(device).eval()
        collected = collect(model, val_loader, device,
                            recipes.autocast(r.amp, device, enabled=r.eval_amp),
                            keep_patches=contents is not None)
        return write_report(collected, info=info, checkpoint_path=args.checkpoint, run_dir=out,
                            options=options, contents=contents)


if __name__ == "__main__":
    sys.exit(cli.run(main))
