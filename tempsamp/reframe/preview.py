"""A contact sheet (PNG) of the chosen crop over a video, so a person can see what the re-framing does:
up to `tiles` predicted frames, the crop drawn as a box, the outside dimmed."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def contact_sheet(video: str | Path, preds: list[dict], ratio: tuple[int, int], out: str | Path, tiles: int = 12,
                  tile_width: int = 320) -> Path:
    import decord
    from PIL import Image, ImageDraw

    if not preds:
        raise ValueError(f"{video}: no predicted boxes to preview")
    pick = [preds[int(i)] for i in np.linspace(0, len(preds) - 1, min(tiles, len(preds))).round()]
    vr = decord.VideoReader(str(video), num_threads=1)
    frames = vr.get_batch([p["frame"] for p in pick]).asnumpy()
    h0, w0 = frames.shape[1:3]
    scale = tile_width / w0
    th = int(round(h0 * scale))
    cols = min(4, len(pick))
    rows = (len(pick) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * tile_width, rows * (th + 16)), (20, 20, 20))
    for k, (p, fr) in enumerate(zip(pick, frames)):
        x, y, w = p["bboxes"]
        h = (w * ratio[1]) // ratio[0]
        img = (fr.astype(np.float32) * 0.35).astype(np.uint8)
        img[y:y + h, x:x + w] = fr[y:y + h, x:x + w]  # inside the crop at full brightness
        tile = Image.fromarray(img).resize((tile_width, th))
        d = ImageDraw.Draw(tile)
        d.rectangle([x * scale, y * scale, (x + w) * scale - 1, (y + h) * scale - 1], outline=(255, 200, 0), width=2)
        cx, cy = (k % cols) * tile_width, (k // cols) * (th + 16)
        sheet.paste(tile, (cx, cy))
        ImageDraw.Draw(sheet).text((cx + 4, cy + th + 2), f"frame {p['frame']}", fill=(230, 230, 230))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
