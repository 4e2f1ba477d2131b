"""Tables from fabricated run folders whose numbers are known, checked against plain-Python references."""
from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import wilcoxon

from fsbench.bootstrap import bootstrap_interval, paired_test
from fsbench.errors import FsbenchError
from fsbench.run_records import collect_runs, read_episode_counts
from fsbench.tables import format_run_row, main_table, run_bootstrap_seed

CLASSES = ["red circle", "blue square", "green star"]
PIXELS = 100


def reference_scores(rows: list[dict]) -> dict:
    """The FSS protocol by hand: class-accumulated mIoU over CLASSES, FB-IoU from sums, ER."""
    intersection = {name: 0 for name in CLASSES}
    union = {name: 0 for name in CLASSES}
    for row in rows:
        intersection[row["class_names"]] += row["intersection_1"]
        union[row["class_names"]] += row["union_1"]
    class_iou = {name: 100.0 * intersection[name] / union[name] if union[name] else 0.0 for name in CLASSES}
    background = sum(row["bg_intersection"] for row in rows) / sum(row["bg_union"] for row in rows)
    foreground = sum(row["fg_intersection"] for row in rows) / sum(row["fg_union"] for row in rows)
    exact = sum(row["present_1"] == row["predicted_present_1"] for row in rows)
    return {
        "miou": sum(class_iou.values()) / len(CLASSES),
        "fbiou": 100.0 * (background + foreground) / 2,
        "er": 100.0 * exact / len(rows),
        "class_iou": class_iou,
    }


def episode_rows(episodes: int, quality: float, seed: int) -> list[dict]:
    """1-way, 1-query episodes; ``quality`` is the share of each object the method recovers."""
    rng = np.random.default_rng(seed)
    rows = []
    for episode in range(episodes):
        target = int(rng.integers(10, 40))
        intersection = int(round(target * min(1.0, max(0.0, quality + rng.normal(0, 0.15)))))
        false_positive = int(rng.integers(0, 10))
        union = target + false_positive
        rows.append({
            "episode": episode, "query_index": 0, "query_id": f"q{episode}", "support_ids": f"s{episode}",
            "class_ids": 0, "class_names": CLASSES[episode % len(CLASSES)],
            "intersection_1": intersection, "union_1": union, "iou_1": 100.0 * intersection / union,
            "present_1": 1, "predicted_present_1": int(intersection > 5),
            "bg_intersection": PIXELS - union, "fg_intersection": intersection,
            "bg_union": PIXELS - intersection, "fg_union": union,
        })
    return rows


def write_run(folder: Path, method: str, fold: int, rows: list[dict], fingerprint: str, seed: int = 0, backbone: str = "resnet18",
              shot: int = 1, **extra) -> dict:
    """A finished run folder; ``extra`` adds or replaces results.json keys (benchmark_info, replay, ...)."""
    folder.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(folder / "episodes.csv", index=False)
    results = {
        "method": method, "backbone": backbone, "benchmark": "toy", "fold": fold, "way": 1, "shot": shot, "task": "fss",
        "episodes": len({row["episode"] for row in rows}), "seed": seed, "episode_fingerprint": fingerprint,
        **reference_scores(rows), "eval_resolution": "10x10", "protocol": "hsnet", "checkpoint": None, "elapsed_s": 1.0,
        **extra,
    }
    (folder / "results.json").write_text(json.dumps(results))
    return results


def read_csv_table(text: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(text), dtype={"fold": str})


@pytest.fixture
def grid(tmp_path) -> dict:
    """Two methods on the same episodes per fold; fold 1 has many more episodes than fold 0, so a
    pooled mean and the arithmetic mean of the folds differ."""
    results = {}
    for fold, episodes in ((0, 6), (1, 40)):
        for method, quality in (("good", 0.8), ("weak", 0.4)):
            rows = episode_rows(episodes, quality if fold == 0 else quality - 0.3, seed=10 * fold + len(method))
            results[(method, fold)] = write_run(tmp_path / f"{method}_{fold}", method, fold, rows, fingerprint=f"f{fold}")
    return results


