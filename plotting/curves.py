"""Training curves: a line chart with axes, ticks and a legend, and a run's curves.png.

    write_curves(run_dir / "metrics.jsonl", run_dir / "curves.png", title="...")

train.py redraws curves.png after every epoch: train loss, and validation top-1 of p_V, p_N and
p_O per epoch. Drawn with draw.py's primitives (Pillow's ImageDraw and its built-in font).
"""
import json
import math
from pathlib import Path

from PIL import Image, ImageDraw

from plotting.draw import (GAP, GRID, LABEL_SIZE, MARGIN, PAPER, SMALL_SIZE, TEXT, draw_text,
                           legend, line_height, nice_ticks, stack, text_width, tick_text, titled)

# metrics.jsonl keys drawn by write_curves, their legend and their colour (Okabe-Ito)
CURVES = {"top1_visual": ("p_V (ViT head)", (0, 114, 178)),
          "top1_nonvisual": ("p_N (LLB head)", (213, 94, 0)),
          "top1_integrated": ("p_O (integrated)", (0, 158, 115))}
LOSS_COLOUR = (117, 112, 179)  # purple: not the black of the frame and text
PANEL_W = 420  # a chart's plot area
PANEL_H = 260
MARKERS_UP_TO = 40  # a dot on each epoch up to this many epochs


def line_chart(series: list, *, y_title: str, x_title: str = "epoch",
               y_limits: tuple = (-math.inf, math.inf)) -> tuple[Image.Image, dict]:
    """One chart: series [(colour, xs, ys)] as lines (and dots when few points) over a
    PANEL_W x PANEL_H plot area with a frame, round ticks, grid lines and axis titles; y ticks
    clipped to y_limits. Boxes: plot; ranges: x_range, y_range (the values at the plot's edges)."""
    xs = [x for _, px, _ in series for x in px]
    ys = [y for _, _, py in series for y in py]
    x_range = (0, max(max(xs), 2))  # epoch 0: before training; one epoch sits mid-way
    x_ticks = [t for t in nice_ticks(*x_range, integer=True) if t <= x_range[1]]
    y_ticks = [t for t in nice_ticks(min(ys), max(ys)) if y_limits[0] <= t <= y_limits[1]]
    y_labels = [tick_text(t, y_ticks) for t in y_ticks]
    left = max(text_width(t, SMALL_SIZE) for t in y_labels) + GAP + line_height(LABEL_SIZE) + GAP
    top = line_height(SMALL_SIZE) // 2
    width = left + PANEL_W + text_width(tick_text(x_ticks[-1], x_ticks), SMALL_SIZE) // 2 + GAP
    height = top + PANEL_H + GAP + 2 * line_height(SMALL_SIZE) + GAP
    image = Image.new("RGB", (width, height), PAPER)
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = left, top, left + PANEL_W, top + PANEL_H

    # the maps from values to pixels: x0..x1 spans x_range, y1..y0 the first to last y tick
    def px(x):
        return x0 + (x - x_range[0]) / (x_range[1] - x_range[0]) * (x1 - x0)

    def py(y):
        return y1 - (y - y_ticks[0]) / (y_ticks[-1] - y_ticks[0]) * (y1 - y0)
    for t, label in zip(y_ticks, y_labels):
        draw.line((x0, py(t), x1, py(t)), fill=GRID)
        draw_text(draw, (x0 - GAP, py(t)), label, anchor="rm")
    for t in x_ticks:
        draw.line((px(t), y0, px(t), y1), fill=GRID)
        draw_text(draw, (px(t), y1 + GAP), tick_text(t, x_ticks), anchor="mt")
    draw.rectangle((x0, y0, x1, y1), outline=TEXT)
    draw_text(draw, ((x0 + x1) / 2, height - GAP), x_title, size=LABEL_SIZE, anchor="md")
    turned = Image.new("RGB", (PANEL_H, line_height(LABEL_SIZE)), PAPER)
    draw_text(ImageDraw.Draw(turned), (PANEL_H / 2, 0), y_title, size=LABEL_SIZE, anchor="ma")
    image.paste(turned.rotate(90, expand=True), (0, y0))

    # the data: lines between epochs, a dot on each when there are few
    for colour, sx, sy in series:
        points = [(px(x), py(y)) for x, y in zip(sx, sy)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points if len(points) <= MARKERS_UP_TO else ():
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
    return image, {"plot": (x0, y0, x1, y1), "x_range": x_range,
                   "y_range": (y_ticks[0], y_ticks[-1])}


def read_metrics(path) -> list[dict]:
    """The per-epoch records of a metrics.jsonl (lines with an "epoch"; others, such as the
    {"recipe": ...} line, skipped). When the epoch number stops increasing, a new run started
    in the same file: only the last run's records are kept."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such metrics file; train.py writes it into --out-dir "
                                f"after the first epoch")
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {number}: not JSON ({e.msg}); expected one JSON object "
                             f"per line as train.py writes; delete or fix that line") from None
        if "epoch" not in record:
            continue
        if records and record["epoch"] <= records[-1]["epoch"]:
            records = []
        records.append(record)
    if not records:
        raise ValueError(f"{path}: no line with an 'epoch' key; expected train.py's per-epoch "
                         f"lines (epoch, train_loss, top1_visual, ...)")
    return records


def write_curves(metrics_path, png_path, *, title: str) -> dict:
    """curves.png of a metrics.jsonl: train loss per epoch (left) and validation top-1 of p_V,
    p_N, p_O per epoch (right, the heads the file has), with a legend. Returns the charts'
    boxes (in the PNG's pixels) and ranges: {"loss": {...}, "top1": {...}}."""
    records = read_metrics(metrics_path)
    epochs = [r["epoch"] for r in records]
    loss_chart, loss_boxes = line_chart([(LOSS_COLOUR, epochs, [r["train_loss"] for r in records])],
                                        y_title="train loss")
    heads = [key for key in CURVES if all(r.get(key) is not None for r in records)]
    series = [(CURVES[key][1], epochs, [r[key] for r in records]) for key in heads]
    top1_chart, top1_boxes = line_chart(series, y_title="validation top-1 (%)", y_limits=(0, 100))
    x_top1 = loss_chart.width + 2 * MARGIN
    charts = Image.new("RGB", (x_top1 + top1_chart.width, loss_chart.height), PAPER)
    charts.paste(loss_chart, (0, 0))
    charts.paste(top1_chart, (x_top1, 0))
    items = [(LOSS_COLOUR, "train loss (left)")] + [(CURVES[k][1], CURVES[k][0]) for k in heads]
    last = records[-1]
    summary = f"last epoch {last['epoch']}: train loss {last['train_loss']:.3f}, validation top-1 "
    summary += ", ".join(f"{CURVES[k][0].split(' ')[0]} {last[k]:.2f}%" for k in heads)
    notes = ""
    if min(r["train_loss"] for r in records) < 0:
        notes = ("The train loss is below 0 where LLB's diversity term lambda L_div = "
                 "-lambda H(p~) outweighs the cross-entropy.")
    body = stack([charts, legend(items, charts.width)], gap=GAP)
    image, y_body = titled(body, f"{title}\n{summary}", notes)
    image.save(png_path)
    x = 2 * MARGIN
    y = y_body + MARGIN

    def moved(chart, dx):
        x0, y0, x1, y1 = chart["plot"]
        return {**chart, "plot": (x0 + dx, y0 + y, x1 + dx, y1 + y)}
    return {"loss": moved(loss_boxes, x), "top1": moved(top1_boxes, x + x_top1)}
