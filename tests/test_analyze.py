"""Tests for analyze.py: the measures on constructed inputs with known answers, and
`analyze.py CKPT` end to end on a tiny LLB trained by the CLI (synthetic set, 1 + 1 epochs)."""
import json
import math
import re
import warnings

import pytest
import torch
from PIL import Image
from torchvision.io import decode_png, read_file

import analyze
import data
import train
from plotting import draw, figures
from inputs.synthetic import BACKGROUND, CONTENT_NAMES
from util import measures

O = 16  # noqa: E741 (the paper's O): latent objects of the tiny run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("llb_run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ~15 s; 2 threads on 2 busy cores spin-wait for minutes
    try:
        train.main(["--dataset", "synthetic", "--model", "micro", "--epochs", "1",
                    "--llb-epochs", "1", "--batch-size", "64", "--num-objects", str(O),
                    "--device", "cpu", "--out-dir", str(out)])
        yield out
    finally:
        torch.set_num_threads(threads)


def png(path) -> torch.Tensor:
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders (for TorchCodec)
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_png(read_file(str(path)))


def dark(image: torch.Tensor) -> int:
    """Pixels of (antialiased) black text: every channel <= 80."""
    return int((image <= 80).all(0).sum())


def test_analyze_end_to_end(run_dir):
    results = analyze.main([str(run_dir / "last.pt"), "--device", "cpu", "--batch-size", "256"])
    # 8 pairs of 32 px images x4 = 128 px in rows of 4 [image | 2 px gap | map] cells of
    # 2 * MARGIN padding, inside two MARGINs (body, figure) each side
    side = 128
    margin = draw.MARGIN
    objects = png(run_dir / "latent_objects.png")
    assert objects.shape[2] == 4 * (2 * side + 2 + 2 * margin) + 4 * margin
    assert objects.shape[1] > 2 * side + 100 and dark(objects[:, :40]) > 100  # the title
    legend = (run_dir / "latent_objects.txt").read_text()
    rgb = [int(v) for v in re.search(r"^ +\d+  \((\d+), (\d+), (\d+)\)", legend, re.M).groups()]
    swatch = (objects == torch.tensor(rgb, dtype=torch.uint8)[:, None, None]).all(0)
    assert int(swatch.sum()) >= 8 * 8  # the most used object: its maps' patches, its swatch
    # K = 10 classes x 48 px: the diagonal (cosine 1) is 10 red 48 x 48 squares
    for space in ("visual", "nonvisual"):
        heat = png(run_dir / f"centroids_{space}.png")
        red = (heat == torch.tensor(figures.RED, dtype=torch.uint8)[:, None, None]).all(0)
        assert int(red.sum()) >= 10 * 48 * 48 and heat.shape[2] > 480 + 200
        assert dark(heat[:, :40]) > 100
    assert "share of patches" in legend and len(re.findall(r"^  \d\. class \d", legend, re.M)) == 8

    saved = json.loads((run_dir / "analysis.json").read_text())
    assert saved == json.loads(json.dumps(results))
    usage = saved["object_usage"]
    assert usage["num_objects"] == O and 1 <= usage["used"] <= O
    assert 1 - 1e-9 <= usage["perplexity"] <= O + 1e-9
    agree, n = saved["agreement"], saved["val_images"]
    assert n == 1000 and agree["total"] == n and sum(agree["counts"].values()) == n
    assert sum(agree["percent"].values()) == pytest.approx(100)
    c = agree["counts"]
    assert saved["top1"]["visual"] == pytest.approx(100 * (c["both_right"] + c["only_visual"]) / n)
    nonvisual = 100 * (c["both_right"] + c["only_nonvisual"]) / n
    assert saved["top1"]["nonvisual"] == pytest.approx(nonvisual)
    assert 0 <= saved["top1"]["integrated"] <= 100
    for value in saved["mean_centroid_similarity"].values():
        assert -1 <= value <= 1
    # patch 8 on 32 px: the patches are the cells; the contents of the 1,000 validation images
    found = saved["contents"]
    drawn = data.build_datasets("synthetic")[1].cell_contents()  # (1000, 16)
    per = found["per_content"]
    assert [c["patches"] for c in per.values()] == torch.bincount(drawn.flatten()).tolist()
    assert per["background"]["patches"] == 13 * n
    for c in per.values():
        assert 0 < c["top_share"] <= 1 and 1 <= c["objects_for"] <= O
    for part in ("all_patches", "object_patches"):
        assert 0 <= found[part]["nmi"] <= 1 and 0 < found[part]["purity"] <= 1
    order = found["object_order"]  # the objects some patch picks, each once
    assert len(set(order)) == len(order) == usage["used"] and set(order) <= set(range(O))
    contents_png = png(run_dir / "latent_objects_vs_contents.png")
    assert dark(contents_png[:, :40]) > 100
    info = data.build_datasets("synthetic", max_per_class=1)[2]
    order = measures.class_order(10, info.coarse_of_class)
    assert saved["heatmap_classes"] == [info.class_names[c] for c in order]
    if info.coarse_of_class is None:
        assert saved["superclass_similarity"] is None
    else:  # the twins' shape
        for space in ("visual", "nonvisual"):
            assert all(-1 <= v <= 1 for v in saved["superclass_similarity"][space].values())


