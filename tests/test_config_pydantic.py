"""The pydantic field checks in argbench.config agree with the hand-written ones they replaced.

The reference below is the code as it was (argbench.config before pydantic): `_coerce`, `_rule_problem` and
`check_value`, copied unchanged. Every field of every section, and a few made-up fields for rule combinations no
section has, is given every input of one table (valid values, numeric and other strings, wrong types, None,
out-of-range values, bad choices, lists) plus its own default, choices and bounds; old and new must return the same
value of the same type or raise the same message, with two intended differences (see `_expected`).
"""

import dataclasses
import enum
import math
import os
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, fields
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar, Union, get_args, get_origin

import numpy as np
import pytest

from argbench import config
from argbench.config import SECTIONS, SPLITS, TASK_NAMES, ConfigError, _describe, _shown, option

# --- the reference: argbench.config's hand-written checks, as they were -----------------------------------------

def _coerce(value: Any, tp: Any) -> Any:
    """`value` as type `tp`, or raise TypeError. bool is not an int; ints and numeric strings are floats."""
    if get_origin(tp) in (Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in get_args(tp) if a is not type(None)]
        return _coerce(value, inner)
    if get_origin(tp) is list:
        if not isinstance(value, (list, tuple)):
            raise TypeError
        return [_coerce(item, get_args(tp)[0]) for item in value]
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-5" as a string
            value = float(value.strip())  # ValueError for non-numbers
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError
        if not math.isfinite(value):
            raise TypeError
        return float(value)
    if tp is str and isinstance(value, os.PathLike):
        return os.fspath(value)
    if tp is int and isinstance(value, bool) or not isinstance(value, tp):
        raise TypeError
    return value


def _rule_problem(value: Any, rules: Mapping[str, Any]) -> str | None:
    """What `value` (already of the right type, not None) breaks among `rules`, or None."""
    if "choices" in rules:
        bad = [v for v in (value if isinstance(value, list) else [value]) if v not in rules["choices"]]
        if bad:
            return f"{bad[0]!r} is not allowed; expected one of: {', '.join(rules['choices'])}"
    if "min_items" in rules and len(value) < rules["min_items"]:
        return f"{value!r} has {len(value)} entries; expected at least {rules['min_items']}"
    if isinstance(value, list) and len(set(value)) < len(value):
        return f"{value!r} repeats an entry; expected each at most once"
    low, high, strict = rules.get("min"), rules.get("max"), rules.get("min_exclusive", False)
    if (low is not None and (value <= low if strict else value < low)) or (high is not None and value > high):
        if high is None:
            allowed = f"{'>' if strict else '>='} {low}"
        else:
            allowed = f"in {'(' if strict else '['}{low}, {high}]"
        return f"{value!r} is out of range; expected a value {allowed}"
    if "pattern" in rules and not re.fullmatch(rules["pattern"][0], value):
        return f"{value!r} is not allowed; expected {rules['pattern'][1]}"
    return None


def reference_check_value(f: dataclasses.Field, value: Any, key: str, source: str = "<python>") -> Any:
    """`value` coerced to field `f`'s type and checked against its rules; ConfigError naming `key` otherwise."""
    try:
        value = _coerce(value, f.type)
    except (TypeError, ValueError):
        raise ConfigError(key, f"expected {_describe(f.type)}, got {_shown(value)}", source) from None
    problem = None if value is None else _rule_problem(value, f.metadata)
    if problem:
        raise ConfigError(key, problem, source)
    return value


# --- the inputs ----------------------------------------------------------------------------------------------------

class Level(enum.IntEnum):
    ONE = 1


class Name(str, enum.Enum):
    COSINE = "cosine"


@dataclass(frozen=True)
class Combinations:
    """Rule combinations no section has (the sections' own fields are all tested too)."""

    section: ClassVar[str] = "made_up"
    closed: float = option(0.5, "", min=0, max=1)
    open_low: float | None = option(None, "", min=0.0, max=1.0, min_exclusive=True)
    int_range: int = option(2, "", min=-3, max=3)
    two_splits: list[str] = option(["training", "test"], "", choices=SPLITS, min_items=2)
    any_strings: list[str] = option([], "")
    text: str | None = option(None, "", pattern=(r"[a-z]+\d?", "letters, then a digit"))


