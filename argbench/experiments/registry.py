"""The registry of named ablations: one short YAML per experiment in ``ablations/``, a delta over ``base.yaml``.

Layout of the registry folder (:func:`argbench.paths.ablations_dir`: ``$ARGBENCH_ABLATIONS``, else the project's
``ablations/``, else the registry packaged with argbench)::

    base.yaml               every config default, once (a pure config file)
    <name>.yaml             one entry: meta keys + only the config keys it changes
    profiles/embedded.yaml  overlay for the generated sample corpus (not an entry)
    search/                 search spaces (not entries)

An entry's top-level keys are the meta keys ``group`` (required), ``question`` (required, one line),
``extends`` (optional: another entry to build on instead of base) and ``alias_of`` (optional: another entry
whose config this one *is*; an alias holds no config keys). Every other top-level key is a config section, so a
misspelt meta key fails as an unknown section naming the file.

A resolved config is, in order: base.yaml › the extends chain, root first › the entry's delta › the embedded
profile (when asked) › ``--set`` overrides. An alias resolves to its target's config but keeps its own name.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from argbench import paths
from argbench.config import Config, ConfigError, from_dict, load_config, read_yaml, to_dict, to_yaml
from argbench.errors import UserError

ENV_VAR = paths.ABLATIONS_ENV
BASE_FILE = "base.yaml"
EMBEDDED_PROFILE = Path("profiles") / "embedded.yaml"
META_KEYS = ("group", "question", "extends", "alias_of")
BASE_HEADER = """\
# GENERATED from the dataclasses in argbench/config.py, the one source of every default: do not edit by hand.
# Regenerate with `argbench ablation defaults > ablations/base.yaml` (tests/experiments/test_registry.py checks it).
# Every config default: the research recipe (docs/research-protocol.md) that the ablations are deltas over.
# Each ablations/<name>.yaml holds only the keys it changes. Show any entry resolved: `argbench ablation show NAME`.
"""


class RegistryError(UserError):
    """An unknown entry name, a malformed entry (file and key named) or an extends/alias cycle."""


@dataclass(frozen=True)
class Ablation:
    """One registry entry. `alias_of` / `extends` name another entry or are None (None extends = base.yaml)."""

    name: str
    group: str
    question: str
    path: Path
    alias_of: str | None = None
    extends: str | None = None

    @property
    def parent(self) -> str | None:
        """The entry this one's config starts from; None = base.yaml."""
        return self.alias_of or self.extends


def ablations_dir(directory: str | os.PathLike | None = None) -> Path:
    """The registry folder: see :func:`argbench.paths.ablations_dir`."""
    return paths.ablations_dir(directory)


# --- reading entries ---------------------------------------------------------------------------------------------

def _natural_key(text: str) -> tuple:
    """Sort key reading numbers as numbers: proj_32 < proj_128, decay_0.005 < decay_0.01."""
    return tuple((0, float(part), "") if i % 2 else (1, 0.0, part)
                 for i, part in enumerate(re.split(r"(\d+(?:\.\d+)?)", text)))


def _meta_text(raw: Mapping, key: str, path: Path, required: bool) -> str | None:
    """Meta key `key` of entry file `path` as a non-empty one-line string (None if absent and optional)."""
    value = raw.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or "\n" in value.strip():
        got = "missing" if value is None else f"got {value!r}"
        raise RegistryError(f"{path}: {key}: {got}; expected a non-empty one-line string")
    return value.strip()


def _read_entry(path: Path) -> Ablation:
    raw = read_yaml(path)
    if not isinstance(raw, Mapping):
        raise RegistryError(f"{path}: expected a mapping with group, question and config sections, "
                            f"got {type(raw).__name__}")
    entry = Ablation(name=path.stem, group=_meta_text(raw, "group", path, True),
                     question=_meta_text(raw, "question", path, True), path=path,
                     alias_of=_meta_text(raw, "alias_of", path, False),
                     extends=_meta_text(raw, "extends", path, False))
    extra = (["extends"] if entry.extends else []) + list(_delta(raw))
    if entry.alias_of and extra:
        raise RegistryError(f"{path}: alias_of: an alias also holds {', '.join(map(str, extra))}; expected only "
                            "group, question and alias_of (an alias runs its target's config unchanged)")
    return entry


def _delta(raw: Mapping) -> dict:
    """The config sections of an entry file's content (every top-level key that is not a meta key)."""
    return {k: v for k, v in raw.items() if k not in META_KEYS}


