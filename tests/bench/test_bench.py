"""The benchmarks as correctness checks: each runs both contenders on the sample corpus or small inputs and the two
agree; timings are not checked."""

import json
import time

import numpy as np
import pytest
import torch

from argbench.bench import load, original_eval, runner
from argbench.bench import train as train_bench
from argbench.data.corpus import load_corpus
from argbench.eval.evaluate import evaluate
from argbench.model.bi_encoder import Encoded


@pytest.fixture(scope="module")
def sample_corpus():
    return load_corpus("sample")


def test_load_bench_agrees_with_the_per_query_reference_and_extrapolates():
    rows = load.run_load_bench("sample", repeats=1, reference_queries=10)

    assert [r["case"].split(":")[0] for r in rows] == ["training", "validation", "test", "all splits"]
    assert all(r["agree"] is True for r in rows)
    for r in rows[:3]:
        assert r["reference_queries_timed"] == 10 < r["queries"]
        assert r["reference_extrapolated_from"] == 10
    assert rows[3]["queries"] == sum(r["queries"] for r in rows[:3])
    assert rows[3]["argbench_s"] == pytest.approx(rows[3]["load_s"] + sum(r["argbench_s"] for r in rows[:3]))


def test_load_agreement_check_notices_a_missing_candidate(sample_corpus):
    split = sample_corpus.split("test")
    frame = sample_corpus.frame[(sample_corpus.frame["split"] == "test") & sample_corpus.frame["paired"]].copy()
    frame["norm_text"] = [" ".join(t.split()) for t in frame["text"]]
    queries = frame[frame["kind"] == "point"].head(3)
    reference = load.reference_pools(frame, queries)
    paths = queries["path"].tolist()
    assert load._agrees(split, paths, reference)

    reference["sdoc"][1] = reference["sdoc"][1][1:]
    assert not load._agrees(split, paths, reference)


def test_reference_pool_sizes_follow_the_task_definitions(sample_corpus):
    frame = sample_corpus.frame[(sample_corpus.frame["split"] == "test") & sample_corpus.frame["paired"]].copy()
    frame["norm_text"] = [" ".join(t.split()) for t in frame["text"]]
    query = frame[frame["kind"] == "point"].head(1)
    q = query.iloc[0]
    pools = {task: paths[0] for task, paths in load.reference_pools(frame, query).items()}
    debate = frame[(frame["theme"] == q["theme"]) & (frame["debate"] == q["debate"])]

    counter = frame[(frame["kind"] == "counter") & (frame["pair_id"] == q["pair_id"])].iloc[0]
    counter_copies = int((frame["norm_text"] == counter["norm_text"]).sum()) - 1  # not candidates (the rule)
    assert len(pools["epa"]) == len(frame) - 1 - counter_copies
    assert len(pools["epc"]) == (frame["kind"] == "counter").sum() - counter_copies
    assert len(pools["sda"]) == len(debate) - 1
    assert set(pools["sdoc"]) == set(debate[(debate["stance"] == q["stance"]) & (debate["kind"] == "counter")]["path"])
    assert q["path"] not in set().union(*map(set, pools.values()))


def test_eval_bench_agrees_with_the_per_candidate_loop():
    (row,) = original_eval.run_eval_bench("sample", repeats=1)

    assert row["agree"] is True
    assert 0.0 <= row["rerank_acc1"] <= 1.0


def test_both_rerankers_find_every_counter_with_a_classifier_that_prefers_close_pairs(sample_corpus):
    split = sample_corpus.split("test")
    model = original_eval.random_model(hidden=16, proj_dim=8, seed=0)
    with torch.no_grad():  # P(true pair) rises as the projections' L1 distance falls: features are [a, b, |a-b|, ...]
        model.classifier.weight.zero_()
        model.classifier.bias.zero_()
        model.classifier.weight[1, 16:24] = -1.0
    candidates = original_eval.random_embeddings(model, split, hidden=16, noise=1e-3, seed=0)
    queries = Encoded(candidates.pooled[split.query_idx], candidates.emb[split.query_idx])
    scorer = model.pair_scorer(queries, candidates)

    assert original_eval.reference_rerank_acc1(split, model, queries, candidates) == 1.0
    assert evaluate(split, queries.emb, candidates.emb, metric="euclidean", scorer=scorer).rerank_acc1 == 1.0


def test_mining_bench_through_the_runner_agrees():
    results = runner.run_benches(["mining"], ns=(64,), repeats=1)

    assert list(results) == ["mining"]
    assert [r["agree"] for r in results["mining"]] == [True]


