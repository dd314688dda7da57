"""An epoch's loss components summed on the device, read on the host once.

Reading a loss on the host (``float(loss)``, ``.item()``, ``if torch.isfinite(loss)``) makes the host wait for the
GPU to finish the step, so the next step cannot be queued behind it. :class:`StepTotals` keeps the running sums and
the non-finite check on the device: each step adds its components (float64, in step order: the same sums as adding
Python floats) and, if its total is NaN or infinite and no step was before, records the step number and its
components. :meth:`StepTotals.read` brings everything to the host in one copy; :meth:`StepTotals.first_bad` says
which step went wrong first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Totals:
    """What :meth:`StepTotals.read` returns: ``sums`` per component over the steps added; ``bad_step`` the first
    step (1-based) whose total was not finite, 0 if none; ``bad_parts`` that step's components (empty if none)."""

    sums: dict[str, float]
    steps: int
    bad_step: int
    bad_parts: dict[str, float]


class StepTotals:
    """Running sums of a step's loss components (``{"triplet": tensor, ..., "total": tensor}``, 0-d tensors on one
    device) and the first non-finite step, all on that device until :meth:`read`."""

    def __init__(self, total_key: str = "total"):
        self.total_key = total_key
        self.names: list[str] | None = None
        self.sums: torch.Tensor | None = None
        self.bad_step: torch.Tensor | None = None
        self.bad_parts: torch.Tensor | None = None
        self.steps = 0

    def add(self, parts: dict[str, torch.Tensor]) -> None:
        """Add one step's components (detached; no host synchronisation)."""
        values = torch.stack([v.detach() for v in parts.values()]).double()
        self.steps += 1
        if self.names is None:
            self.names = list(parts)
            self.sums = values
            self.bad_step = torch.zeros((), dtype=torch.float64, device=values.device)
            self.bad_parts = torch.zeros_like(values)
        else:
            self.sums = self.sums + values
        first = (self.bad_step == 0) & ~torch.isfinite(values[self.names.index(self.total_key)])
        self.bad_step = torch.where(first, float(self.steps), self.bad_step)  # a Python scalar: no copy
        self.bad_parts = torch.where(first, values, self.bad_parts)

    def read(self) -> Totals:
        """The sums and the first bad step, copied to the host in one transfer."""
        if self.names is None:
            return Totals({}, 0, 0, {})
        n = len(self.names)
        flat = torch.cat([self.sums, self.bad_step[None], self.bad_parts]).tolist()
        bad_step = int(flat[n])
        bad_parts = dict(zip(self.names, flat[n + 1:])) if bad_step else {}
        return Totals(dict(zip(self.names, flat[:n])), self.steps, bad_step, bad_parts)
