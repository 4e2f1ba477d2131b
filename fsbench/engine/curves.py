"""Training curves: train_log.csv (one row per logged update) and a PNG plot of it.

The CSV is appended as training runs, so a killed run keeps its curve; on resume the rows after the
checkpoint being resumed are dropped (they will be logged again, identically). The plot is drawn with
Pillow (already a dependency): loss (raw and smoothed), learning rate, and validation mIoU / ER.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

LOG_NAME = "train_log.csv"
PLOT_NAME = "train_curves.png"
COLUMNS = ["step", "stage", "stage_step", "loss", "lr", "val_miou", "val_er"]


class TrainLog:
    """Appends rows to <run>/train_log.csv. Columns: COLUMNS plus any other scalar a loss reports."""

    def __init__(self, run_dir: Path, resume_from_step: int | None = None):
        self.path = Path(run_dir) / LOG_NAME
        self.rows: list[dict] = []
        if resume_from_step is not None and self.path.is_file():
            with open(self.path, newline="") as handle:
                self.rows = [row for row in csv.DictReader(handle) if int(row["step"]) <= resume_from_step]
        self.columns = list(COLUMNS)
        for row in self.rows:
            self.columns.extend(key for key in row if key not in self.columns)
        self._rewrite()

    def _rewrite(self) -> None:
        temporary = self.path.with_name(self.path.name + ".partial")
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns, restval="")
            writer.writeheader()
            writer.writerows(self.rows)
        temporary.replace(self.path)

    def append(self, row: dict) -> None:
        self.rows.append(row)
        if any(key not in self.columns for key in row):
            self.columns.extend(key for key in row if key not in self.columns)
            self._rewrite()
            return
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=self.columns, restval="").writerow(row)

    def plot(self) -> Path | None:
        """Write <run>/train_curves.png from the rows; None when there is nothing to plot."""
        if not self.rows:
            return None
        path = self.path.with_name(PLOT_NAME)
        plot_curves(self.rows, path)
        return path


def _series(rows: list[dict], key: str) -> list[tuple[float, float]]:
    points = []
    for row in rows:
        value = row.get(key, "")
        if value not in ("", None):
            number = float(value)
            if math.isfinite(number):
                points.append((float(row["step"]), number))
    return points


def _smoothed(points: list[tuple[float, float]], window: int) -> list[tuple[float, float]]:
    smoothed, total = [], 0.0
    for index, (step, value) in enumerate(points):
        total += value
        if index >= window:
            total -= points[index - window][1]
        smoothed.append((step, total / min(index + 1, window)))
    return smoothed


def _stage_starts(rows: list[dict]) -> list[tuple[float, str]]:
    """(first step, stage name) of every stage after the first: where a multi-stage run switches."""
    starts, previous = [], rows[0].get("stage") if rows else None
    for row in rows[1:]:
        if row.get("stage") != previous:
            starts.append((float(row["step"]), str(row.get("stage"))))
            previous = row.get("stage")
    return starts


def plot_curves(rows: list[dict], path: Path, width: int = 900, panel_height: int = 220) -> None:
    """Three stacked panels: loss, learning rate, validation scores (each only when it has points)."""
    from PIL import Image, ImageDraw

    loss = _series(rows, "loss")
    panels = [
        ("loss", [(loss, (170, 190, 230)), (_smoothed(loss, max(1, len(loss) // 50)), (30, 70, 170))]),
        ("learning rate", [(_series(rows, "lr"), (200, 110, 30))]),
        ("validation mIoU (green) / ER (purple), %", [(_series(rows, "val_miou"), (30, 150, 60)), (_series(rows, "val_er"), (140, 60, 160))]),
    ]
    panels = [(title, lines) for title, lines in panels if any(points for points, _ in lines)]
    image = Image.new("RGB", (width, panel_height * len(panels)), "white")
    draw = ImageDraw.Draw(image)
    left, right, top, bottom = 70, 20, 24, 28
    steps = [step for _, lines in panels for points, _ in lines for step, _ in points]
    low_step, high_step = min(steps), max(steps)
    for number, (title, lines) in enumerate(panels):
        origin = number * panel_height
        values = [value for points, _ in lines for _, value in points]
        low, high = min(values), max(values)
        if high == low:  # a flat series (e.g. a constant learning rate) sits mid-panel
            pad = abs(low) * 0.1 or 1.0
            low, high = low - pad, high + pad
        box = (left, origin + top, width - right, origin + panel_height - bottom)
        draw.rectangle(box, outline=(120, 120, 120))
        draw.text((left, origin + 6), title, fill="black")
        draw.text((4, box[1]), f"{high:.3g}", fill="black")
        draw.text((4, box[3] - 10), f"{low:.3g}", fill="black")
        draw.text((left, box[3] + 6), f"step {low_step:.0f}", fill="black")
        draw.text((box[2] - 90, box[3] + 6), f"step {high_step:.0f}", fill="black")

        def place(step: float, value: float) -> tuple[float, float]:
            span = (high_step - low_step) or 1.0
            x = box[0] + (box[2] - box[0]) * (step - low_step) / span
            y = box[3] - (box[3] - box[1]) * (value - low) / (high - low)
            return x, y

        for step, name in _stage_starts(rows):
            x, _ = place(step, low)
            draw.line([(x, box[1]), (x, box[3])], fill=(190, 190, 190))
            draw.text((x + 3, box[1] + 2), name, fill=(110, 110, 110))
        for points, colour in lines:
            placed = [place(step, value) for step, value in points]
            if len(placed) > 1:
                draw.line(placed, fill=colour, width=2)
            for x, y in placed if len(placed) < 40 else []:
                draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
    image.save(path)
