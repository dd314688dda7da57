"""Config: research-recipe defaults, YAML round trip, dotted overrides, and errors that say where and what."""

import dataclasses
import pickle

import pytest
import yaml

from argbench.config import (
    Config,
    ConfigError,
    apply_overrides,
    field_help,
    flatten,
    from_dict,
    load_config,
    replace,
    to_dict,
    to_yaml,
)


def write(tmp_path, text, name="run.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_defaults_are_the_research_protocol():
    cfg = Config()
    assert (cfg.loss.margin, cfg.loss.p) == (1.0, 2.0)
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.epochs, cfg.train.optimizer) == (3e-6, 8, 200, "adam")
    assert cfg.model.proj_dim == 128 and cfg.model.fusion == "concatenated" and cfg.model.sharing == "shared"
    assert (cfg.negatives.schedule, cfg.negatives.start, cfg.negatives.step) == ("linear", 0.8, 0.02)
    assert (cfg.negatives.k, cfg.eval.metric, cfg.eval.rerank_depth) == (3, "euclidean", 10)
    assert cfg.data.eval_splits == ["validation"]


def test_every_field_has_help():
    helps = field_help()
    assert len(helps) == len(flatten(Config()))
    assert all(text.strip() for text in helps.values())


def test_config_is_frozen_and_list_defaults_are_not_shared():
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0  # type: ignore[misc]
    cfg.data.eval_splits.append("test")
    assert Config().data.eval_splits == ["validation"]


def test_yaml_round_trip(tmp_path):
    cfg = replace(Config(), **{"model.proj_dim": None, "train.lr": 1e-5, "data.eval_splits": ["validation", "test"],
                               "negatives.schedule": "constant", "negatives.rate": 0.0, "train.device": "cuda:1"})
    assert load_config(write(tmp_path, to_yaml(cfg))) == cfg
    assert from_dict(yaml.safe_load(to_yaml(cfg))) == cfg


def test_the_primary_metric_is_mlflows_name_and_the_old_spelling_is_read_as_it(tmp_path):
    assert Config().eval.primary == "val/epa/acc_at_1"
    old = "val/dedup/epa/acc@1"  # how configs and run folders spelled it before
    assert load_config(overrides=[f"eval.primary={old}"]).eval.primary == "val/dedup/epa/acc_at_1"
    from_file = load_config(write(tmp_path, f"eval:\n  primary: {old}\n"))
    assert from_file.eval.primary == "val/dedup/epa/acc_at_1"
    assert load_config(write(tmp_path, to_yaml(from_file), "again.yaml")) == from_file
    assert load_config(overrides=["eval.primary=val/sdoc/mrr"]).eval.primary == "val/sdoc/mrr"  # as is


def test_file_is_a_delta_over_defaults_and_base(tmp_path):
    path = write(tmp_path, "model:\n  layernorm: true\ntrain:\n  lr: 1e-5\n")  # YAML 1.1 reads 1e-5 as a string
    cfg = load_config(path, base={"model": {"proj_dim": 64}, "train": {"lr": 1.0}})
    assert cfg.model.layernorm is True and cfg.model.proj_dim == 64
    assert cfg.train.lr == 1e-5 and isinstance(cfg.train.lr, float)
    assert cfg.model.relu is False  # untouched keys keep their defaults


@pytest.mark.parametrize("override, key, expected", [
    ("train.lr=1e-5", "train.lr", 1e-5),
    ("train.lr=2", "train.lr", 2.0),
    ("model.proj_dim=null", "model.proj_dim", None),
    ("model.proj_dim=32", "model.proj_dim", 32),
    ("data.eval_splits=[validation, test]", "data.eval_splits", ["validation", "test"]),
    ("model.relu=true", "model.relu", True),
    ("model.fusion=only_cls", "model.fusion", "only_cls"),
    ("train.grad_clip=null", "train.grad_clip", None),
    ("data.path=2024", "data.path", "2024"),  # a string field keeps the text, not YAML's int
    ("train.device = cuda:0", "train.device", "cuda:0"),
])
def test_overrides_of_each_type(override, key, expected):
    assert flatten(load_config(overrides=[override]))[key] == expected


def test_overrides_win_over_file_and_apply_in_order(tmp_path):
    path = write(tmp_path, "train:\n  epochs: 3\n")
    cfg = load_config(path, overrides=["train.epochs=5", "train.epochs=7"])
    assert cfg.train.epochs == 7


def test_apply_overrides_leaves_its_input_alone():
    d = {"train": {"epochs": 3}}
    assert apply_overrides(d, ["train.epochs=4"], "--set") == {"train": {"epochs": 4}}
    assert d == {"train": {"epochs": 3}}


def test_flatten_keys_and_values():
    flat = flatten(Config())
    assert flat["model.proj_dim"] == 128 and flat["train.head_lr"] is None
    assert flat["data.eval_splits"] == ["validation"]
    sections = {key.split(".")[0] for key in flat}
    assert sections == {"data", "model", "loss", "negatives", "train", "eval", "reranker"}
    assert replace(Config(), **flat) == Config()


