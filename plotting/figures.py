"""analyze.py's figures, each with its own title, labels and legend: a heatmap with a colour
bar, a grid of image tiles with captions, scatter panels; and their colours (a diverging map, a
palette by rank). Figure builders return (image, boxes): the PIL image and the pixel boxes
(x0, y0, x1, y1) of its parts, which the tests use to check what was drawn where.
"""
import colorsys
import math

import torch
from PIL import Image, ImageDraw
from torchvision.transforms.functional import to_pil_image

from plotting.draw import (GAP, LABEL_SIZE, MARGIN, PAPER, SMALL_SIZE, TEXT, axes, draw_text,
                           legend, line_height, nice_ticks, shorten, stack, text_width, titled)

# diverging colour map: BLUE at the low end (-1), WHITE at 0, RED at the high end (+1); GREY: NaN
BLUE = (33, 102, 172)
WHITE = (255, 255, 255)
RED = (178, 24, 43)
GREY = (128, 128, 128)
# Kelly's 22 colours of maximum contrast without white and black: for the 20 first ranks
KELLY = ("F3C300 875692 F38400 A1CAF1 BE0032 C2B280 848482 008856 E68FAC 0067A5 "
         "F99379 604E97 F6A600 B3446C DCD300 882D17 8DB600 654522 E25822 2B3D26").split()
HEATMAP_PX = 480  # a heatmap's side, at least
MIN_CELL = 12  # px per class when classes are named: one line of SMALL_SIZE text
MAX_NAMED = 120  # more classes: numbered ticks instead of names
MAX_LABEL_PX = 200  # longer labels are cut with "..."
BAR_WIDTH = 20
SCATTER_PX = 360  # a scatter panel's plot area, square
POINT_RADIUS = 4
MAX_POINT_LABELS = 40  # more points: unlabelled (the colours and the legend still say the group)


# ----------------------------------------------------------------------------- colours
def colours_by_rank(counts: torch.Tensor) -> torch.Tensor:
    """uint8 (n, 3): the item of rank r by count (largest first, ties by index) gets Kelly
    colour r for r < 20, else a golden-angle hue: distinct colours for the largest items."""
    n = len(counts)
    rank_of = torch.argsort(torch.argsort(-counts, stable=True))  # the inverse permutation
    kelly = [[int(c[i:i + 2], 16) for i in (0, 2, 4)] for c in KELLY]
    hues = [[255 * v for v in colorsys.hsv_to_rgb(r * 0.618034 % 1, 0.6, 0.95 - 0.3 * (r % 2))]
            for r in range(len(kelly), n)]  # golden-angle steps, alternately light and dark
    palette = torch.tensor(kelly + hues)[:n]
    return palette[rank_of].round().to(torch.uint8)


def diverging(values: torch.Tensor, scale: int = 1) -> torch.Tensor:
    """uint8 (3, H*scale, W*scale) of values (H, W) in [-1, 1]: BLUE (-1) - WHITE (0) - RED (+1),
    linear in between, NaN GREY; each value a scale x scale block."""
    v = values.float().clamp(-1, 1)  # (H, W)
    white = torch.tensor(WHITE, dtype=torch.float)
    ends = torch.tensor([BLUE, RED], dtype=torch.float)
    rgb = white + (ends[(v > 0).long()] - white) * v.abs()[..., None]  # (H, W, 3)
    rgb[values.isnan()] = torch.tensor(GREY, dtype=torch.float)
    image = rgb.round().to(torch.uint8).permute(2, 0, 1)  # (3, H, W)
    return image.repeat_interleave(scale, 1).repeat_interleave(scale, 2)


def patch_pairs(images: torch.Tensor, patch_ids: torch.Tensor, colours: torch.Tensor, *,
                scale: int, gap: int = 2) -> torch.Tensor:
    """uint8 (n, 3, S*scale, 2*S*scale + gap): each image [shown | gap | its patch grid, each patch
    filled with colours[id]]. images (n, 3, S, S) any range, shown min-max per image; patch_ids
    (n, N) row-major (as vit.PatchEmbed), N a square."""
    n, size = len(images), images.shape[-1]
    lo = images.amin((1, 2, 3), keepdim=True)
    hi = images.amax((1, 2, 3), keepdim=True)
    shown = ((images - lo) / (hi - lo).clamp_min(1e-8) * 255).round().to(torch.uint8)
    shown = shown.repeat_interleave(scale, 2).repeat_interleave(scale, 3)  # (n, 3, S*sc, S*sc)
    g = math.isqrt(patch_ids.shape[1])  # patches per side
    maps = colours[patch_ids].view(n, g, g, 3).permute(0, 3, 1, 2)  # (n, 3, g, g)
    cell = size * scale // g
    maps = maps.repeat_interleave(cell, 2).repeat_interleave(cell, 3)  # (n, 3, S*sc, S*sc)
    white = torch.full((n, 3, size * scale, gap), 255, dtype=torch.uint8)
    return torch.cat([shown, white, maps], dim=3)


