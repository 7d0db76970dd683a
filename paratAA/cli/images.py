"""Pictures of a run for people to look at: enlarged images, GIF frames and a labelled contact sheet.

Images are saved at the model's resolution elsewhere; the pictures here enlarge small images
(pixel-space models of 16x16) to at least ``VIEW_SIZE`` pixels with nearest-neighbour scaling.
"""

from __future__ import annotations

from typing import Any, Sequence

from PIL import Image, ImageDraw, ImageFont

__all__ = ["VIEW_SIZE", "contact_sheet", "enlarged", "frame_strip", "gif_frame", "middle_frame", "sample_label",
           "save_clip"]

VIEW_SIZE = 96  # smallest side of images in the GIF and the contact sheet
SHEET_GAP = 2
LABEL_HEIGHT = 14  # pixels of the column-label row (the default bitmap font is 11 pixels high)
DONE_SHADE = 0.55  # a converged sample's repeated final image is dimmed to this brightness


def enlarged(image: Image.Image, min_size: int = VIEW_SIZE) -> Image.Image:
    """``image`` scaled up by a whole factor (nearest neighbour) until its smaller side is >= ``min_size``."""
    factor = max(1, -(-min_size // min(image.size)))
    return image if factor == 1 else image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def frame_strip(frames: Sequence[Image.Image]) -> Image.Image:
    """A video's frames side by side, left to right: one picture per iteration of a video sample."""
    strip = Image.new("RGB", (sum(f.width for f in frames) + SHEET_GAP * (len(frames) - 1), frames[0].height), "white")
    x = 0
    for frame in frames:
        strip.paste(frame.convert("RGB"), (x, 0))
        x += frame.width + SHEET_GAP
    return strip


def middle_frame(frames: Sequence[Image.Image]) -> Image.Image:
    """The frame a contact sheet shows of a video: the middle one."""
    return frames[len(frames) // 2]


def save_clip(frames: Sequence[Image.Image], path: Any, frame_ms: int = 125) -> None:
    """Write a video sample as a looping GIF, frames enlarged like ``enlarged``."""
    shown = [enlarged(frame.convert("RGB")) for frame in frames]
    shown[0].save(path, save_all=True, append_images=shown[1:], duration=frame_ms, loop=0)


def sample_label(info: dict[str, Any]) -> str:
    """A contact-sheet row label from a sample's summary fields: its class or prompt, and its seed."""
    what = info.get("class_label", info.get("prompt"))
    text = "" if what is None else (f"class {what}" if "class_label" in info else str(what))
    if len(text) > 24:
        text = text[:23] + "…"
    seed = f"seed {info['seed']}" if "seed" in info else ""
    return ", ".join(part for part in (text, seed) if part)


def _done_cell(image: Image.Image) -> Image.Image:
    """A sample's final image, dimmed and marked "done": the cells after it converged."""
    cell = Image.eval(image, lambda v: int(v * DONE_SHADE))
    draw = ImageDraw.Draw(cell)
    draw.rectangle([0, 0, 30, 12], fill=(0, 0, 0))
    draw.text((2, 1), "done", fill=(255, 255, 255), font=ImageFont.load_default())
    return cell


def contact_sheet(rows: Sequence[Sequence[Image.Image]], min_size: int = VIEW_SIZE,
                  row_labels: Sequence[str] | None = None, column_labels: Sequence[str] | None = None) -> Image.Image:
    """One picture of a grid of images: ``rows[r][c]`` at row r, column c, on white.

    Rows may have different lengths (a sample that converged early has fewer iterations): its
    remaining cells repeat its final image, dimmed and marked "done", so no cell is blank. Images
    are enlarged like ``enlarged`` and separated by a small gap.

    Args:
        rows: per row, its images in column order.
        min_size: the smallest side of a cell.
        row_labels: one label per row, written in a column at the left (e.g. ``sample_label``).
        column_labels: one label per column, written in a row at the top (e.g. iteration numbers).
    """
    cells = [[enlarged(image.convert("RGB"), min_size) for image in row] for row in rows]
    columns = max(len(row) for row in cells)
    cells = [row + [_done_cell(row[-1])] * (columns - len(row)) for row in cells]
    width = max(image.width for row in cells for image in row)
    height = max(image.height for row in cells for image in row)
    font = ImageFont.load_default()
    left = 0 if row_labels is None else max(int(font.getlength(label)) for label in row_labels) + 2 * SHEET_GAP + 2
    top = 0 if column_labels is None else LABEL_HEIGHT
    sheet = Image.new("RGB", (left + columns * (width + SHEET_GAP) - SHEET_GAP,
                              top + len(cells) * (height + SHEET_GAP) - SHEET_GAP), "white")
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(column_labels or []):
        draw.text((left + c * (width + SHEET_GAP) + 2, 1), label, fill=(0, 0, 0), font=font)
    for r, row in enumerate(cells):
        y = top + r * (height + SHEET_GAP)
        if row_labels is not None:
            draw.text((SHEET_GAP, y + height // 2 - 6), row_labels[r], fill=(0, 0, 0), font=font)
        for c, image in enumerate(row):
            sheet.paste(image, (left + c * (width + SHEET_GAP), y))
    return sheet


def gif_frame(image: Image.Image, index: int, count: int) -> Image.Image:
    """``image`` above a progress strip showing frame ``index`` of ``count``.

    Pillow drops a GIF frame equal to the one before it (merging their durations), and a converged
    sample's last step images are often identical; the strip makes consecutive frames differ, so
    the GIF keeps one frame per step image: its length grows with ``index`` and its shade
    alternates (for more frames than the image has columns).
    """
    strip = max(2, image.height // 32)
    frame = Image.new("RGB", (image.width, image.height + strip))
    frame.paste(image.convert("RGB"), (0, 0))
    length = max(1, round(image.width * (index + 1) / count))
    shade = 255 if index % 2 == 0 else 160
    ImageDraw.Draw(frame).rectangle([0, image.height, length - 1, image.height + strip - 1], fill=(shade,) * 3)
    return frame
