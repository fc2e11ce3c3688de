"""Tests for analyze.py: the measures on constructed inputs with known answers, and
`train.py --analyze` end to end on a tiny LLB trained by the CLI (synthetic set, 1 + 1 epochs)."""
import json
import math
import re
import warnings

import pytest
import torch
from torchvision.io import decode_png, read_file

import analyze
import data
import train

O = 16  # latent objects of the tiny run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("llb_run")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ~15 s; 2 threads on 2 busy cores spin-wait for minutes
    try:
        train.main(["--dataset", "synthetic", "--model", "micro", "--epochs", "1", "--llb-epochs", "1",
                    "--batch-size", "64", "--num-objects", str(O), "--device", "cpu", "--out-dir", str(out)])
        yield out
    finally:
        torch.set_num_threads(threads)


def png(path) -> torch.Tensor:
    with warnings.catch_warnings():  # torchvision 0.29 deprecates its decoders (for TorchCodec)
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_png(read_file(str(path)))


def test_analyze_end_to_end(run_dir):
    results = train.main(["--analyze", str(run_dir / "last.pt"), "--dataset", "synthetic",
                          "--device", "cpu", "--batch-size", "256"])
    # 8 pairs of 32 px images x4 = 128 px: 2 rows of 4 [image | 2 px gap | map], 12 px padding
    side = 128
    assert png(run_dir / "latent_objects.png").shape == (3, 2 * (side + 12) + 12, 4 * (2 * side + 2 + 12) + 12)
    # K = 10 classes x 48 px = 480, then an 8 px gap and a 24 px colour bar
    for space in ("visual", "nonvisual"):
        assert png(run_dir / f"centroids_{space}.png").shape == (3, 480, 480 + 8 + 24)
    legend = (run_dir / "latent_objects.txt").read_text()
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
    assert saved["top1"]["nonvisual"] == pytest.approx(100 * (c["both_right"] + c["only_nonvisual"]) / n)
    assert 0 <= saved["top1"]["integrated"] <= 100
    for value in saved["mean_centroid_similarity"].values():
        assert -1 <= value <= 1
    info = data.build_datasets("synthetic", max_per_class=1)[2]
    order = analyze.class_order(10, info.coarse_of_class)
    assert saved["heatmap_classes"] == [info.class_names[c] for c in order]
    if info.coarse_of_class is None:
        assert saved["superclass_similarity"] is None
    else:  # the twins' shape
        for space in ("visual", "nonvisual"):
            assert all(-1 <= v <= 1 for v in saved["superclass_similarity"][space].values())


def test_vit_checkpoint_is_refused(run_dir):
    with pytest.raises(ValueError, match=r"LLB checkpoint.*--method llb --backbone"):
        train.main(["--analyze", str(run_dir / "vit" / "last.pt"), "--device", "cpu"])


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
    cent = analyze.class_centroids(features, labels, 5)
    assert torch.allclose(cent[:4], centre[:4]) and cent[4].isnan().all()
    sim = analyze.cosine_matrix(cent)
    assert sim[0, 1].item() == pytest.approx(1 / (1 + b * b)) and sim[0, 2].item() == pytest.approx(0, abs=1e-7)
    assert sim[4].isnan().all() and sim[:, 4].isnan().all()
    result = analyze.superclass_similarity(sim, coarse)
    assert result["within"] == pytest.approx(1 / (1 + b * b)) and result["across"] == pytest.approx(0, abs=1e-7)
    assert analyze.superclass_similarity(sim[:3, :3], [0, 1, 2])["within"] is None  # no such pair


def test_class_order():
    assert analyze.class_order(5, [1, 0, 1, 0, 2]) == [1, 3, 0, 2, 4]
    assert analyze.class_order(3) == [0, 1, 2]


def test_agreement():
    target = torch.tensor([0, 1, 2, 0, 1])
    logits_v = torch.eye(3)[[0, 1, 0, 1, 1]]  # right: 0, 1, 4
    logits_n = torch.eye(3)[[0, 0, 2, 1, 1]]  # right: 0, 2, 4
    r = analyze.agreement(logits_v, logits_n, target)
    assert r["counts"] == {"both_right": 2, "only_visual": 1, "only_nonvisual": 1, "both_wrong": 1}
    assert r["percent"]["both_right"] == pytest.approx(40) and r["total"] == 5
    assert analyze.agreement(logits_v.argmax(1), logits_n.argmax(1), target) == r  # ids work too


