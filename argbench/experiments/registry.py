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

A resolved config is, in order: base.yaml › the extends chain, root first › the entry's delta › a profile
(``profiles/<name>.yaml``: ``embedded`` for the generated sample, ``cpu``/``gpu`` study budgets) › ``--set``
overrides. An alias resolves to its target's config but keeps its own name. A profile is a budget for what the
entries leave at base.yaml: it sets no key that one of the applied entries sets (``length_256`` keeps its length
under a profile that shortens every other entry's), while ``--set`` overrides everything.

Every entry is written as a delta over ``baseline`` (= base.yaml). With a *base* R (``--base R``) the same delta
is applied over R instead: base.yaml › R's chain › the entry's chain minus what R's already holds (and minus
``baseline``) › profile › ``--set``. An entry whose config then equals R's is an alias of R under that base (e.g.
``learning_recipe`` under ``learning_recipe_in_batch``'s parent chain, or any alias of ``baseline``).
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
PROFILES = Path("profiles")
EMBEDDED_PROFILE = PROFILES / "embedded.yaml"
DEFAULT_BASE = "baseline"  # the entry every delta is written against
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


def layers(name: str, base: str | None = None, directory: str | os.PathLike | None = None) -> list[Ablation]:
    """The entries whose deltas make `name` over `base` (None or ``baseline`` = base.yaml), applied in this order:
    `base`'s chain, then `name`'s chain without the entries already in it and without ``baseline``."""
    own = chain(name, directory)
    if base is None or base == DEFAULT_BASE:
        return own
    under = chain(base, directory)
    skip = {e.name for e in under} | {DEFAULT_BASE}
    return under + [e for e in own if e.name not in skip]


def profile_path(profile: str, directory: str | os.PathLike | None = None) -> Path:
    """``profiles/<profile>.yaml`` of the registry; RegistryError listing the profiles if there is none."""
    folder = ablations_dir(directory) / PROFILES
    path = folder / f"{profile}.yaml"
    if path.parent != folder or not path.is_file():
        known = sorted(p.stem for p in folder.glob("*.yaml"))
        raise RegistryError(f"--profile {profile!r}: no {path}; expected one of {', '.join(known) or 'none'}")
    return path


def resolve(name: str, overrides: Sequence[str] = (), *, embedded: bool = False,
            directory: str | os.PathLike | None = None, base: str | None = None,
            profile: str | None = None) -> tuple[Config, Ablation]:
    """The config entry `name` runs with, and the entry itself (an alias keeps its own name).

    Layers: base.yaml › `base`'s chain (if given) › extends chain › the entry's delta › ``profiles/<profile>.yaml``
    less the keys those entries set (``embedded`` = ``profile="embedded"``: the data are the generated sample) ›
    `overrides` ("section.key=value"). ConfigError names the file or "--set" at fault.
    """
    root = ablations_dir(directory)
    cfg = load_config(root / BASE_FILE)
    ablated: set[tuple[str, str]] = set()
    for entry in layers(name, base, root):
        delta = _delta(read_yaml(entry.path))
        cfg = _layer(cfg, delta, entry.path)
        ablated |= {(section, key) for section, values in delta.items() if isinstance(values, Mapping)
                    for key in values}
    profile = profile or ("embedded" if embedded else None)
    if profile:
        path = profile_path(profile, root)
        cfg = _layer(cfg, _without(read_yaml(path), ablated), path)
    if overrides:
        cfg = load_config(overrides=overrides, base=cfg)
    return cfg, chain(name, root)[-1]


def _without(profile, ablated: set[tuple[str, str]]):
    """`profile`'s sections without the (section, key) pairs in `ablated` (a malformed profile is passed on as it is,
    for :func:`_layer` to reject naming the file)."""
    if not isinstance(profile, Mapping):
        return profile
    return {section: {k: v for k, v in values.items() if (section, k) not in ablated}
            if isinstance(values, Mapping) else values for section, values in profile.items()}


def alias_under(name: str, base: str | None, directory: str | os.PathLike | None = None) -> str | None:
    """The entry `name` is an alias of: its ``alias_of`` without a base; with a base R, R itself when `name`'s
    config over R equals R's (profile and --set apply to both alike, so they are left out); else None."""
    if base is None or base == DEFAULT_BASE:
        return get(name, directory).alias_of
    if name == base:
        return None
    same = resolve(name, directory=directory, base=base)[0] == resolve(base, directory=directory)[0]
    return base if same else None


def distinct_members(names: Sequence[str], base: str, directory: str | os.PathLike | None = None) -> list[str]:
    """`names` in order without `base`, without entries whose config over `base` is `base`'s (aliases under it)
    and without entries whose config equals an earlier member's: the systems worth comparing with `base`."""
    configs = [resolve(base, directory=directory, base=base)[0]]
    members = []
    for name in dict.fromkeys(names):
        cfg = resolve(name, directory=directory, base=base)[0]
        if name != base and cfg not in configs:
            members.append(name)
            configs.append(cfg)
    return members


def run_name(name: str, base: str | None = None) -> str:
    """MLflow run name of entry `name` run over `base`: ``name@base``; the plain name without a base (or over
    ``baseline``) and for the base itself."""
    return name if base in (None, DEFAULT_BASE, name) else f"{name}@{base}"


def resolution(name: str, overrides: Sequence[str] = (), *, embedded: bool = False,
               directory: str | os.PathLike | None = None, base: str | None = None,
               profile: str | None = None) -> dict:
    """``{"name", "base", "alias_of", "layers", "config"}`` of `name` (JSON-ready): the layer files in the order
    applied (``--set ...`` last) and the resolved config as nested sections."""
    cfg, entry = resolve(name, overrides, embedded=embedded, directory=directory, base=base, profile=profile)
    profile = profile or ("embedded" if embedded else None)
    applied = [BASE_FILE, *(e.path.name for e in layers(name, base, directory))]
    applied += [str(PROFILES / f"{profile}.yaml")] * bool(profile)
    applied += [f"--set {' '.join(overrides)}"] * bool(overrides)
    return {"name": entry.name, "base": base or DEFAULT_BASE, "alias_of": alias_under(name, base, directory),
            "group": entry.group, "question": entry.question, "layers": applied, "config": to_dict(cfg)}


def resolved_yaml(name: str, overrides: Sequence[str] = (), *, embedded: bool = False,
                  directory: str | os.PathLike | None = None, base: str | None = None,
                  profile: str | None = None) -> str:
    """The resolved config of `name` as YAML (loadable by `load_config`), headed by comments on its layers."""
    shown = resolution(name, overrides, embedded=embedded, directory=directory, base=base, profile=profile)
    cfg = from_dict(shown["config"], "resolved")
    over = f" over {base}" if base not in (None, DEFAULT_BASE) else ""
    alias = f" (alias of {shown['alias_of']})" if shown["alias_of"] else ""
    header = [f"# ablation: {shown['name']}{over}{alias} [{shown['group']}]", f"# question: {shown['question']}",
              f"# layers: {' > '.join(shown['layers'])}"]
    return "\n".join(header) + "\n" + to_yaml(cfg)
