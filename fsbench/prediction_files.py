"""What predict writes per query: a palette mask PNG (value = way index), an overlay, presence scores."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from fsbench.vis import overlay, way_colour

MASK_FOLDER, OVERLAY_FOLDER, SCORE_FOLDER = "masks", "overlays", "scores"


def palette(ways: int) -> list[int]:
    """A 768-entry PNG palette: 0 black, n = way n's colour (as in the renders)."""
    entries = [0, 0, 0]
    for way in range(ways):
        entries += list(way_colour(way))
    return entries + [0] * (768 - len(entries))


def output_names(queries: list[Path]) -> dict[Path, str]:
    """A file stem per query; queries sharing a stem (a.jpg, a.png, or two folders) keep them apart."""
    stems: dict[str, int] = {}
    for query in queries:
        stems[query.stem] = stems.get(query.stem, 0) + 1
    names, used = {}, set()
    for query in queries:
        name = query.stem if stems[query.stem] == 1 else f"{query.stem}_{query.suffix.lstrip('.').lower()}"
        base, number = name, 2
        while name in used:
            name, number = f"{base}_{number}", number + 1
        used.add(name)
        names[query] = name
    return names


def write_query_outputs(out_dir: Path, name: str, query_path: Path, rgb: np.ndarray, labels: np.ndarray,
                        presence: dict[str, float], label_names: list[str]) -> None:
    """rgb [H, W, 3] uint8; labels [H, W] int (0 = none, n = way n); presence {label name: score}."""
    ways = len(label_names)
    mask = Image.fromarray(labels.astype(np.uint8), mode="P")
    mask.putpalette(palette(ways))
    mask.save(out_dir / MASK_FOLDER / f"{name}.png")
    colours = {number + 1: way_colour(number) for number in range(ways)}
    Image.fromarray(overlay(rgb, labels, colours)).save(out_dir / OVERLAY_FOLDER / f"{name}.png")
    pixels = {label_names[number]: int((labels == number + 1).sum()) for number in range(ways)}
    record = {"image": str(query_path), "presence": presence, "foreground_pixels": pixels}
    (out_dir / SCORE_FOLDER / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
