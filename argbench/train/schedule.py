"""The random rate of negative mining per epoch (research protocol, "Online hard-negative mining").

With probability r(epoch) a mined negative is replaced by a random argument; r decays linearly per epoch
(0.8 − 0.02·e in the original) or stays constant ("decay none", "only random" = 1, "no random" = 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCHEDULE_KINDS = ("linear", "constant")


@dataclass(frozen=True)
class Schedule:
    """Random rate per epoch. Epoch 0 is the mining before the first training epoch.

    kind "linear": r(epoch) = max(floor, start − step·epoch)   (0.8 − 0.02·e; 1.0 − s·e)
    kind "constant": r(epoch) = start                           ("decay none", "only random" = 1, "no random" = 0)
    """

    kind: str
    start: float
    step: float = 0.0
    floor: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULE_KINDS:
            raise ValueError(f"schedule kind={self.kind!r} is unknown; expected one of {SCHEDULE_KINDS}")
        for name in ("start", "floor"):
            check_rate(getattr(self, name), f"schedule {name}")
        if not self.step >= 0:
            raise ValueError(f"schedule step={self.step!r} must be >= 0 (the rate may only decrease)")
        if self.kind == "constant" and self.step != 0:
            raise ValueError(f"constant schedule has step={self.step!r}; expected 0")

    @classmethod
    def linear(cls, start: float, step: float, floor: float = 0.0) -> Schedule:
        return cls("linear", start, step, floor)

    @classmethod
    def constant(cls, rate: float) -> Schedule:
        check_rate(rate, "schedule rate")  # name the field the caller wrote, not the stored `start`
        return cls("constant", rate, 0.0, 0.0)

    def rate(self, epoch: int) -> float:
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch={epoch!r} must be an integer >= 0")
        if self.kind == "constant":
            return float(self.start)
        # Rounding removes float noise such as 0.8 - 0.02*40 = 1e-17, which would otherwise escape the floor.
        return max(float(self.floor), round(self.start - self.step * int(epoch), 12))


def schedule_from_config(
    kind: str,
    start: float | None = None,
    step: float | None = None,
    floor: float = 0.0,
    rate: float | None = None,
) -> Schedule:
    """Build a schedule from config values: "linear" needs start and step, "constant" needs rate."""
    if kind == "linear":
        if start is None or step is None:
            raise ValueError(f"linear schedule needs start and step; got start={start!r}, step={step!r}")
        return Schedule.linear(start, step, floor)
    if kind == "constant":
        if rate is None:
            raise ValueError("constant schedule needs rate; got rate=None")
        return Schedule.constant(rate)
    raise ValueError(f"schedule kind={kind!r} is unknown; expected one of {SCHEDULE_KINDS}")


def check_rate(value: float, name: str) -> None:
    """ValueError naming ``name`` unless ``value`` is a number in [0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value!r} must be a number in [0, 1]")
