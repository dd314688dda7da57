"""Command-line options shared by several commands (``train``, ``ablation run``, ``search``), turned into what
the library takes; imports nothing else of the CLI, so every command module can use it."""

from __future__ import annotations


def shortcut_overrides(args) -> list[str]:
    """``--encoder/--epochs/--seed`` as ``--set`` overrides (applied before explicit ``--set``s)."""
    extra = []
    for flag, key in (("encoder", "model.encoder"), ("epochs", "train.epochs"), ("seed", "train.seed")):
        if getattr(args, flag, None) is not None:
            extra.append(f"{key}={getattr(args, flag)}")
    return extra + list(args.overrides)