# ----------------------------------------------------------------------------- heatmap
def heatmap_figure(values: torch.Tensor, *, title: str, labels: list, groups: list | None = None,
                   group_names: list | None = None, bar_title: str = "cosine",
                   notes: str = "") -> tuple[Image.Image, dict]:
    """A (K, K) matrix in [-1, 1] as a titled heatmap: row and column labels (`labels`, in row
    order; for K > MAX_NAMED, numbered ticks instead), black lines where `groups` (a group id
    per row) changes, group names beside the rows, a colour bar marked -1, 0, +1 in the
    `diverging` colours. Boxes: heatmap, bar, row_labels, col_labels, groups, title."""
    k = len(values)
    named = k <= MAX_NAMED
    cell = max(MIN_CELL if named else 1, math.ceil(HEATMAP_PX / k))
    side = k * cell
    cells = diverging(values, cell)  # (3, side, side)
    starts = [i for i in range(1, k) if groups and groups[i] != groups[i - 1]]
    for i in starts:  # group separators across the whole matrix
        cells[:, i * cell, :] = 0
        cells[:, :, i * cell] = 0
    size = SMALL_SIZE if named else LABEL_SIZE
    ticks = range(k) if named else nice_ticks(0, k - 1, count=10, integer=True)[:-1]
    texts = {i: shorten(labels[i], MAX_LABEL_PX, size) if named else str(i) for i in ticks}
    label_w = max(text_width(t, size) for t in texts.values()) + GAP

    # group names beside the rows, each centred on its span, a bracket along the span
    edges = [0] + starts + [k]
    spans = [(a, b, shorten(str(group_names[groups[a]] if group_names else groups[a]),
                            MAX_LABEL_PX, SMALL_SIZE))
             for a, b in zip(edges, edges[1:]) if groups]
    group_w = max([text_width(t, SMALL_SIZE) for *_, t in spans], default=-2 * GAP) + 2 * GAP
    bar_h = side - (side + 1) % 2  # odd: its middle row is exactly 0
    bar_text_w = text_width(bar_title, SMALL_SIZE)
    width = group_w + label_w + side + 2 * GAP + BAR_WIDTH + GAP + max(bar_text_w, 24)
    top = label_w + GAP  # column labels: the row labels turned 90 degrees
    body = Image.new("RGB", (width, top + side + line_height(SMALL_SIZE) // 2), PAPER)
    draw = ImageDraw.Draw(body)
    x_map = group_w + label_w
    body.paste(to_pil_image(cells), (x_map, top))

    # row labels, right-aligned against the heatmap; column labels the same, turned
    pad = line_height(size) // 2  # room for the half of a label beyond the first and last cell
    column = Image.new("RGB", (label_w, side + 2 * pad), PAPER)
    column_draw = ImageDraw.Draw(column)
    for i, t in texts.items():
        y = i * cell + cell / 2
        draw_text(draw, (x_map - GAP, top + y), t, size=size, anchor="rm")
        draw_text(column_draw, (GAP, pad + y), t, size=size, anchor="lm")
    body.paste(column.rotate(90, expand=True), (x_map - pad, 0))  # row i -> column i, upwards
    for a, b, name in spans:
        y0 = top + a * cell + 1
        y1 = top + b * cell - 2
        draw.line((group_w - GAP, y0, group_w - GAP, y1), fill=TEXT)
        if y1 - y0 >= line_height(SMALL_SIZE) - 2:  # room for the name
            draw_text(draw, (group_w - 2 * GAP, top + (a + b) * cell / 2), name, anchor="rm")

    # colour bar: +1 at the top row, 0 in the middle row, -1 at the bottom row
    x_bar = x_map + side + 2 * GAP
    bar = diverging(torch.linspace(1, -1, bar_h)[:, None].expand(bar_h, BAR_WIDTH))
    body.paste(to_pil_image(bar), (x_bar, top))
    draw_text(draw, (x_bar, top - GAP), bar_title, anchor="ld")
    for value, t in ((1, "+1"), (0, "0"), (-1, "-1")):
        y = top + round((1 - value) / 2 * (bar_h - 1))
        draw.line((x_bar + BAR_WIDTH, y, x_bar + BAR_WIDTH + 3, y), fill=TEXT)
        draw_text(draw, (x_bar + BAR_WIDTH + GAP, y), t, anchor="lm")

    image, y_body = titled(body, title, notes)
    x0 = MARGIN
    boxes = {"title": (x0, MARGIN, image.width - MARGIN, y_body - 2 * GAP),
             "heatmap": (x0 + x_map, y_body + top, x0 + x_map + side, y_body + top + side),
             "bar": (x0 + x_bar, y_body + top, x0 + x_bar + BAR_WIDTH, y_body + top + bar_h),
             "row_labels": (x0 + group_w, y_body + top, x0 + x_map, y_body + top + side),
             "col_labels": (x0 + x_map, y_body, x0 + x_map + side, y_body + top),
             "groups": (x0, y_body + top, x0 + group_w, y_body + top + side)}
    return image, boxes


# ----------------------------------------------------------------------------- matrix
def matrix_figure(values: torch.Tensor, *, title: str, row_labels: list, col_labels: list,
                  col_groups: list, table: list, table_header: list, bar_title: str,
                  notes: str = "") -> tuple[Image.Image, dict]:
    """An (R, C) matrix of shares in [0, 1] as a titled chart: cells from WHITE (0) to RED (1),
    rows named on the left, columns named above (turned; for C > MAX_NAMED unnamed), a black
    line where `col_groups` (a group id per column) changes, a table right of the rows (`table`:
    a list of texts per row, right-aligned under `table_header`), a colour bar under the matrix
    marked 0, 50%, 100%, `bar_title` right of it. Boxes: matrix, row_labels, col_labels, table,
    bar, title."""
    rows, columns = values.shape
    named = columns <= MAX_NAMED
    cell_w = max(MIN_CELL if named else 1, math.ceil(HEATMAP_PX / columns))
    cell_h = line_height(SMALL_SIZE) + 4
    width_px, height_px = columns * cell_w, rows * cell_h
    cells = diverging(values.clamp(0, 1)).repeat_interleave(cell_h, 1)  # (3, H, C)
    cells = cells.repeat_interleave(cell_w, 2)  # (3, height_px, width_px)
    for j in range(1, columns):  # group separators, down the whole matrix
        if col_groups[j] != col_groups[j - 1]:
            cells[:, :, j * cell_w] = 0
    row_w = max(text_width(t, SMALL_SIZE) for t in row_labels) + GAP
    col_texts = [shorten(t, MAX_LABEL_PX, SMALL_SIZE) for t in col_labels] if named else []
    col_h = max([text_width(t, SMALL_SIZE) for t in col_texts], default=0) + GAP
    # the table's columns: each as wide as its widest text, 2 GAPs apart
    widths = [max(text_width(t, SMALL_SIZE) for t in [head, *(row[k] for row in table)])
              for k, head in enumerate(table_header)]
    table_w = sum(widths) + 2 * GAP * len(widths)
    top = max(col_h, line_height(SMALL_SIZE) + GAP)  # the column names, or the table's header
    bar_y = top + height_px + 2 * GAP
    bar_h = BAR_WIDTH // 2
    body_h = bar_y + bar_h + GAP + line_height(SMALL_SIZE)
    x_map = row_w
    x_table = x_map + width_px
    bar_w = min(width_px, HEATMAP_PX // 2) if width_px >= 100 else 100
    bar_text_w = text_width(bar_title, SMALL_SIZE) + 2 * GAP
    body = Image.new("RGB", (max(x_table + table_w, x_map + bar_w + bar_text_w), body_h), PAPER)
    draw = ImageDraw.Draw(body)
    body.paste(to_pil_image(cells), (x_map, top))

    # row names right-aligned against the matrix; the table right of it, right-aligned columns
    rights = [x_table + sum(widths[:k + 1]) + 2 * GAP * (k + 1) for k in range(len(widths))]
    for right, head in zip(rights, table_header):
        draw_text(draw, (right, top - GAP), head, anchor="rd")
    for i, (name, row) in enumerate(zip(row_labels, table)):
        y = top + i * cell_h + cell_h / 2
        draw_text(draw, (x_map - GAP, y), name, anchor="rm")
        for right, t in zip(rights, row):
            draw_text(draw, (right, y), t, anchor="rm")
    # column names: written on a strip, one line per column, turned 90 degrees (read upwards)
    if named:
        strip = Image.new("RGB", (col_h, width_px), PAPER)
        strip_draw = ImageDraw.Draw(strip)
        for j, t in enumerate(col_texts):
            draw_text(strip_draw, (GAP, j * cell_w + cell_w / 2), t, anchor="lm")
        body.paste(strip.rotate(90, expand=True), (x_map, top - col_h))

    # colour bar: 0 (white) at the left end to 1 (red) at the right, its title right of it
    bar = diverging(torch.linspace(0, 1, bar_w)[None].expand(bar_h, bar_w))
    body.paste(to_pil_image(bar), (x_map, bar_y))
    draw.rectangle((x_map, bar_y, x_map + bar_w - 1, bar_y + bar_h - 1), outline=TEXT)
    draw_text(draw, (x_map + bar_w + 2 * GAP, bar_y + bar_h / 2), bar_title, anchor="lm")
    for value, t in ((0, "0"), (0.5, "50%"), (1, "100%")):
        x = x_map + round(value * (bar_w - 1))
        draw_text(draw, (x, bar_y + bar_h + 2), t, anchor="ma" if value < 1 else "ra")

    image, y_body = titled(body, title, notes)
    x0 = MARGIN
    y0 = y_body

    def moved(b):
        return (b[0] + x0, b[1] + y0, b[2] + x0, b[3] + y0)
    boxes = {"title": (MARGIN, MARGIN, image.width - MARGIN, y_body - 2 * GAP),
             "matrix": moved((x_map, top, x_map + width_px, top + height_px)),
             "row_labels": moved((0, top, x_map, top + height_px)),
             "col_labels": moved((x_map, 0, x_map + width_px, top)),
             "table": moved((x_table, top, x_table + table_w, top + height_px)),
             "bar": moved((x_map, bar_y, x_map + bar_w, bar_y + bar_h))}
    return image, boxes


# ----------------------------------------------------------------------------- image grid
def tile_figure(tiles: torch.Tensor, *, captions: list, title: str, columns: int,
                legend_items: list, notes: str = "") -> tuple[Image.Image, dict]:
    """uint8 tiles (n, 3, h, w) in a grid of `columns`, each over its caption lines (`captions`,
    a list of lines per tile), then a legend of (rgb, text) swatches. Boxes: tiles (a list),
    captions (a list), legend, title."""
    n, _, h, w = tiles.shape
    step = line_height(SMALL_SIZE)
    lines = max(len(c) for c in captions)
    cell_w = w + 2 * MARGIN
    cell_h = h + GAP + lines * step + MARGIN
    rows = math.ceil(n / columns)
    grid = Image.new("RGB", (columns * cell_w, rows * cell_h), PAPER)
    draw = ImageDraw.Draw(grid)
    tile_boxes, caption_boxes = [], []
    for i in range(n):
        x = (i % columns) * cell_w
        y = (i // columns) * cell_h
        grid.paste(to_pil_image(tiles[i]), (x, y))
        for j, line in enumerate(captions[i]):
            draw_text(draw, (x, y + h + GAP + j * step), shorten(line, w, SMALL_SIZE))
        tile_boxes.append((x, y, x + w, y + h))
        caption_boxes.append((x, y + h + GAP, x + w, y + h + GAP + lines * step))
    body = stack([grid, legend(legend_items, grid.width, size=SMALL_SIZE)], gap=GAP)
    image, y_body = titled(body, title, notes)
    shift = (2 * MARGIN, y_body + MARGIN)  # body's own margin inside the figure's

    def moved(b):
        return (b[0] + shift[0], b[1] + shift[1], b[2] + shift[0], b[3] + shift[1])
    boxes = {"title": (MARGIN, MARGIN, image.width - MARGIN, y_body - 2 * GAP),
             "tiles": [moved(b) for b in tile_boxes], "captions": [moved(b) for b in caption_boxes],
             "legend": moved((0, grid.height + GAP, grid.width, body.height - 2 * MARGIN))}
    return image, boxes


# ----------------------------------------------------------------------------- scatter
def scatter_panel(points: torch.Tensor, *, title: str, labels: list, colours: list,
                  x_title: str, y_title: str) -> tuple[Image.Image, tuple, list]:
    """(n, 2) points on round-ticked axes under a title, each a disc in colours[i] (rgb) and,
    for n <= MAX_POINT_LABELS, named labels[i] beside it (`place_labels`). Returns the panel,
    its plot box and the labels' boxes."""
    xs = nice_ticks(float(points[:, 0].min()), float(points[:, 0].max()))
    ys = nice_ticks(float(points[:, 1].min()), float(points[:, 1].max()))
    label_room = 120 if len(points) <= MAX_POINT_LABELS else GAP  # names right of the points
    panel, draw, plot, to_pixel = axes(x_ticks=xs, y_ticks=ys, x_range=(xs[0], xs[-1]),
                                       x_title=x_title, y_title=y_title,
                                       plot_size=(SCATTER_PX, SCATTER_PX),
                                       top=line_height(LABEL_SIZE) + GAP, right=label_room)
    left = plot[0]
    draw_text(draw, (left, 0), shorten(title, panel.width - left, LABEL_SIZE), size=LABEL_SIZE)
    r = POINT_RADIUS
    centres = [to_pixel(x, y) for x, y in points.tolist()]
    for (cx, cy), rgb in zip(centres, colours):  # discs, then their names
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(rgb), outline=TEXT)
    boxes = []
    if len(points) <= MAX_POINT_LABELS:
        names = [shorten(name, label_room - r - 2, SMALL_SIZE) for name in labels]
        half = line_height(SMALL_SIZE) / 2  # a point on the frame keeps its name beside it
        bounds = (plot[0], plot[1] - half, panel.width, plot[3] + half)
        boxes = place_labels(draw, centres, names, bounds=bounds)
    return panel, plot, boxes


def place_labels(draw, centres: list, names: list, *, bounds: tuple) -> list:
    """Each name beside its point (pixel centres), where it overlaps no name placed before:
    right of the point, else left; else moved up or down a line at a time, joined to its point
    by a grey leader line. Inside `bounds` (x0, y0, x1, y1) when it can be. Returns the boxes."""
    height = line_height(SMALL_SIZE)
    gap = POINT_RADIUS + 2
    placed = []
    for (cx, cy), name in zip(centres, names):
        width = text_width(name, SMALL_SIZE)
        candidates = []
        for step in range(2 * int((bounds[3] - bounds[1]) // height) + 1):
            dy = (step + 1) // 2 * height * (-1 if step % 2 else 1)  # 0, -h, +h, -2h, ...
            for x0 in (cx + gap, cx - gap - width):
                candidates.append((x0, cy + dy - height / 2, x0 + width, cy + dy + height / 2))
        inside = [b for b in candidates if bounds[0] <= b[0] and b[2] <= bounds[2]
                  and bounds[1] <= b[1] and b[3] <= bounds[3]]
        free = [b for b in inside if not any(overlap(b, other) for other in placed)]
        box = (free or inside or candidates)[0]
        placed.append(box)
        if abs((box[1] + box[3]) / 2 - cy) > 0.5:  # moved up or down: a leader line
            end = box[0] if box[0] > cx else box[2]
            draw.line((cx, cy, end, (box[1] + box[3]) / 2), fill=GREY)
        draw_text(draw, (box[0], (box[1] + box[3]) / 2), name, anchor="lm")
    return placed


def overlap(a: tuple, b: tuple) -> bool:
    """Whether two boxes (x0, y0, x1, y1) share any area."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def scatter_figure(panels: list, *, title: str, labels: list, colours: list,
                   legend_items: list, notes: str = "") -> tuple[Image.Image, dict]:
    """Scatter panels side by side (each a dict of scatter_panel's keywords but labels and
    colours, shared by all), a legend of (rgb, text) under them, a title and notes.
    Boxes: plots (a list, one per panel), labels (a list of the names' boxes per panel),
    legend, title."""
    drawn = [scatter_panel(**p, labels=labels, colours=colours) for p in panels]
    row = Image.new("RGB", (sum(d[0].width for d in drawn) + 2 * GAP * (len(drawn) - 1),
                            max(d[0].height for d in drawn)), PAPER)
    x = 0
    plot_boxes = []
    label_boxes = []
    for panel, (x0, y0, x1, y1), names in drawn:
        row.paste(panel, (x, 0))
        plot_boxes.append((x + x0, y0, x + x1, y1))
        label_boxes.append([(a + x, b, c + x, d) for a, b, c, d in names])
        x += panel.width + 2 * GAP
    body = stack([row, legend(legend_items, row.width, size=SMALL_SIZE)], gap=GAP)
    image, y_body = titled(body, title, notes)
    dx, dy = 2 * MARGIN, y_body + MARGIN  # body's own margin inside the figure's
    boxes = {"title": (MARGIN, MARGIN, image.width - MARGIN, y_body - 2 * GAP),
             "plots": [(a + dx, b + dy, c + dx, d + dy) for a, b, c, d in plot_boxes],
             "labels": [[(a + dx, b + dy, c + dx, d + dy) for a, b, c, d in names]
                        for names in label_boxes],
             "legend": (dx, dy + row.height + GAP, dx + row.width, y_body + body.height - MARGIN)}
    return image, boxes