def test_vit_checkpoint_is_refused(run_dir):
    with pytest.raises(ValueError, match=r"LLB checkpoint.*--method llb --backbone"):
        analyze.main([str(run_dir / "vit" / "last.pt"), "--device", "cpu"])


def test_centroids_and_superclass_similarity():
    # 5 classes in superclasses [0, 0, 1, 1, 1]; class 4 has no image. Centroid of class c:
    # e_coarse + b e_(2 + c), so within a superclass cos = 1 / (1 + b^2), across 0. Each class
    # gets two images, centroid +- d e_7 (a direction no centroid uses): the mean is exact.
    coarse, b, d = [0, 0, 1, 1, 1], 0.5, 3.0
    centre = torch.zeros(5, 8)
    for c in range(5):
        centre[c, coarse[c]], centre[c, 2 + c] = 1.0, b
    labels = torch.tensor([0, 1, 2, 3] * 2)
    features = centre[labels] + d * torch.tensor([1.0] * 4 + [-1.0] * 4)[:, None] * torch.eye(8)[7]
    cent = measures.class_centroids(features, labels, 5)
    assert torch.allclose(cent[:4], centre[:4]) and cent[4].isnan().all()
    sim = measures.cosine_matrix(cent)
    assert sim[0, 1].item() == pytest.approx(1 / (1 + b * b))
    assert sim[0, 2].item() == pytest.approx(0, abs=1e-7)
    assert sim[4].isnan().all() and sim[:, 4].isnan().all()
    result = measures.superclass_similarity(sim, coarse)
    assert result["within"] == pytest.approx(1 / (1 + b * b))
    assert result["across"] == pytest.approx(0, abs=1e-7)
    assert measures.superclass_similarity(sim[:3, :3], [0, 1, 2])["within"] is None  # no such pair


def test_class_order():
    assert measures.class_order(5, [1, 0, 1, 0, 2]) == [1, 3, 0, 2, 4]
    assert measures.class_order(3) == [0, 1, 2]


def test_agreement():
    target = torch.tensor([0, 1, 2, 0, 1])
    logits_v = torch.eye(3)[[0, 1, 0, 1, 1]]  # right: 0, 1, 4
    logits_n = torch.eye(3)[[0, 0, 2, 1, 1]]  # right: 0, 2, 4
    r = measures.agreement(logits_v, logits_n, target)
    assert r["counts"] == {"both_right": 2, "only_visual": 1, "only_nonvisual": 1, "both_wrong": 1}
    assert r["percent"]["both_right"] == pytest.approx(40) and r["total"] == 5
    assert measures.agreement(logits_v.argmax(1), logits_n.argmax(1), target) == r  # ids work too


