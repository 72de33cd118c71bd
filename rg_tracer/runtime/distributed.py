"""The process group both searches run in: ``torch.distributed``, launched by ``torchrun``.

A run reads only the standard environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``), so ``torchrun`` (one node, several nodes, ``srun torchrun``)
and ``accelerate launch --multi_gpu`` start it alike. Without them (a plain ``rg-tracer train``)
the world has one process and every call here is a no-op that returns its input: a
one-process run does exactly what it did before distribution existed.

gloo on CPU, NCCL on CUDA (each process on ``cuda:LOCAL_RANK``). The collectives used are
the few a step needs: a barrier, a mean of one number, an "any rank" flag, and object
gathers (all ranks, or to rank 0 only for log payloads). Design and measurements:
``docs/notes/distributed-study.md`` and ``docs/distributed.md``.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any

from rg_tracer.errors import UserError

__all__ = ["Dist", "init_distributed", "wrap_for_gradients", "SINGLE"]


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: ``rank`` of ``world_size`` on ``backend``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def describe(self) -> dict | None:
        """The ``run`` record's ``distributed`` field (``None`` in one process)."""
        return {"world_size": self.world_size, "backend": self.backend} if self.active else None

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def mean(self, value: float) -> float:
        """The mean of ``value`` over ranks (float64 all-reduce)."""
        if not self.active:
            return value
        import torch
        import torch.distributed as dist

        t = torch.tensor([float(value)], dtype=torch.float64, device=self._device())
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on one (e.g. a Ctrl-C that reached one rank)."""
        if not self.active:
            return flag
        import torch
        import torch.distributed as dist

        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self._device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def all_gather(self, obj: Any) -> list:
        """Every rank's ``obj``, in rank order, on every rank (pickled)."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def gather_to_main(self, obj: Any) -> list | None:
        """Every rank's ``obj`` in rank order on rank 0; ``None`` elsewhere (log payloads)."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out

    def shard(self, items: list) -> list:
        """This rank's contiguous share of ``items`` (shares differ by at most one)."""
        n, w, r = len(items), self.world_size, self.rank
        return items[r * n // w:(r + 1) * n // w]

    def _device(self):
        import torch

        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else torch.device("cpu")


SINGLE = Dist()


def init_distributed(device: str = "auto") -> Dist:
    """Join the process group ``torchrun`` describes in the environment (once per process).

    ``WORLD_SIZE`` unset or 1: one process, no group. The backend follows ``--device``:
    NCCL for CUDA (this process's GPU is ``LOCAL_RANK``), gloo otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    import torch
    import torch.distributed as dist

    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda"):
        raise UserError(f"--device {device}: a distributed run uses cpu (gloo) or cuda (NCCL), one GPU per process")
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
        atexit.register(_leave)
    return Dist(rank=rank, world_size=world, local_rank=local_rank, backend=backend)


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_for_gradients(model, dist: Dist):
    """``model`` in ``DistributedDataParallel`` for the gradient forward (gradients averaged
    over ranks in ``backward``); the bare ``model`` in one process. Buffers are not re-broadcast
    on each forward (``forward_sync_buffers=False``): every rank holds the same ones, and a
    broadcast inside a forward that only some ranks run (sampling, evaluation) would hang."""
    if not dist.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = {"device_ids": [dist.local_rank]} if dist.backend == "nccl" else {}
    try:
        return DistributedDataParallel(model, forward_sync_buffers=False, **ids)
    except TypeError:  # torch before 2.13 names it broadcast_buffers
        return DistributedDataParallel(model, broadcast_buffers=False, **ids)
