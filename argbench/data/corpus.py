"""The counterargs-18 corpus: resolve where it is, load it into one DataFrame, say what was loaded.

Layout (Wachsmuth, Syed, Stein, ACL 2018)::

    <root>/{training,validation,test}/<theme>/<debate>/{pro,con}/{pro|con}NN{a|b}-{point|counter}.txt

A point (``a``) and a counter (``b``) with the same theme, debate, stance and number form a true pair. Arguments
whose partner is missing are kept in the frame with ``paired=False`` and excluded from queries and pools by
:mod:`argbench.data.tasks`. Files that do not match the name pattern, or are empty, are skipped with a warning and listed
in :attr:`Corpus.skipped`; nothing is dropped silently.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from argbench.errors import UserError
from argbench.paths import project_data

# argbench.data.copies and .tasks load torch: they are imported where a frame or split is built, so that
# resolving a data source (and every module that only names Corpus or SPLITS) stays light.

SPLITS = ("training", "validation", "test")
STANCES = ("pro", "con")
FILE_PATTERN = re.compile(r"^(pro|con)(\d+)([ab])-(point|counter)\.txt$")
COLUMNS = ("split", "theme", "debate", "stance", "number", "kind", "text", "pair_id", "paired", "path")
ENV_VAR = "ARGBENCH_DATA"


class CorpusError(UserError):
    """The corpus cannot be loaded; the message names the path and what was expected."""


@dataclass(frozen=True)
class DataSource:
    """Where a corpus comes from: ``kind`` is one of ``arg`` (``--data``), ``env`` (``$ARGBENCH_DATA``),
    ``repo`` (``data/counterargs-18``) or ``sample`` (the generated sample corpus)."""

    kind: str
    path: Path

    def describe(self) -> str:
        return f"{self.kind}:{self.path}"


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass
class Corpus:
    """All arguments of all splits (``frame``, columns :data:`COLUMNS` and ``copy_group``, the id of the text's
    copy group, see :mod:`argbench.data.copies`), where they came from, and what was skipped.

    ``hash`` is a SHA-256 (first 16 hex digits) over every loaded file's relative path and bytes, so two runs that
    report the same hash saw the same data.
    """

    frame: pd.DataFrame
    source: DataSource
    hash: str
    skipped: list[Skipped] = field(default_factory=list)

    def split(self, name: str):
        """The :class:`argbench.data.tasks.SplitData` of split ``name`` (paired arguments, queries and the eight pools),
        with ``unseen`` set: which queries' texts do not occur in this corpus's training split."""
        from argbench.data.copies import unseen_in_training
        from argbench.data.tasks import build_split

        if name not in SPLITS:
            raise CorpusError(f"unknown split {name!r}: expected one of {', '.join(SPLITS)}")
        data = build_split(self.frame[self.frame["split"] == name], name)
        data.unseen = unseen_in_training(data, self.frame)
        return data


def resolve_data(arg: str | os.PathLike | None = None, *, announce: bool = True) -> DataSource:
    """Pick the corpus: ``arg`` (a path, or ``"sample"``) › ``$ARGBENCH_DATA`` › ``data/counterargs-18`` › sample.

    When the sample is used without being asked for, one line on stderr says so and how to use the real corpus.
    """
    if arg is not None and str(arg) != "sample":
        return DataSource("arg", Path(arg).expanduser())
    if arg is None and os.environ.get(ENV_VAR):
        return DataSource("env", Path(os.environ[ENV_VAR]).expanduser())
    if arg is None and project_data().is_dir():
        return DataSource("repo", project_data())
    from argbench.data.sample import sample_root

    if arg is None and announce:
        print(
            "argbench: no real corpus configured, using the generated sample corpus "
            f"(set {ENV_VAR}=/path/to/counterargs-18 or pass --data PATH for the real one)",
            file=sys.stderr,
        )
    return DataSource("sample", sample_root())


def load_corpus(source: DataSource | str | os.PathLike | None = None) -> Corpus:
    """Load every split under the resolved root. Raises :class:`CorpusError` for a missing root or split folder, a
    split with no true pair, or a file that is not UTF-8."""
    if not isinstance(source, DataSource):
        source = resolve_data(source)
    root = source.path
    if not root.is_dir():
        raise CorpusError(f"corpus root {root} does not exist or is not a folder: expected a folder holding "
                          f"{', '.join(SPLITS)} (the counterargs-18 '02-extracted-arguments' layout)")
    rows: list[tuple] = []
    skipped: list[Skipped] = []
    digest = hashlib.sha256()
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            raise CorpusError(f"split folder {split_dir} is missing: expected {root}/{{{','.join(SPLITS)}}}/"
                              "<theme>/<debate>/{pro,con}/<stance>NN{a,b}-{point,counter}.txt")
        for path in sorted(split_dir.glob("*/*/*/*")):
            rel = path.relative_to(root).as_posix()
            row = _read_argument(path, rel, split, skipped)
            if row is not None:
                rows.append(row)
                digest.update(rel.encode() + b"\0" + row[6].encode() + b"\0")
    frame = _to_frame(rows)
    for split in SPLITS:
        if not frame.loc[frame["split"] == split, "paired"].any():
            raise CorpusError(f"split {split} under {root / split} has no true pair: expected at least one "
                              "<stance>NNa-point.txt with its <stance>NNb-counter.txt in the same folder")
    for s in skipped:
        warnings.warn(f"skipped {root / s.path}: {s.reason}", stacklevel=2)
    return Corpus(frame=frame, source=source, hash=digest.hexdigest()[:16], skipped=skipped)


def _read_argument(path: Path, rel: str, split: str, skipped: list[Skipped]) -> tuple | None:
    """One row for ``path`` (``<split>/<theme>/<debate>/<stance>/<file>``) or ``None`` after recording a skip."""
    if not path.is_file():
        return None
    _, theme, debate, stance, name = rel.split("/")
    match = FILE_PATTERN.match(name)
    if stance not in STANCES:
        skipped.append(Skipped(rel, f"stance folder {stance!r} is not pro or con"))
        return None
    if match is None:
        skipped.append(Skipped(rel, "name does not match <pro|con>NN<a|b>-<point|counter>.txt"))
        return None
    prefix, number, letter, kind = match.groups()
    if prefix != stance or (letter == "a") != (kind == "point"):
        skipped.append(Skipped(rel, f"name disagrees with its folder {stance!r} or pairs a/point, b/counter"))
        return None
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorpusError(f"{path} is not UTF-8 ({err.reason} at byte {err.start}): expected UTF-8 text") from None
    if not text.strip():
        skipped.append(Skipped(rel, "empty file"))
        return None
    pair_id = f"{theme}/{debate}/{stance}/{int(number):02d}"
    return (split, theme, debate, stance, int(number), kind, text.strip(), pair_id, False, rel)


def _to_frame(rows: list[tuple]) -> pd.DataFrame:
    from argbench.data.copies import copy_group_ids

    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["copy_group"] = copy_group_ids(frame["text"])
    key = frame["split"] + "/" + frame["pair_id"]
    kinds = frame.groupby(key)["kind"].transform("nunique")
    frame["paired"] = (kinds == 2).to_numpy()
    return frame.astype({"number": "int64", "paired": "bool"})


def stats(corpus: Corpus) -> dict:
    """Per split: arguments, pairs, debates, themes, skipped files, mean pool size per task and ``copies`` (see
    :func:`argbench.data.copies.copy_stats`) (JSON-ready)."""
    from argbench.data.copies import copy_stats

    out = {"source": corpus.source.describe(), "hash": corpus.hash, "splits": {}}
    splits = {split: corpus.split(split) for split in SPLITS}
    copies = copy_stats(corpus.frame, splits)
    for split in SPLITS:
        part = corpus.frame[corpus.frame["split"] == split]
        data = splits[split]
        out["splits"][split] = {
            "arguments": int(len(part)),
            "pairs": int(len(data.query_idx)),
            "unpaired": int((~part["paired"]).sum()),
            "debates": int(part.groupby(["theme", "debate"]).ngroups),
            "themes": int(part["theme"].nunique()),
            "skipped": [s.path for s in corpus.skipped if s.path.startswith(split + "/")],
            "pools": {task: round(float(mask.sum(1).float().mean()), 2) for task, mask in data.pools.items()},
            "copies": copies[split],
        }
    return out