def test_object_usage():
    counts = torch.tensor([5, 0, 3, 0, 2, 0])
    uniform = torch.tensor([1.0, 0, 1, 0, 1, 0]) * 7  # uniform over 3 objects (unnormalized sum)
    r = measures.object_usage(counts, uniform)
    assert r == {"num_objects": 6, "used": 3, "perplexity": pytest.approx(3)}
    assert measures.object_usage(counts, torch.eye(6)[2])["perplexity"] == pytest.approx(1)
    half = torch.tensor([0.5, 0.25, 0.25, 0, 0, 0])  # H = 1.5 log 2
    assert measures.object_usage(counts, half)["perplexity"] == pytest.approx(2 ** 1.5)


def test_nmi_and_purity_of_planted_assignments():
    g = torch.Generator().manual_seed(0)
    contents = torch.randint(0, 13, (40_000,), generator=g)  # 13 contents, about equal
    # one object per content, under other ids (and 3 objects never used): NMI 1, purity 1
    rename = torch.randperm(16, generator=g)[:13]
    table = measures.contingency(contents, rename[contents], 13, 16)
    assert table.shape == (13, 16) and int(table.sum()) == 40_000
    assert int(table[3, rename[3]]) == int((contents == 3).sum())
    assert measures.nmi(table) == pytest.approx(1) and measures.purity(table) == pytest.approx(1)
    # objects drawn at random, whatever the content: NMI near 0
    noise = measures.contingency(contents, torch.randint(0, 16, (40_000,), generator=g), 13, 16)
    assert 0 <= measures.nmi(noise) < 0.01
    # each of 2 equal contents split evenly over 2 objects: H(C) = ln 2, H(O) = ln 4 and
    # I = ln 2, so NMI = ln 2 / ((ln 2 + ln 4) / 2) = 2/3; every object pure: purity 1
    split = torch.tensor([[5, 5, 0, 0], [0, 0, 5, 5]])
    assert measures.nmi(split) == pytest.approx(2 / 3) and measures.purity(split) == 1
    # 4 equal contents, two to an object: NMI 2/3 again; half the patches in a foreign content
    merged = torch.tensor([[7, 0], [7, 0], [0, 7], [0, 7]])
    assert measures.nmi(merged) == pytest.approx(2 / 3) and measures.purity(merged) == 0.5
    assert measures.nmi(torch.tensor([[9]])) == 1  # one content, one object
    assert measures.entropy(torch.tensor([1, 1, 2])) == pytest.approx(1.5 * math.log(2))


def test_content_coverage():
    table = torch.tensor([[50, 30, 0, 15, 5], [0, 0, 0, 0, 0], [0, 0, 8, 0, 0]])
    first, empty, alone = measures.content_coverage(table, 0.9)
    assert first == {"patches": 100, "top_object": 0, "top_share": 0.5, "objects_for": 3}
    assert measures.content_coverage(table, 0.95)[0]["objects_for"] == 3  # 50 + 30 + 15
    assert measures.content_coverage(table, 0.96)[0]["objects_for"] == 4
    assert empty == {"patches": 0, "top_object": None, "top_share": None, "objects_for": None}
    assert alone == {"patches": 8, "top_object": 2, "top_share": 1.0, "objects_for": 1}


