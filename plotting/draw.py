"""What every picture is drawn with: Pillow (which torchvision brings) and its built-in font;
text drawn, measured, wrapped and shortened; images stacked; a titled figure; a legend; a
chart's axes. curves.py draws a run's curves.png with these, figures.py analyze.py's figures.
"""
import math
from functools import cache

from PIL import Image, ImageDraw, ImageFont

TEXT = (0, 0, 0)  # text, frames, separators
PAPER = (255, 255, 255)
GRID = (225, 225, 225)  # a chart's grid lines
TITLE_SIZE = 15  # font sizes, px
LABEL_SIZE = 12
SMALL_SIZE = 11
MARGIN = 12  # white around a figure
GAP = 6  # between a label and what it labels
TITLE_PX = 480  # a title wraps at its figure's width, at least this
font = cache(ImageFont.load_default)  # font(size): Pillow's built-in font (Aileron) at size px


def draw_text(draw: ImageDraw.ImageDraw, xy: tuple, s: str, *, size: int = SMALL_SIZE,
              anchor: str = "la") -> None:
    """Text `s` in the text colour at xy (Pillow's anchors: "rm" = right end, vertical middle)."""
    draw.text(xy, s, font=font(size), fill=TEXT, anchor=anchor)


def line_height(size: int) -> int:
    ascent, descent = font(size).getmetrics()
    return ascent + descent


def text_width(s: str, size: int) -> int:
    return math.ceil(font(size).getlength(s))


def shorten(s: str, width: int, size: int) -> str:
    """`s`, cut to `width` px with '...' when it is longer."""
    if text_width(s, size) <= width:
        return s
    while s and text_width(s + "...", size) > width:
        s = s[:-1]
    return s + "..."


def wrap(s: str, width: int, size: int) -> list[str]:
    """Greedy word wrap of `s` into lines of at most `width` px (a too long word is cut)."""
    lines = []
    for paragraph in s.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and text_width(candidate, size) > width:
                lines.append(shorten(line, width, size))
                candidate = word
            line = candidate
        lines.append(shorten(line, width, size))
    return lines


def text_block(s: str, width: int, *, size: int) -> Image.Image:
    """`s` wrapped to `width` px on white, one line per `line_height`."""
    lines = wrap(s, width, size)
    step = line_height(size)
    image = Image.new("RGB", (width, step * len(lines)), PAPER)
    draw = ImageDraw.Draw(image)
    for i, line in enumerate(lines):
        draw_text(draw, (0, i * step), line, size=size)
    return image


def stack(parts: list, *, gap: int = GAP) -> Image.Image:
    """Images one below the other, left-aligned, `MARGIN` px of white around."""
    width = max(p.width for p in parts) + 2 * MARGIN
    height = sum(p.height for p in parts) + gap * (len(parts) - 1) + 2 * MARGIN
    image = Image.new("RGB", (width, height), PAPER)
    y = MARGIN
    for p in parts:
        image.paste(p, (MARGIN, y))
        y += p.height + gap
    return image


def titled(body: Image.Image, title: str, notes: str = "") -> tuple[Image.Image, int]:
    """`body` under its wrapped `title` (and over `notes`); returns the figure and body's top."""
    width = max(body.width, TITLE_PX)
    head = text_block(title, width, size=TITLE_SIZE)
    parts = [head, body] + ([text_block(notes, width, size=SMALL_SIZE)] if notes else [])
    return stack(parts, gap=2 * GAP), MARGIN + head.height + 2 * GAP


def legend(items: list, width: int, *, size: int = LABEL_SIZE) -> Image.Image:
    """Colour swatches with their text, (rgb, text) pairs flowing left to right in rows."""
    swatch = line_height(size) - 4
    step = line_height(size) + 2
    placed = []  # (rgb, text, x, y)
    x = 0
    y = 0
    for rgb, t in items:
        w = swatch + 4 + text_width(t, size) + 3 * GAP
        if x + w > width and x > 0:
            x = 0
            y += step
        placed.append((rgb, t, x, y))
        x += w
    image = Image.new("RGB", (width, y + step), PAPER)
    draw = ImageDraw.Draw(image)
    for rgb, t, x, y in placed:
        draw.rectangle((x, y + 2, x + swatch - 1, y + 1 + swatch), fill=tuple(rgb), outline=TEXT)
        draw_text(draw, (x + swatch + 4, y), t, size=size)
    return image


def nice_ticks(lo: float, hi: float, *, count: int = 5, integer: bool = False) -> list[float]:
    """Round tick values (1, 2 or 5 x 10^k apart) covering [lo, hi], about `count` intervals."""
    if hi - lo <= 1e-9 * max(1.0, abs(lo), abs(hi)):  # one value (up to rounding): around it
        pad = abs(lo) * 0.05 if abs(lo) > 1e-9 else 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))
    if integer:
        step = max(1, round(step))
    first = math.floor(lo / step + 1e-9)
    last = math.ceil(hi / step - 1e-9)
    return [round(i * step, 12) for i in range(first, last + 1)]


def tick_text(value: float, ticks: list) -> str:
    """A tick value with as many decimals as the ticks' step needs."""
    step = ticks[1] - ticks[0]
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{value:.{decimals}f}"


def axes(*, x_ticks: list, y_ticks: list, x_range: tuple, x_title: str, y_title: str,
         plot_size: tuple, top: int, right: int) -> tuple:
    """A chart without its data: a framed plot area of plot_size (w, h) px, `top` px below the
    image's top and `right` px left of its right edge, spanning x_range and the first to last y
    tick, with grid lines and values at the ticks, x_title under it and y_title turned left of
    it. Returns the image, its ImageDraw, the plot box (x0, y0, x1, y1) and to_pixel(x, y)."""
    y_labels = [tick_text(t, y_ticks) for t in y_ticks]
    left = max(text_width(t, SMALL_SIZE) for t in y_labels) + GAP + line_height(LABEL_SIZE) + GAP
    w, h = plot_size
    x0, y0, x1, y1 = left, top, left + w, top + h
    height = y1 + GAP + 2 * line_height(SMALL_SIZE) + GAP
    image = Image.new("RGB", (x1 + right, height), PAPER)
    draw = ImageDraw.Draw(image)

    def to_pixel(x, y):
        u = (x - x_range[0]) / (x_range[1] - x_range[0])
        v = (y - y_ticks[0]) / (y_ticks[-1] - y_ticks[0])
        return x0 + u * w, y1 - v * h

    for t, label in zip(y_ticks, y_labels):
        _, y = to_pixel(x_range[0], t)
        draw.line((x0, y, x1, y), fill=GRID)
        draw_text(draw, (x0 - GAP, y), label, anchor="rm")
    for t in x_ticks:
        x, _ = to_pixel(t, y_ticks[0])
        draw.line((x, y0, x, y1), fill=GRID)
        draw_text(draw, (x, y1 + GAP), tick_text(t, x_ticks), anchor="mt")
    draw.rectangle((x0, y0, x1, y1), outline=TEXT)
    draw_text(draw, ((x0 + x1) / 2, height - GAP), x_title, size=LABEL_SIZE, anchor="md")
    turned = Image.new("RGB", (h, line_height(LABEL_SIZE)), PAPER)
    draw_text(ImageDraw.Draw(turned), (h / 2, 0), shorten(y_title, h, LABEL_SIZE),
              size=LABEL_SIZE, anchor="ma")
    image.paste(turned.rotate(90, expand=True), (0, y0))
    return image, draw, (x0, y0, x1, y1), to_pixel
