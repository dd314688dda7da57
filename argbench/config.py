"""Typed, frozen configuration of one training run, read from YAML with dotted overrides.

One module on purpose: it is the single source of every default, its help text and its check, read in one place.

A `Config` has seven sections (data, model, loss, negatives, train, eval, reranker); each field carries its type (the
annotation), its default (the original research recipe, see docs/research-protocol.md), a one-line help string and
any allowed choices or bounds in its metadata. Validation is driven by that metadata alone (pydantic checks it; the
messages are argbench's): constructing a section coerces and checks every field, and `Config` then checks the rules
that span fields. So a bad value fails while the config is read, naming where it came from (file path, "--set",
...), the dotted key, the value and what is allowed, before any model is built.

YAML is always read with `yaml.safe_load`. PyYAML follows YAML 1.1, which reads `1e-5` as a string; float fields
therefore also accept strings that spell a finite number.
"""

import dataclasses
import difflib
import functools
import os
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import yaml
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

from argbench.errors import UserError

SPLITS = ("training", "validation", "test")
TASK_NAMES = ("sdoc", "sdoa", "sdc", "sda", "stc", "sta", "epc", "epa")  # the eight tasks (argbench.data.tasks)


class ConfigError(UserError):
    """A configuration problem: `source` (file, "--set", ...), dotted `key` and what is wrong with its value."""

    def __init__(self, key: str, problem: str, source: str = "<python>"):
        self.key, self.problem, self.source = key, problem, source
        super().__init__(f"{source}: {key}: {problem}")

    def with_source(self, source: str) -> "ConfigError":
        return ConfigError(self.key, self.problem, source)

    def __reduce__(self):  # picklable (worker processes, optuna) despite the three-argument constructor
        return ConfigError, (self.key, self.problem, self.source)


def option(default: Any, help: str, **rules: Any) -> Any:
    """A dataclass field with its help text and validation rules in metadata.

    Rules: choices (tuple; for lists, per item), min / max (numbers) with min_exclusive, pattern
    ((regex, description)), min_items (lists). A list default is copied per instance.
    """
    kind = {"default_factory": lambda: list(default)} if isinstance(default, list) else {"default": default}
    return field(metadata={"help": help, **rules}, **kind)


class _Section:
    """Base of the sections: coerce and check every field from its annotation and metadata."""

    section: ClassVar[str]

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            value = check_value(f, getattr(self, f.name), f"{self.section}.{f.name}")
            object.__setattr__(self, f.name, value)  # frozen: coerced values (int -> float) are stored once


@dataclass(frozen=True)
class DataConfig(_Section):
    """Which corpus, how much of it, and which splits are evaluated after each epoch."""

    section: ClassVar[str] = "data"
    path: str | None = option(None, "corpus root, or 'sample'; null = --data, then $ARGBENCH_DATA, "
                                    "then data/counterargs-18, then the generated sample")
    max_train_pairs: int | None = option(None, "use only this many training pairs (quick runs); null = all",
                                         min=1)
    eval_splits: list[str] = option(["validation"], "splits evaluated after each epoch",
                                    choices=SPLITS, min_items=1)
    decontaminate: bool = option(True, "drop training pairs whose point or counter text occurs in validation or "
                                       "test (argbench.data.copies)")
    dedupe_pairs: bool = option(True, "keep one of text-identical training pairs")