def list_ablations(directory: str | os.PathLike | None = None) -> list[Ablation]:
    """Every entry of the registry folder, sorted by group then name; subfolders are not read.

    Raises RegistryError naming the file when an entry lacks its meta keys or names a missing entry.
    """
    root = ablations_dir(directory)
    if not (root / BASE_FILE).is_file():
        raise RegistryError(f"{root}: no {BASE_FILE}; expected a registry folder (set ${ENV_VAR} or pass one)")
    entries = [_read_entry(p) for p in root.glob("*.yaml") if p.name != BASE_FILE]
    names = {e.name for e in entries}
    for e in entries:
        for key in ("alias_of", "extends"):
            target = getattr(e, key)
            if target is not None and target not in names:
                raise RegistryError(f"{e.path}: {key}: no entry named {target!r}{_close(target, names)}")
    return sorted(entries, key=lambda e: (_natural_key(e.group), _natural_key(e.name)))


def _close(name: str, names) -> str:
    close = difflib.get_close_matches(name, sorted(names), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def get(name: str, directory: str | os.PathLike | None = None) -> Ablation:
    """The entry called `name` (only its file is read); RegistryError listing the closest names otherwise."""
    root = ablations_dir(directory)
    path = root / f"{name}.yaml"
    if path.parent != root or path.name == BASE_FILE or not path.is_file():  # "profiles/embedded" is no entry
        names = [e.name for e in list_ablations(root)]
        raise RegistryError(f"unknown ablation {name!r}{_close(name, names)} "
                            "(`argbench ablation list` shows all)")
    return _read_entry(path)


def groups(directory: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """{group: [entry names]} in list order."""
    out: dict[str, list[str]] = {}
    for e in list_ablations(directory):
        out.setdefault(e.group, []).append(e.name)
    return out


# --- resolving configs -------------------------------------------------------------------------------------------

def chain(name: str, directory: str | os.PathLike | None = None) -> list[Ablation]:
    """`name`'s entry and its alias_of / extends ancestors, root first; RegistryError naming a cycle."""
    root = ablations_dir(directory)
    path = [get(name, root)]
    while (parent := path[-1].parent) is not None:
        key = "alias_of" if path[-1].alias_of else "extends"
        if parent in [e.name for e in path]:
            loop = " -> ".join([*(e.name for e in path), parent])
            raise RegistryError(f"{path[-1].path}: {key}: cycle {loop}; expected a chain that ends at base.yaml")
        try:
            path.append(get(parent, root))
        except RegistryError as err:
            raise RegistryError(f"{path[-1].path}: {key}: {err}") from None
    return path[::-1]


def _layer(cfg: Config, delta: Mapping, source: Path) -> Config:
    """`cfg` with the config sections of `delta` applied; errors name `source`."""
    if not isinstance(delta, Mapping):
        raise ConfigError("<top>", f"expected a mapping of sections, got {type(delta).__name__}", str(source))
    merged = to_dict(cfg)
    for section, values in delta.items():
        values = {} if values is None else values  # "model:" with nothing under it
        # A non-mapping value is passed on as it is, for from_dict to reject naming the file.
        merged[section] = {**merged.get(section, {}), **values} if isinstance(values, Mapping) else values
    return from_dict(merged, str(source))


def resolve(name: str, overrides: Sequence[str] = (), *, embedded: bool = False,
            directory: str | os.PathLike | None = None) -> tuple[Config, Ablation]:
    """The config entry `name` runs with, and the entry itself (an alias keeps its own name).

    Layers: base.yaml › extends chain › the entry's delta › profiles/embedded.yaml if `embedded` (the data are
    the generated sample) › `overrides` ("section.key=value"). ConfigError names the file or "--set" at fault.
    """
    root = ablations_dir(directory)
    entries = chain(name, root)
    cfg = load_config(root / BASE_FILE)
    for entry in entries:
        cfg = _layer(cfg, _delta(read_yaml(entry.path)), entry.path)
    if embedded:
        profile = root / EMBEDDED_PROFILE
        cfg = _layer(cfg, read_yaml(profile), profile)
    if overrides:
        cfg = load_config(overrides=overrides, base=cfg)
    return cfg, entries[-1]


def resolved_yaml(name: str, overrides: Sequence[str] = (), *, embedded: bool = False,
                  directory: str | os.PathLike | None = None) -> str:
    """The resolved config of `name` as YAML (loadable by `load_config`), headed by comments on its layers."""
    cfg, entry = resolve(name, overrides, embedded=embedded, directory=directory)
    layers = [BASE_FILE, *(e.path.name for e in chain(name, directory))]
    layers += [str(EMBEDDED_PROFILE)] * embedded + [f"--set {' '.join(overrides)}"] * bool(overrides)
    alias = f" (alias of {entry.alias_of})" if entry.alias_of else ""
    header = [f"# ablation: {entry.name}{alias} [{entry.group}]", f"# question: {entry.question}",
              f"# layers: {' > '.join(layers)}"]
    return "\n".join(header) + "\n" + to_yaml(cfg)

