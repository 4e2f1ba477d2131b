"""Every registered method x every benchmark (generated trees in the real layouts at real image sizes)
x both protocols (HSNet 400x400; PFENet 473 / 641 aspect-kept, scored at the original size): each
cell trains one step, evaluates one episode and writes results.json. A method that cannot take a
size, a benchmark whose layout or labels trip a method, fails here."""
from __future__ import annotations

import csv
import json

import pytest

from fsbench.cli import main
from fsbench.fixtures.real_settings import PROTOCOLS, cell_arguments, make_real_trees
from fsbench.registry import METHODS
from fsbench.transforms import read_label

EXPECTED_RESOLUTION = {"hsnet": "400x400", "pfenet": "original"}
BENCHMARKS = ("shapes", "pascal", "coco", "fss", "coco_json")


@pytest.fixture(scope="module")
def datapaths(tmp_path_factory, tiny_datapath):
    return {**make_real_trees(tmp_path_factory.mktemp("real")), "shapes": tiny_datapath}


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("benchmark", BENCHMARKS)
@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_runs_on_every_benchmark_at_real_sizes(method, benchmark, protocol, datapaths, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = main(cell_arguments(method, benchmark, datapaths[benchmark], protocol, run_dir))
    assert code == 0, capsys.readouterr().err
    results = json.loads((run_dir / "results.json").read_text())
    expected = EXPECTED_RESOLUTION[protocol] if benchmark != "shapes" or protocol == "pfenet" else "128x128"
    assert results["eval_resolution"] == expected and results["episodes"] == 1
    assert results["trained_on"][0]["benchmark"] == benchmark


@pytest.mark.parametrize("method", METHODS.names())
def test_every_method_scores_at_the_original_size(method, datapaths, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(cell_arguments(method, "pascal", datapaths["pascal"], "hsnet", run_dir, original_size=True)) == 0, capsys.readouterr().err
    results = json.loads((run_dir / "results.json").read_text())
    assert results["eval_resolution"] == "original"
    with open(run_dir / "episodes.csv") as handle:
        (row,) = list(csv.DictReader(handle))
    label = read_label(datapaths["pascal"] / "VOC2012" / "SegmentationClassAug" / f"{row['query_id']}.png")
    valid = int((label != 255).sum())
    # Every valid pixel is in the background or the foreground union (some in both): counted on the
    # 500x375 original, which has more valid pixels than the whole 400x400 input.
    scored = int(row["bg_union"]) + int(row["fg_union"])
    assert valid > 400 * 400 and valid <= scored <= 2 * valid
