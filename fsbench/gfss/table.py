"""Generalized FSS tables: one row per approach (novel-only, in-classes, upper bound, combinations),
columns all / in / out / harmonic mean per configuration (a Cityscapes vocabulary configuration or a
fold; folds also get their mean), cells with bootstrap intervals over whole queries, and for
every combination rule its difference from each of its members on the same queries, with a paired
bootstrap p-value. What ``--table`` prints for gfss runs.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tabulate import tabulate

from fsbench.bootstrap import paired_bootstrap_p_value, resample_weights
from fsbench.errors import FsbenchError
from fsbench.gfss.approaches import ROLES
from fsbench.gfss.records import read_gfss_results, read_query_counts
from fsbench.gfss.scores import SCORES, class_ious, interval, subset_means
from fsbench.run_records import PER_FOLD_INFO
from fsbench.table_formats import latex_escape
from fsbench.table_model import TableOptions
from fsbench.tables import run_bootstrap_seed

SCORE_LABELS = {"all": "all", "in": "in", "out": "out", "hmean": "hm"}
SCORE_FIELDS = {"all": "miou_all", "in": "miou_in", "out": "miou_out", "hmean": "hmean"}
# benchmark_info entries that differ between configurations of one dataset (they are columns, not
# tables) or between rows (out_as: a training choice, shown in the row label where a table mixes them).
PER_CONFIGURATION_INFO = ("vocab_config", "out_as")
MISSING = "-"
SIGNIFICANCE_LEVEL = 0.05


@dataclass
class RunApproach:
    """One approach of one run: its scores and (with intervals) bootstrap replicates per score."""

    run_dir: str
    seed: int
    fingerprint: str
    scores: dict[str, float | None]
    replicates: dict[str, np.ndarray] | None = None


@dataclass
class GFSSCell:
    value: float | None
    interval: tuple[float, float] | None
    runs: list[RunApproach]
    replicates: np.ndarray | None = None
    best: bool = False


@dataclass
class GFSSTable:
    setting: dict
    configurations: list[str]
    mean_column: bool
    rows: list[tuple[str, str]]  # (role, label)
    out_as: set = field(default_factory=set)  # what out-of-vocabulary classes became in training (Cityscapes)
    cells: dict = field(default_factory=dict)  # (row, configuration or "mean", score) -> GFSSCell
    comparisons: list[dict] = field(default_factory=list)


def _setting(results: dict) -> dict:
    info = results.get("benchmark_info") or {}
    data = {key: value for key, value in info.items() if key not in PER_FOLD_INFO and key not in PER_CONFIGURATION_INFO}
    return {
        "benchmark": results["benchmark"], "shot": results["shot"], "protocol": str(results.get("protocol") or ""),
        "eval_resolution": str(results.get("eval_resolution") or ""), "data": json.dumps(data, sort_keys=True, default=str),
    }


def _row_label(results: dict, key: str, show_out_as: bool = False) -> tuple[str, str]:
    """(role, label): the approach's label with the backbone of a plain method and, where one table holds
    both, what out-of-vocabulary classes became in training (Cityscapes' --out-as)."""
    approach = results["approaches"][key]
    details = []
    if key == "" and results.get("backbone"):
        details.append(results["backbone"])
    out_as = (results.get("benchmark_info") or {}).get("out_as")
    if show_out_as and out_as:
        details.append(f"out->{out_as}")
    return approach["role"], approach["label"] + (f" ({', '.join(details)})" if details else "")


def _configuration_order(name: str) -> tuple:
    kind, _, number = name.partition(" ")
    return (kind, int(number) if number.isdigit() else number)


def collect(folders: list[Path], options: TableOptions) -> list[tuple[dict, dict, dict]]:
    """(results, {approach key: RunApproach}, member keys of each rule) for every gfss run folder."""
    runs = []
    for folder in folders:
        results = read_gfss_results(Path(folder) / "results.json")
        counts = read_query_counts(Path(folder) / "gfss_queries.csv", results) if options.confidence else None
        weights = None
        if counts:
            first = next(iter(counts.values()))
            # One stratum: a gfss query shows most classes, so class strata (the FS-S rule) would
            # leave most queries alone in a stratum, always drawn, and the interval would collapse to
            # a point. A class missing from a resample has an empty union there and is left out.
            strata = np.zeros(len(first.present), dtype=np.int64)
            weights = resample_weights(strata, options.resamples, run_bootstrap_seed(options.seed, results["episode_fingerprint"]))
        approaches = {}
        for key, approach in results["approaches"].items():
            replicates = None
            if counts is not None:
                table = counts[key]
                replicates = subset_means(class_ious(weights @ table.intersection, weights @ table.union), table.classes,
                                          tuple(results["classes"]["in"]), tuple(results["classes"]["out"]))
            approaches[key] = RunApproach(str(folder), results["seed"], results["episode_fingerprint"],
                                          {score: approach.get(SCORE_FIELDS[score]) for score in SCORES}, replicates)
        runs.append((results, approaches))
    return runs


def _cell(items: list[RunApproach], score: str, options: TableOptions, label: str) -> GFSSCell:
    prints = [item.fingerprint for item in items]
    repeated = sorted({print_ for print_ in prints if prints.count(print_) > 1})
    if repeated:
        dirs = [item.run_dir for item in items if item.fingerprint in repeated]
        raise FsbenchError(f"{len(dirs)} evaluations of {label} repeat the same queries ({', '.join(dirs)}); pass one run per support seed")
    values = [item.scores[score] for item in items]
    if any(value is None for value in values):
        return GFSSCell(None, None, items)
    cell = GFSSCell(float(np.mean(values)), None, items)
    if options.confidence and all(item.replicates is not None for item in items):
        cell.replicates = np.mean([item.replicates[score] for item in items], axis=0)
        cell.interval = interval(cell.replicates, options.level)
    return cell


def build_gfss_tables(runs: list, options: TableOptions) -> list[GFSSTable]:
    """One table per setting (benchmark, data, shot, protocol, scoring resolution)."""
    groups: dict[str, list] = {}
    for results, approaches in runs:
        groups.setdefault(json.dumps(_setting(results), sort_keys=True), []).append((results, approaches))
    tables = []
    for setting_text in sorted(groups):
        members = groups[setting_text]
        configurations = sorted({results["configuration"] for results, _ in members}, key=_configuration_order)
        rows_found: dict[tuple, dict] = {}
        show_out_as = len({(results.get("benchmark_info") or {}).get("out_as") for results, _ in members}) > 1
        for results, approaches in members:
            for key, item in approaches.items():
                row = _row_label(results, key, show_out_as)
                rows_found.setdefault(row, {}).setdefault(results["configuration"], []).append(item)
        rows = sorted(rows_found, key=lambda row: (ROLES.index(row[0]) if row[0] in ROLES else len(ROLES), row[1]))
        folds = all(name.startswith("fold ") for name in configurations)
        table = GFSSTable(json.loads(setting_text), configurations, folds and len(configurations) > 1, rows,
                          {(results.get("benchmark_info") or {}).get("out_as") for results, _ in members})
        for row in rows:
            for configuration, items in rows_found[row].items():
                for score in SCORES:
                    table.cells[(row, configuration, score)] = _cell(items, score, options, f"{row[1]} {configuration}")
            if table.mean_column and all(configuration in rows_found[row] for configuration in configurations):
                for score in SCORES:
                    parts = [table.cells[(row, configuration, score)] for configuration in configurations]
                    if all(part.value is not None for part in parts):
                        replicates = [part.replicates for part in parts]
                        mean = GFSSCell(float(np.mean([part.value for part in parts])), None, [item for part in parts for item in part.runs])
                        if all(replicate is not None for replicate in replicates):
                            mean.replicates = np.mean(replicates, axis=0)
                            mean.interval = interval(mean.replicates, options.level)
                        table.cells[(row, "mean", score)] = mean
        _mark_best(table)
        table.comparisons = _comparisons(members, options, show_out_as)
        tables.append(table)
    return tables


def _mark_best(table: GFSSTable) -> None:
    """Bold the best cell of a column when every row of it was evaluated on the same queries."""
    for configuration in [*table.configurations, *(["mean"] if table.mean_column else [])]:
        for score in SCORES:
            cells = [table.cells.get((row, configuration, score)) for row in table.rows]
            cells = [cell for cell in cells if cell is not None and cell.value is not None]
            if len(cells) < 2 or len({tuple(sorted(item.fingerprint for item in cell.runs)) for cell in cells}) > 1:
                continue
            best = max(cell.value for cell in cells)
            if sum(cell.value == best for cell in cells) < len(cells):
                for cell in cells:
                    cell.best = cell.value == best


def _comparisons(members: list, options: TableOptions, show_out_as: bool) -> list[dict]:
    """Each combination rule minus each of its members (same run, same queries), per configuration and
    score: the difference of the means over runs and a paired bootstrap p-value."""
    grouped: dict[tuple, list] = {}
    for results, approaches in members:
        described = results["approaches"]
        member_keys = [key for key, approach in described.items() if approach["role"] != "combination"]
        for key, approach in described.items():
            if approach["role"] != "combination":
                continue
            for member in member_keys:
                group = (results["configuration"], _row_label(results, key, show_out_as), _row_label(results, member, show_out_as))
                grouped.setdefault(group, []).append((approaches[key], approaches[member]))
    comparisons = []
    for (configuration, rule_row, member_row), pairs in sorted(grouped.items(), key=lambda item: (_configuration_order(item[0][0]), item[0][1:])):
        entry = {"configuration": configuration, "rule": rule_row[1], "member": member_row[1], "scores": {}}
        for score in SCORES:
            differences = [(rule.scores[score], member.scores[score]) for rule, member in pairs]
            if any(value is None for pair in differences for value in pair):
                continue
            difference = float(np.mean([first - second for first, second in differences]))
            p_value = None
            if options.confidence and all(rule.replicates is not None for rule, _ in pairs):
                rule_replicates = np.mean([rule.replicates[score] for rule, _ in pairs], axis=0)
                member_replicates = np.mean([member.replicates[score] for _, member in pairs], axis=0)
                finite = ~(np.isnan(rule_replicates) | np.isnan(member_replicates))
                p_value = paired_bootstrap_p_value(rule_replicates[finite], member_replicates[finite]) if finite.any() else None
            entry["scores"][score] = (difference, p_value)
        comparisons.append(entry)
    return comparisons


# --- rendering ---------------------------------------------------------------------------------------
def _cell_text(cell: GFSSCell | None, latex: bool = False) -> str:
    if cell is None or cell.value is None:
        return MISSING
    text = f"{cell.value:.1f}"
    if cell.best:
        text = f"\\textbf{{{text}}}" if latex else f"**{text}**"
    if cell.interval is not None:
        text += f" [{cell.interval[0]:.1f}, {cell.interval[1]:.1f}]"
    return text


def _title(table: GFSSTable) -> str:
    setting = table.setting
    out_as = sorted({value for value in table.out_as if value})
    parts = [f"{setting['shot']}-shot", f"out-of-vocabulary classes -> {' / '.join(out_as)} in training" if out_as else "", f"protocol {setting['protocol']}" if setting["protocol"] else "",
             f"scored at {setting['eval_resolution']}" if setting["eval_resolution"] else ""]
    return f"Generalized FSS (mIoU %), {setting['benchmark']}: " + ", ".join(part for part in parts if part)


def _difference_text(value: tuple[float, float | None] | None) -> str:
    if value is None:
        return MISSING
    difference, p_value = value
    text = f"{difference:+.1f}"
    if p_value is not None:
        text += f" (p {p_value:.3f}{', sig.' if p_value < SIGNIFICANCE_LEVEL else ''})"
    return text


def _legend(options: TableOptions) -> str:
    lines = ["all: mIoU over every scored class; in: over the base (in-vocabulary) classes, background included where it is a class;",
             "out: over the novel (out-of-vocabulary) classes; hm: harmonic mean of in and out. Bold: best in its column among rows on the same queries."]
    if options.confidence:
        lines.append(f"[low, high]: {round(100 * options.level)}% percentile bootstrap interval over queries, resampled with replacement "
                     f"({options.resamples} resamples, seed {options.seed}); several runs (support seeds) in a cell are averaged.")
    return " ".join(lines)


def _markdown(tables: list[GFSSTable], options: TableOptions) -> str:
    blocks = []
    for table in tables:
        lines = [f"#### {_title(table)}"]
        for configuration in [*table.configurations, *(["mean"] if table.mean_column else [])]:
            body = [[role, label, *(_cell_text(table.cells.get(((role, label), configuration, score))) for score in SCORES)]
                    for role, label in table.rows if any(((role, label), configuration, score) in table.cells for score in SCORES)]
            lines += ["", f"{configuration}:", "", tabulate(body, headers=["role", "approach", *(SCORE_LABELS[score] for score in SCORES)],
                                                          tablefmt="github", disable_numparse=True)]
            comparisons = [entry for entry in table.comparisons if entry["configuration"] == configuration]
            if comparisons:
                rows = [[entry["rule"], entry["member"], *(_difference_text(entry["scores"].get(score)) for score in SCORES)] for entry in comparisons]
                lines += ["", f"{configuration}, combination minus member (same queries):", "",
                          tabulate(rows, headers=["combination", "member", *(SCORE_LABELS[score] for score in SCORES)],
                                   tablefmt="github", disable_numparse=True)]
        blocks.append("\n".join(lines))
    return "\n\n".join([*blocks, _legend(options)]) + "\n"


def _latex(tables: list[GFSSTable], options: TableOptions) -> str:
    out = ["% needs \\usepackage{booktabs} and \\usepackage{graphicx} (\\resizebox)"]
    for table in tables:
        groups = [*table.configurations, *(["mean"] if table.mean_column else [])]
        columns = len(groups) * len(SCORES)
        lines = ["\\begin{table}[t]", "\\centering", "\\small", f"\\caption{{{latex_escape(_title(table))}. {latex_escape(_legend(options))}}}",
                 "\\resizebox{\\linewidth}{!}{%", f"\\begin{{tabular}}{{ll{'c' * columns}}}", "\\toprule"]
        lines.append(" & ".join(["", "", *(f"\\multicolumn{{{len(SCORES)}}}{{c}}{{{latex_escape(group)}}}" for group in groups)]) + " \\\\")
        lines.append(" ".join(f"\\cmidrule(lr){{{3 + index * len(SCORES)}-{2 + (index + 1) * len(SCORES)}}}" for index in range(len(groups))))
        lines.append(" & ".join(["Role", "Approach", *(SCORE_LABELS[score] for _ in groups for score in SCORES)]) + " \\\\")
        lines.append("\\midrule")
        for role, label in table.rows:
            cells = [_cell_text(table.cells.get(((role, label), group, score)), latex=True) for group in groups for score in SCORES]
            lines.append(" & ".join([latex_escape(role), latex_escape(label), *cells]) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}}", "\\end{table}"]
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


