"""Drawing the labelled grid: cells in rows and columns, column labels above, row labels to the left,
and several grids (the Z axis) side by side under their titles. Pillow only."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)
GAP = 16  # between the grids of a Z axis


@dataclass(frozen=True)
class Layout:
    cell: tuple[int, int]
    left: int  # width of the row-label column
    top: int  # height of the column-label row

    def cell_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        w, h = self.cell
        x, y = self.left + column * w, self.top + row * h
        return x, y, x + w, y + h


def _font(cell_width: int) -> ImageFont.ImageFont:
    size = max(10, min(48, cell_width // 7))
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType sizing
        return ImageFont.load_default()


def _lines(text: str, font: ImageFont.ImageFont, width: int) -> list[str]:
    average = max(1, int(font.getlength("abcdefghij") / 10))
    return textwrap.wrap(text, max(1, width // average)) or [""]


def _line_height(font: ImageFont.ImageFont) -> int:
    box = font.getbbox("Ag")
    return box[3] - box[1] + 4


def draw_grid(cells: list[list[Image.Image]], column_labels: list[str], row_labels: list[str],
              ) -> tuple[Image.Image, Layout]:
    """``cells[row][column]``, all one size. Empty label lists leave out their margin."""
    w, h = cells[0][0].size
    font = _font(w)
    line = _line_height(font)
    top = max((len(_lines(t, font, w - 4)) for t in column_labels), default=0) * line + (8 if column_labels else 0)
    left = (max((font.getlength(t) for t in row_labels), default=0) + 16) if row_labels else 0
    left = int(min(left, max(3 * w, 160)))
    layout = Layout((w, h), left, top)
    grid = Image.new("RGB", (left + w * len(cells[0]), top + h * len(cells)), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for row, images in enumerate(cells):
        for column, image in enumerate(images):
            grid.paste(image.convert("RGB"), layout.cell_box(row, column)[:2])
    for column, text in enumerate(column_labels):
        x0 = left + column * w
        for number, part in enumerate(_lines(text, font, w - 4)):
            draw.text((x0 + w / 2, 4 + number * line), part, fill=INK, font=font, anchor="ma")
    for row, text in enumerate(row_labels):
        lines = _lines(text, font, left - 8)
        y0 = top + row * h + h / 2 - len(lines) * line / 2
        for number, part in enumerate(lines):
            draw.text((left - 8, y0 + number * line), part, fill=INK, font=font, anchor="ra")
    return grid, layout


def join_grids(grids: list[Image.Image], titles: list[str]) -> tuple[Image.Image, list[tuple[int, int]]]:
    """Grids side by side under their titles; returns the picture and each grid's top-left corner."""
    if len(grids) == 1 and not titles:
        return grids[0], [(0, 0)]
    font = _font(max(g.width for g in grids) // 4)
    title_height = _line_height(font) + 8
    width = sum(g.width for g in grids) + GAP * (len(grids) - 1)
    height = title_height + max(g.height for g in grids)
    out = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(out)
    corners, x = [], 0
    for grid, title in zip(grids, titles, strict=True):
        out.paste(grid, (x, title_height))
        draw.text((x + grid.width / 2, 4), title, fill=INK, font=font, anchor="ma")
        corners.append((x, title_height))
        x += grid.width + GAP
    return out, corners
