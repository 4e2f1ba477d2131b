"""Fine-tuning on a small custom dataset: novel-class mIoU before and after, per recipe.

    python -m fsbench.perf.finetune --base RUN/model.safetensors [--recipes plain frozen] [--steps 150]
                                    [--work logs/perf-finetune] [--episodes 300]

The custom dataset is cut from `shapes` as a user would bring one: the first three test classes of
fold 0 (the classes a fold-0 base model never saw), 80 training and 60 validation images that show
one of them, in rootvisionai/dml_segmentation's `separate` layout (images/ and class-index masks/,
other objects are background), read through `--benchmark coco_json --layout separate --all-classes`.
It evaluates the base checkpoint on 1-way 1-shot episodes of the validation images, fine-tunes it on
every category of the training images (proxies re-initialised on the new classes) with each recipe,
and evaluates each result on the same episodes:

    plain      every weight trains at the profile's lr, on flipped images only (--augment flip)
    frozen     the same, but the encoder keeps its weights and batch-norm statistics (--set freeze_encoder=true)
    augmented  every weight trains, on images augmented as the DML repo does (--augment dml: what
               --augment auto picks for fine-tuning)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from fsbench.perf.methods import _run

RECIPES = {"plain": ["--augment", "flip"], "frozen": ["--augment", "flip", "--set", "freeze_encoder=true"],
           "augmented": ["--augment", "dml"]}
IMAGES = {"train": 80, "val": 60}


def make_custom_dataset(shapes_root: Path, out: Path, fold: int = 0, classes: int = 3) -> dict[str, int]:
    """Write the dataset under ``out`` ({train,val}/{images,masks}/<stem>.png); returns {class name: mask value}."""
    from PIL import Image

    from benchmarks.shapes import Shapes, load_index
    from benchmarks.shapes_render import class_name

    novel = sorted(Shapes(shapes_root.parent, fold).classes("test"))[:classes]
    index = load_index(shapes_root)
    for split, count in IMAGES.items():
        (out / split / "images").mkdir(parents=True, exist_ok=True)
        (out / split / "masks").mkdir(parents=True, exist_ok=True)
        for image_id in sorted({image for image, class_id in index["pairs"][split] if class_id in novel})[:count]:
            stem = image_id.split("/")[1]
            label = np.array(Image.open(shapes_root / f"{image_id}_label.png"))
            mask = np.zeros_like(label)
            for value, class_id in enumerate(novel, start=1):
                mask[label == class_id] = value
            mask[label == 255] = 255
            Image.open(shapes_root / f"{image_id}.png").convert("RGB").save(out / split / "images" / f"{stem}.png")
            Image.fromarray(mask.astype(np.uint8)).save(out / split / "masks" / f"{stem}.png")
    return {class_name(class_id): value for value, class_id in enumerate(novel, start=1)}


def main(argv: list[str] | None = None) -> None:
    from tabulate import tabulate

    import benchmarks  # noqa: F401  (registers the benchmarks)
    import methods  # noqa: F401  (registers the methods)
    from benchmarks.shapes import load_index

    parser = argparse.ArgumentParser(prog="python -m fsbench.perf.finetune", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="a dml_knn checkpoint trained on shapes fold 0's base classes")
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=["plain", "frozen", "augmented"])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, help="fine-tuning lr (default: the checkpoint's profile)")
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--amp", default="bf16", choices=("auto", "off", "bf16", "fp16"),
                        help="precision of every run (default bf16: dml_knn's demo precision; custom data is not quick, so auto means fp32 on a CPU)")
    parser.add_argument("--datapath", default="data", help="where shapes lives (generated when absent)")
    parser.add_argument("--work", default="logs/perf-finetune")
    args = parser.parse_args(argv)
    work = Path(args.work) / time.strftime("%Y%m%d-%H%M%S")
    custom = work / "custom"
    shapes_root = Path(args.datapath) / "shapes"
    load_index(shapes_root)  # generates shapes on first use
    names = make_custom_dataset(shapes_root, custom)
    (custom / "label_map.json").write_text(json.dumps(names))
    common = ["--benchmark", "coco_json", "--datapath", str(custom), "--layout", "separate", "--all-classes",
              "--img-size", "128", "--episodes", str(args.episodes), "--nworker", "0", "--no-progress", "--val-every", "0",
              "--amp", args.amp]
    rows = []
    before = _run([*common, "--eval", "--load", args.base], work / "before")
    rows.append(["before (base model)", "-", f"{before['miou']:.1f}", f"{before['er']:.1f}",
                 *(f"{before['class_iou'][name]:.1f}" for name in names), "-"])
    lr = ["--lr", str(args.lr)] if args.lr else []
    for recipe in args.recipes:
        after = _run([*common, "--load", args.base, "--train-steps", str(args.steps), *lr, *RECIPES[recipe]], work / recipe)
        assert after["episode_fingerprint"] == before["episode_fingerprint"]
        rows.append([f"after: {recipe}", args.steps, f"{after['miou']:.1f}", f"{after['er']:.1f}",
                     *(f"{after['class_iou'][name]:.1f}" for name in names), f"{after['train_s']:.0f}"])
    table = tabulate(rows, headers=["model", "steps", "mIoU", "ER", *names, "train s"], tablefmt="github")
    (work / "table.md").write_text(table + "\n")
    print(table)
    print(f"1-way 1-shot, {args.episodes} episodes on the validation images; runs under {work}")


if __name__ == "__main__":
    main()
