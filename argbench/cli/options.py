"""Command-line options shared by several commands (``train``, ``ablation run``, ``search``; ``--epoch`` of
``compare``, ``report``, ``study``, ``export``, ``retrieve``), turned into what the library takes; imports nothing
else of the CLI, so every command module can use it."""

from __future__ import annotations

from argbench.model.epoch_names import EPOCHS, LAST, SELECTED


def shortcut_overrides(args) -> list[str]:
    """``--encoder/--epochs/--seed`` as ``--set`` overrides (applied before explicit ``--set``s)."""
    extra = []
    for flag, key in (("encoder", "model.encoder"), ("epochs", "train.epochs"), ("seed", "train.seed")):
        if getattr(args, flag, None) is not None:
            extra.append(f"{key}={getattr(args, flag)}")
    return extra + list(args.overrides)


def add_epoch_argument(parser, what: str, default: str | None = SELECTED) -> None:
    """``--epoch {selected,last}``: which epoch of each run ``what`` comes from (:mod:`argbench.train.selection`);
    ``default`` None: the selected one where the run kept it, else the last (the command says so on stderr)."""
    default_text = default or "the selected one; the last, said on stderr, for a run folder without best/"
    parser.add_argument("--epoch", default=default, choices=EPOCHS,
                        help=f"{what} at each run's {SELECTED} epoch (the best eval.primary on validation) or at "
                             f"its {LAST} (default: {default_text})")
