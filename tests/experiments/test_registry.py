"""The ablation registry: every required entry exists, resolves, differs from the others and changes what its name
says; base.yaml is the config defaults; errors name the file, key or closest names; every entry trains one epoch."""

import json
import math
import shutil

import pytest

from argbench import paths
from argbench.config import Config, ConfigError, defaults_yaml, load_config, read_yaml, to_dict
from argbench.experiments import registry
from argbench.experiments.registry import RegistryError, get, groups, list_ablations, resolve, resolved_yaml

REQUIRED = {
    "baseline": "baseline",
    "with_layernorm": "norm", "with_relu": "norm", "with_layernorm_relu": "norm", "without_layernorm_relu": "norm",
    "shared_encoder": "sharing", "separate_encoders": "sharing",
    "concatenated": "fusion", "only_cls": "fusion", "only_embedding": "fusion",
    **{f"decay_{s}": "decay" for s in ("0.005", "0.01", "0.015", "0.02", "0.03", "0.04", "0.05", "none")},
    "only_random": "random", "no_random": "random",
    "proj_32": "projection", "proj_64": "projection", "proj_128": "projection", "proj_256": "projection",
    "no_proj": "projection",
    "frozen_encoder": "training", "no_classifier": "training",
    "learning_recipe": "recipe", "learning_recipe_in_batch": "recipe", "learning_recipe_full": "recipe",
    "length_256": "recipe", "symmetric_in_batch": "recipe", "positive_aware_mining": "recipe",
    "gradient_cache": "recipe", "cross_encoder_rerank": "recipe",
    "leaky_training": "data", "mining_keeps_copies": "data",
}
ALIASES = {"shared_encoder", "concatenated", "proj_128", "without_layernorm_relu"}
NAMES = [e.name for e in list_ablations(paths.packaged_ablations())]


@pytest.fixture(autouse=True)
def repo_registry(monkeypatch):
    """Every test reads the repository's registry unless it points $ARGBENCH_ABLATIONS elsewhere itself."""
    monkeypatch.delenv(registry.ENV_VAR, raising=False)


@pytest.fixture
def tmp_registry(tmp_path, monkeypatch):
    """An empty registry folder holding a copy of base.yaml and the embedded profile, made the active one."""
    shutil.copy(paths.packaged_ablations() / "base.yaml", tmp_path / "base.yaml")
    shutil.copytree(paths.packaged_ablations() / "profiles", tmp_path / "profiles")
    monkeypatch.setenv(registry.ENV_VAR, str(tmp_path))
    return tmp_path


def entry(folder, name, text):
    (folder / f"{name}.yaml").write_text(text)


def resolved(name, *overrides, embedded=False) -> dict:
    return to_dict(resolve(name, overrides, embedded=embedded)[0])


# --- the entries -------------------------------------------------------------------------------------------------

def test_required_entries_exist_with_their_groups():
    assert {e.name: e.group for e in list_ablations()} == REQUIRED
    assert {e.name for e in list_ablations() if e.alias_of} == ALIASES
    assert all(get(name).alias_of == "baseline" for name in ALIASES)


def test_list_is_sorted_by_group_then_name_with_numbers_in_numeric_order():
    assert groups()["projection"] == ["no_proj", "proj_32", "proj_64", "proj_128", "proj_256"]
    assert groups()["decay"][:3] == ["decay_0.005", "decay_0.01", "decay_0.015"]
    order = [e.group for e in list_ablations()]
    assert order == sorted(order)


def test_base_yaml_is_generated_from_the_config_dataclasses():
    text = (paths.packaged_ablations() / "base.yaml").read_text()
    assert text == defaults_yaml(registry.BASE_HEADER), "regenerate: argbench ablation defaults > ablations/base.yaml"
    assert read_yaml(paths.packaged_ablations() / "base.yaml") == to_dict(Config())  # every key, once, same value
    assert resolve("baseline")[0] == Config()


def test_non_alias_entries_all_resolve_to_distinct_configs():
    configs = {name: resolved(name) for name in NAMES if name not in ALIASES}
    baseline = configs["baseline"]
    for i, a in enumerate(configs):
        for b in list(configs)[i + 1:]:
            assert configs[a] != configs[b], f"{a} and {b} resolve to the same config"
    assert [n for n, c in configs.items() if c == baseline] == ["baseline"]


@pytest.mark.parametrize("name", sorted(ALIASES))
def test_alias_resolves_to_baseline_under_its_own_name(name):
    cfg, ablation = resolve(name)
    assert cfg == resolve("baseline")[0]
    assert (ablation.name, ablation.alias_of) == (name, "baseline")