def test_latent_objects_against_planted_contents(tmp_path, capsys):
    """write_report with the drawn contents of 2 images (16 patches each) and patch objects
    planted one per content (object 20 - c for content c): NMI 1, purity 1, each content all
    in one object; the picture's columns: the 4 objects used, each a full red cell."""
    contents = torch.full((2, 16), BACKGROUND)
    contents[0, [0, 5, 9]] = torch.tensor([3, 7, 11])
    contents[1, [2, 5, 15]] = torch.tensor([3, 0, 6])
    y = torch.tensor([0, 1])
    objects = 20 - contents
    counts = torch.bincount(objects.flatten(), minlength=O + 8)
    collected = {"feat_v": torch.randn(2, 8), "feat_n": torch.randn(2, 8), "y": y, "pred_v": y,
                 "pred_n": y, "pred_o": y, "object_counts": counts,
                 "assign_sum": counts.double(), "images": torch.randn(2, 3, 32, 32),
                 "image_objects": objects, "image_index": torch.tensor([0, 1]),
                 "patch_objects": objects.int()}
    info = data.DataInfo(name="synthetic", num_classes=2, image_size=32, class_names=["a", "b"],
                         augment="none")
    results = analyze.write_report(collected, info=info, checkpoint_path="run/last.pt",
                                   run_dir=tmp_path, contents=contents)
    found = results["contents"]
    assert found["all_patches"] == {"nmi": pytest.approx(1), "purity": pytest.approx(1)}
    assert found["object_patches"] == {"nmi": pytest.approx(1), "purity": pytest.approx(1)}
    per = found["per_content"]
    assert per["background"] == {"patches": 26, "top_object": 8, "top_share": 1.0,
                                 "objects_for": 1}
    assert per[CONTENT_NAMES[3]]["patches"] == 2 and per[CONTENT_NAMES[1]]["patches"] == 0
    assert found["object_order"] == [20, 17, 14, 13, 9, 8]  # by main content: 0, 3, 6, 7, 11, bg
    assert json.loads((tmp_path / "analysis.json").read_text())["contents"] == json.loads(
        json.dumps(found))
    picture = png(tmp_path / "latent_objects_vs_contents.png")
    red = (picture == torch.tensor(figures.RED, dtype=torch.uint8)[:, None, None]).all(0)
    cell_w = math.ceil(figures.HEATMAP_PX / 6)
    cell_h = draw.line_height(draw.SMALL_SIZE) + 4
    assert int(red.sum()) >= 6 * (cell_w - 1) * cell_h  # one full cell per column, less lines
    said = capsys.readouterr().out
    assert "latent objects vs drawn contents: NMI 1.000 (object patches 1.000)" in said


def test_write_report_on_constructed_collect_output(tmp_path, capsys):
    # 4 classes in superclasses [0, 0, 1, 1], two images each. Centroid of class c in both spaces:
    # e_coarse + b e_(2 + c), so within a superclass cos = 1 / (1 + b^2) = 0.8, across 0.
    coarse, b = [0, 0, 1, 1], 0.5
    centre = torch.zeros(4, 8)
    for c in range(4):
        centre[c, coarse[c]] = 1.0
        centre[c, 2 + c] = b
    y = torch.tensor([0, 1, 2, 3] * 2)
    pred_v = torch.tensor([0, 1, 2, 3, 1, 1, 2, 0])  # right: 0 1 2 3 5 6
    pred_n = torch.tensor([0, 1, 0, 3, 1, 1, 3, 0])  # right: 0 1 3 5
    counts = torch.tensor([6, 0, 2, 0])  # 8 patches: 2 x 2 per image, 2 images shown
    collected = {"feat_v": centre[y], "feat_n": 2 * centre[y], "y": y, "pred_v": pred_v,
                 "pred_n": pred_n, "pred_o": pred_v, "object_counts": counts,
                 "assign_sum": counts.double(), "images": torch.randn(2, 3, 8, 8),
                 "image_objects": torch.tensor([[0, 0, 2, 0], [0, 2, 0, 0]]),
                 "image_index": torch.tensor([0, 5])}
    info = data.DataInfo(name="toy", num_classes=4, image_size=8,
                         class_names=["cat", "dog", "carp", "eel"], augment="none",
                         coarse_of_class=coarse, coarse_names=["mammals", "fish"])
    results = analyze.write_report(collected, info=info, checkpoint_path="run/last.pt",
                                   run_dir=tmp_path)
    counts = results["agreement"]["counts"]
    assert counts == {"both_right": 4, "only_visual": 2, "only_nonvisual": 0, "both_wrong": 2}
    assert results["top1"] == {"visual": 75.0, "nonvisual": 50.0, "integrated": 75.0}
    for space in ("visual", "nonvisual"):
        assert results["superclass_similarity"][space]["within"] == pytest.approx(0.8)
        assert results["superclass_similarity"][space]["across"] == pytest.approx(0, abs=1e-7)
        heat = png(tmp_path / f"centroids_{space}.png")  # the 4 within-superclass cells, 120 px,
        within = (heat == figures.diverging(torch.tensor([[0.8]]))[:, :1, :1]).all(0)
        assert int(within.sum()) == 4 * 120 * 120 - 2 * 120  # less the fish's separator row/column
    assert results["object_usage"] == {"num_objects": 4, "used": 2, "perplexity": pytest.approx(
        math.exp(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25))))}
    assert results["heatmap_superclasses"] == ["mammals", "mammals", "fish", "fish"]
    assert json.loads((tmp_path / "analysis.json").read_text()) == json.loads(json.dumps(results))
    legend = (tmp_path / "latent_objects.txt").read_text()
    assert "  1. class 0 (cat)" in legend and "  2. class 1 (dog)" in legend
    assert "within / across superclasses 0.800 / 0.000" in capsys.readouterr().out
    assert png(tmp_path / "latent_objects.png").shape[0] == 3