@pytest.mark.slow  # ~25 s: imports and sets up sentence-transformers' trainer twice
def test_train_bench_times_both_trainers_on_a_tiny_model():
    pytest.importorskip("datasets")
    pytest.importorskip("accelerate")
    (row,) = train_bench.run_train_bench("sample", encoder="tiny-random-bert", steps=3, rounds=2, batch_size=4,
                                         max_length=32)

    assert row["agree"] is None
    assert row["timed_sequences"] == 3 * 4 * (3 - 1)
    assert row["argbench_seq_per_s"] == pytest.approx(row["timed_sequences"] / row["argbench_s"])
    assert row["ratio"] == pytest.approx(row["reference_s"] / row["argbench_s"])
    assert row["argbench_peak_mb"] > 0 and row["reference_peak_mb"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_train_bench_skips_cuda_without_a_gpu():
    (row,) = train_bench.run_train_bench("sample", device="cuda")

    assert row["skipped"] == "no CUDA device" and row["ratio"] is None


def test_steady_seconds_leave_out_the_first_step():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=0.1)

    def three_steps():
        for pause in (0.3, 0.05, 0.05):  # the slow first step is left out of the steady state
            time.sleep(pause)
            optimizer.step()

    assert 0.1 <= train_bench._steady_seconds(three_steps, "cpu") < 0.3
    with pytest.raises(RuntimeError, match="only 1 optimizer step"):
        train_bench._steady_seconds(lambda: optimizer.step(), "cpu")


def test_random_negatives_are_never_the_pairs_own_arguments(sample_corpus):
    split = sample_corpus.split("training")
    pairs = np.arange(len(split.points_idx))
    negatives = train_bench._random_negatives(split, pairs, np.random.default_rng(0))

    assert not np.any(negatives == split.points_idx) and not np.any(negatives == split.counters_idx)
    assert negatives.min() >= 0 and negatives.max() < len(split.args)


def test_the_command_line_runs_a_benchmark_as_json(capsys):
    # every global flag (--debug) stays out of the benchmarks' options
    from argbench import cli

    assert cli.main(["bench", "mining", "--ns", "300", "--repeats", "1", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["mining"]
    assert row["agree"] is True and row["case"].startswith("N=300")


def test_runner_rejects_unknown_benchmarks_and_options():
    with pytest.raises(ValueError, match="unknown benchmark 'nope'"):
        runner.run_benches(["nope"])
    with pytest.raises(ValueError, match="steps"):
        runner.run_benches(["eval"], steps=3)


def test_format_table_shows_every_row_and_its_extras():
    table = runner.format_table({"demo": [{"case": "c1", "argbench_s": 0.5, "reference_s": 5.0, "ratio": 10.0,
                                           "agree": True, "queries": 7}]})

    assert "== demo" in table and "c1" in table and "10x" in table and "queries=7" in table


@pytest.mark.slow
def test_frozen_bench_times_both_paths_and_their_metrics_agree():
    (row,) = runner.run_benches(["frozen"], data="sample", encoder="tiny-random-bert", epochs=2, max_train_pairs=16,
                                pooling="mean", max_length=32)["frozen"]
    assert row["agree"] is True and row["argbench_s"] > 0 and row["reference_s"] > 0
    assert row["ratio"] == pytest.approx(row["reference_s"] / row["argbench_s"])
    assert row["case"] == "frozen_encoder tiny-random-bert, 16 pairs, len 32, 2 epochs"


@pytest.mark.slow
def test_recipe_bench_measures_each_switch_beside_its_base():
    rows = runner.run_benches(["recipe"], data="sample", encoder="tiny-random-bert", pairs=32,
                              entries=("symmetric_in_batch", "gradient_cache"))["recipe"]
    assert [row["case"] for row in rows] == ["learning_recipe_in_batch", "symmetric_in_batch", "gradient_cache"]
    base, _, cached = rows
    assert base["ratio"] == 1.0 and all(row["reference_s"] == base["argbench_s"] for row in rows)
    for row in rows:
        assert row["argbench_s"] == pytest.approx(row["mine_s"] + row["train_s"])
        assert row["peak_mb"] > 0 and row["seq_per_s"] > 0 and row["ratio"] == row["argbench_s"] / base["argbench_s"]
    assert (base["batch_size"], cached["batch_size"]) == (32, 128)  # the resolved configs, not the defaults


@pytest.mark.slow
def test_partial_bench_times_the_top_layers_against_every_layer():
    (row,) = runner.run_benches(["partial"], data="sample", encoder="tiny-random-bert", pairs=32,
                                layers=(1,))["partial"]
    assert row["case"] == "learning_recipe_in_batch: top 1 layers trained vs all, 32 pairs"
    assert row["ratio"] == pytest.approx(row["reference_s"] / row["argbench_s"])
    assert row["cache_mb"] > 0 and row["seq_per_s"] > 0 and row["reference_seq_per_s"] > 0


@pytest.mark.slow
def test_precision_bench_compares_bf16_with_fp32_on_the_same_inputs():
    train, embed = runner.run_benches(["precision"], data="sample", encoder="tiny-random-bert", pairs=32)["precision"]
    assert train["per_s"] > 0 and train["reference_per_s"] > 0 and train["agree"] is None
    assert embed["ratio"] == pytest.approx(embed["reference_s"] / embed["argbench_s"])
    assert isinstance(embed["agree"], bool) and 0 <= embed["max_diff"] <= 1
