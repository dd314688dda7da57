"""The grid of an ``argbench study``: a base recipe and the distinct members of a registry group (or of named entries)
over that base (:func:`argbench.experiments.registry.distinct_members`), times seeds; each (entry, seed) pair is a
*cell*.

:func:`plan` resolves every entry's config once: the grid (entries, seeds, overrides, profile and those configs) is
what the study stores when it is made and compares on every start (:mod:`argbench.search.cell_queue`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from argbench import config
from argbench.errors import UserError
from argbench.experiments import registry
from argbench.model.epoch_names import SELECTED


class GridError(UserError):
    """A grid that cannot be run: no member left to compare, or a study name already holding another grid."""


@dataclass(frozen=True)
class GridSpec:
    """Everything a worker needs to run cells of one study (picklable: it travels to worker processes)."""

    study: str
    base: str
    members: list[str]
    seeds: list[int]
    group: str | None = None
    overrides: list[str] = field(default_factory=list)
    profile: str | None = None
    data: str | None = None
    storage: str | None = None
    experiment: str = "argbench"
    tracking_uri: str | None = None
    split: str = "test"
    heartbeat_interval: int = 10
    grace_period: int = 30
    max_retry: int = 2
    epoch: str = SELECTED  # the epoch of each cell whose ranks the table pairs: "selected" or "last"
    configs: dict = field(default_factory=dict)  # entry -> resolved config (to_dict), fixed when planned

    @property
    def entries(self) -> list[str]:
        return [self.base, *self.members]

    @property
    def cells(self) -> list[tuple[str, int]]:
        return [(e, s) for e in self.entries for s in self.seeds]

    def grid(self) -> dict:
        """What fixes the study's cells and their configs (stored with the study, compared on every start): the
        resolved config of every entry too, so that a registry edited mid-study cannot make later cells train
        something else under the same name."""
        return {"entries": self.entries, "seeds": self.seeds, "overrides": self.overrides, "profile": self.profile,
                "configs": self.configs}


def plan(names: Sequence[str] = (), *, group: str | None = None, base: str | None = None, seeds: int = 1,
         study: str | None = None, overrides: Sequence[str] = (), profile: str | None = None,
         data: str | None = None, **settings) -> GridSpec:
    """The grid of `names` (or of registry `group`) over `base` (default ``baseline``) × `seeds` seeds.

    Seeds are the base config's ``train.seed`` and the next ``seeds - 1``. Members that equal the base (or an earlier
    member) under it are left out (reported as aliases by ``ablation show --base``). GridError if none is left.
    The profile defaults to ``embedded`` on the generated sample corpus, as for ``ablation run``.
    """
    from argbench.data.corpus import resolve_data
    from argbench.experiments.runner import data_profile

    if bool(names) == bool(group):
        raise GridError("argbench study: give registry entry names or --group G (one of the two); "
                        f"groups are {', '.join(registry.groups())}")
    if seeds < 1:
        raise GridError(f"--seeds {seeds}: expected at least 1")
    base = base or registry.DEFAULT_BASE
    if group is not None and group not in registry.groups():
        raise GridError(f"--group {group!r}: no such group; groups are {', '.join(registry.groups())}")
    candidates = registry.groups()[group] if group else list(names)
    members = registry.distinct_members(candidates, base)
    if not members:
        raise GridError(f"{'group ' + group if group else ', '.join(names)}: every entry equals the base {base!r} "
                        "under it; nothing to compare")
    profile = data_profile(resolve_data(data), profile)
    configs = {e: registry.resolve(e, overrides, base=base, profile=profile)[0] for e in [base, *members]}
    first = configs[base].train.seed
    name = study or f"{group or '+'.join(members)}@{base}-{seeds}seeds"
    return GridSpec(study=name, base=base, members=members, seeds=[first + i for i in range(seeds)], group=group,
                    overrides=list(overrides), profile=profile, data=data,
                    configs={e: config.to_dict(cfg) for e, cfg in configs.items()}, **settings)
