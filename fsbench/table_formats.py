"""Rendering built tables (fsbench.table_model.MetricTable) as markdown (tabulate), LaTeX (booktabs) or CSV.

Markdown prints one table per metric and way/shot group, narrow enough for a terminal; LaTeX puts a
metric's way/shot groups side by side under \\multicolumn headers, as papers do (tabulate has no
grouped headers, so that one is written here); CSV is long-form, one line per cell, full precision.
"""
from __future__ import annotations

import io

import pandas as pd
from tabulate import tabulate

from fsbench.bootstrap import METRIC_LABELS
from fsbench.table_model import group_label

MISSING = "-"


# (setting key, how the line names it); a setting left empty (not recorded, or not used) is not shown.
SETTING_WORDS = (
    ("task", "task"), ("protocol", "protocol"), ("class_split", "class split"), ("replay", "replay"),
    ("boundary", "boundary"), ("eval_resolution", "scored at"), ("data_label", "data:"), ("lists", "lists"),
)


def _setting_line(setting: dict) -> str:
    """What the table's runs share beyond the benchmark, e.g. "task fss, protocol hsnet, scored at 400x400"."""
    return ", ".join(f"{words} {setting[key]}" for key, words in SETTING_WORDS if setting.get(key))


DAGGER = "\N{DAGGER}"


def _legend(tables: list, options) -> list[str]:
    """What the marks mean, as plain text (markdown's marks; LaTeX escapes it and swaps in its dagger)."""
    lines = ["mean: arithmetic mean of the folds."]
    if options.confidence:
        lines.append(
            f"[low, high]: {round(100 * options.level)}% percentile bootstrap interval over episodes, resampled "
            f"within each class ({options.resamples} resamples, seed {options.seed})."
        )
    test = "paired bootstrap" if options.test == "bootstrap" else "Wilcoxon signed-rank test"
    best = "Bold: best in its column among rows evaluated on the same episodes"
    if options.significance:
        best += f"; {DAGGER}: better than every other such row at p < 0.05 ({test} over the shared episodes)"
    lines.append(best + ".")
    fold_cells = [cell for table in tables for column in table.columns if column.fold is not None for cell in column.cells.values()]
    if any(len(cell.run_dirs) > 1 for cell in fold_cells):
        lines.append("A cell with several runs (seeds) shows their mean; its interval resamples each run's episodes.")
    if any(cell.episode_set for cell in fold_cells):
        lines.append("(a), (b), ...: cells of one column computed on different episodes; such cells are not compared.")
    return lines


def _cell_text(cell, latex: bool) -> str:
    if cell is None:
        return MISSING
    text = f"{cell.value:.1f}"
    if cell.best:
        text = f"\\textbf{{{text}}}" if latex else f"**{text}**"
    if cell.significant:
        text += "$^\\dagger$" if latex else "†"
    if cell.episode_set:
        text += f"$^{{({cell.episode_set})}}$" if latex else f" ({cell.episode_set})"
    if cell.interval is not None:
        low, high = cell.interval
        if not latex:
            return f"{text} [{low:.1f}, {high:.1f}]"
        # The interval on a second line under the value: side by side, a 10-column table is wider than a page.
        return f"\\begin{{tabular}}[t]{{@{{}}c@{{}}}}{text}\\\\[-2pt]{{\\scriptsize[{low:.1f}, {high:.1f}]}}\\end{{tabular}}"
    return text


def _column_header(column) -> str:
    return "mean" if column.fold is None else f"fold {column.fold}"