def test_table_numbers_equal_results_json(grid, tmp_path):
    table = read_csv_table(main_table([str(tmp_path / "*")], "csv", resamples=50))
    for (method, fold), results in grid.items():
        for metric in ("miou", "fbiou", "er"):
            cell = table[(table.method == method) & (table.fold == str(fold)) & (table.metric == metric)]
            assert len(cell) == 1 and cell.value.iloc[0] == results[metric]
    markdown = main_table([str(tmp_path / "*")], "markdown", resamples=50)
    for results in grid.values():
        assert f"{results['miou']:.1f}" in markdown and f"{results['er']:.1f}" in markdown


def test_fold_mean_is_the_arithmetic_mean_of_the_folds(grid, tmp_path):
    table = read_csv_table(main_table([str(tmp_path / "*")], "csv", confidence=False))
    for method in ("good", "weak"):
        mean = table[(table.method == method) & (table.fold == "mean") & (table.metric == "miou")].value.iloc[0]
        assert mean == pytest.approx((grid[(method, 0)]["miou"] + grid[(method, 1)]["miou"]) / 2, abs=1e-12)
        # The fixture is built so that pooling both folds' episodes would give another number.
        pooled = reference_scores(
            [row for fold in (0, 1) for row in pd.read_csv(tmp_path / f"{method}_{fold}" / "episodes.csv").to_dict("records")]
        )["miou"]
        assert abs(mean - pooled) > 0.5


def stratified_draws(rows: list[dict], resamples: int, seed) -> list[list[int]]:
    """The documented stratified draws, re-stated for 1-way runs: an episode's stratum is its class;
    the classes in CLASSES order each draw ``rng.integers(0, n, size=(resamples, n))`` among their n
    episodes (in episode order). Returns, per resample, the drawn episode numbers."""
    class_of = {row["episode"]: row["class_names"] for row in rows}
    rng = np.random.default_rng(seed)
    drawn: list[list[int]] = [[] for _ in range(resamples)]
    for name in CLASSES:
        members = sorted(episode for episode in class_of if class_of[episode] == name)
        if not members:
            continue
        for resample, draw in enumerate(rng.integers(0, len(members), size=(resamples, len(members)))):
            drawn[resample] += [members[number] for number in draw]
    return drawn


def independent_bootstrap(rows: list[dict], metric: str, resamples: int, seed, level: float = 0.95) -> tuple[float, float]:
    """Resample whole episodes with the documented draws, recompute the metric by hand each time."""
    by_episode: dict[int, list[dict]] = {}
    for row in rows:
        by_episode.setdefault(row["episode"], []).append(row)
    replicates = []
    for drawn in stratified_draws(rows, resamples, seed):
        resampled = [row for episode in drawn for row in by_episode[episode]]
        replicates.append(reference_scores(resampled)[metric])
    return tuple(np.percentile(replicates, [50 * (1 - level), 100 - 50 * (1 - level)]))


@pytest.mark.parametrize("metric", ["miou", "fbiou", "er"])
def test_bootstrap_interval_matches_an_independent_computation(tmp_path, metric):
    rows = episode_rows(25, 0.6, seed=3)
    results = write_run(tmp_path / "run", "good", 0, rows, fingerprint="abc")
    counts = read_episode_counts(tmp_path / "run" / "episodes.csv", results)
    low, high = bootstrap_interval(counts, metric, resamples=200, seed=7)
    assert (low, high) == pytest.approx(independent_bootstrap(rows, metric, 200, 7), abs=1e-9)
    assert low < results[metric] < high

    # The table's interval for that run: the same computation with the run's documented seed.
    table = read_csv_table(main_table([str(tmp_path / "run")], "csv", seed=5, resamples=200))
    cell = table[(table.fold == "0") & (table.metric == metric)].iloc[0]
    expected = independent_bootstrap(rows, metric, 200, run_bootstrap_seed(5, "abc"))
    assert (cell.ci_low, cell.ci_high) == pytest.approx(expected, abs=1e-9)


