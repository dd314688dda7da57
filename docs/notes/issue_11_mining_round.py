"""Issue 11 measurement: the `copy` fraction of one mining round with negatives.exclude_copies off vs on.

One round as the trainer mines it (argbench.train.Trainer's model and embedding: the default config, untrained,
seed 42; every training pair embedded once), at random rate 0 (every negative hard), on two sets of training pairs:
every pair the corpus files (data.decontaminate and data.dedupe_pairs false, as the original trained) and the pairs
the defaults keep (both true). Prints one JSON object.

    ARGBENCH_DATA=/path/to/counterargs-18 PYTHONPATH=. python docs/notes/issue_11_mining_round.py [--set K=V ...]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from argbench.config import load_config
from argbench.data.copies import training_frame
from argbench.data.corpus import load_corpus
from argbench.train.distributed import setup
from argbench.train.negatives import mine
from argbench.train.trainer import Trainer


def round_stats(points, counters, pair_rows, split, cfg, generator) -> dict:
    """``{"pairs": N, "exclude_copies": {"false": stats, "true": stats}}`` of one rate-0 round over the pairs at
    positions ``pair_rows`` of the embedded pairs."""
    groups = split.args["copy_group"].to_numpy()
    point_rows, counter_rows = split.points_idx[pair_rows], split.counters_idx[pair_rows]
    labels = split.args.loc[point_rows]
    out = {"pairs": int(len(pair_rows)), "exclude_copies": {}}
    for exclude in (False, True):
        result = mine(points[pair_rows], counters[pair_rows], rate=0.0, generator=generator,
                      backend=cfg.negatives.backend, k=cfg.negatives.k, exclude_copies=exclude,
                      copy_groups=(groups[point_rows], groups[counter_rows]))
        stats = result.stats((labels["theme"] + "/" + labels["debate"]).to_numpy(), labels["theme"].to_numpy())
        out["exclude_copies"][str(exclude).lower()] = {
            **{k: round(v, 4) for k, v in stats.items() if isinstance(v, float)},
            "copies": int(np.sum(result.copy)), "zero_distance": int(np.sum(result.distance == 0))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    corpus = load_corpus()
    cfg = load_config(overrides=["train.device=cpu", "data.eval_splits=[training]", "data.decontaminate=false",
                                 "data.dedupe_pairs=false", *args.overrides])
    trainer = Trainer(cfg, corpus, [], setup(cfg.train.device, cfg.train.precision), None, False)
    split, tok = trainer.train_split, trainer.tokens["train"]
    t0 = time.perf_counter()
    points = trainer._embed(tok, split.points_idx, "point").emb  # every pair, embedded once
    counters = trainer._embed(tok, split.counters_idx, "candidate").emb
    report = {"data": corpus.source.describe(), "hash": corpus.hash, "embed_s": round(time.perf_counter() - t0, 1)}
    cleaned, _ = training_frame(corpus.frame, decontaminate_pairs=True, dedupe=True)
    kept = np.isin(split.args["pair_id"].to_numpy()[split.points_idx], cleaned["pair_id"].to_numpy())
    for name, rows in (("all_pairs", np.arange(len(split.points_idx))), ("default_cleaned", np.flatnonzero(kept))):
        report[name] = round_stats(points, counters, rows, split, cfg, trainer.miner_rng)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
