"""A run's curves.png: train loss, and validation top-1 of p_V, p_N and p_O, per epoch.

    write_curves(run_dir / "metrics.jsonl", run_dir / "curves.png", title="...")
"""
import json
import math
from pathlib import Path

from PIL import Image

from plotting.draw import (GAP, MARGIN, PAPER, SMALL_SIZE, axes, legend, line_height, nice_ticks,
                           stack, text_width, tick_text, titled)

# metrics.jsonl keys drawn by write_curves, their legend and their colour (Okabe-Ito)
CURVES = {"top1_visual": ("p_V (ViT head)", (0, 114, 178)),
          "top1_nonvisual": ("p_N (LLB head)", (213, 94, 0)),
          "top1_integrated": ("p_O (integrated)", (0, 158, 115))}
LOSS_COLOUR = (117, 112, 179)  # purple: not the black of the frame and text
PANEL_W = 420  # a chart's plot area
PANEL_H = 260
MARKERS_UP_TO = 40  # a dot on each epoch up to this many epochs


def line_chart(series: list, *, y_title: str,
               y_limits: tuple = (-math.inf, math.inf)) -> tuple[Image.Image, dict]:
    """One chart of series [(colour, epochs, values)]: lines (and dots when few points) on axes
    with round ticks, y ticks clipped to y_limits. Boxes: plot; ranges: x_range, y_range (the
    values at the plot's edges)."""
    xs = [x for _, px, _ in series for x in px]
    ys = [y for _, _, py in series for y in py]
    x_range = (0, max(max(xs), 2))  # epoch 0: before training; one epoch sits mid-way
    x_ticks = [t for t in nice_ticks(*x_range, integer=True) if t <= x_range[1]]
    y_ticks = [t for t in nice_ticks(min(ys), max(ys)) if y_limits[0] <= t <= y_limits[1]]
    right = text_width(tick_text(x_ticks[-1], x_ticks), SMALL_SIZE) // 2 + GAP
    image, draw, plot, to_pixel = axes(x_ticks=x_ticks, y_ticks=y_ticks, x_range=x_range,
                                       x_title="epoch", y_title=y_title,
                                       plot_size=(PANEL_W, PANEL_H),
                                       top=line_height(SMALL_SIZE) // 2, right=right)
    for colour, sx, sy in series:
        points = [to_pixel(x, y) for x, y in zip(sx, sy)]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points if len(points) <= MARKERS_UP_TO else ():
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
    return image, {"plot": plot, "x_range": x_range, "y_range": (y_ticks[0], y_ticks[-1])}


def read_metrics(path: Path) -> list[dict]:
    """The per-epoch records of a metrics.jsonl (lines with an "epoch"; others, such as the
    {"recipe": ...} line, skipped). When the epoch number stops increasing, a new run started
    in the same file: only the last run's records are kept."""
    records = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
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
    return records


def write_curves(metrics_path, png_path, *, title: str) -> None:
    """curves.png of a metrics.jsonl: train loss per epoch (left) and validation top-1 of p_V,
    p_N, p_O per epoch (right, the heads the file has), with a legend."""
    records = read_metrics(metrics_path)
    epochs = [r["epoch"] for r in records]
    loss_chart, _ = line_chart([(LOSS_COLOUR, epochs, [r["train_loss"] for r in records])],
                               y_title="train loss")
    heads = [key for key in CURVES if all(r.get(key) is not None for r in records)]
    series = [(CURVES[key][1], epochs, [r[key] for r in records]) for key in heads]
    top1_chart, _ = line_chart(series, y_title="validation top-1 (%)", y_limits=(0, 100))
    x_top1 = loss_chart.width + 2 * MARGIN
    charts = Image.new("RGB", (x_top1 + top1_chart.width, loss_chart.height), PAPER)
    charts.paste(loss_chart, (0, 0))
    charts.paste(top1_chart, (x_top1, 0))
    items = [(LOSS_COLOUR, "train loss (left)")] + [(CURVES[k][1], CURVES[k][0]) for k in heads]
    last = records[-1]
    summary = f"last epoch {last['epoch']}: train loss {last['train_loss']:.3f}, validation top-1 "
    summary += ", ".join(f"{CURVES[k][0].split(' ')[0]} {last[k]:.2f}%" for k in heads)
    negative = min(r["train_loss"] for r in records) < 0
    notes = ("The train loss is below 0 where LLB's diversity term lambda L_div = -lambda H(p~) "
             "outweighs the cross-entropy." if negative else "")
    body = stack([charts, legend(items, charts.width)], gap=GAP)
    image, _ = titled(body, f"{title}\n{summary}", notes)
    image.save(png_path)
