"""The export's model card: sentence-transformers' generated card carries every field of the card argbench used to
write by hand, with the same values, for the same export (the hand-written one is kept here as the reference)."""

from __future__ import annotations

import dataclasses
import re

import pytest
import yaml

from argbench.data.tasks import TASKS
from argbench.model.epoch_names import LAST, SELECTED
from argbench.model.export import run_info, selection_text, write_export
from tests.conftest import single_torch_thread
from tests.model.test_export import hand_made_run

one_torch_thread = pytest.fixture(autouse=True, scope="module")(single_torch_thread)

SIMILARITY = {"euclidean": "Euclidean Distance", "cosine": "Cosine Similarity"}


def hand_written_card(info: dict) -> str:
    """The model card argbench wrote by hand before it used sentence-transformers' generated one (verbatim)."""
    cfg, model = info["config"], info["config"]["model"]
    head = " → ".join([f"Linear({model['proj_dim']})"] * bool(model["proj_dim"])
                      + ["LayerNorm"] * model["layernorm"] + ["ReLU"] * model["relu"]) or "none"
    lines = [
        "---", "library_name: sentence-transformers", "pipeline_tag: sentence-similarity",
        "tags: [sentence-transformers, argbench, counterargument-retrieval]", "---", "",
        "# argbench counterargument retriever", "",
        "Retrieves the best counterargument for an argument (Wachsmuth, Syed & Stein, ACL 2018). Exported by "
        "`argbench export` from the run folder `" + info["source"] + "`"
        + (f" (MLflow run `{info['mlflow_run_id']}`)" if info["mlflow_run_id"] else "") + ".", "",
        "## Recipe", "",
        f"- encoder `{model['encoder']}`, pooling `{model['pooling']}`, max length {model['max_length']}, "
        f"sharing `{model['sharing']}`, head {head}",
        f"- trained {info.get('last_epoch', info['epoch'])} epochs (planned {cfg['train']['epochs']}), lr "
        f"{cfg['train']['lr']}, "
        f"batch {cfg['train']['batch_size']}, seed {cfg['train']['seed']}; loss weights triplet "
        f"{cfg['loss']['triplet_weight']} (margin {cfg['loss']['margin']}), in-batch {cfg['loss']['in_batch_weight']}"
        f", classifier {cfg['loss']['ce_pos_weight']}/{cfg['loss']['ce_neg_weight']}",
        f"- data `{info['data'].get('source')}`, content hash `{info['data'].get('hash')}`",
        f"- retrieval distance: {info['metric']} (the model's `similarity_fn_name`)",
        f"- these weights: {selection_text(info)}", "",
        "The full configuration is `argbench/run.json` (`config`).", "",
    ]
    lines += _metric_lines(info["metrics"], info["epoch"])
    lines += ["## Load it", "", "```python", "from sentence_transformers import SentenceTransformer", "",
              "model = SentenceTransformer(\"PATH/TO/THIS/FOLDER\")"]
    if info["routes"]:
        lines += ["points = model.encode_query([\"an argument to counter\"])   # the point encoder",
                  "counters = model.encode_document([\"a candidate counter\"])  # the candidate encoder"]
    else:
        lines += ["embeddings = model.encode([\"an argument to counter\", \"a candidate counter\"])"]
    lines += ["model.similarity(embeddings[:1], embeddings[1:])" if not info["routes"]
              else "model.similarity(points, counters)", "```", "",
              "With argbench: `argbench retrieve --model PATH \"an argument\"` prints its top counters from the "
              "corpus; `argbench eval --encoder PATH --split test` recomputes the metrics above."]
    if info["classifier"]:
        lines += ["", f"The pair classifier (fusion `{info['fusion']}`, Linear(·, 2) over [a, b, |a − b|]) is "
                      "`argbench/pair_classifier.safetensors`; argbench uses it to score and rerank candidates."]
    return "\n".join(lines) + "\n"