def test_replace_returns_a_new_validated_config():
    base = Config()
    changed = replace(base, **{"model.proj_dim": 256, "loss.margin": 0.5})
    assert (changed.model.proj_dim, changed.loss.margin) == (256, 0.5)
    assert base.model.proj_dim == 128
    with pytest.raises(ConfigError, match="loss.margin"):
        replace(base, **{"loss.margin": -1})


def test_to_dict_is_plain_nested_data():
    d = to_dict(Config())
    assert d["negatives"]["backend"] == "torch"
    assert yaml.safe_load(yaml.safe_dump(d)) == d


def error(**kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(**kwargs)
    return str(info.value)


@pytest.mark.parametrize("override, parts", [
    ("train.lr=fast", ["--set", "train.lr", "'fast'", "float"]),
    ("train.epochs=true", ["train.epochs", "True", "int"]),
    ("train.batch_size=2.5", ["train.batch_size", "2.5", "int"]),
    ("model.layernorm=1", ["model.layernorm", "1", "bool"]),
    ("data.eval_splits=validation", ["data.eval_splits", "'validation'", "list of strings"]),
    ("model.proj_dim=big", ["model.proj_dim", "'big'", "int or null"]),
])
def test_wrong_type_names_key_value_and_expected_type(override, parts):
    message = error(overrides=[override])
    assert all(part in message for part in parts), message


@pytest.mark.parametrize("override, parts", [
    ("train.lr=-1e-5", ["train.lr", "-1e-05", "> 0"]),
    ("loss.margin=0", ["loss.margin", "0.0", "> 0"]),
    ("loss.triplet_weight=-1", ["loss.triplet_weight", "-1.0", ">= 0"]),
    ("negatives.rate=1.5", ["negatives.rate", "1.5", "[0, 1]"]),
    ("negatives.k=0", ["negatives.k", "0", ">= 1"]),
    ("model.pooling=max", ["model.pooling", "'max'", "pooler, cls, mean"]),
    ("negatives.backend=annoy", ["negatives.backend", "'annoy'", "torch, balltree, faiss"]),
    ("data.eval_splits=[validation, dev]", ["data.eval_splits", "'dev'", "training, validation, test"]),
    ("data.eval_splits=[]", ["data.eval_splits", "at least 1"]),
    ("data.eval_splits=[test, test]", ["data.eval_splits", "repeats"]),
    ("train.device=gpu", ["train.device", "'gpu'", "cuda:N"]),
])
def test_invalid_value_names_key_value_and_what_is_allowed(override, parts):
    message = error(overrides=[override])
    assert message.startswith("--set: ")
    assert all(part in message for part in parts), message


@pytest.mark.parametrize("override, suggestion", [
    ("model.fusoin=only_cls", "model.fusion"),
    ("train.margin=2", "loss.margin"),  # right key, wrong section
    ("modle.relu=true", "model.relu"),  # wrong section name, known key
])
def test_unknown_key_suggests_the_closest(override, suggestion):
    message = error(overrides=[override])
    assert f"Did you mean '{suggestion}'" in message and override.split("=")[0] in message


@pytest.mark.parametrize("override", ["train.lr", "=3", "train.lr=", "train.lr=[1, 2"])
def test_malformed_override(override):
    assert "expected KEY=VALUE" in error(overrides=[override])


def test_errors_from_a_file_name_the_file(tmp_path):
    path = write(tmp_path, "model:\n  fusoin: only_cls\n")
    message = error(path=path)
    assert message.startswith(str(path)) and "model.fusion" in message
    path = write(tmp_path, "loss:\n  margin: -1\n")
    assert str(path) in error(path=path) and "loss.margin" in error(path=path)
    assert "Did you mean 'model'" in error(path=write(tmp_path, "modle:\n  relu: true\n"))
    assert str(path) in error(path=write(tmp_path, "- just a list\n"))
    assert "model" in error(path=write(tmp_path, "model: 3\n"))
    assert "not valid YAML" in error(path=write(tmp_path, "model: [\n"))
    assert "cannot read" in error(path=tmp_path / "missing.yaml")


def test_empty_file_and_empty_section_mean_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == Config()
    assert load_config(write(tmp_path, "model:\n")) == Config()


def test_rules_across_fields():
    assert "negatives.floor" in error(overrides=["negatives.start=0.1", "negatives.floor=0.5"])
    no_loss = ["loss.triplet_weight=0", "model.classifier=false"]
    assert "loss" in error(overrides=no_loss)
    assert load_config(overrides=no_loss + ["train.epochs=0"]).train.epochs == 0  # evaluation only is fine
    nothing_to_train = ["model.freeze_encoder=true", "model.proj_dim=null", "model.classifier=false"]
    assert "nothing to train" in error(overrides=nothing_to_train)


def test_direct_construction_is_validated_too():
    from argbench.config import LossConfig
    with pytest.raises(ConfigError, match="loss.p"):
        LossConfig(p=0)
    assert LossConfig(margin=2).margin == 2.0 and isinstance(LossConfig(margin=2).margin, float)


def test_error_survives_pickling():
    err = ConfigError("train.lr", "expected a float, got 'fast' (str)", "--set")
    copy = pickle.loads(pickle.dumps(err))
    assert (str(copy), copy.key, copy.source) == (str(err), "train.lr", "--set")
