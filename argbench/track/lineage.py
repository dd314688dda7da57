"""Dataset lineage: the corpus a run trained on, logged as the run's MLflow dataset input.

The MLflow UI's "Datasets" panel of a run then names the corpus (``counterargs-18`` or ``sample``), its content
digest (the same SHA-256 prefix as the run's ``data.hash`` tag), where it was read from, and per split the number
of arguments and true pairs (the profile); context ``training``.
"""

from __future__ import annotations

import json

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from argbench.data.corpus import SPLITS, Corpus

SOURCE_TYPE = "local"  # what MLflow's own local-file dataset sources call themselves
SCHEMA = {"mlflow_colspec": [{"type": "string", "name": name} for name in
                             ("split", "theme", "debate", "stance", "kind", "text")]}


def profile(corpus: Corpus) -> dict:
    """{split: {"arguments": files loaded, "pairs": true (point, counter) pairs}} (JSON-ready)."""
    frame = corpus.frame
    return {split: {"arguments": int((frame["split"] == split).sum()),
                    "pairs": int(((frame["split"] == split) & frame["paired"] & (frame["kind"] == "point")).sum())}
            for split in SPLITS}


def dataset(corpus: Corpus) -> Dataset:
    """The MLflow dataset entity of ``corpus``: name, digest = ``corpus.hash``, local source path, profile."""
    name = "sample" if corpus.source.kind == "sample" else corpus.source.path.name or "counterargs-18"
    return Dataset(name=name, digest=corpus.hash, source_type=SOURCE_TYPE,
                   source=json.dumps({"uri": str(corpus.source.path)}), schema=json.dumps(SCHEMA),
                   profile=json.dumps(profile(corpus)))


def log_dataset(client: MlflowClient, run_id: str, corpus: Corpus, context: str = "training") -> None:
    """Log ``corpus`` as an input of run ``run_id`` (logging the same corpus again adds nothing).

    MLflow's SQL store looks the dataset up and inserts it when missing, so two runs of one experiment that log the
    same new corpus at the same moment (study workers, search threads) race: the later insert breaks the unique
    constraint. The loser tries again and then finds the winner's row."""
    inputs = [DatasetInput(dataset(corpus), tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)])]
    for attempt in range(_ATTEMPTS):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except MlflowException as err:
            if "unique constraint" not in str(err).lower() or attempt == _ATTEMPTS - 1:
                raise


_ATTEMPTS = 3