@dataclass(frozen=True)
class ModelConfig(_Section):
    """The bi-encoder with classification: encoder, projection head ("sim header"), pair classifier.
    (The original used bert-base-uncased; argbench's offline default encoder is all-MiniLM-L6-v2.)"""

    section: ClassVar[str] = "model"
    encoder: str = option("all-MiniLM-L6-v2", "encoder name known to argbench.model.encoders, or a local model path")
    pooling: str = option("pooler", "text vector from the encoder output", choices=("pooler", "cls", "mean"))
    max_length: int = option(256, "tokens kept per text (longer texts are truncated)", min=1)
    sharing: str = option("shared", "one encoder for points and counters, or one each",
                          choices=("shared", "separate"))
    proj_dim: int | None = option(128, "size of the retrieval embedding; null = no projection "
                                       "(the pooled vector is the retrieval embedding)", min=1)
    proj_init: str = option("random", "start of the projection: random (PyTorch's default init), orthogonal "
                                      "(orthonormal rows: distances kept exactly when proj_dim is the encoder's "
                                      "width) or pca (the top proj_dim principal directions of the training texts' "
                                      "pooled vectors, centred)", choices=("random", "orthogonal", "pca"))
    layernorm: bool = option(False, "apply LayerNorm after the projection")
    relu: bool = option(False, "apply ReLU after the projection")
    classifier: bool = option(True, "train the pair classifier (and use it to rerank)")
    fusion: str = option("concatenated", "pair-classifier input: [a, b, |a-b|] of which vectors",
                         choices=("concatenated", "only_cls", "only_embedding"))
    freeze_encoder: bool = option(False, "keep encoder weights fixed; train only the heads")
    train_layers: int | None = option(None, "train only the top N transformer layers (and the heads); the layers "
                                            "below are frozen and their outputs computed once per text; null = all",
                                      min=1)


@dataclass(frozen=True)
class LossConfig(_Section):
    """Triplet loss on the projection embeddings + cross-entropy of the classifier on (point, counter) and
    (point, negative); the in-batch InfoNCE term is argbench's addition and off by default."""

    section: ClassVar[str] = "loss"
    margin: float = option(1.0, "triplet margin (distance units of the retrieval embedding)",
                           min=0, min_exclusive=True)
    p: float = option(2.0, "norm degree of the triplet distance", min=0, min_exclusive=True)
    triplet_weight: float = option(1.0, "weight of the triplet loss", min=0)
    ce_pos_weight: float = option(1.0, "weight of the classifier loss on (point, counter) -> 1", min=0)
    ce_neg_weight: float = option(1.0, "weight of the classifier loss on (point, negative) -> 0", min=0)
    in_batch_weight: float = option(0.0, "weight of the in-batch-negatives InfoNCE loss; 0 = off", min=0)
    in_batch_temperature: float = option(0.05, "softmax temperature of the InfoNCE loss",
                                         min=0, min_exclusive=True)
    in_batch_symmetric: bool = option(False, "InfoNCE in both directions (points -> counters and counters -> "
                                             "points, averaged); false = points -> counters only")


@dataclass(frozen=True)
class NegativesConfig(_Section):
    """Online hard-negative mining: random rate r = max(floor, start - step * epoch) (linear) or r = rate
    (constant); with probability 1 - r the negative is the nearest other point or wrong counter, else a random
    argument."""

    section: ClassVar[str] = "negatives"
    schedule: str = option("linear", "random rate per epoch: max(floor, start - step*epoch), or constant rate",
                           choices=("linear", "constant"))
    start: float = option(0.8, "linear schedule: random rate before the first epoch", min=0, max=1)
    step: float = option(0.02, "linear schedule: decrease of the random rate per epoch", min=0)
    floor: float = option(0.0, "linear schedule: lowest random rate", min=0, max=1)
    rate: float = option(0.8, "constant schedule: random rate every epoch", min=0, max=1)
    backend: str = option("torch", "nearest-neighbour search used for mining",
                          choices=("torch", "balltree", "faiss"))
    k: int = option(3, "neighbours retrieved per query when mining", min=1)
    examples: int = option(5, "mined negatives shown per epoch for inspection", min=0)
    exclude_copies: bool = option(True, "never mine a copy of the anchor's or its positive's text as a negative "
                                        "(false = exclude by index only, as the original)")
    max_ratio: float | None = option(None, "positive-aware mining: pass over hard candidates whose cosine "
                                           "similarity to the point exceeds this fraction of its counter's "
                                           "(NV-Retriever TopK-PercPos, e.g. 0.95); null = off",
                                     min=0, min_exclusive=True)