def test_analyze_superclasses_file_on_any_dataset(run_dir, tmp_path):
    """--superclasses FILE groups the classes of any set (here the synthetic one, regrouped by
    class id parity): the heatmaps' order, the within/across numbers and the PCA picture."""
    names = data.build_datasets("synthetic", max_per_class=1)[2].class_names
    grouping = tmp_path / "groups.tsv"
    grouping.write_text("# class<TAB>group\n" + "".join(
        f"{n}\t{'even' if k % 2 == 0 else 'odd'}\n" for k, n in enumerate(names)))
    results = analyze.main([str(run_dir / "last.pt"), "--device", "cpu", "--batch-size", "256",
                            "--superclasses", str(grouping)])
    assert results["heatmap_superclasses"] == ["even"] * 5 + ["odd"] * 5
    assert results["heatmap_classes"] == names[0::2] + names[1::2]
    for space in ("visual", "nonvisual"):
        assert all(-1 <= v <= 1 for v in results["superclass_similarity"][space].values())
        assert 0 < sum(results["pca_variance_share"][space]) <= 1 + 1e-9
    assert png(run_dir / "centroids_pca.png").shape[0] == 3


def test_read_superclasses_json_text_and_errors(tmp_path):
    classes = ["n01", "n02", "n03"]
    as_json = tmp_path / "g.json"
    as_json.write_text(json.dumps({"n03": "fish", "n01": "cat family", "n02": "cat family"}))
    assert analyze.read_superclasses(as_json, classes) == ([0, 0, 1], ["cat family", "fish"])
    as_text = tmp_path / "g.txt"
    as_text.write_text("# comment\nn01\tfish\n\nn02\tbird\nn03\tfish\n")
    assert analyze.read_superclasses(as_text, classes) == ([0, 1, 0], ["fish", "bird"])
    with pytest.raises(FileNotFoundError, match=r"superclasses file .*nope\.json does not exist; "
                                                r"expected a JSON object .*--superclasses"):
        analyze.read_superclasses(tmp_path / "nope.json", classes)
    as_text.write_text("n01\tfish\nn02\tbird\nn09\tfish\nn03\tfish\n")
    with pytest.raises(ValueError, match=r"names 1 class\(es\) this dataset does not have: "
                                         r"\['n09'\]; its 3 classes are named like"):
        analyze.read_superclasses(as_text, classes)
    as_json.write_text(json.dumps({"n01": "fish"}))
    with pytest.raises(ValueError, match=r"gives no group to 2 of the dataset's 3 classes: "
                                         r"\['n02', 'n03'\]; every class needs one"):
        analyze.read_superclasses(as_json, classes)
    as_text.write_text("n01 fish\n")
    with pytest.raises(ValueError, match=r"line 1: 'n01 fish' is not class<TAB>group"):
        analyze.read_superclasses(as_text, classes)


