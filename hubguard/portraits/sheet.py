"""A side-by-side sheet of dog pictures with captions; the first item is the query and is highlighted."""

from __future__ import annotations

from typing import TYPE_CHECKING

from hubguard.errors import FingerprintError

if TYPE_CHECKING:
    from PIL import Image

TILE = 320
PAD = 16
FONT_SIZE = 17
LINE_GAP = 5
QUERY_COLOUR = (230, 150, 20)
BACKGROUND = (248, 247, 244)
TEXT = (34, 34, 40)
MUTED = (110, 110, 120)
MAX_ITEMS = 400


def _fit(draw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def make_sheet(*, items: "list[tuple[Image.Image, str]]", columns: int | None = None) -> "Image.Image":
    """Lay out (picture, caption) pairs in a grid; captions may hold several lines (name, score, verdict).

    The first item is framed and labelled as the query. Pictures are scaled to a common tile size.
    """
    from PIL import Image, ImageDraw, ImageFont

    if not isinstance(items, list | tuple) or not items:
        raise FingerprintError("make_sheet needs a non-empty list of (picture, caption) pairs.")
    if len(items) > MAX_ITEMS:
        raise FingerprintError(f"make_sheet got {len(items)} items; at most {MAX_ITEMS} fit on one sheet. Split them.")
    for i, item in enumerate(items):
        if not (
            isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], Image.Image) and isinstance(item[1], str)
        ):
            raise FingerprintError(
                f"make_sheet item {i} is not a (PIL.Image.Image, str) pair; pass (picture, caption) tuples."
            )
    if columns is None:
        columns = min(len(items), 4)
    if not isinstance(columns, int) or isinstance(columns, bool) or columns < 1:
        raise FingerprintError(f"make_sheet columns must be a positive integer or None; got {columns!r}.")
    columns = min(columns, len(items))
    rows = -(-len(items) // columns)

    font = ImageFont.load_default(size=FONT_SIZE)
    bold = ImageFont.load_default(size=FONT_SIZE + 2)
    line_h = FONT_SIZE + LINE_GAP
    max_lines = max(len(caption.splitlines() or [""]) for _, caption in items)
    caption_h = PAD // 2 + max_lines * line_h + (FONT_SIZE + 2 - FONT_SIZE)
    cell_w, cell_h = TILE + 2 * PAD, TILE + 2 * PAD + caption_h
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    for index, (picture, caption) in enumerate(items):
        x0, y0 = (index % columns) * cell_w, (index // columns) * cell_h
        tile = picture.convert("RGB").resize((TILE, TILE), Image.Resampling.LANCZOS)
        if index == 0:
            draw.rounded_rectangle(
                (x0 + 4, y0 + 4, x0 + cell_w - 5, y0 + cell_h - 5), radius=12, fill=(255, 243, 219),
                outline=QUERY_COLOUR, width=4,
            )  # fmt: skip
        sheet.paste(tile, (x0 + PAD, y0 + PAD))
        if index == 0:
            label = "QUERY"
            lw = int(draw.textlength(label, font=bold)) + 16
            draw.rounded_rectangle((x0 + PAD + 8, y0 + PAD + 8, x0 + PAD + 8 + lw, y0 + PAD + 12 + line_h), radius=8,
                                   fill=QUERY_COLOUR)  # fmt: skip
            draw.text((x0 + PAD + 16, y0 + PAD + 10), label, font=bold, fill=(255, 255, 255))
        ty = y0 + PAD + TILE + PAD // 2
        for n, line in enumerate(caption.splitlines() or [""]):
            draw.text(
                (x0 + PAD, ty), _fit(draw, line, bold if n == 0 else font, TILE), font=bold if n == 0 else font,
                fill=TEXT if n == 0 else MUTED,
            )  # fmt: skip
            ty += line_h
    return sheet
