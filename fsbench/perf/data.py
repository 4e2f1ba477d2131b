"""Data-side measurements: loader throughput on a generated VOC tree, COCO index build/warm start.

    python -m fsbench.perf.data loader [--images 300] [--episodes 40]
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
    parser.add_argument("what", choices=("loader", "coco-index", "_coco-child"))
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
        if args.what == "loader":
            rows = loader_throughput(workdir, args.images or 300, args.episodes, args.img_size)
            print(tabulate(rows, headers=["shot", "nworker", "px", "episodes", "seconds", "episodes/s"], tablefmt="github"))
        else:
            rows = coco_index_timing(workdir, args.images or 82_000, args.annotations_per_image)
            print(tabulate(rows, headers=["images", "annotations", "JSON MiB", "cold build s", "cold peak MiB", "warm start s",
                                          "record read ms", "cache MiB"], tablefmt="github"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