@pytest.mark.parametrize("name, section, expected", [
    ("with_layernorm", "model", {"layernorm": True, "relu": False}),
    ("with_relu", "model", {"layernorm": False, "relu": True}),
    ("with_layernorm_relu", "model", {"layernorm": True, "relu": True}),
    ("separate_encoders", "model", {"sharing": "separate"}),
    ("only_cls", "model", {"fusion": "only_cls"}),
    ("only_embedding", "model", {"fusion": "only_embedding"}),
    *[(f"decay_{s}", "negatives", {"schedule": "linear", "start": 1.0, "step": float(s)})
      for s in ("0.005", "0.01", "0.015", "0.02", "0.03", "0.04", "0.05")],
    ("decay_none", "negatives", {"schedule": "constant", "rate": 0.8}),
    ("only_random", "negatives", {"schedule": "constant", "rate": 1.0}),
    ("no_random", "negatives", {"schedule": "constant", "rate": 0.0}),
    ("proj_32", "model", {"proj_dim": 32}),
    ("proj_64", "model", {"proj_dim": 64}),
    ("proj_256", "model", {"proj_dim": 256}),
    ("no_proj", "model", {"proj_dim": None}),
    ("frozen_encoder", "model", {"freeze_encoder": True}),
    ("no_classifier", "model", {"classifier": False}),
])
def test_each_variant_changes_the_key_its_name_says(name, section, expected):
    values = resolved(name)[section]
    assert {k: values[k] for k in expected} == expected


def test_baseline_is_the_research_recipe():
    cfg = resolve("baseline")[0]
    assert (cfg.model.sharing, cfg.model.fusion, cfg.model.proj_dim) == ("shared", "concatenated", 128)
    assert (cfg.negatives.schedule, cfg.negatives.start, cfg.negatives.step) == ("linear", 0.8, 0.02)


def test_every_entry_file_has_its_header_comment():
    for e in list_ablations():
        text = e.path.read_text()
        header = text[:text.index("\ngroup:")]
        assert header.startswith("# ") and "Mirrors" in header, e.path
        assert f"make ablation NAME={e.name}\n" in header + "\n", e.path


# --- layers: embedded profile, overrides, resolved YAML ----------------------------------------------------------

def test_embedded_profile_applies_only_when_asked():
    plain, embedded = resolved("with_relu"), resolved("with_relu", embedded=True)
    assert (plain["train"]["epochs"], plain["model"]["max_length"], plain["data"]["eval_splits"]) \
        == (200, 256, ["validation"])
    assert (embedded["train"]["epochs"], embedded["model"]["max_length"], embedded["data"]["eval_splits"]) \
        == (3, 128, ["validation", "test"])
    assert embedded["model"]["relu"] is True  # the entry's delta survives the profile
    assert "profiles/embedded.yaml" in resolved_yaml("with_relu", embedded=True)
    assert "profiles/embedded.yaml" not in resolved_yaml("with_relu")


def test_profiles_and_search_folders_are_not_entries():
    names = {e.name for e in list_ablations()}
    assert "embedded" not in names and not any(e.path.parent.name in ("profiles", "search") for e in list_ablations())


def test_set_overrides_win_over_entry_and_profile():
    cfg, _ = resolve("proj_32", ["model.proj_dim=16", "train.epochs=1"], embedded=True)
    assert (cfg.model.proj_dim, cfg.train.epochs, cfg.model.max_length) == (16, 1, 128)


def test_resolved_yaml_loads_back_to_the_same_config(tmp_path):
    path = tmp_path / "shown.yaml"
    path.write_text(resolved_yaml("decay_0.03", ["train.lr=1e-5"], embedded=True))
    assert load_config(path) == resolve("decay_0.03", ["train.lr=1e-5"], embedded=True)[0]
    assert path.read_text().startswith("# ablation: decay_0.03 [decay]")


# --- errors ------------------------------------------------------------------------------------------------------

def test_unknown_name_suggests_close_names():
    with pytest.raises(RegistryError, match="with_layernorm") as err:
        get("with_layernrom")
    assert "argbench ablation list" in str(err.value)
    with pytest.raises(RegistryError, match="with_layernorm"):
        resolve("with_layernrom")


def test_unknown_config_key_names_the_file_and_key(tmp_registry):
    entry(tmp_registry, "typo", "group: norm\nquestion: q?\nmodel:\n  layernrom: true\n")
    with pytest.raises(ConfigError) as err:
        resolve("typo")
    assert str(tmp_registry / "typo.yaml") in str(err.value) and "model.layernrom" in str(err.value)