CSV_COLUMNS = ["benchmark", "shot", "protocol", "eval_resolution", "configuration", "role", "approach", "score", "value", "ci_low", "ci_high",
               "best", "runs", "seeds", "fingerprints"]


def _csv(tables: list[GFSSTable], options: TableOptions) -> str:
    records = []
    for table in tables:
        for (row, configuration, score), cell in table.cells.items():
            records.append({
                "benchmark": table.setting["benchmark"], "shot": table.setting["shot"], "protocol": table.setting["protocol"],
                "eval_resolution": table.setting["eval_resolution"], "configuration": configuration, "role": row[0], "approach": row[1],
                "score": score, "value": "" if cell.value is None else cell.value,
                "ci_low": cell.interval[0] if cell.interval else "", "ci_high": cell.interval[1] if cell.interval else "",
                "best": cell.best, "runs": len(cell.runs), "seeds": ";".join(str(item.seed) for item in cell.runs),
                "fingerprints": ";".join(item.fingerprint for item in cell.runs),
            })
    buffer = io.StringIO()
    pd.DataFrame.from_records(records, columns=CSV_COLUMNS).to_csv(buffer, index=False)
    return buffer.getvalue()


def render_gfss_tables(tables: list[GFSSTable], format: str, options: TableOptions) -> str:
    return {"markdown": _markdown, "latex": _latex, "csv": _csv}[format](tables, options)


def gfss_table(folders: list[Path], format: str, options: TableOptions) -> str:
    """The tables of the gfss run folders ``folders`` (what --table prints for them)."""
    return render_gfss_tables(build_gfss_tables(collect(folders, options), options), format, options)


def format_gfss_run(run_dir: Path) -> str:
    """One finished run's approaches as a markdown table with intervals: what a gfss run prints last."""
    options = TableOptions(confidence=True, significance=False)
    return gfss_table([Path(run_dir)], "markdown", options)
