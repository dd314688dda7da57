"""The learning curve a tracked run logs, from hand-made per-epoch rows."""

from argbench.track.curve import learning_curve


def test_learning_curve_has_one_trace_per_plotted_metric():
    rows = [{"epoch": 0, "val/sdoa/acc_at_1": 0.2, "val/epa/acc_at_1": 0.1},
            {"epoch": 1, "val/sdoa/acc_at_1": 0.3, "val/epa/acc_at_1": 0.2, "train/loss": 2.0}]
    figure = learning_curve(rows, primary="val/sdoa/acc_at_1")
    assert [t.name for t in figure.data] == ["val/sdoa/acc_at_1", "val/epa/acc_at_1", "train/loss"]
    assert list(figure.data[2].x) == [1] and figure.data[2].yaxis == "y2"  # loss: only where logged, right axis
    assert [t.name for t in learning_curve(rows[:1]).data] == ["val/epa/acc_at_1"]


def test_epoch_ticks_are_whole_epochs_about_ten_of_them():
    rows = [{"epoch": e, "val/epa/acc_at_1": 0.1} for e in range(26)]
    assert learning_curve(rows).layout.xaxis.dtick == 3
    assert learning_curve(rows[:4]).layout.xaxis.dtick == 1


def test_the_selected_epoch_is_marked_and_test_is_drawn_but_not_used_to_select():
    rows = [{"epoch": 0, "val/epa/acc_at_1": 0.1, "test/epa/acc_at_1": 0.1},
            {"epoch": 1, "val/epa/acc_at_1": 0.3, "test/epa/acc_at_1": 0.2},
            {"epoch": 2, "val/epa/acc_at_1": 0.2, "test/epa/acc_at_1": 0.4}]
    figure = learning_curve(rows)
    assert [t.name for t in figure.data] == ["val/epa/acc_at_1", "test/epa/acc_at_1"]
    (line,) = figure.layout.shapes
    assert line.x0 == line.x1 == 1
    assert "epoch 1" in figure.layout.annotations[0].text