def test_bad_embedded_profile_names_the_profile_file(tmp_registry):
    entry(tmp_registry, "plain", "group: g\nquestion: q?\n")
    (tmp_registry / "profiles" / "embedded.yaml").write_text("train:\n  epochs: -1\n")
    resolve("plain")  # the profile is read only when asked for
    with pytest.raises(ConfigError, match=r"embedded\.yaml: train\.epochs: -1 is out of range"):
        resolve("plain", embedded=True)


def test_misspelt_meta_key_is_an_unknown_section_naming_the_file(tmp_registry):
    entry(tmp_registry, "typo", "group: norm\nquestion: q?\ngruop: norm\n")
    with pytest.raises(ConfigError, match=r"typo\.yaml: gruop: unknown section"):
        resolve("typo")


@pytest.mark.parametrize("text, problem", [
    ("question: q?\n", "group: missing"),
    ("group: norm\n", "question: missing"),
    ("group: norm\nquestion: [a, b]\n", "question: got"),
    ("group: norm\nquestion: q?\nalias_of: nothing_here\n", "no entry named 'nothing_here'"),
    ("group: norm\nquestion: q?\nalias_of: base_like\nmodel:\n  relu: true\n", "alias also holds model"),
])
def test_malformed_meta_is_reported_with_the_file(tmp_registry, text, problem):
    entry(tmp_registry, "base_like", "group: g\nquestion: q?\n")
    entry(tmp_registry, "bad", text)
    with pytest.raises(RegistryError, match=problem) as err:
        list_ablations()
    assert str(tmp_registry / "bad.yaml") in str(err.value)


def test_extends_builds_on_its_parent_in_order(tmp_registry):
    entry(tmp_registry, "parent", "group: g\nquestion: q?\nmodel:\n  relu: true\n  proj_dim: 64\n")
    entry(tmp_registry, "child", "group: g\nquestion: q?\nextends: parent\nmodel:\n  proj_dim: 32\n")
    cfg, ablation = resolve("child")
    assert (cfg.model.relu, cfg.model.proj_dim, ablation.extends) == (True, 32, "parent")


def test_extends_cycle_names_the_chain(tmp_registry):
    entry(tmp_registry, "a", "group: g\nquestion: q?\nextends: b\n")
    entry(tmp_registry, "b", "group: g\nquestion: q?\nextends: a\n")
    with pytest.raises(RegistryError, match=r"cycle a -> b -> a"):
        resolve("a")


# --- smoke: every entry trains one tiny epoch --------------------------------------------------------------------

TINY = ["model.encoder=tiny-random-bert", "train.epochs=1", "model.max_length=32", "data.max_train_pairs=16",
        "train.batch_size=8", "data.eval_splits=[validation]"]


@pytest.fixture(scope="module")
def sample_corpus():
    from argbench.data.corpus import load_corpus

    return load_corpus("sample")


@pytest.mark.parametrize("name", NAMES)
def test_every_entry_trains_one_tiny_epoch(name, sample_corpus):
    from argbench.train.trainer import fit

    cfg, _ = resolve(name, TINY, embedded=True)
    history = fit(cfg, sample_corpus)
    assert [row["epoch"] for row in history] == [0, 1]
    losses = [v for k, v in history[1].items() if k.startswith("train/loss")]
    assert losses and all(math.isfinite(v) for v in losses)


# --- --base: an entry's delta over another recipe ----------------------------------------------------------------

RECIPE = "learning_recipe_in_batch"


def test_base_layers_come_before_the_entry_and_the_profile_and_set_after():
    shown = registry.resolution("with_relu", ["train.epochs=2"], base=RECIPE, profile="embedded")
    assert shown["layers"] == ["base.yaml", "learning_recipe.yaml", "learning_recipe_in_batch.yaml",
                               "with_relu.yaml", "profiles/embedded.yaml", "--set train.epochs=2"]
    config = shown["config"]
    # the recipe's keys (mean pooling, lr, in-batch weight), the entry's relu, the profile's length, --set's epochs
    assert (config["model"]["pooling"], config["train"]["lr"], config["loss"]["in_batch_weight"]) == \
        ("mean", 2e-05, 1.0)
    assert (config["model"]["relu"], config["model"]["max_length"], config["train"]["epochs"]) == (True, 128, 2)
    assert (shown["name"], shown["base"], shown["alias_of"]) == ("with_relu", RECIPE, None)