def test_paired_test_marks_the_better_method(grid, tmp_path):
    table = read_csv_table(main_table([str(tmp_path / "*")], "csv", resamples=200))
    miou = table[table.metric == "miou"]
    for fold in ("0", "1", "mean"):
        good = miou[(miou.method == "good") & (miou.fold == fold)].iloc[0]
        weak = miou[(miou.method == "weak") & (miou.fold == fold)].iloc[0]
        assert good.best and not weak.best and good.comparable
    # 40 episodes of a much better method: significant; the markdown marks it bold with a dagger.
    assert miou[(miou.method == "good") & (miou.fold == "1")].significant.iloc[0]
    markdown = main_table([str(tmp_path / "*")], "markdown", resamples=200)
    assert f"**{grid[('good', 1)]['miou']:.1f}**†" in markdown


def test_paired_bootstrap_and_wilcoxon_against_references(grid, tmp_path):
    counts = {method: read_episode_counts(tmp_path / f"{method}_1" / "episodes.csv", grid[(method, 1)]) for method in ("good", "weak")}
    result = paired_test(counts["good"], counts["weak"], "miou", resamples=300, seed=4)
    good_rows = pd.read_csv(tmp_path / "good_1" / "episodes.csv").to_dict("records")
    weak_rows = pd.read_csv(tmp_path / "weak_1" / "episodes.csv").to_dict("records")
    draws = stratified_draws(good_rows, 300, 4)  # both runs: the same episodes, so the same strata and draws
    assert draws == stratified_draws(weak_rows, 300, 4)
    differences = np.array([
        reference_scores([good_rows[i] for i in draw])["miou"] - reference_scores([weak_rows[i] for i in draw])["miou"] for draw in draws
    ])
    assert result.p_value == pytest.approx(min(1.0, 2 * min(np.mean(differences <= 0), np.mean(differences >= 0))))
    assert result.difference == pytest.approx(grid[("good", 1)]["miou"] - grid[("weak", 1)]["miou"])

    ranked = paired_test(counts["good"], counts["weak"], "miou", test="wilcoxon")
    per_episode = [np.array([row["intersection_1"] / row["union_1"] * 100 for row in rows]) for rows in (good_rows, weak_rows)]
    assert ranked.p_value == pytest.approx(wilcoxon(*per_episode).pvalue)


def test_mixed_fingerprints_are_flagged_never_compared(tmp_path):
    write_run(tmp_path / "a", "good", 0, episode_rows(12, 0.8, 1), fingerprint="1111aaaa", seed=0)
    write_run(tmp_path / "b", "weak", 0, episode_rows(12, 0.3, 2), fingerprint="2222bbbb", seed=1)
    markdown = main_table([str(tmp_path / "a"), str(tmp_path / "b")], "markdown", resamples=50)
    assert "Not compared" in markdown and "1111aaaa" in markdown and "2222bbbb" in markdown
    assert " (a) " in markdown and " (b) " in markdown
    assert "**" not in markdown.split("mean: arithmetic")[0]  # no best marked on different episodes
    table = read_csv_table(main_table([str(tmp_path / "*")], "csv", resamples=50))
    assert not table.comparable.any() and not table.best.any()
    assert "Not compared" in main_table([str(tmp_path / "*")], "latex", resamples=50)


def test_seeds_average_within_a_cell_and_duplicates_are_refused(tmp_path):
    first = write_run(tmp_path / "s0", "good", 0, episode_rows(8, 0.7, 1), fingerprint="seed0", seed=0)
    second = write_run(tmp_path / "s1", "good", 0, episode_rows(8, 0.6, 2), fingerprint="seed1", seed=1)
    table = read_csv_table(main_table([str(tmp_path / "s*")], "csv", resamples=50))
    cell = table[(table.fold == "0") & (table.metric == "miou")].iloc[0]
    assert cell.value == pytest.approx((first["miou"] + second["miou"]) / 2) and cell.runs == 2
    write_run(tmp_path / "again", "good", 0, episode_rows(8, 0.7, 1), fingerprint="seed0", seed=0)
    with pytest.raises(FsbenchError, match="same episodes"):
        main_table([str(tmp_path / "*")], "csv")


