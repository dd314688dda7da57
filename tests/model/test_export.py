"""Export to sentence-transformers: every head variant and both sharing modes round-trip on the tiny model (the
SentenceTransformer loaded offline embeds as argbench does, the rebuilt network scores pairs as the original), and
`argbench eval --encoder DIR` reproduces a trained run's recorded test metrics."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from argbench.cli import main
from argbench.config import load_config
from argbench.data.corpus import load_corpus
from argbench.model.bi_encoder import BiEncoder, Encoded
from argbench.model.encoders import embed
from argbench.model.export import ExportError, TrainedRun, export_run, is_export, load_export
from argbench.model.tokens import tokenize_texts
from argbench.train.trainer import fit
from tests.conftest import single_torch_thread

one_torch_thread = pytest.fixture(autouse=True, scope="module")(single_torch_thread)

TEXTS = ["School uniforms stop bullying over clothes.", "Uniforms restrict expression. " * 30, "No.",
         "A ban would push the trade underground, where nobody checks safety."]
HEADS = [  # (pooling, proj_dim, layernorm, relu)
    ("pooler", 16, False, False), ("pooler", 16, True, True), ("cls", 16, False, True), ("mean", 16, True, False),
    ("mean", None, False, False), ("mean", None, True, True), ("cls", None, False, True)]


def hand_made_run(tiny_encoder, tmp_path, pooling, proj_dim, layernorm, relu, sharing) -> TrainedRun:
    """An untrained network with seeded random head weights (LayerNorm's affine too, so it is not the identity)."""
    encoder, tokenizer = copy.deepcopy(tiny_encoder[0]), tiny_encoder[1]
    overrides = [f"model.pooling={pooling}", f"model.proj_dim={'null' if proj_dim is None else proj_dim}",
                 f"model.layernorm={str(layernorm).lower()}", f"model.relu={str(relu).lower()}",
                 f"model.sharing={sharing}", "model.max_length=40", "model.encoder=tiny-random-bert"]
    cfg = load_config(overrides=overrides)
    torch.manual_seed(7)
    model = BiEncoder(encoder, pooling=pooling, sharing=sharing, proj_dim=proj_dim, layernorm=layernorm, relu=relu)
    with torch.no_grad():
        for p in [*model.head.parameters(), *model.classifier.parameters()]:
            p.normal_(0, 0.5)
        if sharing == "separate":  # the two encoders must differ, or a swapped route would pass
            for p in model.candidate_encoder.parameters():
                p.add_(torch.randn_like(p) * 0.05)
    return TrainedRun(tmp_path / "run", model.eval(), tokenizer, cfg, [], {"source": "hand", "hash": "h"}, None)


def argbench_embeddings(run: TrainedRun, side: str) -> Encoded:
    tok = tokenize_texts(run.tokenizer, TEXTS, run.config.model.max_length)
    with torch.no_grad():
        pooled = embed(getattr(run.model, f"{side}_encoder"), tok, pooling=run.config.model.pooling)
        return Encoded(pooled, run.model.head(pooled))


@pytest.mark.parametrize("sharing", ["shared", "separate"])
@pytest.mark.parametrize("head", HEADS, ids=["-".join(map(str, h)) for h in HEADS])
def test_sentence_transformer_embeds_as_argbench(tiny_encoder, tmp_path, head, sharing):
    from sentence_transformers import SentenceTransformer

    run = hand_made_run(tiny_encoder, tmp_path, *head, sharing)
    folder = export_run(run, tmp_path / "export")
    st = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    for side, task in (("point", "query"), ("candidate", "document")):
        expected = argbench_embeddings(run, side).emb
        got = st.encode(TEXTS, task=task, convert_to_tensor=True)
        assert (got - expected).abs().max() <= 1e-5, side
    if sharing == "separate":
        assert (argbench_embeddings(run, "point").emb - argbench_embeddings(run, "candidate").emb).abs().max() > 1e-3
        assert (st.encode(TEXTS, convert_to_tensor=True) - argbench_embeddings(run, "candidate").emb).abs().max() \
            <= 1e-5  # plain encode = the candidate (document) route
    info = json.loads((folder / "argbench" / "run.json").read_text())
    assert (info["routes"] is None) == (sharing == "shared")
    assert ("encode_query" in (folder / "README.md").read_text()) == (sharing == "separate")


@pytest.mark.parametrize("sharing", ["shared", "separate"])
@pytest.mark.parametrize("fusion", ["concatenated", "only_cls"])
def test_loaded_export_scores_pairs_as_the_original(tiny_encoder, tmp_path, sharing, fusion):
    run = hand_made_run(tiny_encoder, tmp_path, "pooler", 16, True, True, sharing)
    run.model.fusion = fusion
    run.model.classifier = torch.nn.Linear(3 * ((16 + 32) if fusion == "concatenated" else 32), 2)
    run.config = load_config(base=run.config, overrides=[f"model.fusion={fusion}"])
    exported = load_export(export_run(run, tmp_path / "export"))
    queries, cands = exported.embed(TEXTS, "point"), exported.embed(TEXTS, "candidate")
    expected_q, expected_c = argbench_embeddings(run, "point"), argbench_embeddings(run, "candidate")
    rows, grid = torch.arange(len(TEXTS)), torch.arange(len(TEXTS)).repeat(len(TEXTS), 1)
    got = exported.model.pair_scorer(queries, cands)(rows, grid)
    expected = run.model.pair_scorer(expected_q, expected_c)(rows, grid)
    assert (got - expected).abs().max() <= 1e-5


def test_export_refuses_a_folder_that_is_not_an_export(tiny_encoder, tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="notes"):
        export_run(hand_made_run(tiny_encoder, tmp_path, "mean", 16, False, False, "shared"), tmp_path / "notes")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine" and not is_export(tmp_path / "notes")


def test_cli_export_of_a_folder_without_checkpoint_exits_2(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--to", str(tmp_path / "out")]) == 2
    assert "not a trained run folder" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 1-epoch tiny run on the sample corpus that evaluated the test split: its run folder."""
    out = tmp_path_factory.mktemp("trained")
    cfg = load_config(overrides=["model.encoder=tiny-random-bert", "model.max_length=32", "train.epochs=1",
                                 "data.max_train_pairs=16", "data.eval_splits=[test]", "model.layernorm=true"])
    fit(cfg, load_corpus("sample"), out_dir=out)
    return out


def test_eval_of_the_export_reproduces_the_run_metrics(trained_run, tmp_path, capsys):
    assert main(["export", str(trained_run), "--to", str(tmp_path / "model"), "--json"]) == 0
    capsys.readouterr()
    assert main(["eval", "--encoder", str(tmp_path / "model"), "--data", "sample", "--split", "test", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    recorded = json.loads((trained_run / "metrics.jsonl").read_text().splitlines()[-1])
    for task, values in result["test"].items():  # eval --json nests split -> task -> metric
        for metric, value in values.items():
            assert value == pytest.approx(recorded[f"test/{task}/{metric.replace('@', '_at_')}"], abs=1e-4)
    assert result["test_rerank_acc@1"] == pytest.approx(recorded["test/rerank/acc_at_1"], abs=1e-4)
    assert result["max_abs_difference_from_run"] <= 1e-4
    card = (tmp_path / "model" / "README.md").read_text()
    assert load_corpus("sample").hash in card and "Final test metrics" in card
