"""Tests for plotting/: colours, layout, that text lands in the label margins, and that the
points of a scatter and the curves of a constructed metrics.jsonl hit the pixels their values
map to."""
import json
import math

import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from plotting import curves, draw, figures


def pixels(image) -> torch.Tensor:
    """uint8 (3, H, W) of a PIL image or a PNG path."""
    if not isinstance(image, Image.Image):
        image = Image.open(image).convert("RGB")
    return pil_to_tensor(image)


def inked(t: torch.Tensor, box) -> int:
    """Pixels in box (x0, y0, x1, y1) of the text colour; text is antialiased, so within 80 of
    it per channel (the white paper is 255)."""
    x0, y0, x1, y1 = box
    part = t[:, y0:y1, x0:x1].int()
    return int(((part - torch.tensor(draw.TEXT)[:, None, None]).abs() <= 80).all(0).sum())


def of_colour(t: torch.Tensor, colour) -> torch.Tensor:
    """(H, W) mask of the pixels exactly `colour`."""
    return (t == torch.tensor(colour, dtype=torch.uint8)[:, None, None]).all(0)


# ----------------------------------------------------------------------------- text and ticks
def test_wrap_and_shorten():
    s = "the quick brown fox jumps over the lazy dog " * 6
    lines = draw.wrap(s, 150, draw.LABEL_SIZE)
    assert len(lines) > 3 and all(draw.text_width(line, draw.LABEL_SIZE) <= 150 for line in lines)
    assert " ".join(lines).split() == s.split()  # every word kept, in order
    cut = draw.shorten("superclass large_omnivores_and_herbivores", 80, draw.SMALL_SIZE)
    assert cut.endswith("...") and draw.text_width(cut, draw.SMALL_SIZE) <= 80
    assert draw.shorten("cat", 80, draw.SMALL_SIZE) == "cat"


@pytest.mark.parametrize("lo, hi", [(0, 100), (80.2, 85.9), (-1.603, -0.985), (0.02, 2.0), (3, 3)])
def test_nice_ticks_cover_the_range_in_round_steps(lo, hi):
    ticks = draw.nice_ticks(lo, hi)
    step = ticks[1] - ticks[0]
    assert ticks[0] <= lo and ticks[-1] >= hi and 3 <= len(ticks) - 1 <= 12
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert min(abs(mantissa - m) for m in (1, 2, 5, 10)) < 1e-6
    assert all(abs(b - a - step) < 1e-9 for a, b in zip(ticks, ticks[1:]))
    assert draw.nice_ticks(0, 3, integer=True) == [0, 1, 2, 3]


# ----------------------------------------------------------------------------- colours
def test_diverging_colours():
    img = figures.diverging(torch.tensor([[-1.0, 0.0], [1.0, float("nan")]]), scale=3)
    assert img.dtype == torch.uint8 and img.shape == (3, 6, 6)
    for (i, j), colour in {(0, 0): figures.BLUE, (0, 1): figures.WHITE, (1, 0): figures.RED,
                           (1, 1): figures.GREY}.items():
        assert img[:, 3 * i:3 * i + 3, 3 * j:3 * j + 3].flatten(1).T.tolist() == [list(colour)] * 9
    half = figures.diverging(torch.tensor([[0.5]]))[:, 0, 0].tolist()
    assert half == [round((255 + c) / 2) for c in figures.RED]
    clamped = figures.diverging(torch.tensor([[-7.0]]))[:, 0, 0]
    assert clamped.tolist() == list(figures.BLUE)


def test_colours_by_rank():
    counts = torch.tensor([0, 9, 3, 9, 1] + [0] * 40)
    colours = figures.colours_by_rank(counts)
    assert colours.shape == (45, 3) and torch.equal(colours, figures.colours_by_rank(counts))
    kelly = [[int(c[i:i + 2], 16) for i in (0, 2, 4)] for c in figures.KELLY]
    assert colours[1].tolist() == kelly[0] and colours[3].tolist() == kelly[1]  # ties: by id
    assert colours[2].tolist() == kelly[2] and colours[4].tolist() == kelly[3]
    assert len({tuple(c) for c in colours.tolist()}) == 45  # all distinct here