def test_latex_is_booktabs_and_well_formed(grid, tmp_path):
    latex = main_table([str(tmp_path / "*")], "latex", resamples=50)
    assert latex.count("\\begin{table}") == 3 == latex.count("\\end{table}")
    for command in ("\\toprule", "\\midrule", "\\bottomrule", "\\cmidrule(lr){2-4}", "\\multicolumn{3}{c}{1-shot}"):
        assert command in latex
    assert "\\hline" not in latex and latex.isascii()
    body = latex.replace("\\{", "").replace("\\}", "")
    assert body.count("{") == body.count("}")
    for table in re.findall(r"\\begin\{tabular\}\{(\w+)\}(.*?)\\end\{tabular\}", latex, re.S):
        columns = len(table[0])
        for line in table[1].splitlines():
            if line.endswith("\\\\") and "multicolumn" not in line:
                assert line.count(" & ") == columns - 1
    assert "\\textbf{" in latex and "$^\\dagger$" in latex


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: [str(root / "nothing*")], "matches no run folder"),
        (lambda root: (root / "empty").mkdir() or [str(root / "empty")], "has no results.json"),
        (lambda root: (root / "bad").mkdir() or (root / "bad" / "results.json").write_text("{oops") and [str(root / "bad")], "malformed results.json"),
        (lambda root: (root / "partial").mkdir() or (root / "partial" / "results.json").write_text('{"method": "x"}') and [str(root / "partial")], "missing 'benchmark'"),
    ],
)
def test_bad_input_is_a_one_line_error_naming_the_file(tmp_path, make, message):
    patterns = make(tmp_path)
    with pytest.raises(FsbenchError, match=message) as error:
        main_table(patterns)
    assert "\n" not in str(error.value) and str(tmp_path) in str(error.value)


def test_episodes_csv_that_disagrees_with_results_is_refused(tmp_path):
    write_run(tmp_path / "run", "good", 0, episode_rows(10, 0.7, 1), fingerprint="x")
    frame = pd.read_csv(tmp_path / "run" / "episodes.csv")
    frame.loc[0, "intersection_1"] += 3
    frame.to_csv(tmp_path / "run" / "episodes.csv", index=False)
    with pytest.raises(FsbenchError, match="episodes.csv gives miou"):
        collect_runs([str(tmp_path / "run")])
    assert len(collect_runs([str(tmp_path / "run")], with_episodes=False)) == 1  # no intervals: no episodes read


def test_run_row_in_every_format(tmp_path):
    results = write_run(tmp_path / "run", "good", 2, episode_rows(10, 0.7, 1), fingerprint="x", shot=5)
    markdown = format_run_row(results)
    assert "good (resnet18)" in markdown and "1-way 5-shot fold 2" in markdown
    assert all(f"{results[metric]:.1f}" in markdown for metric in ("miou", "fbiou", "er"))
    assert "\\toprule" in format_run_row(results, "latex", tmp_path / "run" / "episodes.csv")
    rows = read_csv_table(format_run_row(results, "csv", tmp_path / "run" / "episodes.csv"))
    assert list(rows.metric) == ["miou", "fbiou", "er"] and list(rows.value) == [results[m] for m in ("miou", "fbiou", "er")]
    assert rows.ci_low.notna().all()


def test_two_way_rows_count_each_way_for_its_own_class(tmp_path):
    """2-way: way n of a row belongs to the n-th class name; ER needs both presences right."""
    def row(episode, names, inter, union, present, predicted):
        return {"episode": episode, "query_index": 0, "class_names": ";".join(names),
                "intersection_1": inter[0], "union_1": union[0], "intersection_2": inter[1], "union_2": union[1],
                "present_1": present[0], "predicted_present_1": predicted[0], "present_2": present[1], "predicted_present_2": predicted[1],
                "bg_intersection": 50, "bg_union": 60, "fg_intersection": 20, "fg_union": 40}
    rows = [
        row(0, ["red circle", "blue square"], (10, 0), (20, 5), (1, 0), (1, 0)),
        row(1, ["blue square", "green star"], (6, 9), (12, 10), (1, 1), (1, 0)),
    ]
    folder = tmp_path / "two_way"
    folder.mkdir()
    pd.DataFrame(rows).to_csv(folder / "episodes.csv", index=False)
    # By hand: red circle 10/20, blue square (0 + 6)/(5 + 12), green star 9/10; FB (50/60 + 20/40) / 2; ER 1 of 2.
    expected = {"miou": 100 * (10 / 20 + 6 / 17 + 9 / 10) / 3, "fbiou": 100 * (50 / 60 + 20 / 40) / 2, "er": 50.0}
    results = {"method": "m", "benchmark": "toy", "fold": 0, "way": 2, "shot": 1, "seed": 0, "episodes": 2,
               "episode_fingerprint": "two", **expected, "class_iou": {name: 0.0 for name in CLASSES}}
    (folder / "results.json").write_text(json.dumps(results))
    counts = read_episode_counts(folder / "episodes.csv", results)
    assert counts.class_intersection.tolist() == [[10, 0, 0], [0, 6, 9]]
    assert counts.class_union.tolist() == [[20, 5, 0], [0, 12, 10]]
    assert counts.exact.tolist() == [1, 0]
    table = read_csv_table(main_table([str(folder)], "csv", resamples=20))
    assert table[(table.fold == "0")].set_index("metric").value.to_dict() == pytest.approx(expected)