# --- markdown ---------------------------------------------------------------------------------------
def _markdown(tables: list, options) -> str:
    blocks = []
    for table in tables:
        ways = {way for way, _ in table.groups}
        for way, shot in table.groups:
            columns = [column for column in table.columns if (column.way, column.shot) == (way, shot)]
            rows = [key for key in table.rows if any(key in column.cells for column in columns)]
            body = [[table.row_labels[key], *(_cell_text(column.cells.get(key), latex=False) for column in columns)] for key in rows]
            title = f"#### {METRIC_LABELS[table.metric]} (%), {table.setting['benchmark']}, {group_label(way, shot, ways)}"
            setting = _setting_line(table.setting)
            lines = [title, "", *([setting, ""] if setting else [])]
            lines.append(tabulate(body, headers=["method", *map(_column_header, columns)], tablefmt="github", disable_numparse=True))
            notes = [text for group, text in table.notes if group == (way, shot)]
            if notes:
                lines += ["", *(f"- {text}" for text in notes)]
            blocks.append("\n".join(lines))
    legend = " ".join(_legend(tables, options))
    return "\n\n".join([*blocks, legend]) + "\n"


# --- LaTeX --------------------------------------------------------------------------------------------
WIDE_TABLE_COLUMNS = 6
LATEX_SPECIAL = {"\\": "\\textbackslash{}", "&": "\\&", "%": "\\%", "$": "\\$", "#": "\\#", "_": "\\_", "{": "\\{",
                 "}": "\\}", "~": "\\textasciitilde{}", "^": "\\textasciicircum{}", "<": "\\textless{}", ">": "\\textgreater{}"}


def latex_escape(text: str) -> str:
    """Plain text made safe for LaTeX; characters outside ASCII become '?' so the output compiles anywhere."""
    escaped = "".join(LATEX_SPECIAL.get(character, character) for character in str(text))
    return escaped.encode("ascii", "replace").decode("ascii")


def _latex_table(table, options, legend: list[str]) -> str:
    ways = {way for way, _ in table.groups}
    spans = []
    for way, shot in table.groups:
        columns = [column for column in table.columns if (column.way, column.shot) == (way, shot)]
        spans.append(((way, shot), columns))
    column_count = sum(len(columns) for _, columns in spans)
    setting = _setting_line(table.setting)
    caption = f"{METRIC_LABELS[table.metric]} (\\%) on {latex_escape(table.setting['benchmark'])}"
    caption += f" ({latex_escape(setting)})." if setting else "."
    lines = [
        "\\begin{table}[t]",
        "\\centering",
        "\\small",
        f"\\caption{{{caption} {' '.join(legend)}}}",
        # Wider than a column of text beyond ~6 numbers (two shots side by side): scale to the line width.
        *(["\\resizebox{\\linewidth}{!}{%"] if column_count > WIDE_TABLE_COLUMNS else []),
        f"\\begin{{tabular}}{{l{'c' * column_count}}}",
        "\\toprule",
    ]
    group_cells, rules, start = [], [], 2
    for (way, shot), columns in spans:
        group_cells.append(f"\\multicolumn{{{len(columns)}}}{{c}}{{{group_label(way, shot, ways)}}}")
        rules.append(f"\\cmidrule(lr){{{start}-{start + len(columns) - 1}}}")
        start += len(columns)
    lines.append(" & ".join(["", *group_cells]) + " \\\\")
    lines.append(" ".join(rules))
    all_columns = [column for _, columns in spans for column in columns]
    lines.append(" & ".join(["Method", *map(_column_header, all_columns)]) + " \\\\")
    lines.append("\\midrule")
    for key in table.rows:
        cells = [_cell_text(column.cells.get(key), latex=True) for column in all_columns]
        lines.append(" & ".join([latex_escape(table.row_labels[key]), *cells]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}" + ("}" if column_count > WIDE_TABLE_COLUMNS else "")]
    if table.notes:
        lines.append("\\par\\smallskip{\\footnotesize " + " ".join(latex_escape(text) for _, text in table.notes) + "}")
    lines.append("\\end{table}")
    return "\n".join(lines)