@dataclass(frozen=True)
class TrainConfig(_Section):
    """Optimisation: Adam, lr 3e-6, batch 8, 200 epochs, as in the original."""

    section: ClassVar[str] = "train"
    epochs: int = option(200, "training epochs (0 = evaluate the untrained model)", min=0)
    batch_size: int = option(8, "training triplets per step", min=1)
    mini_batch_size: int | None = option(None, "gradient cache: encode a step's triplets this many at a time (the same "
                                               "gradients as the whole batch, encoder memory of this many); "
                                               "null = the whole batch at once", min=1)
    lr: float = option(3e-6, "learning rate of the encoder", min=0, min_exclusive=True)
    head_lr: float | None = option(None, "learning rate of projection and classifier; null = lr",
                                   min=0, min_exclusive=True)
    scheduler: str = option("constant", "learning-rate schedule over all training steps, after the warmup "
                                        "(transformers' schedulers)", choices=("constant", "linear", "cosine"))
    warmup_ratio: float = option(0.0, "fraction of all training steps over which the learning rate rises "
                                      "linearly from 0", min=0, max=1)
    patience: int | None = option(None, "early stopping: stop after this many evaluations of eval.primary without "
                                        "a new best; null = off", min=1)
    optimizer: str = option("adam", "optimiser", choices=("adam", "adamw"))
    weight_decay: float = option(0.0, "weight decay", min=0)
    grad_clip: float | None = option(1.0, "max gradient norm; null = no clipping", min=0, min_exclusive=True)
    seed: int = option(42, "seed of every random number generator")
    device: str = option("auto", "torch device; auto = cuda if available, else cpu",
                         pattern=(r"auto|cpu|cuda(:\d+)?", "auto, cpu, cuda or cuda:N"))
    precision: str = option("auto", "auto = bf16 autocast on CUDA and on CPUs that compute bf16 natively "
                                    "(avx512_bf16 or amx_bf16), fp32 elsewhere",
                            choices=("auto", "fp32", "bf16"))
    embed_batch_size: int = option(128, "texts per forward pass when embedding without gradients", min=1)
    num_threads: int | None = option(None, "torch CPU threads; null = torch's default", min=1)
    compile: bool = option(False, "torch.compile the encoder(s): fused kernels for the training and embedding "
                                  "forwards, after a one-off compilation (minutes) at the first batch shapes")
    ddp_timeout: int = option(3600, "multi-process runs (torchrun): seconds a process waits in a collective "
                                    "before the run fails; covers what the main process does alone (checkpoints, "
                                    "hooks, the cross-encoder second stage)", min=1)


PRIMARY = "val/epa/acc_at_1"


def metric_name(name: str) -> str:
    """MLflow's name of a metric, which forbids "@": ``val/epa/acc@1`` (the old spelling, still read from user
    YAML, overrides and old run folders) -> ``val/epa/acc_at_1``; a name in MLflow's spelling is returned as is."""
    return name.replace("@", "_at_")


@dataclass(frozen=True)
class EvalConfig(_Section):
    """Retrieval distance, the metric that picks the best epoch, and the second stage that reranks the top."""

    section: ClassVar[str] = "eval"
    metric: str = option("euclidean", "retrieval distance on the retrieval embedding",
                         choices=("euclidean", "cosine"))
    primary: str = option(PRIMARY, "metric name that selects the best epoch and is optimised by search "
                                   "(acc@1 is read as acc_at_1)",
                          pattern=(r"\S+", "a non-empty metric name"))
    every: int = option(1, "evaluate every this many epochs", min=1)
    at_start: bool = option(True, "evaluate the untrained model at epoch 0 (false saves one evaluation per run; "
                                  "the curve then starts at epoch 1)")
    rerank_depth: int = option(10, "candidates reranked per query (and per task) by the second stage", min=1)
    rerank: str = option("classifier", "second stage, whose two-stage ranks of the selected epoch are logged per "
                                       "task and view under val/reranked/...: the pair classifier's P(true pair) "
                                       "(also every epoch over the epa top: val/rerank/acc_at_1), or a "
                                       "cross-encoder trained after the last epoch (the reranker section)",
                         choices=("classifier", "cross_encoder"))
    rerank_tasks: list[str] = option(list(TASK_NAMES), "tasks the second stage reranks (it scores up to "
                                                       "rerank_depth pairs per query and task); the others keep "
                                                       "their first-stage ranks under val/reranked/...",
                                     choices=TASK_NAMES, min_items=1)

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "primary", metric_name(self.primary))


