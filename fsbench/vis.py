"""Prediction renders: one PNG per episode query - supports with their masks, the query with its
ground truth, the query with the prediction - in one colour per way, labelled with class names and IoU.

Layout (every panel at the query's resolution): a title bar (episode, query id, IoU, and a colour key
naming each way's class), then one row per way: that way's K supports, and in the first row the
query with its ground truth and the query with the prediction.
"""
from __future__ import annotations

import colorsys
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from fsbench.episode import IGNORE_INDEX, Episode, Prediction
from fsbench.transforms import denormalise

# Distinguishable on photos and on each other (Sasha Trubetskoy's list, first ten); more ways get
# golden-ratio hues.
WAY_COLOURS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
               (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]
OVERLAY_OPACITY = 0.5
IGNORE_COLOUR = (255, 255, 255)
IGNORE_OPACITY = 0.6
BACKGROUND = (32, 32, 32)
TEXT_COLOUR = (240, 240, 240)
GAP = 4
PADDING = 4


def way_colour(way_index: int) -> tuple[int, int, int]:
    """RGB colour of way ``way_index`` (0-based)."""
    if way_index < len(WAY_COLOURS):
        return WAY_COLOURS[way_index]
    hue = (way_index * 0.618033988749895) % 1.0
    return tuple(int(255 * channel) for channel in colorsys.hsv_to_rgb(hue, 0.85, 0.95))


def render_file_name(episode_index: int, query_index: int, iou: float) -> str:
    """e.g. episode0007_query0_iou63.2.png."""
    score = f"{iou:.1f}" if math.isfinite(iou) else "nan"
    return f"episode{episode_index:04d}_query{query_index}_iou{score}.png"


