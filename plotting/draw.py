"""What every picture is drawn with: Pillow's built-in font, text (drawn, measured, wrapped,
shortened), images stacked with a margin, a title over a figure, a legend of colour swatches, and
round tick values for an axis.

Pillow comes with torchvision: no plotting library. curves.py draws a run's curves.png with these,
figures.py analyze.py's figures.
"""
import math
from functools import lru_cache

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


@lru_cache(maxsize=None)
def font(size: int) -> ImageFont.FreeTypeFont:
    """Pillow's built-in font (Aileron) at `size` px."""
    return ImageFont.load_default(size=size)


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
    cells = [swatch + 4 + text_width(t, size) + 3 * GAP for _, t in items]
    rows = [[]]
    x = 0
    for item, w in zip(items, cells):
        if x + w > width and rows[-1]:
            rows.append([])
            x = 0
        rows[-1].append((item, x))
        x += w
    step = line_height(size) + 2
    image = Image.new("RGB", (width, step * len(rows)), PAPER)
    draw = ImageDraw.Draw(image)
    for r, row in enumerate(rows):
        for (rgb, t), x in row:
            y = r * step
            box = (x, y + 2, x + swatch - 1, y + 1 + swatch)
            draw.rectangle(box, fill=tuple(rgb), outline=TEXT)
            draw_text(draw, (x + swatch + 4, y), t, size=size)
    return image


def nice_ticks(lo: float, hi: float, *, count: int = 5, integer: bool = False) -> list[float]:
    """Round tick values (1, 2 or 5 x 10^k apart) covering [lo, hi], about `count` intervals."""
    if hi <= lo:  # one value: a unit around it
        pad = abs(lo) * 0.05 if lo else 1.0
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
    step = ticks[1] - ticks[0] if len(ticks) > 1 else 1
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{value:.{decimals}f}"