def test_trained_and_untrained_runs_of_one_method_are_separate_rows(tmp_path):
    rows = episode_rows(8, 0.7, 1)
    for steps in (0, 400):
        results = write_run(tmp_path / f"steps{steps}", "good", 0, rows if steps else episode_rows(8, 0.2, 1), fingerprint="same")
        (tmp_path / f"steps{steps}" / "results.json").write_text(json.dumps({**results, "train_steps": steps}))
    markdown = main_table([str(tmp_path / "*")], "markdown", resamples=50)
    assert "good (resnet18, 0 steps)" in markdown and "good (resnet18, 400 steps)" in markdown
    assert "Not compared" not in markdown


def test_table_modules_import_one_way():
    """tables -> table_formats -> table_model: no module imports one that imports it back."""
    import ast

    import fsbench

    def imported(module: str) -> set:
        tree = ast.parse((Path(fsbench.__file__).parent / f"{module}.py").read_text())
        names = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        names |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        return {name for name in names if name.startswith("fsbench.")}

    assert "fsbench.table_formats" in imported("tables") and "fsbench.table_model" in imported("tables")
    assert "fsbench.tables" not in imported("table_formats") and "fsbench.table_model" in imported("table_formats")
    assert not {"fsbench.tables", "fsbench.table_formats"} & imported("table_model")