def test_pca_2d_recovers_a_planar_layout():
    # 4 unit centroids in the plane of e_0, e_1 (a square on the circle) plus a class without
    # images: the 2-D picture keeps their distances and explains all the variance
    angles = torch.tensor([0.0, 0.5, 1.0, 1.5]) * math.pi
    centroids = torch.zeros(5, 6)
    centroids[:4, 0], centroids[:4, 1] = 3 * angles.cos(), 3 * angles.sin()  # scale: no effect
    centroids[4] = float("nan")
    points, share = measures.pca_2d(centroids)
    assert points[4].isnan().all() and sum(share) == pytest.approx(1)
    unit = torch.nn.functional.normalize(centroids[:4], dim=1)
    assert torch.allclose(torch.cdist(points[:4], points[:4]), torch.cdist(unit, unit), atol=1e-5)


def test_centroid_pca_picture_colours_points_by_superclass(tmp_path):
    info = data.DataInfo(name="toy", num_classes=4, image_size=8,
                         class_names=["cat", "dog", "carp", "eel"], augment="none",
                         coarse_of_class=[0, 0, 1, 1], coarse_names=["mammals", "fish"])
    centroids = {s: torch.randn(4, 8, generator=torch.Generator().manual_seed(i))
                 for i, s in enumerate(("visual", "nonvisual"))}
    shares = analyze.centroid_pca_picture(centroids, info=info, checkpoint_path="run/last.pt",
                                          run_dir=tmp_path)
    assert set(shares) == {"visual", "nonvisual"} and all(0 < sum(v) <= 1 + 1e-9
                                                          for v in shares.values())
    image = png(tmp_path / "centroids_pca.png")
    palette = figures.colours_by_rank(torch.tensor([2, 2]))
    for rgb in palette:  # two discs per panel and a legend swatch, per superclass
        hits = (image == rgb[:, None, None]).all(0)
        assert int(hits.sum()) >= 4 * 30 + 50
    assert dark(image[:, :40]) > 100  # the title


def folder_run(root, classes: int):
    """A folder of `classes` classes (12 train / 4 val images of 16 px each), trained from
    scratch 1 + 1 epochs with the defaults a folder gets; returns the LLB run's folder."""
    g = torch.Generator().manual_seed(classes)
    for split, count in (("train", 12), ("val", 4)):
        for c in range(classes):
            (root / "data" / split / f"c{c}").mkdir(parents=True)
            for i in range(count):
                pixels = (torch.rand(3, 16, 16, generator=g) * 60 + 60 * c).to(torch.uint8)
                Image.fromarray(pixels.permute(1, 2, 0).numpy()).save(
                    root / "data" / split / f"c{c}" / f"{i}.png")
    train.main(["--dataset", "folder", "--data-dir", str(root / "data"), "--epochs", "1",
                "--llb-epochs", "1", "--device", "cpu", "--out-dir", str(root / "run")])
    return root / "run"


@pytest.mark.parametrize("classes", [2, 3])
def test_analysis_of_a_two_and_a_three_class_run(tmp_path, classes):
    """Two classes: the centroids' second principal axis has no variance (it crashed the PCA
    picture's tick labels); it is drawn flat, with a 0% share."""
    run = folder_run(tmp_path, classes)
    results = analyze.main([str(run / "last.pt"), "--device", "cpu"])
    for name in ("latent_objects.png", "latent_objects.txt", "centroids_visual.png",
                 "centroids_nonvisual.png", "centroids_pca.png", "analysis.json"):
        assert (run / name).exists(), name
    for space, (first, second) in results["pca_variance_share"].items():
        assert first + second == pytest.approx(1), space
        assert (second == pytest.approx(0, abs=1e-9)) == (classes == 2), space
    # one superclass for all, or each class its own: the pictures and numbers say what they can
    groups = tmp_path / "groups.tsv"
    for grouping, empty in (("same", "across"), ("own", "within")):
        groups.write_text("".join(f"c{c}\t{'all' if grouping == 'same' else c}\n"
                                  for c in range(classes)))
        results = analyze.main([str(run / "last.pt"), "--device", "cpu", "--superclasses",
                                str(groups), "--overwrite"])
        for space in ("visual", "nonvisual"):
            assert results["superclass_similarity"][space][empty] is None, (grouping, space)
        assert png(run / "centroids_pca.png").shape[0] == 3


