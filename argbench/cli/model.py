"""``argbench export`` and ``argbench retrieve``: a trained run as a model others load, and asked for counters.

MODEL / RUN arguments name an export folder, a run folder (``config.yaml`` + ``checkpoint/``) or an MLflow run id
whose model was logged with ``--log-model``. A run folder gives its selected epoch's model (``best/``) or, with
``--epoch last``, its last (``checkpoint/``); one without ``best/`` gives its last, said in one line on stderr. An
export folder or a logged model holds one epoch: ``--epoch`` then checks that it is the one asked for.
"""

from __future__ import annotations

import json
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from argbench.cli.options import add_epoch_argument


def add_commands(sub, data_args) -> None:
    ex = sub.add_parser("export", help="write a trained run as a sentence-transformers model folder")
    ex.add_argument("run", help="run folder (config.yaml + checkpoint/) or MLflow run id with a logged model")
    ex.add_argument("--to", type=Path, required=True, help="the model folder to write")
    ex.add_argument("--json", action="store_true", help="print JSON on stdout")
    add_epoch_argument(ex, "the model", default=None)
    ex.set_defaults(func=cmd_export)

    rt = sub.add_parser("retrieve", help="the best counterarguments for argument texts (args or stdin lines)")
    rt.add_argument("texts", nargs="*", metavar="TEXT", help="arguments to counter (default: one per stdin line)")
    rt.add_argument("--model", required=True, help="export folder, run folder, or MLflow run id")
    rt.add_argument("--split", default="test", choices=("training", "validation", "test"),
                    help="the split whose counters are the candidates (default: test)")
    rt.add_argument("--all", action="store_true",
                    help="search every argument of the split (points too), not only its counters")
    rt.add_argument("--k", type=int, default=5, help="texts shown per query, each text once (default: 5)")
    rt.add_argument("--rerank", action="store_true",
                    help="reorder the nearest max(k, eval.rerank_depth) by the run's cross-encoder "
                         "(eval.rerank: cross_encoder), else its pair classifier")
    rt.add_argument("--cache", type=Path, help="candidate embedding cache (default: mlruns/cache/retrieve)")
    add_epoch_argument(rt, "the model", default=None)
    data_args(rt)
    rt.set_defaults(func=cmd_retrieve)


@contextmanager
def model_folder(arg: str, epoch: str | None = None) -> Iterator[Path]:
    """The export folder of ``epoch`` for ``arg``: itself, a run folder exported to a temporary folder, or an MLflow
    run's logged model downloaded to one (removed on exit)."""
    from argbench.model.export import check_holds, is_export, run_info

    path = Path(arg).expanduser()
    if is_export(path):
        check_holds(run_info(path), epoch, path)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="argbench-model-") as scratch:
        yield write_export(arg, Path(scratch) / "export", epoch)


def write_export(arg: str, out: Path, epoch: str | None) -> Path:
    """Write to ``out`` the export of ``epoch`` of the run folder or MLflow run id ``arg`` (module doc); returns
    ``out``. The fallback of a run folder without ``best/`` is one line on stderr."""
    from argbench.model.export import is_export, write_export
    from argbench.train.trained_run import load_run_dir

    path = Path(arg).expanduser()
    if path.is_dir() and not is_export(path):
        run = load_run_dir(path, epoch)
        if run.note:
            print(f"argbench: {run.note}", file=sys.stderr)
        return write_export(run, out)
    from argbench.track.model_log import download_export

    return download_export(arg, out, epoch=epoch)


def cmd_export(args) -> int:
    from argbench.model.export import run_info, selection_text

    out = write_export(args.run, args.to, args.epoch)
    info = run_info(out)
    if args.json:
        print(json.dumps({"path": str(out), "sharing": info["sharing"], "routes": info["routes"],
                          "epoch": info["epoch"], "selection": info.get("selection")}, indent=2))
    else:
        routes = "" if not info["routes"] else " (separate encoders: encode_query = points, encode_document = " \
                                               "counters)"
        print(f"wrote {out} ({selection_text(info)}): load it with SentenceTransformer({str(out)!r}){routes}")
    return 0


class _Progress:
    """What ``retrieve`` embeds, on stderr: a progress bar on a terminal, else one line."""

    def __init__(self, where: str):
        self.where, self.bar = where, None

    def __call__(self, done: int, total: int) -> None:
        if done == 0:
            what = f"argbench retrieve: embedding the {total:,} candidate texts of the {self.where} (once: cached)"
            if sys.stderr.isatty():
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc=what, unit="text", file=sys.stderr, leave=False)
            else:
                print(what, file=sys.stderr)
        elif self.bar is not None:
            self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_retrieve(args) -> int:
    from argbench.data.corpus import load_corpus
    from argbench.eval.retrieve import cache_dir, candidates, format_results, retrieve
    from argbench.model.exported_model import load_export

    texts = args.texts or [line.strip() for line in sys.stdin if line.strip()]
    if not texts:
        from argbench.errors import UserError

        raise UserError("retrieve: no text: pass arguments as TEXT or one per line on stdin")
    corpus = load_corpus(args.data)
    with model_folder(args.model, args.epoch) as folder:
        exported = load_export(folder)
        trained_on = exported.info["data"].get("hash")
        if trained_on != corpus.hash:
            print(f"argbench retrieve: the model was trained on data {trained_on}, searching {corpus.hash} "
                  f"({corpus.source.describe()})", file=sys.stderr)
        split = corpus.split(args.split)
        progress = _Progress(f"{args.split} split")
        cands = candidates(exported, split, corpus.hash, args.cache or cache_dir(),
                           arguments="all" if args.all else "counters", progress=progress)
        progress.close()
        results = retrieve(exported, cands, texts, k=args.k, rerank=args.rerank)
    print(json.dumps(results, indent=2) if args.json else format_results(results))
    return 0
