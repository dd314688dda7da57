"""Export to sentence-transformers: every head variant and both sharing modes round-trip on the tiny model (the
SentenceTransformer loaded offline embeds as argbench does, the rebuilt network scores pairs as the original),
`argbench eval --encoder DIR` reproduces a trained run's recorded test metrics, and a run folder exports its
selected epoch (best/) unless asked for its last (checkpoint/)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from argbench.cli import main
from argbench.cli.model import model_folder
from argbench.config import load_config, to_yaml
from argbench.data.corpus import load_corpus
from argbench.model.bi_encoder import BiEncoder, Encoded, build_model
from argbench.model.encoders import embed
from argbench.model.export import ExportError, TrainedRun, is_export, run_info, write_export
from argbench.model.exported_model import load_export
from argbench.model.tokens import tokenize_texts
from argbench.train import checkpoint
from argbench.train.trained_run import load_run_dir
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
    folder = write_export(run, tmp_path / "export")
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
    exported = load_export(write_export(run, tmp_path / "export"))
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
        write_export(hand_made_run(tiny_encoder, tmp_path, "mean", 16, False, False, "shared"), tmp_path / "notes")
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine" and not is_export(tmp_path / "notes")


def test_cli_export_of_a_folder_without_checkpoint_exits_2(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--to", str(tmp_path / "out")]) == 2
    assert "not a trained run folder" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A 1-epoch tiny run on the sample corpus that evaluated the test split: its run folder."""
    out = tmp_path_factory.mktemp("trained")
    # fp32: `argbench eval` of an export embeds in fp32, and the tiny model's ranks do not survive bf16 rounding
    cfg = load_config(overrides=["model.encoder=tiny-random-bert", "model.max_length=32", "train.epochs=1",
                                 "data.max_train_pairs=16", "data.eval_splits=[test]", "model.layernorm=true",
                                 "train.precision=fp32"])
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
    assert load_corpus("sample").hash in card and "Test metrics of epoch 1" in card


# --- which epoch a run folder exports ------------------------------------------------------------------------------

PLANTED_VAL = [0.1, 0.3, 0.6, 0.5, 0.4]  # validation acc@1 per epoch: epoch 2 is selected


def planted_metrics(epoch: int) -> dict[str, float]:
    """The retrieval metrics recorded at ``epoch`` (test: half of validation)."""
    return {f"{split}/epa/{m}": PLANTED_VAL[epoch] * scale for split, scale in (("val", 1), ("test", 0.5))
            for m in ("acc_at_1", "acc_at_5", "mrr")}


def save_run_folder(run_dir: Path, with_best: bool = True) -> dict[str, BiEncoder]:
    """A run folder of 4 epochs whose checkpoint/ (epoch 4) and best/ (epoch 2) hold different seeded weights;
    ``with_best`` False: checkpoint/ only (an older run folder). Returns the two models saved."""
    cfg = load_config(overrides=["model.encoder=tiny-random-bert", "model.max_length=40", "model.proj_dim=16"])
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    history = [{"epoch": e, "train/loss": 1.0, **planted_metrics(e)} for e in range(5)]
    models = {}
    for name, seed, state in (("last", 1, {"epoch": 4, "history": [json.dumps(m) for m in history]}),
                              ("selected", 2, {"epoch": 2})):
        model, _ = build_model(cfg.model)
        torch.manual_seed(seed)
        with torch.no_grad():
            for p in model.head.parameters():
                p.normal_(0, 0.5)
        if name == "last" or with_best:
            checkpoint.save(run_dir, model, state, cfg,
                            name=checkpoint.DIRNAME if name == "last" else checkpoint.BEST)
        models[name] = model.eval()
    return models


@pytest.fixture(scope="module")
def two_epochs(tmp_path_factory):
    """(run folder with best/ and checkpoint/, the models saved in them)."""
    run_dir = tmp_path_factory.mktemp("two-epochs") / "run"
    return run_dir, save_run_folder(run_dir)


def test_a_run_folder_exports_its_selected_epoch_unless_asked_for_the_last(two_epochs, tmp_path):
    from sentence_transformers import SentenceTransformer

    run_dir, saved = two_epochs
    embeddings = {}
    for epoch, (number, selection) in {None: (2, "selected"), "selected": (2, "selected"),
                                       "last": (4, "last")}.items():
        run = load_run_dir(run_dir, epoch)
        want = "selected" if epoch is None else epoch
        assert torch.equal(run.model.head[0].weight, saved[want].head[0].weight)
        folder = write_export(run, tmp_path / f"export-{epoch}")
        info = run_info(folder)
        assert (info["epoch"], info["last_epoch"], info["selection"], info["note"]) == (number, 4, selection, None)
        assert info["metrics"] == planted_metrics(number)
        st = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        embeddings[epoch] = st.encode(TEXTS, convert_to_tensor=True)
        assert (embeddings[epoch] - argbench_embeddings(run, "candidate").emb).abs().max() <= 1e-5
        card = (folder / "README.md").read_text()
        assert f"these weights: epoch {number}, the " + ("best val/epa/acc_at_1" if number == 2 else "last") in card
    assert torch.equal(embeddings[None], embeddings["selected"])
    assert (embeddings[None] - embeddings["last"]).abs().max() > 1e-3  # the two checkpoints really differ


def test_cli_export_says_which_epoch_and_checks_an_export_holds_the_one_asked_for(two_epochs, tmp_path, capsys):
    run_dir, _ = two_epochs
    assert main(["export", str(run_dir), "--to", str(tmp_path / "model"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["epoch"], printed["selection"]) == (2, "selected")
    assert main(["export", str(run_dir), "--to", str(tmp_path / "last"), "--epoch", "last"]) == 0
    assert "(epoch 4, the last)" in capsys.readouterr().out
    with model_folder(str(tmp_path / "model"), "selected") as folder:
        assert folder == tmp_path / "model"
    with pytest.raises(ExportError, match="holds epoch 2, the best val/epa/acc_at_1 on validation, not the last"):
        with model_folder(str(tmp_path / "model"), "last"):
            pass
    with model_folder(str(run_dir), "last") as folder:
        assert run_info(folder)["epoch"] == 4
    with pytest.raises(SystemExit):  # argparse: "invalid choice: 'best' (choose from selected, last)"
        main(["export", str(run_dir), "--to", str(tmp_path / "x"), "--epoch", "best"])
    assert "invalid choice: 'best'" in capsys.readouterr().err


def test_a_run_folder_without_best_exports_its_last_epoch_and_says_so(tmp_path, capsys):
    run_dir = tmp_path / "old-run"
    saved = save_run_folder(run_dir, with_best=False)
    assert main(["export", str(run_dir), "--to", str(tmp_path / "model")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"argbench: {run_dir} has no best/") and "using checkpoint/" in err[0]
    info = run_info(tmp_path / "model")
    assert (info["epoch"], info["selection"]) == (4, "last") and "has no best/" in info["note"]
    assert torch.equal(load_run_dir(run_dir).model.head[0].weight, saved["last"].head[0].weight)
    assert main(["export", str(run_dir), "--to", str(tmp_path / "strict"), "--epoch", "selected"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--epoch selected" in err[0] and "--epoch last" in err[0]
    assert not (tmp_path / "strict").exists()
