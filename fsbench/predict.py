"""Segment your own images from a few annotated examples: supports + queries -> Episode -> predict -> files.

Every label found in the support annotations (or the ones asked for) is a way, in order of first
appearance; every support image is a shot of every way (its pixels of other labels, and unlabelled
ones, are that way's background). Queries are batched into episodes of up to ``batch_size`` queries
that share the supports; preprocessing and the way back to each query's own size follow the profile
(fsbench.preprocessing). A query file that cannot be read is reported in one line and skipped.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from fsbench.annotation_files import SupportLabels, read_support_labels
from fsbench.engine.padding import pad_episode
from fsbench.episode import IGNORE_INDEX, Episode, Prediction
from fsbench.errors import FsbenchError
from fsbench.prediction_files import MASK_FOLDER, OVERLAY_FOLDER, SCORE_FOLDER, output_names, write_query_outputs
from fsbench.preprocessing import Placement, Preprocessing

# Inputs are padded (bottom/right) to a multiple of this and the answer cropped back: smp's
# encoder-decoders halve the input 5 times (400 px -> 416); harmless for the other methods.
INPUT_MULTIPLE = 32
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
# Exit status of a predict run that finished but skipped unreadable query files.
SKIPPED_EXIT_STATUS = 3
SUMMARY_FILE = "predict.json"


def read_user_image(path: Path) -> Tensor:
    """[3, H, W] uint8 RGB, turned upright by its EXIF orientation (as LabelMe and cv2.imread show it)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            upright = ImageOps.exif_transpose(image)
            array = np.asarray(upright.convert("RGB"))
    except FileNotFoundError:
        raise FsbenchError(f"image file is missing: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise FsbenchError(f"cannot decode image {path}: corrupt or not an image ({error})") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()


@dataclass
class Support:
    image_path: Path
    image: Tensor  # [3, H, W] uint8
    labels: SupportLabels


def load_supports(image_paths: list[Path], annotation_paths: list[Path], labelme_shapes: str = "as_drawn") -> list[Support]:
    if not image_paths:
        raise FsbenchError("predict needs at least one support image (--support-image) with its annotation")
    if len(image_paths) != len(annotation_paths):
        raise FsbenchError(f"{len(image_paths)} support images but {len(annotation_paths)} annotations; give one annotation per image, in the same order")
    supports = []
    for image_path, annotation_path in zip(image_paths, annotation_paths):
        image = read_user_image(Path(image_path))
        labels = read_support_labels(Path(annotation_path), Path(image_path), tuple(image.shape[-2:]), labelme_shapes)
        supports.append(Support(Path(image_path), image, labels))
    return supports


def choose_labels(supports: list[Support], wanted: list[str] | None) -> list[str]:
    """The ways: ``wanted`` in its order, else every label with pixels, in order of first appearance."""
    found: list[str] = []
    for support in supports:
        found += [name for name, mask in support.labels.masks.items() if mask.any() and name not in found]
    if not wanted:
        return found
    missing = [name for name in wanted if name not in found]
    if missing:
        raise FsbenchError(f"label {missing[0]!r} has no pixels in the support annotations; they hold: {', '.join(found)}")
    if len(set(wanted)) != len(wanted):
        raise FsbenchError("--labels names a label twice")
    return list(wanted)


def support_tensors(supports: list[Support], labels: list[str], profile: Preprocessing, size: int) -> tuple[Tensor, Tensor]:
    """(support_images [N, K, 3, S, S], support_masks [N, K, S, S]): every support is a shot of every way."""
    images = torch.stack([profile.image(support.image, size)[0] for support in supports])
    masks = []
    for label in labels:
        way_masks = []
        for support in supports:
            mask = torch.zeros(support.image.shape[-2:], dtype=torch.int64)
            if label in support.labels.masks:
                mask[torch.from_numpy(support.labels.masks[label])] = 1
            if support.labels.ignore is not None:
                mask[torch.from_numpy(support.labels.ignore)] = IGNORE_INDEX
            way_masks.append(profile.mask(mask, size))
        masks.append(torch.stack(way_masks))
    return images.unsqueeze(0).expand(len(labels), -1, -1, -1, -1).contiguous(), torch.stack(masks)


def find_queries(inputs: list[Path]) -> list[Path]:
    """Query image files: the files given, and the image files of the folders given (sorted)."""
    queries: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            queries += sorted(path for path in item.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
        elif item.exists():
            queries.append(item)
        else:
            raise FsbenchError(f"query file or folder not found: {item}")
    if not queries:
        raise FsbenchError(f"no query images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, inputs))}")
    return queries


def padded_size(size: int) -> int:
    """The side a package is traced at for ``size`` (smp's U-Nets take multiples of 32)."""
    return -(-size // INPUT_MULTIPLE) * INPUT_MULTIPLE


def predict_padded(predict: Callable[[Episode], Prediction], episode: Episode, valid_size: Callable[[int, int], tuple[int, int]]) -> Prediction:
    """``predict`` on the episode padded to ``valid_size`` by the engine's rule, cropped back."""
    height, width = episode.query_images.shape[-2:]
    valid = tuple(valid_size(height, width))
    if valid == (height, width):
        return predict(episode)
    return predict(pad_episode(episode, valid)).cropped(height, width)


@dataclass
class PredictSettings:
    out_dir: Path
    img_size: int
    batch_size: int = 4
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    progress: bool = True


@dataclass
class PredictReport:
    written: int = 0
    skipped: list[dict] = field(default_factory=list)
    predict_s: float = 0.0
    elapsed_s: float = 0.0


def predict_folder(predict: Callable[[Episode], Prediction], supports: list[Support], labels: list[str], queries: list[Path],
                   profile: Preprocessing, settings: PredictSettings, record: dict,
                   valid_size: Callable[[int, int], tuple[int, int]] | None = None) -> PredictReport:
    """Write masks/, overlays/, scores/ and predict.json under settings.out_dir; returns counts."""
    started = time.perf_counter()
    out_dir = settings.out_dir
    for folder in (MASK_FOLDER, OVERLAY_FOLDER, SCORE_FOLDER):
        (out_dir / folder).mkdir(parents=True, exist_ok=True)
    support_images, support_masks = support_tensors(supports, labels, profile, settings.img_size)
    support_images, support_masks = support_images.to(settings.device), support_masks.to(settings.device)
    names = output_names(queries)
    report = PredictReport()
    bar = tqdm(total=len(queries), desc="predict", unit="image", disable=not settings.progress)
    for start in range(0, len(queries), settings.batch_size):
        batch: list[tuple[Path, Tensor, Tensor, Placement]] = []
        for path in queries[start : start + settings.batch_size]:
            try:
                image = read_user_image(path)
            except FsbenchError as error:
                report.skipped.append({"file": str(path), "reason": str(error)})
                tqdm.write(f"fsbench: skipped {path}: {error}")
                bar.update(1)
                continue
            model_input, placement = profile.image(image, settings.img_size)
            batch.append((path, image, model_input, placement))
        if not batch:
            continue
        episode = Episode(
            support_images=support_images,
            support_masks=support_masks,
            query_images=torch.stack([item[2] for item in batch]).to(settings.device),
            query_masks=torch.full((len(batch), settings.img_size, settings.img_size), IGNORE_INDEX, dtype=torch.int64, device=settings.device),
            class_ids=torch.arange(1, len(labels) + 1, device=settings.device),
            query_presence=torch.zeros(len(batch), len(labels), dtype=torch.bool, device=settings.device),
            index=0,
            query_ids=[str(item[0]) for item in batch],
        )
        predicted_at = time.perf_counter()
        prediction = predict_padded(predict, episode, valid_size or (lambda height, width: (padded_size(height), padded_size(width))))
        report.predict_s += time.perf_counter() - predicted_at
        for number, (path, image, _, placement) in enumerate(batch):
            probabilities = profile.to_original(prediction.fg_probs[number : number + 1].float().cpu(), placement)[0]
            best, way = probabilities.max(dim=0)
            mask = torch.where(best >= 0.5, way + 1, torch.zeros_like(way)).numpy()
            presence = {label: round(float(prediction.presence[number, index]), 6) for index, label in enumerate(labels)}
            rgb = image.permute(1, 2, 0).numpy()
            write_query_outputs(out_dir, names[path], path, rgb, mask, presence, labels)
            report.written += 1
            bar.update(1)
    bar.close()
    report.elapsed_s = time.perf_counter() - started
    summary = {
        **record,
        "labels": [{"way": number + 1, "name": label} for number, label in enumerate(labels)],
        "supports": [str(support.image_path) for support in supports],
        "img_size": settings.img_size,
        "preprocessing": profile.name,
        "queries": len(queries),
        "written": report.written,
        "skipped": report.skipped,
        "predict_s": round(report.predict_s, 3),
        "elapsed_s": round(report.elapsed_s, 3),
        "queries_per_s": round(report.written / report.elapsed_s, 3) if report.elapsed_s else None,
    }
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return report