# --- unfinished runs ------------------------------------------------------------------------------------
def write_unfinished(folder: Path, status: dict | str | None) -> None:
    """A run folder as a failed, interrupted or running run leaves it: config.json, maybe status.json."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"method": "good", "fold": 0}))
    if status is not None:
        (folder / "status.json").write_text(status if isinstance(status, str) else json.dumps(status))


def test_unfinished_runs_are_skipped_with_a_note(grid, tmp_path, capsys):
    finished_only = main_table([str(tmp_path / "*")], "csv", resamples=30)
    write_unfinished(tmp_path / "crashed", {"state": "failed", "error": "CUDA out of memory\nat step 12", "updated": "2026-01-01T00:00:00"})
    write_unfinished(tmp_path / "going", {"state": "running", "updated": "2026-01-01T00:00:00"})
    write_unfinished(tmp_path / "killed", None)  # killed before it could write a status
    write_unfinished(tmp_path / "garbled", "{not json")
    capsys.readouterr()
    assert main_table([str(tmp_path / "*")], "csv", resamples=30) == finished_only
    note = capsys.readouterr().err
    assert note.count("\n") == 1 and "skipped 4 unfinished runs (no results.json)" in note
    for name, state in (("crashed", "failed: CUDA out of memory"), ("going", "running"), ("killed", "state unknown"), ("garbled", "state unknown")):
        assert f"{tmp_path / name} ({state})" in note
    assert "at step 12" not in note  # the first line of an error only


def test_a_folder_with_results_json_is_finished_whatever_its_status_says(tmp_path, capsys):
    results = write_run(tmp_path / "run", "good", 0, episode_rows(6, 0.7, 1), fingerprint="x")
    (tmp_path / "run" / "status.json").write_text(json.dumps({"state": "running"}))
    table = read_csv_table(main_table([str(tmp_path / "run")], "csv", confidence=False))
    assert table[(table.metric == "miou") & (table.fold == "0")].value.iloc[0] == results["miou"]
    assert "unfinished" not in capsys.readouterr().err


def test_a_pattern_with_only_unfinished_runs_is_an_error(grid, tmp_path):
    write_unfinished(tmp_path / "late_a", {"state": "interrupted"})
    write_unfinished(tmp_path / "late_b", {"state": "failed", "error": "disk full"})
    with pytest.raises(FsbenchError, match=r"late_\* names no finished run, only 2 unfinished .*late_a \(interrupted\).*late_b \(failed: disk full\)") as error:
        main_table([str(tmp_path / "good_0"), str(tmp_path / "late_*")])
    assert "\n" not in str(error.value)
    with pytest.raises(FsbenchError, match="names no finished run"):
        main_table([str(tmp_path / "late_a")])


# --- what may share a cell, a column, a table -------------------------------------------------------------
def info(dataset: str = "data/custom", folds: int = 4, fold: int = 0, lists: str | None = None, class_split: str = "interleaved") -> dict:
    """A coco_json-like benchmark_info; the list fingerprint differs per fold, as real ones do."""
    return {"benchmark": "coco_json", "fold": fold, "protocol": "hsnet", "dataset": dataset, "layout": "unified", "folds": folds,
            "novel_classes": [fold + 1], "class_split": class_split, "standard_split": False,
            "list_fingerprint": lists or f"{dataset}-{folds}-{fold}", "pairs": {"train": 10, "test": 5}, "skipped_bad_files": 0}


def miou_cells(tmp_path: Path, pattern: str = "*") -> pd.DataFrame:
    table = read_csv_table(main_table([str(tmp_path / pattern)], "csv", confidence=False))
    return table[table.metric == "miou"]


def test_two_datasets_are_two_tables_even_on_equal_episode_fingerprints(tmp_path):
    """Two generated coco_json datasets with the same file names give the same episode fingerprint;
    they must neither be averaged nor refused as one evaluation repeated."""
    first = write_run(tmp_path / "a", "good", 0, episode_rows(8, 0.7, 1), "same", benchmark="coco_json", benchmark_info=info("data/a"))
    second = write_run(tmp_path / "b", "good", 0, episode_rows(8, 0.3, 2), "same", benchmark="coco_json", benchmark_info=info("data/b"))
    cells = miou_cells(tmp_path).set_index(["data", "fold"]).value
    assert cells[("dataset data/a", "0")] == first["miou"] and cells[("dataset data/b", "0")] == second["miou"]
    markdown = main_table([str(tmp_path / "*")], "markdown", confidence=False)
    assert markdown.count("#### mIoU") == 2 and "data: dataset data/a" in markdown and "data: dataset data/b" in markdown
    assert "several runs" not in markdown


def test_fold_counts_are_different_data(tmp_path):
    write_run(tmp_path / "two", "good", 0, episode_rows(8, 0.7, 1), "e2", benchmark="coco_json", benchmark_info=info(folds=2))
    write_run(tmp_path / "four", "good", 0, episode_rows(8, 0.3, 2), "e4", benchmark="coco_json", benchmark_info=info(folds=4))
    cells = miou_cells(tmp_path)
    assert sorted(cells[cells.fold == "0"].data) == ["folds 2", "folds 4"] and (cells.runs == 1).all()
    assert cells.data_id.nunique() == 2


def test_folds_of_one_dataset_share_a_table_and_seeds_share_a_cell(tmp_path):
    """Each fold has its own lists (list_fingerprint); the folds still make one table with a mean, and
    two seeds on one fold's lists average into one cell."""
    scores = {}
    for fold, seed in ((0, 0), (0, 1), (1, 0)):
        scores[(fold, seed)] = write_run(tmp_path / f"f{fold}s{seed}", "good", fold, episode_rows(8, 0.6, 3 * fold + seed), f"e{fold}{seed}",
                                         seed=seed, benchmark="coco_json", benchmark_info=info(fold=fold))["miou"]
    cells = miou_cells(tmp_path).set_index("fold")
    assert len(cells) == 3 and cells.data.isna().all()  # one dataset: no data label needed
    assert cells.loc["0"].value == pytest.approx((scores[(0, 0)] + scores[(0, 1)]) / 2) and cells.loc["0"].runs == 2
    assert cells.loc["mean"].value == pytest.approx(((scores[(0, 0)] + scores[(0, 1)]) / 2 + scores[(1, 0)]) / 2)


