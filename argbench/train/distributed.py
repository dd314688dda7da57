"""Device choice and multi-process data parallelism (``torchrun``): NCCL on CUDA, gloo on CPU.

A process started by ``torchrun --nproc_per_node N`` sees ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` in its
environment; :func:`setup` joins the process group (with ``train.ddp_timeout``: how long a rank waits in a
collective while the main process works alone). Without them everything is a single process and the helpers here
are no-ops.

Work without gradients is shared too: :func:`gather_batches` has each rank compute every N-th of a list of
inference batches and gives every rank all the rows, in the one-process order and from the very same batches, so
embeddings for mining and evaluation are bit for bit those of one process.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    autocast_dtype: torch.dtype | None  # bf16 on CUDA unless fp32 was asked for; None = full precision
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(name: str) -> torch.device:
    """``auto`` = CUDA when available, else CPU; ``cuda`` without CUDA is an error naming the setting."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device: {name!r} asked for CUDA, but torch sees no CUDA device "
                           f"(torch {torch.__version__}); use train.device=cpu or auto")
    return device


def setup(device_name: str, precision: str, timeout_s: float | None = None) -> Runtime:
    """Pick the device and precision, and join the process group when launched by ``torchrun``; ``timeout_s``:
    how long a rank waits in a collective (None: torch's default, 10 minutes for NCCL)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    rank = 0
    if world_size > 1:
        rank = int(os.environ["RANK"])
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                    timeout=timedelta(seconds=timeout_s) if timeout_s else None)
    use_bf16 = precision == "bf16" or (precision == "auto" and (device.type == "cuda" or native_cpu_bf16()))
    return Runtime(device, torch.bfloat16 if use_bf16 else None, rank, world_size)


def native_cpu_bf16() -> bool:
    """Whether this CPU computes bf16 matrix products in hardware (x86 flags ``avx512_bf16`` or ``amx_bf16``; oneDNN
    then runs autocast's bf16 matmuls natively instead of emulating them, which is slower than fp32)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def broadcast_flag(flag: bool, runtime: Runtime) -> bool:
    """Rank 0's ``flag`` on every rank (e.g. "stop now", decided by hooks that only run on rank 0)."""
    if not runtime.distributed:
        return flag
    t = torch.tensor([int(flag)], device=runtime.device if runtime.device.type == "cuda" else "cpu")
    dist.broadcast(t, src=0)
    return bool(t.item())


def mean_over_ranks(values: dict[str, float], runtime: Runtime) -> dict[str, float]:
    """Each value averaged over the ranks (same keys, in the same order, on every rank)."""
    if not runtime.distributed:
        return values
    t = torch.tensor(list(values.values()), dtype=torch.float64,
                     device=runtime.device if runtime.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return dict(zip(values, (t / runtime.world_size).tolist()))


def shard(batches: list, runtime: Runtime) -> list:
    """This rank's share of the batches (:func:`shares`); every rank gets the same number so collective calls stay
    in step, and no row is left out."""
    if not runtime.distributed:
        return batches
    return shares(batches, runtime.world_size)[runtime.rank]


def shares(batches: list[np.ndarray], world_size: int) -> list[list[np.ndarray]]:
    """Batches of row indices dealt to ``world_size`` ranks: rank r gets batches r, r + W, ... of the whole rounds;
    the rows of the batches left over (fewer than W) are cut into W near-equal batches, one more per rank, merged
    with the last whole round first when they hold fewer than W rows. Every row is in exactly one share and every
    share has the same number of batches. ValueError when there are fewer rows than ranks."""
    whole = len(batches) - len(batches) % world_size
    head, tail = list(batches[:whole]), list(batches[whole:])
    if tail:
        rows = np.concatenate(tail)
        if len(rows) < world_size:
            if not head:
                raise ValueError(f"{len(rows)} training rows cannot be shared by {world_size} processes")
            rows = np.concatenate([*head[-world_size:], rows])
            head = head[:-world_size]
        tail = np.array_split(rows, world_size)
    return [head[r::world_size] + ([tail[r]] if tail else []) for r in range(world_size)]


def gather_batches(compute: Callable[[np.ndarray], torch.Tensor], batches: list[np.ndarray], n: int,
                   runtime: Runtime) -> torch.Tensor:
    """All ``n`` rows of a result computed batch by batch without gradients, each rank doing every W-th batch.

    ``batches``: positions in [0, n), each exactly once (e.g. :func:`argbench.model.tokens.length_sorted_batches`);
    ``compute(positions)`` returns the float rows [len(positions), ...] (CPU) of this rank's batches concatenated
    in order; a rank with no batch gets an empty ``positions``. Returns [n, ...] on the CPU on every rank."""
    if not runtime.distributed:
        return compute(np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64))
    mine = [np.concatenate(batches[r::runtime.world_size]) if batches[r::runtime.world_size]
            else np.zeros(0, dtype=np.int64) for r in range(runtime.world_size)]
    local = compute(mine[runtime.rank])
    width = max(len(m) for m in mine)
    comm = runtime.device if runtime.device.type == "cuda" else torch.device("cpu")
    padded = torch.zeros((width, *local.shape[1:]), dtype=local.dtype, device=comm)
    padded[:len(local)] = local.to(comm)
    parts = [torch.empty_like(padded) for _ in range(runtime.world_size)]
    dist.all_gather(parts, padded)
    out = torch.empty((n, *local.shape[1:]), dtype=local.dtype)
    for positions, part in zip(mine, parts):
        out[positions] = part[:len(positions)].cpu()
    return out


def teardown(runtime: Runtime, *, failed: bool = False) -> None:
    """Leave the process group. After a failure on this rank skip the barrier: the other ranks may be blocked in
    a different collective and would never reach it; exiting lets torchrun stop them instead of hanging."""
    if runtime.distributed and dist.is_initialized():
        if not failed:
            dist.barrier()
        dist.destroy_process_group()
