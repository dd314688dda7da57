"""Report figures and page, from runs logged to a SQLite store in tmp with hand-chosen metric values."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from argbench import cli
from argbench.analysis import report
from argbench.data.tasks import TASKS
from argbench.track.tracker import tracked_run
from tests.factories import trainer_metrics

CHROMIUM = Path("/usr/bin/chromium")
FIGURE_IDS = ["fig-metric", "fig-loss", "fig-tasks", "fig-negatives"]  # plotly figures; "fig-table" is HTML


def log_run(store: str, name: str, accs: list[float], fail: bool = False) -> str:
    """A run of ``len(accs)`` epochs whose val acc@1 of every task at epoch e is ``accs[e]``; FAILED if ``fail``."""
    try:
        with tracked_run(run_name=name, experiment="report", tracking_uri=store, system_metrics=False) as tracker:
            for epoch, acc in enumerate(accs):
                tracker.on_epoch_end(epoch, trainer_metrics(epoch, acc))
            if fail:
                raise RuntimeError("crashed")
    except RuntimeError:
        pass
    return tracker.run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Runs: "base" (FINISHED, then a newer FAILED one of the same name) and "variant"."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    ids = {"base": log_run(uri, "base", [0.1, 0.2, 0.3]), "variant": log_run(uri, "variant", [0.1, 0.4, 0.6])}
    log_run(uri, "base", [0.1, 0.9], fail=True)
    return uri, ids


@pytest.fixture(scope="module")
def runs(store):
    return report.load_runs("report", ["base", "variant"], tracking_uri=store[0])


def test_load_runs_takes_the_latest_finished_run_of_a_name(runs, store):
    base, variant = runs
    assert (base.run_id, variant.run_id) == (store[1]["base"], store[1]["variant"])
    assert (base.status, base.duplicates, variant.duplicates) == ("FINISHED", 1, 0)
    assert base.series("val/epa/acc_at_1") == ([0, 1, 2], [0.1, 0.2, 0.3])
    assert base.series("train/loss") == ([1, 2], [3.0, 3.0])
    assert variant.final["val/sdoc/acc_at_1"] == 0.6


def test_load_runs_names_what_is_missing(store):
    with pytest.raises(ValueError, match="no FINISHED run named 'nope'.*base, variant"):
        report.load_runs("report", ["base", "nope"], tracking_uri=store[0])
    with pytest.raises(ValueError, match="no MLflow experiment 'absent'"):
        report.load_runs("absent", tracking_uri=store[0])


def test_load_runs_without_names_takes_every_name_oldest_first(store):
    assert [r.name for r in report.load_runs("report", tracking_uri=store[0])] == ["base", "variant"]


def test_figures_hold_the_logged_values(runs):
    assert [list(t.y) for t in report.metric_per_epoch(runs, "val/epa/acc@1").data] == [[0.1, 0.2, 0.3],
                                                                                         [0.1, 0.4, 0.6]]
    bars = report.final_task_bars(runs).data
    assert [b.name for b in bars] == ["base", "variant"] and list(bars[0].x) == list(TASKS)
    assert list(bars[1].y) == [0.6] * len(TASKS)
    areas = report.negative_sources(runs).data
    assert [a.name for a in areas] == ["point", "counter", "random"] * 2
    assert list(areas[2].y) == [0.5, 0.5] and areas[2].stackgroup == "run1"
    header, rows = report.final_table(runs, ["val/epa/acc@1"])
    columns = dict(zip(header, zip(*rows)))
    assert columns["run"] == ("base", "variant") and columns["run id"] == (runs[0].run_id, runs[1].run_id)
    assert columns["selected epoch"] == ("2", "2")  # the selected epochs: here the last ones
    assert header[6] == "val/epa/acc_at_1" and columns["val/epa/acc_at_1"] == ("0.3000", "0.6000")
    page = report.table_html(runs, ["val/epa/acc@1"])
    assert "<td>base</td>" in page and f"<td>{runs[0].run_id}</td>" in page  # whole names, nothing clipped
    assert "val/<wbr>epa/<wbr>acc_at_1" in page  # a long metric name may break after "/"


def test_write_report_is_one_self_contained_page(runs, tmp_path):
    page = report.write_report(runs, "val/epa/acc@1", tmp_path / "r.html", source="test store").read_text()
    for text in ["base", "variant", runs[0].run_id, runs[1].run_id, "test store",
                 "2 runs have this name; showing the latest FINISHED one", *(f'id="{i}"' for i in FIGURE_IDS),
                 'id="fig-table"', "overflow-x:auto"]:
        assert text in page, text
    assert page.count("Plotly.newPlot(") == len(FIGURE_IDS)
    assert page.count("* plotly.js v") == 1  # the library's header: inlined once
    assert not re.search(r"<script[^>]*\bsrc=", page)  # nothing fetched: the machine is offline


def test_write_report_rejects_an_unlogged_metric(runs, tmp_path):
    with pytest.raises(ValueError, match="val/epa/nope"):
        report.write_report(runs, "val/epa/nope", tmp_path / "r.html")


def test_report_reads_mlflow_and_writes_the_page(store, tmp_path):
    path = report.report("report", ["variant"], out=tmp_path / "out" / "page.html", tracking_uri=store[0])
    assert path.is_file() and store[1]["variant"] in path.read_text()


class _RenderedPlots(HTMLParser):
    """Ids of the elements plotly marked as drawn (class js-plotly-plot) and the number of its main SVGs."""

    def __init__(self):
        super().__init__()
        self.drawn, self.svgs = [], 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        classes = (attrs.get("class") or "").split()
        if "js-plotly-plot" in classes:
            self.drawn.append(attrs.get("id"))
        self.svgs += tag == "svg" and "main-svg" in classes


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs the Debian package chromium (/usr/bin/chromium) to "
                                                  "render the page headless: apt-get install -y chromium")
def test_every_figure_draws_in_headless_chromium(runs, tmp_path):
    page = report.write_report(runs, "val/epa/acc@1", tmp_path / "r.html")
    done = subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                           "--no-first-run", "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
                           "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    plots = _RenderedPlots()
    plots.feed(done.stdout)
    assert sorted(plots.drawn) == sorted(FIGURE_IDS)
    assert plots.svgs >= len(FIGURE_IDS)
    shutil.rmtree(tmp_path / "profile", ignore_errors=True)


def test_the_results_are_the_selected_epochs_unless_asked_for_the_last(tmp_path, monkeypatch, capsys):
    """"peaked" is best on validation at epoch 1 of 3: its table row, bars and test value are epoch 1's."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracked_run(run_name="peaked", experiment="report", tracking_uri=store, system_metrics=False) as tracker:
        for epoch, acc in enumerate([0.1, 0.7, 0.2, 0.3]):
            tracker.on_epoch_end(epoch, {**trainer_metrics(epoch, acc), "test/epa/acc_at_1": acc / 2})
    (run,) = report.load_runs("report", tracking_uri=store)
    assert run.selected_epochs == [1]
    assert (run.selected["val/epa/acc_at_1"], run.final["val/epa/acc_at_1"]) == (0.7, 0.3)
    for epoch, value in (("selected", 0.7), ("last", 0.3)):
        header, rows = report.final_table([run], ["test/epa/acc_at_1"], epoch=epoch)
        cells = dict(zip(header, rows[0]))
        assert cells["val/epa/acc_at_1"] == f"{value:.4f}" and cells["test/epa/acc_at_1"] == f"{value / 2:.4f}"
        assert (cells["last epoch"], cells["selected epoch"]) == ("3", "1")
        assert f"Metrics at the {epoch} epoch" in report.table_html([run], epoch=epoch)
        assert list(report.final_task_bars([run], epoch=epoch).data[0].y) == [value] * len(TASKS)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    for epoch in ("selected", "last"):
        page = tmp_path / f"{epoch}.html"
        assert cli.main(["report", "--experiment", "report", "--epoch", epoch, "-o", str(page)]) == 0
        assert f"Metrics at the {epoch} epoch" in page.read_text()
    capsys.readouterr()


@pytest.mark.parametrize("store_exists", [False, True])
def test_report_on_a_missing_or_empty_store_is_one_line_and_creates_nothing(tmp_path, monkeypatch, capsys,
                                                                           store_exists):
    from mlflow import MlflowClient

    db = tmp_path / "store" / "mlflow.db"
    if store_exists:
        db.parent.mkdir()
        MlflowClient(f"sqlite:///{db}").search_experiments()  # the tables, no experiment of ours
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    before = sorted(tmp_path.rglob("*"))
    capsys.readouterr()  # MLflow's notes on creating the tables above
    assert cli.main(["report", "-o", str(tmp_path / "report.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert (f"no MLflow experiment 'argbench' at sqlite:///{db}" if store_exists else
            f"no MLflow store at {db}: nothing tracked there yet") in err[0]
    assert sorted(tmp_path.rglob("*")) == before