def test_lists_that_differ_under_one_description_split_by_fingerprint(tmp_path):
    """A dataset regenerated in place: fold 0 has runs on two lists, so nothing says which fold-1 run
    belongs with which; each list set is its own table, labelled, with no cross-list mean."""
    write_run(tmp_path / "old", "good", 0, episode_rows(8, 0.7, 1), "e1", benchmark="coco_json", benchmark_info=info(lists="aaaa1111"))
    write_run(tmp_path / "new", "good", 0, episode_rows(8, 0.3, 2), "e2", benchmark="coco_json", benchmark_info=info(lists="bbbb2222"))
    write_run(tmp_path / "new1", "good", 1, episode_rows(8, 0.5, 3), "e3", benchmark="coco_json", benchmark_info=info(fold=1, lists="cccc3333"))
    cells = miou_cells(tmp_path)
    assert sorted(zip(cells.lists, cells.fold)) == [("aaaa1111", "0"), ("aaaa1111", "mean"), ("bbbb2222", "0"), ("bbbb2222", "mean"),
                                                   ("cccc3333", "1"), ("cccc3333", "mean")]
    assert (cells.runs == 1).all()
    assert "lists aaaa1111" in main_table([str(tmp_path / "*")], "markdown", confidence=False)


@pytest.mark.parametrize("key, first, second, label", [
    ("class_split", "interleaved", "contiguous", "class split contiguous"),
    ("replay", "hsnet", "ifsl", "replay ifsl"),
    ("boundary", "ignore", "background", "boundary background"),
    ("task", "fss", "fscs", "task fscs"),
    ("protocol", "hsnet", "pfenet", "protocol pfenet"),
    ("eval_resolution", "400x400", "original", "scored at original"),
])
def test_runs_that_differ_in_a_setting_are_never_averaged(tmp_path, key, first, second, label):
    for name, value, quality in (("one", first, 0.7), ("two", second, 0.3)):
        extra = {"benchmark_info": info(class_split=value)} if key == "class_split" else {"benchmark_info": info(), key: value}
        write_run(tmp_path / name, "good", 0, episode_rows(8, quality, len(name)), f"e{name}", benchmark="coco_json", **extra)
    cells = miou_cells(tmp_path)
    assert len(cells[cells.fold == "0"]) == 2 and (cells.runs == 1).all()
    assert sorted(cells[cells.fold == "0"][key]) == sorted([first, second])
    assert label in main_table([str(tmp_path / "*")], "markdown", confidence=False)


def test_old_results_without_the_new_keys_still_make_a_table(tmp_path):
    """No benchmark_info, replay or boundary (an older fsbench): the runs load and share a table."""
    write_run(tmp_path / "a", "good", 0, episode_rows(6, 0.7, 1), "e1")
    write_run(tmp_path / "b", "weak", 0, episode_rows(6, 0.3, 2), "e1")
    cells = miou_cells(tmp_path)
    assert len(cells) == 4 and cells.comparable.all() and (cells[["class_split", "replay", "boundary", "data", "lists"]].isna()).all().all()


def test_repeated_evaluations_are_counted_right(tmp_path):
    for name in ("r1", "r2", "r3"):
        write_run(tmp_path / name, "good", 0, episode_rows(6, 0.7, 1), "samesame", seed=0)
    write_run(tmp_path / "q1", "good", 0, episode_rows(6, 0.6, 2), "otherset", seed=1)
    write_run(tmp_path / "q2", "good", 0, episode_rows(6, 0.6, 2), "otherset", seed=1)
    write_run(tmp_path / "fine", "good", 0, episode_rows(6, 0.5, 3), "thirdset", seed=2)
    with pytest.raises(FsbenchError) as error:
        main_table([str(tmp_path / "*")], confidence=False)
    message = str(error.value)
    assert message.startswith("5 evaluations of good (resnet18) 1-shot fold 0 repeat the same episodes")
    assert "2 on episodes othersetf" not in message and "2 on episodes otherset:" in message and "3 on episodes samesame:" in message
    assert all(str(tmp_path / name) in message for name in ("r1", "r2", "r3", "q1", "q2")) and "fine" not in message