def _metric_lines(metrics: dict, epoch: int | None) -> list[str]:
    """The model card's tables of the official-pool metrics of ``metrics`` (flat trainer names) of ``epoch``."""
    lines = []
    for key, name in (("test", "Test"), ("val", "Validation")):
        tasks = [t for t in TASKS if f"{key}/{t}/acc_at_1" in metrics]
        if not tasks:
            continue
        lines += [f"## {name} metrics of epoch {epoch} (official pools)", "",
                  "| metric | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
        for metric in ("acc_at_1", "acc_at_5", "mrr"):
            lines.append(f"| {metric.replace('_at_', '@')} | "
                         + " | ".join(f"{metrics[f'{key}/{t}/{metric}']:.4f}" for t in tasks) + " |")
        rerank = metrics.get(f"{key}/rerank/acc_at_1")
        lines += [""] + ([f"Top-10 reranked by the pair classifier (epa): acc@1 {rerank:.4f}.", ""] if rerank else [])
    return lines or [f"No evaluated split was recorded for epoch {epoch}.", ""]


def history(epochs: int) -> list[dict]:
    """Distinct metrics of every task on both splits, and the pair classifier's rerank acc@1, per epoch."""
    rows = []
    for epoch in range(epochs + 1):
        row = {"epoch": epoch, "train/loss": 1.0}
        for s, split in enumerate(("val", "test")):
            for t, task in enumerate(TASKS):
                for m, metric in enumerate(("acc_at_1", "acc_at_5", "mrr", "acc_at_10")):
                    row[f"{split}/{task}/{metric}"] = round(0.01 + 0.1 * epoch + 0.05 * s + 0.01 * t + 0.002 * m
                                                            + 1e-6 * (epoch + t), 6)
            row[f"{split}/rerank/acc_at_1"] = 0.123456 + 0.01 * epoch + 0.1 * s
        rows.append(row)
    return rows


def old_tables(card: str) -> dict[tuple[str, str, str], float]:
    """{(heading, metric, task): value} of the hand-written card's tables and rerank sentences."""
    found, heading, tasks = {}, None, []
    for line in card.splitlines():
        if line.startswith("## ") and "metrics of epoch" in line:
            heading = line[3:]
        elif line.startswith("| metric |"):
            tasks = [c.strip() for c in line.strip("|").split("|")[1:]]
        elif heading and re.match(r"\| (acc@\d+|mrr) \|", line):
            metric, *values = [c.strip() for c in line.strip("|").split("|")]
            found.update({(heading, metric, task): float(v) for task, v in zip(tasks, values)})
        elif match := re.match(r"Top-10 reranked by the pair classifier \(epa\): acc@1 ([\d.]+)\.", line):
            found[(heading.split(" metrics")[0] + ": top-10 reranked by the pair classifier", "acc@1", "epa")] = \
                float(match.group(1))
    return found


def new_tables(card: str) -> dict[tuple[str, str, str], float]:
    """The same from the generated card's Evaluation section (a table of one task has a "Value" column)."""
    found, heading, tasks = {}, None, []
    section = card.split("## Evaluation", 1)[1].split("\n## ", 1)[0] if "## Evaluation" in card else ""
    for line in section.splitlines():
        if line.startswith("#### "):
            heading = line[5:].removesuffix(f", epoch {line.rsplit(' ', 1)[-1]}") if "reranked" in line else line[5:]
        elif line.startswith("* Dataset"):
            names = re.findall(r"`([^`]+)`", line)
        elif line.startswith("| Metric |"):
            tasks = [c.strip() for c in line.strip("|").split("|")[1:]]
            tasks = names if tasks == ["Value"] else tasks
        elif heading and re.match(r"\| (acc@\d+|mrr) +\|", line):
            metric, *values = [c.strip() for c in line.strip("|").split("|")]
            found.update({(heading, metric, task): float(v) for task, v in zip(tasks, values)})
    return found


def front_matter(card: str) -> dict:
    return yaml.safe_load(card.split("---\n")[1])


def export_card(tiny_encoder, tmp_path, sharing: str, **fields) -> tuple[dict, str]:
    run = dataclasses.replace(hand_made_run(tiny_encoder, tmp_path, "mean", 16, True, False, sharing), **fields)
    folder = write_export(run, tmp_path / "export")
    return run_info(folder), (folder / "README.md").read_text()


CASES = {  # an evaluated, selected epoch of a run tracked in MLflow; an export of a run that evaluated nothing
    "selected": ("separate", {"history": history(3), "epoch": 2, "selection": SELECTED, "mlflow_run_id": "0a1b2c",
                              "data": {"source": "sample", "hash": "5f0e1d2c3b4a"}}),
    "unevaluated": ("shared", {"history": [{"epoch": 0}, {"epoch": 1, "train/loss": 0.5}], "selection": LAST,
                               "note": "the run evaluated no validation split"}),
}


@pytest.mark.parametrize("case", CASES)
def test_generated_card_carries_every_field_of_the_hand_written_one(tiny_encoder, tmp_path, case):
    sharing, fields = CASES[case]
    info, new = export_card(tiny_encoder, tmp_path, sharing, **fields)
    old = hand_written_card(info)
    cfg, model = info["config"], info["config"]["model"]

    # front matter and title
    old_meta, new_meta = front_matter(old), front_matter(new)
    assert {k: new_meta[k] for k in ("library_name", "pipeline_tag")} == {k: old_meta[k] for k in
                                                                          ("library_name", "pipeline_tag")}
    assert set(old_meta["tags"]) <= set(new_meta["tags"])
    assert "# argbench counterargument retriever\n" in old and "# argbench counterargument retriever\n" in new
    for both in ("best counterargument for an argument", "Wachsmuth", "Syed", "Stein", "2018"):
        assert both in old and both in new, both

    # where it came from, which epoch, the files and the commands: argbench's own words in both
    source = f"from the run folder `{info['source']}`" + (f" (MLflow run `{info['mlflow_run_id']}`)"
                                                          if info["mlflow_run_id"] else "") + "."
    trained = f"trained {info['last_epoch']} epochs (planned {cfg['train']['epochs']})"
    for both in (source, trained, f"these weights: {selection_text(info)}", "`argbench/run.json` (`config`)",
                 "`argbench retrieve --model PATH \"an argument\"`", "`argbench eval --encoder PATH --split test`",
                 f"fusion `{info['fusion']}`", "`argbench/pair_classifier.safetensors`", "SentenceTransformer("):
        assert both in old and both in new, both
    for route in ("encode_query", "encode_document"):
        assert (route in old) == (route in new) == (sharing == "separate")

    # the recipe: a phrase of the old card, a hyperparameter line of the new one, the same value
    recipe = {"model.encoder": f"encoder `{model['encoder']}`", "model.pooling": f"pooling `{model['pooling']}`",
              "model.max_length": f"max length {model['max_length']}", "model.sharing": f"sharing `{sharing}`",
              "train.lr": f"lr {cfg['train']['lr']}", "train.batch_size": f"batch {cfg['train']['batch_size']}",
              "train.seed": f"seed {cfg['train']['seed']}", "loss.margin": f"(margin {cfg['loss']['margin']})",
              "loss.triplet_weight": f"triplet {cfg['loss']['triplet_weight']}",
              "loss.in_batch_weight": f"in-batch {cfg['loss']['in_batch_weight']}",
              "loss.ce_pos_weight": f"classifier {cfg['loss']['ce_pos_weight']}/",
              "loss.ce_neg_weight": f"/{cfg['loss']['ce_neg_weight']}", "train.epochs": "(planned "}
    for key, phrase in recipe.items():
        section, name = key.split(".")
        assert phrase in old and f"- `{key}`: {cfg[section][name]}\n" in new, key
    assert "head Linear(16) → LayerNorm" in old
    assert ("- `model.proj_dim`: 16\n" in new and "- `model.layernorm`: True\n" in new
            and "- `model.relu`: False\n" in new and "'out_features': 16" in new and "LayerNorm(" in new)
    data = info["data"]
    assert f"data `{data['source']}`, content hash `{data['hash']}`" in old
    assert f"{data['source']} (content hash `{data['hash']}`)" in new
    assert f"retrieval distance: {info['metric']}" in old
    assert f"**Similarity Function:** {SIMILARITY[info['metric']]}" in new

    # the metrics: the same tables, the same values (4 decimals in both)
    tables = old_tables(old)
    assert new_tables(new).keys() == tables.keys()
    assert new_tables(new) == pytest.approx(tables, abs=1e-4)
    if case == "selected":
        assert len(tables) == 2 * (3 * len(TASKS) + 1)
        assert all(abs(value - info["metrics"][f"{'val' if h.startswith('Validation') else 'test'}/"
                                               f"{'rerank' if 'reranked' in h else task}/"
                                               f"{metric.replace('@', '_at_')}"]) <= 5e-5
                   for (h, metric, task), value in tables.items())
        assert {m["type"] for r in new_meta["model-index"][0]["results"] for m in r["metrics"]} == {"acc@1", "acc@5",
                                                                                                  "mrr"}
    else:
        assert not tables and "## Evaluation" not in new
        sentence = f"No evaluated split was recorded for epoch {info['epoch']}."
        assert sentence in old and sentence in new
