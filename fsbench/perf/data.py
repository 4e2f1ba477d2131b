"""Data-side measurements: loader throughput on a generated VOC tree, COCO index build/warm start.

    python -m fsbench.perf.data loader [--images 300] [--episodes 40]
    python -m fsbench.perf.data loader-vs-hsnet --hsnet-root PATH [--images 300] [--episodes 100] [--rounds 3]
    python -m fsbench.perf.data coco-index [--images 82000] [--annotations-per-image 7.3]

Each writes its generated data to a temporary folder (or --workdir) and prints a table.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate
from torch.utils.data import DataLoader

from fsbench.episode import collate_episodes


def loader_throughput(workdir: Path, images: int, episodes: int, size: int) -> list[list]:
    """Episodes/s through EpisodeSampler + DataLoader on a VOC tree of 500x375 JPEGs (VOC's typical size)."""
    from fsbench.fixtures import make_voc
    from benchmarks.pascal import Pascal
    from fsbench.protocols import get_protocol
    from fsbench.sampler import EpisodeSampler

    started = time.perf_counter()
    make_voc(workdir, train=images // 4, val=images, height=375, width=500)
    print(f"generated {images + images // 4} VOC images in {time.perf_counter() - started:.1f} s", flush=True)
    benchmark = Pascal(workdir, 0)
    rows = []
    for shot in (1, 5):
        for nworker in (0, 2):
            sampler = EpisodeSampler(benchmark, "test", shot=shot, episodes=episodes, transform=get_protocol("hsnet").make_transform(size))
            loader = DataLoader(sampler, batch_size=1, num_workers=nworker, collate_fn=collate_episodes,
                                prefetch_factor=4 if nworker else None)
            iterator = iter(loader)
            next(iterator)  # worker start-up is not throughput
            started = time.perf_counter()
            count = sum(1 for _ in iterator)
            elapsed = time.perf_counter() - started
            rows.append([shot, nworker, size, count, round(elapsed, 2), round(count / elapsed, 2)])
            print(rows[-1], flush=True)
    return rows


def _write_hsnet_lists(workdir: Path, labels: dict[str, dict[str, "object"]]) -> None:
    """HSNet's Pascal lists (<image id>__<class> per line) for all four folds, from the generated
    labels, where data/README.md puts them (<datapath>/splits/pascal/{trn,val}/fold<k>.txt)."""
    import numpy as np

    for split, folder in (("train", "trn"), ("val", "val")):
        for fold in range(4):
            classes = range(5 * fold + 1, 5 * fold + 6)
            lines = [f"{image_id}__{class_id:02d}\n" for image_id, label in labels[split].items()
                     for class_id in classes if int(np.count_nonzero(label == class_id)) > 0]
            target = workdir / "splits" / "pascal" / folder / f"fold{fold}.txt"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("".join(lines))


def loader_against_hsnet(workdir: Path, hsnet_root: Path, images: int, episodes: int, size: int, rounds: int) -> list[list]:
    """Episodes/s of fsbench's loader (--replay hsnet: the same episodes) and of HSNet's own test
    loader (its data/pascal.py, imported from ``hsnet_root`` at run time, never copied) on one
    generated VOC tree of 500x375 JPEGs, alternating in one process so that a noisy machine slows
    both alike. Returns rows [loader, nworker, round, episodes, seconds, episodes/s]."""
    import importlib.util
    import os

    import torch
    from torchvision import transforms

    from benchmarks.pascal import Pascal
    from fsbench.fixtures import make_voc
    from fsbench.protocols import get_protocol
    from fsbench.sampler import EpisodeSampler

    module_path = Path(hsnet_root) / "data" / "pascal.py"
    if not module_path.is_file():
        raise SystemExit(f"--hsnet-root: {module_path} not found (a clone of juhongm999/hsnet)")
    labels = make_voc(workdir, train=images // 4, val=images, height=375, width=500)
    _write_hsnet_lists(workdir, labels)
    specification = importlib.util.spec_from_file_location("hsnet_pascal", module_path)
    hsnet_pascal = importlib.util.module_from_spec(specification)
    specification.loader.exec_module(hsnet_pascal)
    # HSNet reads its lists from ./data/splits relative to the working directory, and its transform is
    # Resize + ToTensor + Normalize (data/dataset.py).
    os.makedirs(workdir / "hsnet_cwd" / "data", exist_ok=True)
    link = workdir / "hsnet_cwd" / "data" / "splits"
    if not link.exists():
        link.symlink_to(workdir / "splits")
    previous = os.getcwd()
    os.chdir(workdir / "hsnet_cwd")
    try:
        hsnet_transform = transforms.Compose([transforms.Resize(size=(size, size)), transforms.ToTensor(),
                                              transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
        hsnet_dataset = hsnet_pascal.DatasetPASCAL(str(workdir), fold=0, transform=hsnet_transform, split="val", shot=1,
                                                   use_original_imgsize=False)
    finally:
        os.chdir(previous)
    ours = EpisodeSampler(Pascal(workdir, 0), "test", shot=1, episodes=episodes, replay="hsnet",
                          transform=get_protocol("hsnet").make_transform(size))
    loaders = {
        "hsnet": lambda nworker: DataLoader(torch.utils.data.Subset(hsnet_dataset, range(episodes)), batch_size=1,
                                            num_workers=nworker, shuffle=False),
        "fsbench": lambda nworker: DataLoader(ours, batch_size=1, num_workers=nworker, collate_fn=collate_episodes),
    }
    rows = []
    for round_index in range(rounds):
        for nworker in (0, 2):
            for name, make in loaders.items():
                if name == "hsnet":
                    import numpy as np

                    np.random.seed(0)  # HSNet's test seed (its episodes come from the global NumPy stream)
                started = time.perf_counter()
                count = sum(1 for _ in make(nworker))
                elapsed = time.perf_counter() - started
                rows.append([name, nworker, round_index, count, round(elapsed, 2), round(count / elapsed, 2)])
                print(rows[-1], flush=True)
    return rows


def _child_build(workdir: Path) -> None:
    """Cold-build the train index in this process and print its time and peak memory as JSON."""
    import resource

    from benchmarks import coco_index

    instances = workdir / "COCO2014/annotations/instances_train2014.json"
    key = coco_index.source_key([instances], "instances")
    started = time.perf_counter()
    coco_index.build_from_instances(instances, workdir / "COCO2014/train2014", workdir / "cache/coco/train2014_instances.index", key)
    elapsed = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"cold_build_s": round(elapsed, 1), "peak_mib": round(peak_mib)}))


def coco_index_timing(workdir: Path, images: int, annotations_per_image: float) -> list[list]:
    from benchmarks.coco import Coco
    from fsbench.fixtures import coco_sized_instances, make_coco2014

    make_coco2014(workdir, train=8, val=80, write_images=False)  # a small val split; train is replaced
    instances = workdir / "COCO2014/annotations/instances_train2014.json"
    started = time.perf_counter()
    coco_sized_instances(instances, images=images, annotations_per_image=annotations_per_image)
    data = json.loads(instances.read_text())
    summary = (len(data["images"]), len(data["annotations"]), instances.stat().st_size / 2**20)
    del data
    print(f"generated {summary[0]} images, {summary[1]} annotations, {summary[2]:.0f} MiB JSON in {time.perf_counter() - started:.0f} s", flush=True)
    child = subprocess.run([sys.executable, "-m", "fsbench.perf.data", "_coco-child", "--workdir", str(workdir)],
                           capture_output=True, text=True, check=True)
    cold = json.loads(child.stdout.strip().splitlines()[-1])
    Coco(workdir, 0)  # builds the small val index
    started = time.perf_counter()
    benchmark = Coco(workdir, 1)
    warm = time.perf_counter() - started
    started = time.perf_counter()
    for image_id, _ in benchmark.pairs("train")[:200]:
        header = benchmark.headers["train"]
        from benchmarks import coco_index

        coco_index.read_record(benchmark.cache_paths["train2014"], header, image_id)
    record_ms = (time.perf_counter() - started) / 200 * 1000
    cache_mib = (workdir / "cache/coco/train2014_instances.index").stat().st_size / 2**20
    return [[summary[0], summary[1], round(summary[2]), cold["cold_build_s"], cold["peak_mib"], round(warm, 2), round(record_ms, 3), round(cache_mib)]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fsbench.perf.data", description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("loader", "loader-vs-hsnet", "coco-index", "_coco-child"))
    parser.add_argument("--hsnet-root", type=Path, help="loader-vs-hsnet: a clone of juhongm999/hsnet")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="where to generate the data (default: a temporary folder)")
    parser.add_argument("--images", type=int, help="loader: VOC val images (300); coco-index: images (82000)")
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--img-size", type=int, default=400)
    parser.add_argument("--annotations-per-image", type=float, default=7.3)
    parser.add_argument("--threads", type=int, help="torch intra-op threads of the main process (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.what == "_coco-child":
        _child_build(args.workdir)
        return 0
    with tempfile.TemporaryDirectory(prefix="fsbench-perf-") as temporary:
        workdir = args.workdir or Path(temporary)
        if args.what == "loader-vs-hsnet":
            rows = loader_against_hsnet(workdir, args.hsnet_root, args.images or 300, args.episodes, args.img_size, args.rounds)
            print(tabulate(rows, headers=["loader", "nworker", "round", "episodes", "seconds", "episodes/s"], tablefmt="github"))
            summary = {}
            for name, nworker, _, count, seconds, _ in rows:
                total = summary.setdefault((name, nworker), [0, 0.0])
                total[0] += count
                total[1] += seconds
            for nworker in (0, 2):
                ratio = (summary[("fsbench", nworker)][0] / summary[("fsbench", nworker)][1]) / (summary[("hsnet", nworker)][0] / summary[("hsnet", nworker)][1])
                print(f"nworker {nworker}: fsbench / hsnet episodes per second = {ratio:.2f}x")
        elif args.what == "loader":
            rows = loader_throughput(workdir, args.images or 300, args.episodes, args.img_size)
            print(tabulate(rows, headers=["shot", "nworker", "px", "episodes", "seconds", "episodes/s"], tablefmt="github"))
        else:
            rows = coco_index_timing(workdir, args.images or 82_000, args.annotations_per_image)
            print(tabulate(rows, headers=["images", "annotations", "JSON MiB", "cold build s", "cold peak MiB", "warm start s",
                                          "record read ms", "cache MiB"], tablefmt="github"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