def _to_rgb(image: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Normalised [3, h, w] -> uint8 [H, W, 3] at ``size``."""
    image = denormalise(image.float().cpu())
    if tuple(image.shape[-2:]) != size:
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0].clamp(0, 1)
    return (image.permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)


def _labels_at(labels: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """[h, w] integer labels -> [H, W] int64 at ``size`` (nearest, so ignore and way labels survive)."""
    labels = labels.cpu().long()
    if tuple(labels.shape) != size:
        labels = F.interpolate(labels[None, None].float(), size=size, mode="nearest")[0, 0].long()
    return labels.numpy()


def _boundary(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it: an outline keeps thin or small regions visible."""
    padded = np.pad(mask, 1, mode="constant", constant_values=False)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def overlay(rgb: np.ndarray, labels: np.ndarray, colours: dict[int, tuple[int, int, int]]) -> np.ndarray:
    """``rgb`` [H, W, 3] uint8 with label value v tinted colours[v] (outlined); 255 = ignore, whitened."""
    result = rgb.astype(np.float32)
    ignore = labels == IGNORE_INDEX
    result[ignore] = (1 - IGNORE_OPACITY) * result[ignore] + IGNORE_OPACITY * np.array(IGNORE_COLOUR, np.float32)
    for value, colour in colours.items():
        region = labels == value
        tint = np.array(colour, np.float32)
        result[region] = (1 - OVERLAY_OPACITY) * result[region] + OVERLAY_OPACITY * tint
        result[_boundary(region)] = tint
    return result.round().astype(np.uint8)


def _wrap(draw: ImageDraw.ImageDraw, words: list[str], font, width: int) -> list[list[str]]:
    """Greedy line breaking of phrases so each line fits ``width`` pixels."""
    lines: list[list[str]] = [[]]
    for word in words:
        candidate = "   ".join(lines[-1] + [word])
        if lines[-1] and draw.textlength(candidate, font=font) > width:
            lines.append([word])
        else:
            lines[-1].append(word)
    return lines


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    """``text`` cut (with '..') to fit ``width`` pixels: captions never spill into the next panel."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "..", font=font) > width:
        text = text[:-1]
    return text + ".."


def render_query(episode: Episode, labels: torch.Tensor, query: int, class_names: dict[int, str], iou: float) -> Image.Image:
    """The render of one query of ``episode``; ``labels`` [Q, H, W] predicted way labels (0 = none)."""
    font = ImageFont.load_default()
    size = tuple(episode.query_images.shape[-2:])
    height, width = size
    way, shot = episode.way, episode.shot
    class_ids = [int(class_id) for class_id in episode.class_ids.tolist()]
    names = [class_names.get(class_id, str(class_id)) for class_id in class_ids]
    way_colours = {number + 1: way_colour(number) for number in range(way)}

    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_height = int(math.ceil(probe.textbbox((0, 0), "Ag", font=font)[3])) + 2
    columns = shot + 2
    canvas_width = columns * width + (columns + 1) * GAP
    query_id = episode.query_ids[query] if query < len(episode.query_ids) else ""
    heading = f"episode {episode.index}  query {query} {query_id}  IoU {iou:.1f}%"
    key_entries = [f"    way {number + 1}: {name}" for number, name in enumerate(names)]
    key_lines = _wrap(probe, key_entries, font, canvas_width - 2 * PADDING)
    title_height = PADDING * 2 + line_height * (1 + len(key_lines))
    cell_height = line_height + height
    canvas_height = title_height + way * cell_height + (way + 1) * GAP
    canvas = Image.new("RGB", (canvas_width, canvas_height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)

    draw.text((PADDING, PADDING), _fit(draw, heading, font, canvas_width - 2 * PADDING), fill=TEXT_COLOUR, font=font)
    for line_number, entries in enumerate(key_lines):
        x, y = PADDING, PADDING + line_height * (1 + line_number)
        for entry in entries:
            number = key_entries.index(entry)
            swatch = line_height - 4
            draw.rectangle([x, y + 1, x + swatch, y + 1 + swatch], fill=way_colour(number))
            draw.text((x, y), entry, fill=TEXT_COLOUR, font=font)
            x += int(draw.textlength(entry + "   ", font=font))

    def place(row: int, column: int, rgb: np.ndarray, caption: str) -> None:
        left = GAP + column * (width + GAP)
        top = title_height + GAP + row * (cell_height + GAP)
        draw.text((left, top), _fit(draw, caption, font, width), fill=TEXT_COLOUR, font=font)
        canvas.paste(Image.fromarray(rgb), (left, top + line_height))

    for number in range(way):
        for index in range(shot):
            rgb = _to_rgb(episode.support_images[number, index], size)
            mask = _labels_at(episode.support_masks[number, index], size)
            place(number, index, overlay(rgb, mask, {1: way_colour(number)}), f"way {number + 1} support {index + 1}")
    query_rgb = _to_rgb(episode.query_images[query], size)
    truth = _labels_at(episode.query_masks[query], size)
    place(0, shot, overlay(query_rgb, truth, way_colours), "query: ground truth")
    predicted = _labels_at(labels[query], size)
    place(0, shot + 1, overlay(query_rgb, predicted, way_colours), f"prediction: IoU {iou:.1f}")
    return canvas


def save_episode_renders(
    directory: Path, episode: Episode, prediction: Prediction, class_names: dict[int, str], query_ious: list[float]
) -> list[Path]:
    """Write one PNG per query of ``episode`` into ``directory``; returns their paths.

    Args:
        episode: on the CPU, with query masks (the evaluator's copy, not the one the method saw).
        prediction: the method's prediction; fg_probs [Q, N, h, w] at any resolution.
        class_names: dataset class id -> name.
        query_ious: per query IoU in percent (in the image and the file name).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    size = tuple(episode.query_images.shape[-2:])
    labels = prediction.resized(size).labels().cpu()
    paths = []
    for query in range(episode.num_queries):
        iou = float(query_ious[query])
        path = directory / render_file_name(episode.index, query, iou)
        render_query(episode, labels, query, class_names, iou).save(path)
        paths.append(path)
    return paths


class EpisodeRenderer:
    """The evaluator's on_episode hook for --vis: renders episodes with index < limit (all when limit is None)."""

    def __init__(self, directory: Path, class_names: dict[int, str], limit: int | None = None):
        self.directory = Path(directory)
        self.class_names = class_names
        self.limit = limit
        self.paths: list[Path] = []

    def __call__(self, episode: Episode, prediction: Prediction, query_ious: list[float]) -> None:
        # Episode indices, not call counts: "the first N episodes" are the same ones whatever the
        # loader's order or batch size.
        if self.limit is None or episode.index < self.limit:
            self.paths += save_episode_renders(self.directory, episode, prediction, self.class_names, query_ious)