def _latex(tables: list, options) -> str:
    legend = [latex_escape(line.replace(DAGGER, "@dagger@")).replace("@dagger@", "$^\\dagger$") for line in _legend(tables, options)]
    wide = any(len(table.columns) > WIDE_TABLE_COLUMNS for table in tables)
    preamble = "% needs \\usepackage{booktabs}" + (" and \\usepackage{graphicx} (\\resizebox)" if wide else "")
    return "\n\n".join([preamble, *(_latex_table(table, options, legend) for table in tables)]) + "\n"


# --- CSV ----------------------------------------------------------------------------------------------
CSV_COLUMNS = [
    "metric", "benchmark", "task", "protocol", "eval_resolution", "class_split", "replay", "boundary", "data", "data_id",
    "lists", "way", "shot", "fold", "method", "backbone",
    "train_steps", "row", "value", "ci_low", "ci_high", "runs", "seeds", "episode_fingerprints", "comparable",
    "episode_set", "best", "significant", "p_value", "test",
]


def _csv_records(tables: list, options) -> list[dict]:
    records = []
    for table in tables:
        for column in table.columns:
            for key in table.rows:
                cell = column.cells.get(key)
                if cell is None:
                    continue
                method, backbone, steps = key
                records.append({
                    "metric": table.metric,
                    **table.setting,
                    "data": table.setting["data_label"],
                    "way": column.way,
                    "shot": column.shot,
                    "fold": "mean" if column.fold is None else column.fold,
                    "method": method,
                    "backbone": backbone,
                    "train_steps": "" if steps is None else steps,
                    "row": table.row_labels[key],
                    "value": cell.value,
                    "ci_low": cell.interval[0] if cell.interval else "",
                    "ci_high": cell.interval[1] if cell.interval else "",
                    "runs": len(cell.run_dirs),
                    "seeds": ";".join(map(str, cell.seeds)),
                    "episode_fingerprints": _flat_fingerprints(cell.fingerprints),
                    "comparable": column.comparable,
                    "episode_set": cell.episode_set,
                    "best": cell.best,
                    "significant": cell.significant,
                    "p_value": "" if cell.p_value is None else cell.p_value,
                    "test": options.test if cell.p_value is not None else "",
                })
    return records


def _flat_fingerprints(fingerprints: tuple) -> str:
    if fingerprints and isinstance(fingerprints[0], tuple):
        return ";".join(print_ for _, prints in fingerprints for print_ in prints)
    return ";".join(fingerprints)


def _csv(tables: list, options) -> str:
    buffer = io.StringIO()
    pd.DataFrame.from_records(_csv_records(tables, options), columns=CSV_COLUMNS).to_csv(buffer, index=False)
    return buffer.getvalue()


def render_tables(tables: list, format: str, options) -> str:
    """All tables in one text: markdown, latex or csv."""
    return {"markdown": _markdown, "latex": _latex, "csv": _csv}[format](tables, options)


def render_run_row(tables: list, format: str, options) -> str:
    """One run (one table per metric, one cell each) as a single row with the three metrics."""
    if format == "csv":
        for table in tables:  # a single run has one fold; its "mean" would only repeat it
            table.columns = [column for column in table.columns if column.fold is not None]
        return _csv(tables, options)
    first = tables[0]
    key, column = first.rows[0], first.columns[0]
    run = f"{column.way}-way {column.shot}-shot fold {column.fold}"
    latex = format == "latex"
    headers = ["method", "benchmark", "run", *(METRIC_LABELS[table.metric] for table in tables)]
    values = [_cell_text(table.columns[0].cells[key], latex) for table in tables]
    if not latex:
        row = [first.row_labels[key], first.setting["benchmark"], run, *values]
        return tabulate([row], headers=headers, tablefmt="github", disable_numparse=True)
    row = [latex_escape(first.row_labels[key]), latex_escape(first.setting["benchmark"]), run, *values]
    return "\n".join([
        f"\\begin{{tabular}}{{lll{'c' * len(values)}}}",
        "\\toprule",
        " & ".join(headers) + " \\\\",
        "\\midrule",
        " & ".join(row) + " \\\\",
        "\\bottomrule",
        "\\end{tabular}",
    ])
