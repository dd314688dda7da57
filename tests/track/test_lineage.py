"""The corpus as an MLflow dataset input, logged safely by many runs at once (a real SQLite store)."""

from __future__ import annotations

import shutil
import threading

from mlflow import MlflowClient

from argbench.data.corpus import load_corpus
from argbench.track.lineage import log_dataset


def test_runs_logging_one_new_corpus_at_the_same_moment_all_get_it(empty_mlflow_db, tmp_path):
    # MLflow looks the dataset up, then inserts it: runs that start together race for the insert (seen in a
    # two-thread search as "UNIQUE constraint failed: datasets..."). Every thread logs at the barrier's release.
    shutil.copy(empty_mlflow_db, tmp_path / "mlflow.db")
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    corpus = load_corpus("sample")
    for round_ in range(3):  # a new experiment each round: the dataset is new to it
        experiment = client.create_experiment(f"race-{round_}", artifact_location=str(tmp_path / "artifacts"))
        runs = [client.create_run(experiment).info.run_id for _ in range(6)]
        barrier, errors = threading.Barrier(len(runs)), []

        def log(run_id: str) -> None:
            barrier.wait()
            try:
                log_dataset(client, run_id, corpus)
            except Exception as err:  # noqa: BLE001 - collected and asserted below
                errors.append(err)

        threads = [threading.Thread(target=log, args=(run_id,)) for run_id in runs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        digests = {client.get_run(r).inputs.dataset_inputs[0].dataset.digest for r in runs}
        assert digests == {corpus.hash}
