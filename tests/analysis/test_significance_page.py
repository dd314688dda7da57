"""The significance table as a study logs it on its parent run: a small HTML page with no script (MLflow's artifact
preview shows it; no 4 MB of inlined plotly.js), one cell per header column (no empty trailing column), and the
same rows as the text table."""

from __future__ import annotations

from html.parser import HTMLParser

from argbench.analysis import significance

TASKS = ("sdoc", "sdeb", "epa")


def result(rows: int = 16) -> dict:
    made = [{"ablation": f"with_{i // len(TASKS)}_relu", "task": TASKS[i % len(TASKS)], "a": 0.5, "b": 0.5 + i / 100,
             "delta": i / 100, "ci": [i / 100 - 0.02, i / 100 + 0.02], "p_value": 0.5 / (i + 1),
             "p_holm": min(1.0, 8 / (i + 1)), "significant": i > 10, "seeds_a": 2, "seeds_b": 2, "n": 100}
            for i in range(rows)]
    return {"group": "norm", "baseline": "base", "baseline_run": "base", "split": "test", "metric": "acc@1",
            "view": "official", "epoch": "selected", "rows": made, "missing": ["with_layernorm"],
            "not_compared": {"with_layernorm": "trained over baseline, not over base"}}


class _Cells(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self.scripts, self.bold, self.in_cell = [], 0, 0, False

    def handle_starttag(self, tag, attrs):
        if tag == "tr":
            self.rows.append([])
            self.bold += dict(attrs).get("class") == "sig"
        elif tag in ("td", "th"):
            self.rows[-1].append("")
            self.in_cell = True
        self.scripts += tag == "script"

    def handle_endtag(self, tag):
        self.in_cell = self.in_cell and tag not in ("td", "th")

    def handle_data(self, data):
        if self.in_cell:
            self.rows[-1][-1] += data


def test_the_page_is_small_has_no_script_and_no_empty_column():
    page = significance.table_html(result())
    assert len(page.encode()) < 20_000
    cells = _Cells()
    cells.feed(page)
    header, *rows = cells.rows
    assert cells.scripts == 0 and len(rows) == 16 and cells.bold == 5  # rows 11..15 significant
    assert all(len(row) == len(header) for row in rows) and all(header) and all(map(all, rows))
    assert rows[-1][-1].endswith(" *") and not rows[0][-1].endswith("*")
    assert "not compared: with_layernorm (trained over baseline, not over base)" in page


def test_the_text_table_has_no_empty_trailing_column():
    lines = significance.format_table(result()).splitlines()
    header = lines[1].split()
    assert header[-1] == "p_holm" and lines[-1] == ("not compared: with_layernorm (trained over baseline, not "
                                                    "over base)")