def test_object_usage():
    counts = torch.tensor([5, 0, 3, 0, 2, 0])
    uniform = torch.tensor([1.0, 0, 1, 0, 1, 0]) * 7  # uniform over 3 objects (unnormalized sum)
    r = analyze.object_usage(counts, uniform)
    assert r == {"num_objects": 6, "used": 3, "perplexity": pytest.approx(3)}
    assert analyze.object_usage(counts, torch.eye(6)[2])["perplexity"] == pytest.approx(1)
    half = torch.tensor([0.5, 0.25, 0.25, 0, 0, 0])  # H = 1.5 log 2
    assert analyze.object_usage(counts, half)["perplexity"] == pytest.approx(2 ** 1.5)


def test_heatmap_colours():
    img = analyze.heatmap(torch.tensor([[-1.0, 0.0], [1.0, float("nan")]]), scale=3)
    assert img.dtype == torch.uint8 and img.shape == (3, 6, 6)
    for (i, j), colour in {(0, 0): analyze.BLUE, (0, 1): analyze.WHITE, (1, 0): analyze.RED,
                           (1, 1): analyze.GREY}.items():
        assert img[:, 3 * i:3 * i + 3, 3 * j:3 * j + 3].flatten(1).T.tolist() == [list(colour)] * 9
    half = analyze.heatmap(torch.tensor([[0.5]]))[:, 0, 0].tolist()
    assert half == [round((255 + c) / 2) for c in analyze.RED]


def test_similarity_picture_marks_superclasses():
    sim = torch.zeros(4, 4)
    img = analyze.similarity_picture(sim, groups=[0, 0, 1, 1])
    scale = math.ceil(analyze.HEATMAP_PX / 4)
    assert img.shape == (3, 4 * scale, 4 * scale + analyze.BAR_GAP + analyze.BAR_WIDTH)
    assert (img[:, 2 * scale, :4 * scale] == 0).all() and (img[:, :, 2 * scale] == 0).all()
    assert (img[:, scale, :2 * scale] == 255).all()  # no line inside a superclass
    assert img[:, 0, -1].tolist() == list(analyze.RED) and img[:, -1, -1].tolist() == list(analyze.BLUE)


def test_object_colours():
    counts = torch.tensor([0, 9, 3, 9, 1] + [0] * 40)
    colours = analyze.object_colours(counts)
    assert colours.shape == (45, 3) and torch.equal(colours, analyze.object_colours(counts))
    kelly = [[int(c[i:i + 2], 16) for i in (0, 2, 4)] for c in analyze.KELLY]
    assert colours[1].tolist() == kelly[0] and colours[3].tolist() == kelly[1]  # ties: by id
    assert colours[2].tolist() == kelly[2] and colours[4].tolist() == kelly[3]
    assert len({tuple(c) for c in colours.tolist()}) == 45  # all distinct here


def test_object_map_grid():
    images = torch.randn(3, 3, 8, 8)  # 8 px images, patch 4: 2 x 2 patches
    ids = torch.tensor([[0, 1, 2, 3], [3, 3, 3, 3], [1, 0, 0, 1]])
    colours = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]], dtype=torch.uint8)
    grid = analyze.object_map_grid(images, ids, colours, scale=2)
    side, pad, gap = 16, analyze.PADDING, analyze.PAIR_GAP
    assert grid.shape == (3, side + 2 * pad, 3 * (2 * side + gap + pad) + pad)  # one row of 3 pairs
    left = pad + side + gap  # first pair's map
    for patch in range(4):  # each patch is an 8 x 8 block of its object's colour
        r, c = pad + 8 * (patch // 2), left + 8 * (patch % 2)
        assert (grid[:, r:r + 8, c:c + 8] == colours[ids[0, patch]][:, None, None]).all()
    shown = grid[:, pad:pad + side, pad:pad + side]  # min-max per image: 0 and 255 both present
    assert shown.min() == 0 and shown.max() == 255
