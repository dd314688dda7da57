"""The trainer's console line: read from the flat per-epoch metrics by name."""

from argbench.train.console import epoch_line
from tests.factories import trainer_metrics


def test_epoch_line_reads_the_primary_metric_and_its_rerank_by_name():
    trained = {**trainer_metrics(1, acc=0.25), "val/rerank/acc_at_1": 0.125}
    assert epoch_line(trained, "val/epa/acc_at_1") == \
        "epoch   1  loss 3.0000  val/epa/acc_at_1 0.250  rerank 0.125  random 0.50  2.0 s"
    # epoch 0 trained nothing, and a primary metric the epoch did not measure is left out
    assert epoch_line(trainer_metrics(0), "val/dedup/epa/mrr") == "epoch   0  2.0 s"
    assert epoch_line(trainer_metrics(0), "val/epa/mrr") == "epoch   0  val/epa/mrr 0.550  2.0 s"