def test_a_profile_sets_no_key_an_applied_entry_sets(tmp_registry):
    # smoke sets model.max_length 128 and train.epochs 1; an entry (or the base under it) that sets a key keeps it.
    entry(tmp_registry, "long", "group: g\nquestion: q?\nmodel:\n  max_length: 256\n")
    entry(tmp_registry, "relu", "group: g\nquestion: q?\nmodel:\n  relu: true\n")
    assert resolved("relu")["model"]["max_length"] == 256  # base.yaml's default, no profile
    assert to_dict(resolve("relu", profile="smoke")[0])["model"]["max_length"] == 128
    for name, base in (("long", None), ("relu", "long")):
        config = to_dict(resolve(name, base=base, profile="smoke")[0])
        assert (config["model"]["max_length"], config["train"]["epochs"]) == (256, 1), (name, base)
    assert to_dict(resolve("long", ["model.max_length=64"], profile="smoke")[0])["model"]["max_length"] == 64


def test_entry_whose_config_equals_the_base_is_its_alias():
    # learning_recipe is inside the base's own chain; shared_encoder is an alias of baseline; both add nothing
    for name in ("learning_recipe", "shared_encoder", "proj_128"):
        assert registry.alias_under(name, RECIPE) == RECIPE, name
        assert resolve(name, base=RECIPE)[0] == resolve(RECIPE)[0]
    assert registry.alias_under("with_relu", RECIPE) is None
    assert registry.alias_under("shared_encoder", None) == "baseline"  # without a base: its declared alias_of
    assert registry.distinct_members(groups()["norm"], RECIPE) == ["with_layernorm", "with_layernorm_relu",
                                                                   "with_relu"]
    assert registry.distinct_members(["learning_recipe", "with_relu", "with_relu"], RECIPE) == ["with_relu"]


def test_base_baseline_or_none_is_the_plain_resolution_and_run_name():
    assert resolve("with_relu", base="baseline")[0] == resolve("with_relu")[0]
    assert registry.run_name("with_relu", RECIPE) == "with_relu@learning_recipe_in_batch"
    assert registry.run_name(RECIPE, RECIPE) == RECIPE and registry.run_name("with_relu") == "with_relu"


def test_extends_chain_of_the_entry_is_kept_over_another_base(tmp_registry):
    entry(tmp_registry, "recipe", "group: g\nquestion: q?\ntrain:\n  lr: 1.0e-05\n")
    entry(tmp_registry, "parent", "group: g\nquestion: q?\nmodel:\n  relu: true\n")
    entry(tmp_registry, "child", "group: g\nquestion: q?\nextends: parent\nmodel:\n  proj_dim: 32\n")
    cfg, ablation = resolve("child", base="recipe")
    assert (cfg.train.lr, cfg.model.relu, cfg.model.proj_dim, ablation.name) == (1e-05, True, 32, "child")


def test_unknown_profile_lists_the_profiles():
    with pytest.raises(RegistryError, match=r"--profile 'cpus'.*cpu, embedded, gpu"):
        resolve("with_relu", profile="cpus")


def test_cli_show_base_json_prints_layers_and_nested_config(capsys):
    from argbench import cli

    assert cli.main(["ablation", "show", "with_relu", "--base", RECIPE, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown == registry.resolution("with_relu", base=RECIPE)
    assert set(shown) >= {"name", "base", "layers", "config"} and set(shown["config"]) == set(to_dict(Config()))
    assert cli.main(["ablation", "show", "learning_recipe", "--base", RECIPE]) == 0
    assert capsys.readouterr().out.startswith(f"# ablation: learning_recipe over {RECIPE} (alias of {RECIPE})")


@pytest.mark.parametrize("profile, pairs, epochs", [("smoke", 512, 1), ("cpu", None, 3), ("gpu", None, 30)])
def test_study_profiles_apply_over_the_entry_and_under_set(profile, pairs, epochs):
    cfg, _ = resolve("with_relu", ["train.epochs=2"], base=RECIPE, profile=profile)
    assert (cfg.data.max_train_pairs, cfg.model.max_length, cfg.data.eval_splits) == (pairs, 128,
                                                                                     ["validation", "test"])
    assert cfg.train.epochs == 2 and cfg.model.relu and cfg.loss.in_batch_weight == 1.0
    assert resolve("with_relu", base=RECIPE, profile=profile)[0].train.epochs == epochs
    assert f"profiles/{profile}.yaml" in registry.resolution("with_relu", base=RECIPE, profile=profile)["layers"]


def test_an_entry_that_names_a_key_keeps_it_under_a_profile():
    """learning_recipe_full sets model.train_layers to null (every layer), which the cpu profile's top-2 does not
    override; the recipe it extends takes the profile's 2."""
    full, _ = resolve("learning_recipe_full", profile="cpu")
    assert (full.model.train_layers, full.model.proj_dim, full.train.head_lr) == (None, None, 1e-3)
    assert full.train.epochs == 3 and full.model.max_length == 128  # the budget is still the profile's
    assert resolve(RECIPE, profile="cpu")[0].model.train_layers == 2
