"""Measurements that the issues ask for, as a script (never as timed tests).

    python -m fsbench.perf knn-memory [--chunks 1024 4096 16384] [--device cpu]
        Peak memory of dml_knn's kNN at 5-shot 400x400 with 512-d embeddings, per chunk size.
    python -m fsbench.perf knn-options [--device cpu] [--dim 512] [--size 400]
        dml_knn's kNN at 1-shot: fp32 against bf16 / fp16 similarity, kNN on every 2nd pixel, and
        half the negatives: seconds per query and how many pixels keep fp32's label.
    python -m fsbench.perf timing RUN_DIR...
        Where evaluation time went in finished runs: data loading, predict, metrics, and the ratio
        of total evaluation wall time to time inside predict.
    python -m fsbench.perf grid [--folds 0 1 2 3] [--shots 1 5] [--episodes 1000]
        The demo table: per fold, train dml_knn once on shapes (default budget), evaluate each shot,
        and evaluate the untrained model (--train-steps 0) on the same episodes.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def knn_memory_child(chunk: int, device: str, query_pixels: int, positives: int, ratio: int, dim: int) -> dict:
    """Runs in a fresh process so ru_maxrss reflects only this configuration."""
    from methods.dml_knn import knn_label_shares

    generator = torch.Generator().manual_seed(0)
    references = F.normalize(torch.randn(positives * (1 + ratio), dim, generator=generator), dim=1).to(device)
    labels = torch.zeros(references.shape[0], dtype=torch.long, device=device)
    labels[:positives] = 1
    # Peak memory per chunk does not depend on how many chunks run, so a few chunks suffice on CPU.
    measured = min(query_pixels, 4 * chunk)
    queries = F.normalize(torch.randn(measured, dim, generator=generator), dim=1).to(device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    before = _max_rss_mb()
    started = time.perf_counter()
    knn_label_shares(queries, references, labels, 2, k=64, chunk_size=chunk)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    result = {
        "chunk": chunk,
        "references": references.shape[0],
        "query_pixels_measured": measured,
        "seconds_per_400x400_query": seconds * query_pixels / measured,
        "similarity_block_mb": chunk * references.shape[0] * 4 / 2**20,
    }
    if device == "cuda":
        result["peak_extra_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        result["peak_extra_mb"] = _max_rss_mb() - before
    return result


def _clustered(count: int, dim: int, centres: torch.Tensor, spread: float, generator) -> torch.Tensor:
    """Unit vectors scattered around ``centres`` (a structured stand-in for trained embeddings,
    whose neighbour ranking has real near-ties, unlike isotropic random vectors)."""
    picks = torch.randint(0, centres.shape[0], (count,), generator=generator)
    return F.normalize(centres[picks] + spread * torch.randn(count, dim, generator=generator), dim=1)


def knn_options(args) -> None:
    from tabulate import tabulate

    from methods.dml_knn import knn_label_shares

    generator = torch.Generator().manual_seed(0)
    device, size, dim, positives, ratio = args.device, args.size, args.dim, 1000, 20
    foreground = F.normalize(torch.randn(3, dim, generator=generator), dim=1)
    background = F.normalize(torch.randn(12, dim, generator=generator), dim=1)
    references = torch.cat([_clustered(positives, dim, foreground, 0.6, generator), _clustered(positives * ratio, dim, background, 0.6, generator)])
    labels = torch.cat([torch.ones(positives, dtype=torch.long), torch.zeros(positives * ratio, dtype=torch.long)])
    # A query whose left third is foreground-like, the rest background-like.
    query = torch.empty(size, size, dim)
    query[:, : size // 3] = _clustered(size * (size // 3), dim, foreground, 0.7, generator).view(size, size // 3, dim)
    query[:, size // 3 :] = _clustered(size * (size - size // 3), dim, background, 0.7, generator).view(size, size - size // 3, dim)
    references, labels, query = references.to(device), labels.to(device), query.to(device)

    def run(dtype, stride: int, keep_negatives: float):
        chosen_refs, chosen_labels = references, labels
        if keep_negatives < 1:
            negatives = torch.nonzero(labels == 0).squeeze(1)
            kept = negatives[torch.randperm(len(negatives), generator=torch.Generator().manual_seed(1))[: int(len(negatives) * keep_negatives)].to(device)]
            keep = torch.cat([torch.nonzero(labels == 1).squeeze(1), kept])
            chosen_refs, chosen_labels = references[keep], labels[keep]
        grid = query[::stride, ::stride]
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        shares = knn_label_shares(grid.reshape(-1, dim).to(dtype), chosen_refs.to(dtype), chosen_labels, 2, 64, 4096).float()
        foreground_share = shares[:, 1].view(1, 1, *grid.shape[:2])
        if stride > 1:
            foreground_share = F.interpolate(foreground_share, size=(size, size), mode="bilinear", align_corners=False)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - started, foreground_share.view(size, size)

    reference_seconds, reference_share = run(torch.float32, 1, 1.0)
    options = [("fp32 (reference)", torch.float32, 1, 1.0), ("bf16 similarity", torch.bfloat16, 1, 1.0)]
    if device == "cuda":
        options.append(("fp16 similarity", torch.float16, 1, 1.0))
    options += [("kNN on every 2nd pixel", torch.float32, 2, 1.0), ("half the negatives", torch.float32, 1, 0.5)]
    rows = []
    for name, dtype, stride, keep in options:
        seconds, share = (reference_seconds, reference_share) if name.startswith("fp32") else run(dtype, stride, keep)
        same = ((share > 0.5) == (reference_share > 0.5)).float().mean().item()
        rows.append([name, f"{seconds:.2f}", f"{reference_seconds / seconds:.2f}x", f"{100 * same:.2f}", f"{(share - reference_share).abs().mean().item():.4f}"])
    print(f"dml_knn kNN, 1-shot {size}x{size} query, {dim}-d, {references.shape[0]} references, k 64, device {device} "
          "(clustered synthetic embeddings)")
    print(tabulate(rows, headers=["option", "s per query", "speed-up", "% pixels with fp32's label", "mean |share diff|"], tablefmt="github"))


def knn_memory(args) -> None:
    from tabulate import tabulate

    rows = []
    for chunk in args.chunks:
        command = [sys.executable, "-m", "fsbench.perf", "_knn-child", str(chunk), args.device, str(args.query_pixels),
                   str(args.positives), str(args.ratio), str(args.dim)]
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
    print(f"dml_knn kNN, 5-shot 400x400 query ({args.query_pixels} pixels), {args.dim}-d, "
          f"{args.positives} positives x (1 + {args.ratio}) references, k 64, device {args.device}")
    print(tabulate([[r["chunk"], r["references"], f"{r['similarity_block_mb']:.0f}", f"{r['peak_extra_mb']:.0f}",
                     f"{r['seconds_per_400x400_query']:.2f}"] for r in rows],
                   headers=["chunk (query px)", "reference px", "chunk x R x 4 B (MB)", "peak extra (MB)", "s per query"],
                   tablefmt="github"))


def timing(args) -> None:
    from tabulate import tabulate

    rows = []
    for run_dir in args.runs:
        results = json.loads((Path(run_dir) / "results.json").read_text())
        t = results["timing"]
        rows.append([Path(run_dir).name, results["episodes"], t["data_s"], t["predict_s"], t["metrics_s"], t["total_s"],
                     t["total_over_predict"], results.get("train_s", 0.0)])
    print(tabulate(rows, headers=["run", "episodes", "data wait s", "predict s", "metrics s", "eval total s", "total/predict", "train s"],
                   tablefmt="github"))


def grid(args) -> None:
    from tabulate import tabulate

    from fsbench.cli import main

    logs = Path(args.logs)
    logs.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for fold in args.folds:
        trained_dir = logs / f"grid-{stamp}-fold{fold}-shot{args.shots[0]}"
        common = ["--fold", str(fold), "--episodes", str(args.episodes), "--no-progress", "--nworker", str(args.nworker)]
        for shot in args.shots:
            if shot == args.shots[0]:
                run_dir = trained_dir
                argv = [*common, "--shot", str(shot), "--logpath", str(run_dir)]
            else:
                run_dir = logs / f"grid-{stamp}-fold{fold}-shot{shot}"
                argv = [*common, "--shot", str(shot), "--eval", "--load", str(trained_dir / "model.safetensors"), "--logpath", str(run_dir)]
            untrained_dir = logs / f"grid-{stamp}-fold{fold}-shot{shot}-untrained"
            for directory, arguments in ((run_dir, argv), (untrained_dir, [*common, "--shot", str(shot), "--train-steps", "0", "--logpath", str(untrained_dir)])):
                if main(arguments) != 0:
                    raise SystemExit(f"run failed: {arguments}")
            trained = json.loads((run_dir / "results.json").read_text())
            untrained = json.loads((untrained_dir / "results.json").read_text())
            rows.append([fold, shot, *(f"{trained[key]:.1f}" for key in ("miou", "fbiou", "er")),
                         *(f"{untrained[key]:.1f}" for key in ("miou", "fbiou", "er")),
                         f"{trained['miou'] - untrained['miou']:+.1f}", f"{trained['train_s']:.0f}", f"{trained['timing']['total_s']:.0f}"])
    print(tabulate(rows, headers=["fold", "shot", "mIoU", "FB-IoU", "ER", "mIoU@0", "FB-IoU@0", "ER@0", "gain", "train s", "eval s"],
                   tablefmt="github"))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_knn-child":
        chunk, device, query_pixels, positives, ratio, dim = argv[1:]
        print(json.dumps(knn_memory_child(int(chunk), device, int(query_pixels), int(positives), int(ratio), int(dim))))
        return
    parser = argparse.ArgumentParser(prog="python -m fsbench.perf", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    memory = commands.add_parser("knn-memory")
    memory.add_argument("--chunks", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    memory.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    memory.add_argument("--query-pixels", type=int, default=400 * 400)
    memory.add_argument("--positives", type=int, default=1000, help="dml_knn's max_positive_samples")
    memory.add_argument("--ratio", type=int, default=20, help="dml_knn's negative_samples_ratio")
    memory.add_argument("--dim", type=int, default=512)
    memory.set_defaults(handler=knn_memory)
    options = commands.add_parser("knn-options")
    options.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    options.add_argument("--size", type=int, default=400)
    options.add_argument("--dim", type=int, default=512)
    options.set_defaults(handler=knn_options)
    timing_parser = commands.add_parser("timing")
    timing_parser.add_argument("runs", nargs="+")
    timing_parser.set_defaults(handler=timing)
    grid_parser = commands.add_parser("grid")
    grid_parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3])
    grid_parser.add_argument("--shots", type=int, nargs="+", default=[1, 5])
    grid_parser.add_argument("--episodes", type=int, default=1000)
    grid_parser.add_argument("--nworker", type=int, default=0)
    grid_parser.add_argument("--logs", default="logs/perf-grid")
    grid_parser.set_defaults(handler=grid)
    args = parser.parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()