def test_patch_pairs():
    images = torch.randn(3, 3, 8, 8)  # 8 px images, patch 4: 2 x 2 patches
    ids = torch.tensor([[0, 1, 2, 3], [3, 3, 3, 3], [1, 0, 0, 1]])
    colours = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [9, 9, 9]], dtype=torch.uint8)
    pairs = figures.patch_pairs(images, ids, colours, scale=2, gap=2)
    assert pairs.shape == (3, 3, 16, 16 + 2 + 16)
    for patch in range(4):  # each patch is an 8 x 8 block of its object's colour
        r = 8 * (patch // 2)
        c = 18 + 8 * (patch % 2)
        assert (pairs[0, :, r:r + 8, c:c + 8] == colours[ids[0, patch]][:, None, None]).all()
    assert (pairs[:, :, :, 16:18] == 255).all()  # the white gap
    shown = pairs[:, :, :, :16]  # min-max per image: 0 and 255 in each
    assert (shown.amin((1, 2, 3)) == 0).all() and (shown.amax((1, 2, 3)) == 255).all()


# ----------------------------------------------------------------------------- heatmap
def test_heatmap_figure_labels_cells_separators_and_colour_bar():
    values = torch.tensor([[1.0, 0.5, -0.5, 0.0], [0.5, 1.0, 0.0, -1.0],
                           [-0.5, 0.0, 1.0, 0.25], [0.0, -1.0, 0.25, float("nan")]])
    image, boxes = figures.heatmap_figure(values, title="Cosine of four classes",
                                          bar_title="cosine",
                                          labels=["0: cat", "1: dog", "2: carp", "3: eel"],
                                          groups=[0, 0, 1, 1], group_names=["mammals", "fish"])
    t = pixels(image)
    assert t.shape == (3, image.height, image.width)
    x0, y0, x1, y1 = boxes["heatmap"]
    cell = max(figures.MIN_CELL, math.ceil(figures.HEATMAP_PX / 4))  # 120 px per class
    assert (x1 - x0, y1 - y0) == (4 * cell, 4 * cell)
    for i in range(4):  # the centre of each cell has the value's colour
        for j in range(4):
            centre = t[:, y0 + i * cell + cell // 2, x0 + j * cell + cell // 2]
            assert centre.tolist() == figures.diverging(values[i:i + 1, j:j + 1])[:, 0, 0].tolist()
    assert (t[:, y0 + 2 * cell, x0:x1] == 0).all() and (t[:, y0:y1, x0 + 2 * cell] == 0).all()
    assert (t[:, y0 + cell, x0 + 5:x0 + 2 * cell] != 0).any(0).all()  # no line inside a group
    # colour bar: +1 RED at the top, 0 WHITE in the middle row, -1 BLUE at the bottom
    bx0, by0, bx1, by1 = boxes["bar"]
    assert (by1 - by0) % 2 == 1
    middle = (by0 + by1 - 1) // 2
    for row, colour in ((by0, figures.RED), (middle, figures.WHITE), (by1 - 1, figures.BLUE)):
        assert t[:, row, bx0:bx1].T.tolist() == [list(colour)] * (bx1 - bx0)
    ticks = (bx1, by0 - 8, image.width, by1 + 8)  # the "+1", "0", "-1" beside the bar
    assert inked(t, ticks) > 20
    for part in ("title", "row_labels", "col_labels", "groups"):
        assert inked(t, boxes[part]) > 20, part


def test_heatmap_figure_without_names_draws_no_label_text():
    _, boxes = figures.heatmap_figure(torch.zeros(3, 3), title="x", labels=["0", "1", "2"])
    image, empty = figures.heatmap_figure(torch.zeros(3, 3), title="x", labels=["", "", ""])
    t = pixels(image)
    assert inked(t, empty["row_labels"]) == 0 and inked(t, empty["col_labels"]) == 0
    assert empty["groups"][2] - empty["groups"][0] == 0  # no groups: no group column


def test_heatmap_figure_numbers_rows_when_too_many_classes():
    k = figures.MAX_NAMED + 80
    labels = [f"class {i}" for i in range(k)]
    image, boxes = figures.heatmap_figure(torch.eye(k), title="many", labels=labels)
    x0, y0, x1, y1 = boxes["heatmap"]
    assert x1 - x0 == k * math.ceil(figures.HEATMAP_PX / k)
    t = pixels(image)
    row_box = boxes["row_labels"]
    assert row_box[2] - row_box[0] < draw.text_width("class 100", draw.LABEL_SIZE)  # numbers only
    assert inked(t, row_box) > 20 and inked(t, boxes["col_labels"]) > 20


# ----------------------------------------------------------------------------- image grid
def test_tile_figure_places_tiles_captions_and_legend():
    tiles = torch.randint(0, 256, (5, 3, 40, 60), dtype=torch.uint8)
    legend = [((255, 0, 0), "object 3: 40.0%"), ((0, 0, 255), "object 1: 20.0%")]
    captions = [[f"class {i}", "p_O: x"] for i in range(5)]
    image, boxes = figures.tile_figure(tiles, captions=captions, title="five tiles", columns=3,
                                       legend_items=legend)
    t = pixels(image)
    assert len(boxes["tiles"]) == 5
    for i, (x0, y0, x1, y1) in enumerate(boxes["tiles"]):
        assert torch.equal(t[:, y0:y1, x0:x1], tiles[i])  # pasted exactly
        assert inked(t, boxes["captions"][i]) > 10
    assert boxes["tiles"][3][1] > boxes["tiles"][2][3]  # 3 per row: the 4th starts a row
    legend_part = t[:, boxes["legend"][1]:boxes["legend"][3], boxes["legend"][0]:boxes["legend"][2]]
    assert of_colour(legend_part, (255, 0, 0)).sum() > 50
    assert of_colour(legend_part, (0, 0, 255)).sum() > 50
    assert inked(t, boxes["title"]) > 10


# ----------------------------------------------------------------------------- scatter
def test_scatter_figure_puts_each_point_where_its_value_maps():
    # panel 1 spans x -1 .. 1 and y -1 .. 0.5 (round ticks 0.5 apart); panel 2 the same, mirrored
    points = torch.tensor([[-1.0, -1.0], [0.0, 0.5], [1.0, 0.0]])
    colours = [(230, 25, 75), (60, 180, 75), (0, 130, 200)]
    panels = [{"points": p, "title": f"panel {i}", "x_title": "PC1", "y_title": "PC2"}
              for i, p in enumerate((points, -points))]
    image, boxes = figures.scatter_figure(panels, title="three classes", labels=["a", "b", "c"],
                                          colours=colours, notes="two panels",
                                          legend_items=[(colours[0], "group a")])
    t = pixels(image)
    assert len(boxes["plots"]) == 2 and boxes["plots"][1][0] > boxes["plots"][0][2]
    for (x0, y0, x1, y1), p in zip(boxes["plots"], (points, -points)):
        assert t[:, (y0 + y1) // 2, x0].tolist() == list(draw.TEXT)  # the frame
        xs = draw.nice_ticks(float(p[:, 0].min()), float(p[:, 0].max()))
        ys = draw.nice_ticks(float(p[:, 1].min()), float(p[:, 1].max()))
        for (x, y), rgb in zip(p.tolist(), colours):
            col = round(x0 + (x - xs[0]) / (xs[-1] - xs[0]) * (x1 - x0))
            row = round(y1 - (y - ys[0]) / (ys[-1] - ys[0]) * (y1 - y0))
            assert t[:, row, col].tolist() == list(rgb)  # the disc's centre
    legend_part = t[:, boxes["legend"][1]:boxes["legend"][3], boxes["legend"][0]:boxes["legend"][2]]
    assert of_colour(legend_part, colours[0]).sum() > 30
    assert not of_colour(legend_part, colours[1]).any()
    assert inked(t, boxes["title"]) > 10


# ----------------------------------------------------------------------------- curves
def write_metrics(path, records, *, head_line=True):
    lines = [json.dumps({"recipe": {"lr": 1e-3}})] if head_line else []
    path.write_text("\n".join(lines + [json.dumps(r) for r in records]) + "\n")


def test_line_chart_hits_the_rows_of_known_values():
    # loss 2.0 .. 0.5: y axis 0.5 .. 2.0; top-1 10 .. 100: y axis 0 .. 100; x axis epochs 0 .. 4
    top1 = {"top1_visual": [20, 40, 60, 80], "top1_nonvisual": [10, 30, 50, 100],
            "top1_integrated": [70, 90, 15, 35]}
    epochs = [1, 2, 3, 4]
    charts = {"loss": ([(curves.LOSS_COLOUR, epochs, [2.0, 1.5, 1.0, 0.5])], (-math.inf, math.inf)),
              "top1": ([(curves.CURVES[k][1], epochs, v) for k, v in top1.items()], (0, 100))}
    for name, (series, limits) in charts.items():
        image, boxes = curves.line_chart(series, y_title=name, y_limits=limits)
        t = pixels(image)
        assert boxes["x_range"] == (0, 4)
        assert boxes["y_range"] == {"loss": (0.5, 2.0), "top1": (0, 100)}[name]
        x0, y0, x1, y1 = boxes["plot"]
        lo, hi = boxes["y_range"]
        assert t[:, (y0 + y1) // 2, x0].tolist() == list(draw.TEXT)  # the frame is where it says
        for colour, _, values in series:
            for epoch, value in zip(epochs, values):
                x = round(x0 + epoch / 4 * (x1 - x0))
                row = y1 - (value - lo) / (hi - lo) * (y1 - y0)
                column = of_colour(t[:, :, x:x + 1], colour)[:, 0].nonzero()[:, 0].float()
                near = column[(column - row).abs() < 10]  # the dot (lines cross other rows)
                assert len(near) >= 5 and abs(near.mean().item() - row) <= 1.5, (name, value)


def test_curves_png_draws_the_heads_the_file_has(tmp_path):
    records = [dict(epoch=e, train_loss=1.0 - 0.5 * e, train_top1=0.0, top1_visual=20.0 * e,
                    top1_nonvisual=25.0 * e, top1_integrated=22.0 * e) for e in (1, 2, 3)]
    write_metrics(tmp_path / "m.jsonl", records)
    curves.write_curves(tmp_path / "m.jsonl", tmp_path / "llb.png", title="LLB stage")
    t = pixels(tmp_path / "llb.png")
    for colour in [curves.LOSS_COLOUR] + [c for _, c in curves.CURVES.values()]:
        assert of_colour(t, colour).sum() > 100  # its line, dots and legend swatch
    assert inked(t, (0, 0, t.shape[2], 40)) > 50  # the title and summary

    # one epoch of a ViT: its one head at mid-x (x axis 0 .. 2), the LLB heads nowhere
    record = dict(epoch=1, train_loss=2.3, train_top1=9.0, top1_visual=12.5)
    write_metrics(tmp_path / "m.jsonl", [record], head_line=False)
    curves.write_curves(tmp_path / "m.jsonl", tmp_path / "vit.png", title="ViT stage")
    t = pixels(tmp_path / "vit.png")
    assert of_colour(t, curves.CURVES["top1_visual"][1]).sum() > 20
    for key in ("top1_nonvisual", "top1_integrated"):
        assert not of_colour(t, curves.CURVES[key][1]).any()
    image, boxes = curves.line_chart([((255, 0, 0), [1], [12.5])], y_title="top-1")
    x0, y0, x1, y1 = boxes["plot"]
    lo, hi = boxes["y_range"]
    row = round(y1 - (12.5 - lo) / (hi - lo) * (y1 - y0))
    assert boxes["x_range"] == (0, 2)
    assert pixels(image)[:, row, (x0 + x1) // 2].tolist() == [255, 0, 0]


def test_read_metrics_keeps_the_last_run_and_skips_other_lines(tmp_path):
    runs = [dict(epoch=e, train_loss=1.0, top1_visual=float(e)) for e in (1, 2, 3)]
    again = [dict(epoch=e, train_loss=0.5, top1_visual=10.0 * e) for e in (1, 2)]
    write_metrics(tmp_path / "m.jsonl", runs + [{"note": "no epoch"}] + again)
    assert curves.read_metrics(tmp_path / "m.jsonl") == again


def test_read_metrics_names_a_line_that_is_not_json(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"epoch": 1, "train_loss": 1.0}\n{"epoch": 2,\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 2: not JSON .*delete or fix that line"):
        curves.read_metrics(tmp_path / "bad.jsonl")


def test_point_names_do_not_overprint_one_another():
    """Close points (the demo's PCA had two pairs of names printed over each other): every name
    is beside its point or joined to it by a leader line, and no two names' boxes intersect."""
    g = torch.Generator().manual_seed(0)
    cluster = torch.tensor([[0.0, 0.0]]) + 0.01 * torch.randn(8, 2, generator=g)
    points = torch.cat([cluster, torch.tensor([[1.0, 1.0], [-1.0, 0.5]])])
    names = [f"class name {k}" for k in range(len(points))]
    panel = dict(points=points, title="t", x_title="x", y_title="y")
    image, boxes = figures.scatter_figure([panel, panel], title="names", labels=names,
                                          colours=[(200, 0, 0)] * len(points), legend_items=[])
    for plot, placed in zip(boxes["plots"], boxes["labels"]):
        assert len(placed) == len(points)
        for i, a in enumerate(placed):
            assert not any(figures.overlap(a, b) for b in placed[i + 1:]), (i, a)
            assert plot[0] <= a[0] and a[2] <= image.width  # right of the y axis, in the image
        # a name in its box: dark text pixels there
        x0, y0, x1, y1 = (round(v) for v in placed[0])
        crop = pil_to_tensor(image.convert("RGB").crop((x0, y0, x1, y1)))  # (3, h, w)
        assert int((crop <= 80).all(0).sum()) > 10


# ----------------------------------------------------------------------------- matrix
def test_matrix_figure_cells_group_lines_table_and_colour_bar():
    values = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.5, 0.25]])
    image, boxes = figures.matrix_figure(
        values, title="Two contents, three objects", row_labels=["square", "background"],
        col_labels=["object 4", "object 0", "object 2"], col_groups=[0, 0, 1],
        table=[["10", "50%"], ["7", "71%"]], table_header=["patches", "top"],
        bar_title="share", notes="notes")
    t = pixels(image)
    x0, y0, x1, y1 = boxes["matrix"]
    cell_w = math.ceil(figures.HEATMAP_PX / 3)
    cell_h = draw.line_height(draw.SMALL_SIZE) + 4
    assert (x1 - x0, y1 - y0) == (3 * cell_w, 2 * cell_h)
    for i in range(2):  # the centre of each cell: WHITE (0) to RED (1)
        for j in range(3):
            centre = t[:, y0 + i * cell_h + cell_h // 2, x0 + j * cell_w + cell_w // 2]
            assert centre.tolist() == figures.diverging(values[i:i + 1, j:j + 1])[:, 0, 0].tolist()
    assert (t[:, y0:y1, x0 + 2 * cell_w] == 0).all()  # a line where the group changes
    assert (t[:, y0:y1, x0 + cell_w] != 0).any(0).all()  # none inside a group
    bx0, by0, bx1, by1 = boxes["bar"]  # 0 WHITE at the left end to 1 RED at the right
    ramp = figures.diverging(torch.linspace(0, 1, bx1 - bx0)[None])[:, 0]  # (3, bar width)
    inside = t[:, by0 + 2, bx0 + 1:bx1 - 1]  # a row inside its black frame
    assert torch.equal(inside, ramp[:, 1:-1])
    assert ramp[:, 0].tolist() == list(figures.WHITE) and ramp[:, -1].tolist() == list(figures.RED)
    for part in ("title", "row_labels", "col_labels", "table"):
        assert inked(t, boxes[part]) > 20, part
    assert boxes["table"][0] >= x1 and boxes["row_labels"][2] <= x0  # beside, not over, the cells


def test_matrix_figure_leaves_columns_unnamed_when_too_many():
    columns = figures.MAX_NAMED + 30
    image, boxes = figures.matrix_figure(
        torch.rand(3, columns), title="many objects", row_labels=["a", "b", "c"],
        col_labels=[f"object {j}" for j in range(columns)], col_groups=[0] * columns,
        table=[["1"], ["2"], ["3"]], table_header=["n"], bar_title="share")
    x0, _, x1, _ = boxes["matrix"]
    assert x1 - x0 == columns * math.ceil(figures.HEATMAP_PX / columns)
    assert inked(pixels(image), boxes["col_labels"]) == 0