@dataclass(frozen=True)
class RerankerConfig(_Section):
    """The cross-encoder second stage (``eval.rerank: cross_encoder``; argbench.train.reranker): one encoder reads
    "[CLS] point [SEP] candidate [SEP]" (each side cut to model.max_length) and scores the pair; it is trained after
    the bi-encoder's last epoch on the pairs trained on, each point against its own counter and its nearest other
    arguments under the final bi-encoder (copies of its point or counter excluded), softmax over the group."""

    section: ClassVar[str] = "reranker"
    init: str = option("bi_encoder", "weights the cross-encoder starts from: the trained bi-encoder's (point) "
                                     "encoder, or model.encoder as packaged", choices=("bi_encoder", "pretrained"))
    epochs: int = option(1, "passes over the training pairs", min=1)
    lr: float = option(2.0e-05, "AdamW learning rate", min=0.0, min_exclusive=True)
    batch_size: int = option(8, "points per step (each with its counter and its negatives)", min=1)
    negatives: int = option(3, "mined negatives per point", min=1)


@dataclass(frozen=True)
class Config:
    """One training run. Build with `load_config` / `from_dict`; all sections default to the research recipe."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    negatives: NegativesConfig = field(default_factory=NegativesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    reranker: RerankerConfig = field(default_factory=RerankerConfig)

    def __post_init__(self) -> None:
        for f in fields(self):
            if not isinstance(getattr(self, f.name), f.type):
                raise ConfigError(f.name, f"expected a {f.type.__name__}, got {_shown(getattr(self, f.name))}")
        _check_across(self)


SECTIONS: dict[str, type] = {f.name: f.type for f in fields(Config)}


def _check_across(cfg: Config) -> None:
    """Rules that involve more than one field."""
    neg, loss, model = cfg.negatives, cfg.loss, cfg.model
    if neg.schedule == "linear" and neg.floor > neg.start:
        raise ConfigError("negatives.floor", f"{neg.floor!r} is above negatives.start ({neg.start!r}); "
                                             "expected floor <= start")
    classifier_loss = model.classifier and (loss.ce_pos_weight > 0 or loss.ce_neg_weight > 0)
    if cfg.train.epochs > 0 and not (loss.triplet_weight > 0 or loss.in_batch_weight > 0 or classifier_loss):
        raise ConfigError("loss", "every loss term has weight 0 (or the classifier is off); "
                                  "expected a positive triplet_weight, in_batch_weight or ce_*_weight")
    if model.freeze_encoder and model.train_layers is not None:
        raise ConfigError("model.train_layers", f"{model.train_layers!r} with freeze_encoder true; expected null "
                                                "(a frozen encoder trains no layer)")
    if model.proj_init != "random" and model.proj_dim is None:
        raise ConfigError("model.proj_init", f"{model.proj_init!r} with proj_dim null (no projection); expected "
                                             "random or a proj_dim")
    if model.freeze_encoder and model.proj_dim is None and not model.classifier:
        raise ConfigError("model.freeze_encoder", "true with proj_dim null and classifier false leaves "
                                                  "nothing to train; expected a projection or a classifier")


# --- field checks, driven by annotation and metadata: pydantic validates, the messages are argbench's ----------

def _shown(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _describe(tp: Any) -> str:
    """'a float', 'an int or null', 'a list of strings'... for messages."""
    if get_origin(tp) in (Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        return " or ".join(_describe(a) for a in inner) + " or null"
    if get_origin(tp) is list:
        return "a list of strings" if get_args(tp) == (str,) else f"a list of {get_args(tp)}"
    return {bool: "a bool (true/false)", int: "an int", float: "a float", str: "a string"}[tp]


def _number(value: Any) -> Any:
    """Before pydantic's strict float: a string is read by Python's float() (YAML 1.1 reads "1e-5" as text; pydantic's
    own parser refuses some spellings float() reads, e.g. non-ASCII digits), and what is neither an int, a float
    nor a string is refused here (strict pydantic takes Decimal and numpy ints)."""
    if isinstance(value, str):
        return float(value.strip())
    if not isinstance(value, (int, float)):
        raise ValueError("not a number")
    return value


_fspath = BeforeValidator(lambda v: os.fspath(v) if isinstance(v, os.PathLike) else v)
_tuple_as_list = BeforeValidator(lambda v: list(v) if isinstance(v, tuple) else v)  # strict lists refuse tuples
_STRICT = ConfigDict(strict=True, allow_inf_nan=False, regex_engine="python-re")  # bool is no int, 1.0 no int


def _accepted(tp: Any) -> Any:
    """Annotation `tp` as argbench reads it: also a numeric string for a float, a path for a string, a tuple
    for a list."""
    if get_origin(tp) in (Union, types.UnionType):
        (inner,) = [a for a in get_args(tp) if a is not type(None)]
        return _accepted(inner) | None
    if get_origin(tp) is list:
        return Annotated[list[_accepted(get_args(tp)[0])], _tuple_as_list]
    return {float: Annotated[float, BeforeValidator(_number)], str: Annotated[str, _fspath]}.get(tp, tp)


def _no_repeats(value: list) -> list:
    if len(set(value)) < len(value):
        raise PydanticCustomError("repeated_entry", "repeats an entry")
    return value


def _constrained(tp: Any, rules: Mapping[str, Any]) -> Any:
    """Field type `tp` without None, with `rules` as pydantic constraints: choices as a Literal (per item for a
    list), min / max as gt / ge / le, the pattern matched whole, min_items as min_length; no list repeats an entry."""
    if get_origin(tp) in (Union, types.UnionType):
        (tp,) = [a for a in get_args(tp) if a is not type(None)]
    is_list = get_origin(tp) is list
    item = Literal[rules["choices"]] if "choices" in rules else get_args(tp)[0] if is_list else tp
    if is_list:
        return Annotated[list[item], Field(min_length=rules.get("min_items")), AfterValidator(_no_repeats)]
    low, strict, pattern = rules.get("min"), rules.get("min_exclusive", False), rules.get("pattern")
    return Annotated[item, Field(gt=low if strict else None, ge=None if strict else low, le=rules.get("max"),
                                 pattern=rf"\A(?:{pattern[0]})\Z" if pattern else None)]


@functools.cache
def _adapters(tp: Any, rules: tuple) -> tuple[TypeAdapter, TypeAdapter]:
    """Pydantic validators of field type `tp`: one coerces a value, one checks a coerced value against `rules`."""
    return TypeAdapter(_accepted(tp), config=_STRICT), TypeAdapter(_constrained(tp, dict(rules)), config=_STRICT)


def _rule_problem(value: Any, rules: Mapping[str, Any], error: Mapping[str, Any]) -> str:
    """argbench's message for pydantic's first `error` on coerced `value` (pydantic's own text names neither the
    allowed range nor the choices as argbench's messages do)."""
    kind = error["type"]
    if kind == "literal_error":
        return f"{error['input']!r} is not allowed; expected one of: {', '.join(rules['choices'])}"
    if kind == "too_short":
        return f"{value!r} has {len(value)} entries; expected at least {rules['min_items']}"
    if kind == "repeated_entry":
        return f"{value!r} repeats an entry; expected each at most once"
    if kind == "string_pattern_mismatch":
        return f"{value!r} is not allowed; expected {rules['pattern'][1]}"
    low, high, strict = rules.get("min"), rules.get("max"), rules.get("min_exclusive", False)  # gt, ge, le
    allowed = f"{'>' if strict else '>='} {low}" if high is None else f"in {'(' if strict else '['}{low}, {high}]"
    return f"{value!r} is out of range; expected a value {allowed}"


def check_value(f: dataclasses.Field, value: Any, key: str, source: str = "<python>") -> Any:
    """`value` coerced to field `f`'s type and checked against its rules; ConfigError naming `key` otherwise."""
    rules = {k: v for k, v in f.metadata.items() if k != "help"}
    coerce, check = _adapters(f.type, tuple(sorted(rules.items())))
    try:
        value = coerce.validate_python(value)
    except ValidationError:
        raise ConfigError(key, f"expected {_describe(f.type)}, got {_shown(value)}", source) from None
    if value is not None:
        try:
            check.validate_python(value)
        except ValidationError as err:
            raise ConfigError(key, _rule_problem(value, rules, err.errors()[0]), source) from None
    return value


# --- reading: mappings, files, overrides -------------------------------------------------------------------------

def _suggest(key: str) -> str:
    """' Did you mean ...?' for an unknown dotted key: the same field in another section, else the closest key."""
    name = key.rpartition(".")[2]
    known = list(flatten(Config()))
    same_name = [k for k in known if k.endswith("." + name)]
    close = same_name or difflib.get_close_matches(key, known, n=1, cutoff=0.6) \
        or difflib.get_close_matches(key, SECTIONS, n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def _field(key: str, source: str, value: Any = None) -> dataclasses.Field:
    """The field named by dotted `key` ('model.proj_dim'); ConfigError if there is none."""
    section, _, name = key.partition(".")
    if section not in SECTIONS:
        raise ConfigError(key, f"unknown section (value {value!r}); sections are: {', '.join(SECTIONS)}."
                               + _suggest(key), source)
    by_name = {f.name: f for f in fields(SECTIONS[section])}
    if name not in by_name:
        raise ConfigError(key, f"unknown key (value {value!r}); '{section}' has: {', '.join(by_name)}."
                               + _suggest(key), source)
    return by_name[name]


def _checked(d: Any, source: str) -> dict[str, dict[str, Any]]:
    """A copy of nested mapping `d` {section: {key: value}} with every key known and every value checked."""
    if not isinstance(d, Mapping):
        raise ConfigError("<top>", f"expected a mapping of sections, got {_shown(d)}", source)
    out: dict[str, dict[str, Any]] = {}
    for section, values in d.items():
        if section not in SECTIONS:
            _field(str(section), source, values)  # raises, with a suggestion
        if values is None:  # "model:" with nothing under it
            values = {}
        if not isinstance(values, Mapping):
            raise ConfigError(section, f"expected a mapping of keys, got {_shown(values)}", source)
        for name, value in values.items():
            key = f"{section}.{name}"
            out.setdefault(section, {})[name] = check_value(_field(key, source, value), value, key, source)
    return out


def _merged(base: Mapping[str, Mapping[str, Any]], delta: Mapping[str, Mapping[str, Any]]) -> dict:
    out = {section: dict(values) for section, values in base.items()}
    for section, values in delta.items():
        out.setdefault(section, {}).update(values)
    return out


def from_dict(d: Mapping, source: str = "<dict>") -> Config:
    """A validated Config from a nested mapping {section: {key: value}}; missing keys keep their defaults."""
    checked = _checked(d, source)
    try:
        return Config(**{section: cls(**checked.get(section, {})) for section, cls in SECTIONS.items()})
    except ConfigError as err:
        raise err.with_source(source) from None


def apply_overrides(d: Mapping, overrides: Sequence[str], source: str = "--set") -> dict:
    """A copy of nested mapping `d` with each 'section.key=value' applied; the value is read as YAML.

    A string field takes the text as written where YAML would read a number or bool (`data.path=2024`).
    """
    out = _merged(d, {})
    for item in overrides:
        key, eq, text = (part.strip() for part in item.partition("="))
        if not eq or not key or not text:
            raise ConfigError(item, "malformed override; expected KEY=VALUE, e.g. train.lr=1e-5 "
                                    "(write KEY=null for none)", source)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(key, f"cannot read {text!r} as YAML ({err.problem}); expected KEY=VALUE",
                              source) from None
        f = _field(key, source, value)
        if f.type in (str, str | None) and value is not None and not isinstance(value, str):
            value = text  # e.g. data.path=2024 or model.encoder=on: the text, not YAML's int or bool
        section, _, name = key.partition(".")
        out.setdefault(section, {})[name] = check_value(f, value, key, source)
    return out


def read_yaml(path: Path) -> Any:
    """The parsed content of YAML file `path` ({} if empty); ConfigError if missing or unreadable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError("<file>", f"cannot read config file ({err.strerror})", str(path)) from None
    except UnicodeDecodeError as err:
        raise ConfigError("<file>", f"not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
                                    "expected a UTF-8 YAML file", str(path)) from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError("<file>", f"not valid YAML: {err}", str(path)) from None
    return {} if loaded is None else loaded


def load_config(path: Path | None = None, overrides: Sequence[str] = (), base: Mapping | Config | None = None
                ) -> Config:
    """Defaults, updated by `base`, then the YAML file at `path`, then `overrides` ('section.key=value').

    Each layer is checked on its own so an error names the layer it came from ("<base>", the file, "--set").
    """
    base_dict = to_dict(base) if isinstance(base, Config) else (base or {})
    layers = [(base_dict, "<base>")] + ([(read_yaml(path), str(path))] if path is not None else [])
    d: dict = {}
    for layer, source in layers:
        d = _merged(d, _checked(layer, source))
    d = apply_overrides(d, overrides)
    used = [source for layer, source in layers if layer or source != "<base>"] + (["--set"] if overrides else [])
    return from_dict(d, " + ".join(used) or "<defaults>")


# --- writing and derived configs ---------------------------------------------------------------------------------

def to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """Nested plain dict {section: {key: value}} (lists copied); `from_dict(to_dict(cfg)) == cfg`."""
    return {s.name: {f.name: _plain(getattr(getattr(cfg, s.name), f.name)) for f in fields(s.type)}
            for s in fields(Config)}


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, list) else value


def to_yaml(cfg: Config) -> str:
    """The full config as YAML, sections and keys in declaration order."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


def flatten(cfg: Config) -> dict[str, Any]:
    """{'model.proj_dim': 128, ...}: one entry per field; None stays None, lists stay lists (callers stringify)."""
    return {f"{section}.{name}": value for section, values in to_dict(cfg).items() for name, value in values.items()}


def defaults_yaml(header: str = "") -> str:
    """Every default as commented YAML: one block per section (its docstring as the comment), one line per field
    with its help text; ``header`` (comment lines) first. ``ablations/base.yaml`` is this text, generated."""
    lines = [header.rstrip("\n")] if header else []
    for name, section in SECTIONS.items():
        doc = " ".join((section.__doc__ or "").split())
        lines += ["", *(f"# {line}" for line in _wrap(doc, 116)), f"{name}:"]
        for f in fields(section):
            value = yaml.safe_dump({f.name: _plain(f.default if f.default is not dataclasses.MISSING
                                                   else f.default_factory())},
                                   default_flow_style=True, width=1000).strip()[1:-1]
            value = re.sub(r"^(\w+): (\d+(?:\.\d*)?)e", r"\1: \2e", value)
            lines.append(f"  {value:<30}  # {f.metadata['help']}")
    return "\n".join(lines).lstrip("\n") + "\n"


def _wrap(text: str, width: int) -> list[str]:
    out, line = [], ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            out.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return out + ([line] if line else [])


def field_help() -> dict[str, str]:
    """{'model.proj_dim': help text, ...} for every field, in declaration order."""
    return {f"{name}.{f.name}": f.metadata["help"] for name, cls in SECTIONS.items() for f in fields(cls)}


def replace(cfg: Config, /, **dotted: Any) -> Config:
    """A new, validated Config with dotted keys changed: `replace(cfg, **{"model.proj_dim": 64})`."""
    changes: dict[str, dict[str, Any]] = {}
    for key, value in dotted.items():
        section, _, name = key.partition(".")
        _field(key, "replace", value)
        changes.setdefault(section, {})[name] = value
    return from_dict(_merged(to_dict(cfg), changes), "replace")