def test_a_class_without_validation_images_and_one_class_alone(tmp_path, capsys):
    """A class without validation images is left out of the PCA picture and grey in the
    heatmaps; with one class left there is nothing to compare: the PCA picture is not drawn (one
    printed line) and everything else is written."""
    info = data.DataInfo(name="toy", num_classes=3, image_size=8, class_names=["a", "b", "c"],
                         augment="none")
    for labels, drawn in (([0, 1, 0, 1], True), ([0, 0, 0, 0], False)):
        out = tmp_path / str(drawn)
        out.mkdir()
        y = torch.tensor(labels)
        features = torch.randn(4, 8)
        collected = {"feat_v": features, "feat_n": 2 * features, "y": y, "pred_v": y,
                     "pred_n": y, "pred_o": y, "object_counts": torch.tensor([3, 1]),
                     "assign_sum": torch.tensor([3.0, 1.0]), "images": torch.randn(1, 3, 8, 8),
                     "image_objects": torch.tensor([[0, 0, 1, 0]]),
                     "image_index": torch.tensor([0])}
        results = analyze.write_report(collected, info=info, checkpoint_path="run/last.pt",
                                       run_dir=out)
        assert (out / "centroids_pca.png").exists() == drawn
        assert (results["pca_variance_share"] is not None) == drawn
        for name in ("latent_objects.png", "centroids_visual.png", "analysis.json"):
            assert (out / name).exists(), name
        grey = (png(out / "centroids_visual.png") ==
                torch.tensor(figures.GREY, dtype=torch.uint8)[:, None, None]).all(0)
        assert int(grey.sum()) > 0  # class c's row and column
    said = capsys.readouterr().out
    assert said.count("centroids_pca.png not drawn: only 1 class has validation images") == 1


def test_latent_objects_vs_contents_skipped_where_patches_are_not_cells(tmp_path, capsys):
    """Patch 4 on the synthetic set's 32 px: 8x8 patches, not its 4x4 cells. analyze.py says so
    in one line and writes everything else; patch_contents gives the cells at patch 8."""
    val = data.build_datasets("synthetic", max_per_class=2)[1]
    contents, why = analyze.patch_contents(val, image_size=32, patch_size=8)
    assert why is None and torch.equal(contents, val.cell_contents())
    assert analyze.patch_contents(val, image_size=64, patch_size=16)[1] is None
    assert analyze.patch_contents(object(), image_size=32, patch_size=8) == (None, None)
    train.main(["--dataset", "synthetic", "--model", "micro", "--patch-size", "4", "--epochs", "1",
                "--llb-epochs", "1", "--max-per-class", "8", "--batch-size", "16",
                "--num-objects", "8", "--device", "cpu", "--out-dir", str(tmp_path)])
    capsys.readouterr()
    results = analyze.main([str(tmp_path / "last.pt"), "--device", "cpu"])
    said = capsys.readouterr().out
    skipped = [line for line in said.splitlines() if "latent objects vs drawn contents" in line]
    assert len(skipped) == 1 and re.search(r"skipped, the patches are not the synthetic set's "
                                           r"cells \(4 px patches on 32 px images make 8x8, the "
                                           r"cells 4x4", skipped[0])
    assert results["contents"] is None
    assert not (tmp_path / "latent_objects_vs_contents.png").exists()
    assert (tmp_path / "latent_objects.png").exists()
