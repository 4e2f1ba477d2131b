"""Does a trained method tell the support classes apart, or only find objects?

    python -m fsbench.perf.discrimination RUN_DIR... [--way 2] [--split test|train] [--episodes 300]

For each run folder (its config.json and, when it trained, model.safetensors) it rebuilds the method,
samples N-way FS-CS episodes of the run's benchmark and fold (benchmark options other than the
protocol keep their defaults) (seed 1, so not the run's own episodes),
and reports:
- way wins: over the query pixels of way n's class, the share where way n's foreground probability
  is higher than every other way's. A method that only finds objects scores 1/N (chance); one that
  recognises the support's class scores near 1.
- presence of present / absent ways: mean presence score of the ways whose class is / is not in the
  query; ER needs these apart on either side of 0.5.
``--split train`` samples base classes, which the method trained on: low way wins there mean the
training itself did not separate classes.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from fsbench.engine.padding import predict_padded
from fsbench.errors import FsbenchError
from fsbench.run_records import read_results


def evaluated_checkpoint(run_dir: Path) -> Path | None:
    """The weights a finished run evaluated: its own model.safetensors when it trained, else the file
    it loaded with --eval --load (results.json "checkpoint", a path as the CLI was given it), else
    None (an untrained run)."""
    own = run_dir / "model.safetensors"
    if own.is_file():
        return own
    results = run_dir / "results.json"
    if not results.is_file():
        raise FsbenchError(f"{run_dir} has no results.json: not a finished run")
    recorded = read_results(results).get("checkpoint")
    if recorded is None:
        return None
    if not Path(recorded).is_file():
        raise FsbenchError(f"{run_dir} evaluated {recorded}, which is not there (run from where that run was started)")
    return Path(recorded)


def load_run_method(run_dir: Path):
    """(method in eval mode, config.json as a dict) of a finished run, with the weights it evaluated;
    untrained runs get the freshly initialised weights the CLI evaluated (torch.manual_seed(seed)
    before construction)."""
    import methods  # noqa: F401  (registers the methods)
    from fsbench.checkpoint import load_checkpoint
    from fsbench.registry import METHODS

    if not (run_dir / "config.json").is_file():
        raise FsbenchError(f"{run_dir} is not a run folder (no config.json)")
    record = json.loads((run_dir / "config.json").read_text())
    method_class = METHODS.get(record["method"])
    # The run's full config; its weights come from the checkpoint (or the seed), never from ImageNet.
    config = method_class.Config().with_overrides({**record["method_config"], "pretrained": False}, record["method"])
    torch.manual_seed(record["seed"])
    method = method_class(config, "cpu")
    checkpoint = evaluated_checkpoint(run_dir)
    if checkpoint is not None:
        method.load_state_dict(load_checkpoint(checkpoint)[0])
    return method.eval(), record


def way_wins(fg_probs: torch.Tensor, query_masks: torch.Tensor) -> tuple[int, int]:
    """fg_probs [Q, N, H, W], query_masks [Q, H, W] in {0..N, 255} -> (pixels of some way's class
    where that way's probability beats every other way's (ties lose), pixels of the ways' classes)."""
    wins = pixels = 0
    for way_index in range(fg_probs.shape[1]):
        selected = query_masks == way_index + 1
        others = torch.cat([fg_probs[:, :way_index], fg_probs[:, way_index + 1 :]], dim=1).amax(dim=1)
        wins += int((fg_probs[:, way_index] > others)[selected].sum())
        pixels += int(selected.sum())
    return wins, pixels


def discrimination(run_dir: Path, way: int, split: str, episodes: int, datapath: Path) -> dict:
    """{"way_wins", "chance", "presence_present", "presence_absent", "episodes"} of one run."""
    import benchmarks  # noqa: F401  (registers the benchmarks)
    from benchmarks.base import BenchmarkOptions
    from fsbench.protocols import get_protocol
    from fsbench.registry import BENCHMARKS
    from fsbench.sampler import EpisodeSampler

    if way < 2:
        raise FsbenchError(f"way wins compare ways: --way must be at least 2, got {way}")
    method, record = load_run_method(run_dir)
    benchmark = BENCHMARKS.get(record["benchmark"])(datapath, record["fold"], BenchmarkOptions(protocol=record["protocol"]))
    sampler = EpisodeSampler(benchmark, split, way=way, shot=record["shot"], episodes=episodes, seed=1, task="fscs",
                             transform=get_protocol(record["protocol"]).make_transform(record["img_size"]))
    wins = pixels = 0
    present, absent = [], []
    with torch.inference_mode():
        for index in range(len(sampler)):
            episode = sampler[index]
            prediction = predict_padded(method, episode.without_query_labels())
            episode_wins, episode_pixels = way_wins(prediction.fg_probs, episode.query_masks)
            wins, pixels = wins + episode_wins, pixels + episode_pixels
            present.append(prediction.presence[episode.query_presence])
            absent.append(prediction.presence[~episode.query_presence])
    return {
        "way_wins": wins / max(pixels, 1),
        "chance": 1 / way,
        "presence_present": torch.cat(present).mean().item(),
        "presence_absent": torch.cat(absent).mean().item(),
        "episodes": len(sampler),
    }


def main(argv: list[str] | None = None) -> None:
    from tabulate import tabulate

    from fsbench import PROJECT_ROOT

    parser = argparse.ArgumentParser(prog="python -m fsbench.perf.discrimination", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--way", type=int, default=2)
    parser.add_argument("--split", choices=("test", "train"), default="test")
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--datapath", type=Path, default=PROJECT_ROOT / "data", help="as the runs' --datapath")
    args = parser.parse_args(argv)
    rows = []
    for run_dir in args.runs:
        try:
            scores = discrimination(run_dir, args.way, args.split, args.episodes, args.datapath)
        except FsbenchError as error:
            raise SystemExit(f"fsbench: error: {error}") from None
        rows.append([str(run_dir), f"{100 * scores['way_wins']:.1f}", f"{100 * scores['chance']:.1f}",
                     f"{scores['presence_present']:.3f}", f"{scores['presence_absent']:.3f}"])
        print(tabulate(rows, headers=["run", "way wins %", "chance %", "presence (present)", "presence (absent)"],
                       tablefmt="github"), flush=True)


if __name__ == "__main__":
    main()
