"""How long a paper table takes: fabricate a grid of finished runs, then time main_table on it.

    python -m fsbench.perf.tables [--episodes 1000] [--resamples 1000] [--repeats 3] [--keep DIR]

The grid is 4 folds x 2 shots (1, 5) x 3 methods x 2 seeds = 48 run folders, each with a
results.json and an episodes.csv of realistic size (one row per episode, 1-way, 1 query). Methods
share episodes per (fold, shot, seed), as they would with the real sampler, so every column gets
paired tests. A measurement script, never a timed test.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

FOLDS = (0, 1, 2, 3)
SHOTS = (1, 5)
METHODS = (("dml_knn", "resnet18", 0.55), ("panet", "resnet50", 0.50), ("mtl_unet", "unet", 0.47))
SEEDS = (0, 1)
PIXELS = 128 * 128


def fabricate_run(folder: Path, method: str, backbone: str, quality: float, fold: int, shot: int, seed: int, episodes: int) -> None:
    """One run folder whose episodes.csv and results.json agree (as the evaluator writes them)."""
    # Episodes depend on (fold, shot, seed) only; the method changes only how well it does on them.
    episode_rng = np.random.default_rng([fold, shot, seed])
    class_names = [f"class {5 * fold + offset + 1}" for offset in range(5)]
    classes = episode_rng.integers(0, 5, size=episodes)
    object_pixels = episode_rng.integers(800, 6000, size=episodes)
    method_rng = np.random.default_rng([fold, shot, seed, sum(map(ord, method))])
    overlap = np.clip(method_rng.normal(quality + 0.03 * (shot == 5), 0.2, size=episodes), 0.0, 1.0)
    intersection = np.round(object_pixels * overlap).astype(np.int64)
    false_positive = method_rng.integers(0, 1500, size=episodes)
    union = object_pixels + false_positive
    # A method that barely overlaps the object usually also says the class is absent.
    predicted_present = (overlap > 0.1).astype(int)
    frame = pd.DataFrame({
        "episode": np.arange(episodes),
        "query_index": 0,
        "query_id": [f"val/{index:05d}" for index in episode_rng.integers(0, 600, size=episodes)],
        "support_ids": "val/00001",
        "class_ids": classes + 5 * fold + 1,
        "class_names": [class_names[class_index] for class_index in classes],
        "intersection_1": intersection,
        "union_1": union,
        "iou_1": np.round(100.0 * intersection / union, 4),
        "present_1": 1,
        "predicted_present_1": predicted_present,
        "bg_intersection": PIXELS - union,
        "fg_intersection": intersection,
        "bg_union": PIXELS - intersection,
        "fg_union": union,
    })
    folder.mkdir(parents=True)
    frame.to_csv(folder / "episodes.csv", index=False)
    class_iou = {}
    for class_index, name in enumerate(class_names):
        chosen = classes == class_index
        class_iou[name] = 100.0 * intersection[chosen].sum() / union[chosen].sum() if chosen.any() else 0.0
    fb = [frame[f"{side}_intersection"].sum() / frame[f"{side}_union"].sum() for side in ("bg", "fg")]
    fingerprint = hashlib.sha256(f"shapes|{fold}|{shot}|{seed}|{episodes}".encode()).hexdigest()[:16]
    results = {
        "method": method, "backbone": backbone, "benchmark": "shapes", "fold": fold, "way": 1, "shot": shot,
        "task": "fss", "episodes": episodes, "seed": seed, "episode_fingerprint": fingerprint,
        "miou": float(np.mean(list(class_iou.values()))), "fbiou": float(100.0 * np.mean(fb)),
        "er": float(100.0 * np.mean(predicted_present == 1)), "class_iou": class_iou,
        "eval_resolution": "128x128", "protocol": "hsnet", "checkpoint": None, "elapsed_s": 0.0,
    }
    (folder / "results.json").write_text(json.dumps(results, indent=2))


def fabricate_grid(root: Path, episodes: int) -> int:
    count = 0
    for fold in FOLDS:
        for shot in SHOTS:
            for method, backbone, quality in METHODS:
                for seed in SEEDS:
                    fabricate_run(root / f"{method}_fold{fold}_{shot}shot_seed{seed}", method, backbone, quality, fold, shot, seed, episodes)
                    count += 1
    return count


def main() -> None:
    from fsbench.run_records import collect_runs
    from fsbench.tables import main_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=1000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="write the runs here (must not exist) and keep them")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as temporary:
        root = args.keep or Path(temporary) / "runs"
        started = time.perf_counter()
        runs = fabricate_grid(root, args.episodes)
        print(f"fabricated {runs} runs x {args.episodes} episodes in {time.perf_counter() - started:.1f} s under {root}")
        pattern = [str(root / "*")]
        timings: dict[str, list[float]] = {"collect (read + check, no CIs)": [], "collect with episodes.csv": []}
        for format in ("markdown", "latex", "csv"):
            timings[f"main_table {format}, CIs + paired tests"] = []
        timings["main_table markdown, no CIs"] = []
        for _ in range(args.repeats):
            for label, call in (
                ("collect (read + check, no CIs)", lambda: collect_runs(pattern, with_episodes=False)),
                ("collect with episodes.csv", lambda: collect_runs(pattern, with_episodes=True)),
                *((f"main_table {format}, CIs + paired tests", lambda format=format: main_table(pattern, format, resamples=args.resamples))
                  for format in ("markdown", "latex", "csv")),
                ("main_table markdown, no CIs", lambda: main_table(pattern, "markdown", confidence=False)),
            ):
                started = time.perf_counter()
                call()
                timings[label].append(time.perf_counter() - started)
        for label, values in timings.items():
            print(f"{label:45s} median {statistics.median(values):6.2f} s  (runs: {', '.join(f'{value:.2f}' for value in values)})")
        print()
        print(main_table(pattern, "markdown", resamples=args.resamples))


if __name__ == "__main__":
    main()
