"""Search spaces: which config keys a hyperparameter search samples, and from what range.

A search space is a YAML file in ``ablations/search/`` (see ``default.yaml``)::

    params:
      loss.margin: {type: float, low: 0.1, high: 2.0}
      train.lr:    {type: float, low: 1.0e-6, high: 1.0e-4, log: true}
      model.fusion: {type: categorical, choices: [concatenated, only_cls]}

Every key is an argbench config key. Types: ``float`` and ``int`` take ``low`` < ``high`` and optionally ``log: true``
(low > 0) or a positive ``step`` (not with log); ``categorical`` takes a non-empty list of ``choices``.
:func:`load_space` checks keys, bounds, choices and types against :mod:`argbench.config` (each bound or choice must
be a valid setting of its key), so a bad space raises :class:`SearchSpaceError` before any trial runs.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import optuna

from argbench import config
from argbench.errors import UserError
from argbench.experiments import registry

PARAM_TYPES = ("float", "int", "categorical")
SPEC_KEYS = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
             "categorical": {"type", "choices"}}


class SearchSpaceError(UserError):
    """A search-space file that cannot be used; the message names the file, the key, the value and what is
    expected."""


@dataclass(frozen=True)
class Param:
    """One searched config key: float / int in [low, high] (``log`` scale or a ``step`` grid), or ``choices``."""

    key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.key, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_categorical(self.key, list(self.choices))


@dataclass(frozen=True)
class SearchSpace:
    """A checked space: its name (the file's stem), the file, and {config key: :class:`Param`} in file order."""

    name: str
    path: Path
    params: dict[str, Param]

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """{config key: value} for ``trial``; a retried trial gets back the values of the trial it repeats."""
        return {key: p.suggest(trial) for key, p in self.params.items()}


def spaces_dir() -> Path:
    return registry.ablations_dir() / "search"


def load_space(name_or_path: str | os.PathLike) -> SearchSpace:
    """The space named ``name`` (``ablations/search/<name>.yaml``) or stored at a path (``*.yaml`` or with a
    folder); every entry checked against argbench.config, so a bad space fails before the first trial."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml") and len(path.parts) == 1:
        path = spaces_dir() / f"{path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in spaces_dir().glob("*.yaml"))) or "none"
        raise SearchSpaceError(f"{path}: no such search space file; expected a space name ({known}) or the path "
                               "of a YAML file")
    try:
        raw = config.read_yaml(path)
    except config.ConfigError as err:
        raise SearchSpaceError(str(err)) from None
    if not isinstance(raw, Mapping) or set(raw) != {"params"} or not isinstance(raw["params"], Mapping) \
            or not raw["params"]:
        shown = sorted(raw) if isinstance(raw, Mapping) else repr(raw)
        raise SearchSpaceError(f"{path}: top level is {shown}; expected one key 'params' mapping config keys "
                               "to specs such as {type: float, low: 0.1, high: 2.0}")
    params = {str(key): _param(str(key), spec, path) for key, spec in raw["params"].items()}
    return SearchSpace(name=path.stem, path=path, params=params)


def _param(key: str, spec: Any, path: Path) -> Param:
    """The checked :class:`Param` of entry ``key: spec`` of ``path``; SearchSpaceError otherwise."""
    def fail(problem: str) -> SearchSpaceError:
        return SearchSpaceError(f"{path}: params.{key}: {problem}")

    if not isinstance(spec, Mapping) or spec.get("type") not in PARAM_TYPES:
        raise fail(f"got {spec!r}; expected a mapping with type one of {', '.join(PARAM_TYPES)}, "
                   "e.g. {type: float, low: 0.1, high: 2.0}")
    kind = spec["type"]
    if set(spec) - SPEC_KEYS[kind]:
        raise fail(f"unexpected {', '.join(sorted(set(spec) - SPEC_KEYS[kind]))} (value {spec!r}); a {kind} "
                   f"takes only {', '.join(sorted(SPEC_KEYS[kind]))}")
    field = _config_field(key, spec, fail)
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices \
                or not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
            raise fail(f"choices {choices!r}; expected a non-empty list of numbers, strings, booleans or null")
        _check_values(field, key, choices, path, fail)
        return Param(key, kind, choices=tuple(choices))
    base = _base_type(field)
    if kind == "float" and base is not float or kind == "int" and base not in (int, float):
        raise fail(f"type {kind} does not fit this {base.__name__} key; expected "
                   f"{'categorical' if base not in (int, float) else 'float'}")
    low, high, step = (_number(spec.get(k), k, kind, fail, optional=k == "step") for k in ("low", "high", "step"))
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise fail(f"log {log!r}; expected true or false")
    if low >= high:
        raise fail(f"low {low!r} >= high {high!r}; expected low < high")
    if log and low <= 0:
        raise fail(f"log: true with low {low!r}; expected low > 0 (a log scale holds no zero or negative value)")
    if step is not None and (step <= 0 or log):
        raise fail(f"step {step!r}{' with log: true' if log else ''}; expected a positive step without log")
    _check_values(field, key, [low, high], path, fail)
    return Param(key, kind, low=low, high=high, log=log, step=step)


def _config_field(key: str, spec: Any, fail) -> dataclasses.Field:
    section, _, name = key.partition(".")
    fields = {f.name: f for f in dataclasses.fields(config.SECTIONS[section])} if section in config.SECTIONS else {}
    if name not in fields:
        close = difflib.get_close_matches(key, list(config.flatten(config.Config())), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else " (`argbench ablation show baseline` lists them)"
        raise fail(f"unknown config key (value {spec!r}); expected a key of argbench.config{hint}")
    return fields[name]


def _base_type(field: dataclasses.Field) -> type:
    """``float`` for ``float | None`` and so on; ``list`` for list fields."""
    tp = field.type
    if get_origin(tp) in (Union, types.UnionType):
        (tp,) = [a for a in get_args(tp) if a is not type(None)]
    return get_origin(tp) or tp


def _number(value: Any, name: str, kind: str, fail, optional: bool = False) -> float | int | None:
    if value is None and optional:
        return None
    if kind == "float" and isinstance(value, str):  # YAML 1.1 reads 1e-6 as a string
        try:
            value = float(value)
        except ValueError:
            pass
    ok = int if kind == "int" else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok):
        raise fail(f"{name} {value!r}; expected {'an integer' if kind == 'int' else 'a number'}")
    return float(value) if kind == "float" else value


def _check_values(field: dataclasses.Field, key: str, values: list, path: Path, fail) -> None:
    """Each of ``values`` must be a valid setting of the config key (its range and choices)."""
    for value in values:
        try:
            config.check_value(field, value, key, str(path))
        except config.ConfigError as err:
            raise fail(f"{err.problem} (bound or choice of the search space)") from None
