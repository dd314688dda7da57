"""Training batches prepared ahead of the step that uses them.

The trainer's step should find its batch ready: the host-side work of a batch (padding each side's token rows,
picking the rows' copy groups) runs in one background thread, :func:`prefetch`, up to :data:`PREFETCH_BATCHES`
steps ahead, while the main thread runs the model. On CUDA the padded tensors are in pinned memory and the step
copies them with ``non_blocking=True`` (:func:`to_device`), so neither the padding nor the copy waits for the GPU
and the GPU does not wait for them. The in-batch copy masks are built on the device from the rows' copy groups
(:func:`in_batch_masks`) instead of from numpy on the host at every step.

Prefetching changes no number: the batch order is drawn before the epoch starts, and a batch is the same tensors
whichever thread pads it.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch

from argbench.model.tokens import TokenizedTexts, pad_batch

T = TypeVar("T")
R = TypeVar("R")
PREFETCH_BATCHES = 2  # enough to hide the padding of one batch behind the step before it
_POLL_SECONDS = 0.1


@dataclass
class HostBatch:
    """One step's inputs on the host. ``rows``: the step's pair positions; ``padded``: (input_ids, attention_mask)
    of the anchors, positives and negatives (None when the step feeds cached encoder outputs instead);
    ``groups``: the copy groups of the anchors and positives [b] (None when no in-batch term needs them)."""

    rows: np.ndarray
    padded: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None
    groups: tuple[torch.Tensor, torch.Tensor] | None


def host_batch(tok: TokenizedTexts, rows: np.ndarray, sides: tuple[np.ndarray, ...], groups: np.ndarray | None,
               *, pad: bool, pin_memory: bool) -> HostBatch:
    """The :class:`HostBatch` of pair positions ``rows``: ``sides`` are the token rows of (anchors, positives,
    negatives) per pair, ``groups`` every token row's copy group (or None)."""
    padded = tuple(pad_batch(tok, side[rows], pin_memory=pin_memory) for side in sides) if pad else None
    copy_groups = None
    if groups is not None:
        copy_groups = tuple(_host_tensor(groups[side[rows]], pin_memory) for side in sides[:2])
    return HostBatch(rows, padded, copy_groups)


def _host_tensor(values: np.ndarray, pin_memory: bool) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(values))
    return tensor.pin_memory() if pin_memory else tensor


def to_device(tensors, device: torch.device):
    """``tensors`` (a tensor, or nested tuples of them) on ``device``; copies from pinned memory do not block."""
    if isinstance(tensors, torch.Tensor):
        return tensors.to(device, non_blocking=tensors.is_pinned())
    return tuple(to_device(t, device) for t in tensors)


def in_batch_masks(anchor_groups: torch.Tensor, positive_groups: torch.Tensor, symmetric: bool) -> tuple:
    """The in-batch copy masks of one step, bool [b, b] on the groups' device: (points -> counters, counters ->
    points or None). Entry (i, j), j != i, is True when row j's candidate has the text of row i's positive or of its
    anchor (the device twin of :func:`argbench.data.copies.in_batch_copies`); the diagonal is False."""
    return (_copies(anchor_groups, positive_groups),
            _copies(positive_groups, anchor_groups) if symmetric else None)


def _copies(anchor_groups: torch.Tensor, positive_groups: torch.Tensor) -> torch.Tensor:
    candidate = positive_groups[None, :]
    copies = (candidate == positive_groups[:, None]) | (candidate == anchor_groups[:, None])
    return copies.fill_diagonal_(False)


def prefetch(make: Callable[[T], R], items: Iterable[T], depth: int = PREFETCH_BATCHES) -> Iterator[R]:
    """``make(item)`` for each of ``items``, in order, computed by one background thread that keeps up to
    ``depth`` results ready (``depth`` 0: computed here, on demand). An exception raised by ``make`` is raised here
    at the item it failed on; leaving the loop early (an exception in the loop's body, ``close()``) stops the
    thread before this generator returns."""
    if depth < 1:
        yield from map(make, items)
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def work() -> None:
        try:
            for item in items:
                result = (True, make(item))
                while not stop.is_set():
                    try:
                        ready.put(result, timeout=_POLL_SECONDS)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put((True, end))
        except BaseException as err:  # handed to the consumer, raised there
            ready.put((False, err))

    worker = threading.Thread(target=work, name="argbench-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            ok, value = ready.get()
            if not ok:
                raise value
            if value is end:
                return
            yield value
    finally:
        stop.set()
        while worker.is_alive():  # free a worker blocked on a full queue
            try:
                ready.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                pass
        worker.join()
