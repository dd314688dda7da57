"""The cells of a grid study as Optuna trials: the order in which GridSampler hands them out, computed from its
inputs, and the state of each cell read from the study's trials."""

from __future__ import annotations

import optuna
import pytest

from argbench.search.cell_queue import cell_states, grid_cells, sampler
from argbench.search.grid_plan import GridSpec

S = optuna.trial.TrialState


@pytest.mark.parametrize("entries, seeds", [
    (["b", "m"], [1]),
    (["learning_recipe_in_batch", "with_relu", "with_layernorm", "with_layernorm_relu"], [42, 43, 44]),
    (["z", "a", "m"], [7, 3, 5, 1, 9]),  # neither list sorted: the values keep the order given
])
def test_the_computed_grid_order_is_the_order_the_sampler_hands_out_cells(entries, seeds):
    spec = GridSpec(study="s", base=entries[0], members=entries[1:], seeds=seeds)
    study = optuna.create_study(sampler=sampler(spec), direction="maximize")
    study.optimize(lambda trial: (trial.suggest_categorical("entry", spec.entries),
                                  trial.suggest_categorical("seed", spec.seeds), 0.5)[-1], n_trials=len(spec.cells))
    trials = sorted(study.trials, key=lambda t: t.number)
    assert [t.system_attrs["grid_id"] for t in trials] == list(range(len(spec.cells)))  # trial n = grid id n
    assert [(t.params["entry"], t.params["seed"]) for t in trials] == grid_cells(spec)
    assert sorted(grid_cells(spec)) == sorted(spec.cells)


def test_cell_states_rank_done_over_running_over_waiting_over_failed():
    spec = GridSpec(study="s", base="b", members=["m"], seeds=[1])
    dist = {"entry": optuna.distributions.CategoricalDistribution(["b", "m"]),
            "seed": optuna.distributions.CategoricalDistribution([1])}
    def trial(state, entry, **attrs):
        return optuna.trial.create_trial(state=state, params={"entry": entry, "seed": 1}, distributions=dist,
                                         value=0.5 if state.name == "COMPLETE" else None, user_attrs=attrs)
    assert cell_states(spec, []) == {("b", 1): "new", ("m", 1): "new"}
    assert cell_states(spec, [trial(S.FAIL, "b"), trial(S.COMPLETE, "b"), trial(S.FAIL, "m")]) == \
        {("b", 1): "done", ("m", 1): "failed"}
    # a duplicate (PRUNED, duplicate_of) counts for nothing; a RUNNING trial makes the cell running
    assert cell_states(spec, [trial(S.PRUNED, "m", duplicate_of=0), trial(S.RUNNING, "b")]) == \
        {("b", 1): "running", ("m", 1): "new"}


def test_a_queued_trial_without_params_is_the_cell_of_its_grid_id_or_fixed_params():
    spec = GridSpec(study="s", base="b", members=["m", "n"], seeds=[1, 2])
    order = grid_cells(spec)
    queued = [optuna.trial.create_trial(state=S.WAITING, system_attrs={"grid_id": 3}),
              optuna.trial.create_trial(state=S.WAITING, system_attrs={"fixed_params": {"entry": "n", "seed": 2}})]
    states = cell_states(spec, queued)
    assert states[order[3]] == "waiting" and states[("n", 2)] == "waiting"
    assert sum(state == "waiting" for state in states.values()) == len({order[3], ("n", 2)})