TABLE = [
    None, True, False, 0, 1, -1, 2, 3, 8, 128, 10**6, 10**400, -(10**400),
    0.0, -0.0, 0.5, 1.0, -0.5, 1.5, 2.0, 1e-12, 1e308, math.nan, math.inf, -math.inf,
    "1e-5", "3e-6", " 1.5 ", "\t2\n", "1_0", "1__0", "_1", "١٢", "nan", "inf", "-infinity", "1e400", "0x10",
    "1.", ".5", "+3", "-1", "0", "1", "abc", "", " ", "true", "yes", "on", "null", "None",
    "auto", "cpu", "cuda", "cuda:1", "cuda:", "cuda:x", "auto\n", " auto", "AUTO", "val/epa/acc@1", "acc at 1",
    "pooler", "mean", "cls", "bogus", "linear", "constant", "cosine", "faiss", "validation", "sdoc",
    Path("x/y"), Path("2024"), b"1", bytearray(b"a"), Decimal("1"), Decimal("0.5"), 1 + 0j,
    np.float64(0.5), np.float32(0.5), np.int64(3), np.bool_(True), Level.ONE, Name.COSINE,
    [], (), ["validation"], ("test",), ["validation", "test"], ["validation", "validation"], ["bogus"],
    ["validation", "bogus", "x"], ["training"], {"test"}, frozenset({"test"}), [1], ["validation", 1], [None],
    [Path("test")], ["epa", "sdoc"], list(TASK_NAMES), ["epa", "epa"], [["epa"]], {"a": 1}, {}, object,
]


def _own_inputs(f: dataclasses.Field) -> list:
    """The field's default, its choices and the values at and around its bounds."""
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    out = [default]
    choices = f.metadata.get("choices", ())
    out += list(choices) + [[c] for c in choices] + [list(choices), list(choices)[::-1]]
    for bound in (f.metadata.get("min"), f.metadata.get("max")):
        if bound is not None:
            out += [bound, float(bound), str(bound), bound - 1, bound + 1, bound - 1e-9, bound + 1e-9,
                    math.nextafter(bound, -math.inf), math.nextafter(bound, math.inf)]
    return out


def _outcome(check, f: dataclasses.Field, value: Any) -> tuple:
    try:
        out = check(f, value, "sec.key", "file.yaml")
    except ConfigError as err:
        return "error", str(err)
    except Exception as err:  # noqa: BLE001 — an unexpected exception must be the same one
        return "raised", type(err).__name__
    items = out if isinstance(out, list) else [out]
    return "value", repr(out), type(out), [type(item) for item in items]


def _expected(f: dataclasses.Field, value: Any) -> tuple:
    """The reference's outcome, but for two intended differences:

    - an int too large for a float (10**400 for a float field) was an OverflowError from float(); it is now the
      ConfigError "expected a float, got ...";
    - an enum member of a str or int enum (`Name.COSINE`) that the field's type takes is stored, and shown in a
      rule's message, as its plain value ('cosine'), as pydantic's strict str and int return it; the reference
      kept the member, which `to_yaml` (yaml.safe_dump) cannot write.
    """
    old = _outcome(reference_check_value, f, value)
    if old == ("raised", "OverflowError"):
        return "error", f"file.yaml: sec.key: expected {_describe(f.type)}, got {_shown(value)}"
    if isinstance(value, enum.Enum) and not (old[0] == "error" and ": expected " in old[1]):
        return _outcome(reference_check_value, f, value.value)
    return old


FIELDS = [(f"{name}.{f.name}", f) for name, cls in SECTIONS.items() for f in fields(cls)] \
    + [(f"made_up.{f.name}", f) for f in fields(Combinations)]


@pytest.mark.parametrize("key, f", FIELDS, ids=[key for key, _ in FIELDS])
def test_pydantic_checks_agree_with_the_hand_written_ones(key, f):
    inputs = TABLE + _own_inputs(f)
    differ = [(value, old, new) for value in inputs
              if (old := _expected(f, value)) != (new := _outcome(config.check_value, f, value))]
    assert not differ, "\n".join(f"{value!r}: old {old}, new {new}" for value, old, new in differ)


def test_the_table_reaches_every_outcome():
    """The comparison is not vacuous: the inputs reach a stored value and every kind of message."""
    seen = " ".join(str(_outcome(config.check_value, f, value)) for _, f in FIELDS for value in TABLE + _own_inputs(f))
    for kind in ("'value'", ": expected a float, got", ": expected an int or null, got", ": expected a bool",
                 ": expected a list of strings, got", "is not allowed; expected one of", "is out of range",
                 "entries; expected at least", "repeats an entry", "is not allowed; expected auto, cpu"):
        assert kind in seen, kind
