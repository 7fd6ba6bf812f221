"""Where the students live: all in this process (:class:`World`), or spread over the
processes of a ``torch.distributed`` group (:class:`DistributedWorld`, launched with
``torchrun``), student k on rank ``k % world_size``.

The trainer asks a world four things: which students are local, every student's
detached layer outputs (the peers' targets; a distributed world all-gathers them every
step), the per-student scalars of an epoch (validation score, best epoch), and at the
end every student's best-epoch result (with its probabilities, for the ensemble).

What crosses the wire per step (simultaneous mode): for each layer some pair takes as a
target, every rank's local students' outputs, ``ceil(K / world) x N x width`` values of
the embeddings' dtype per rank (padded to the same count on every rank, as all_gather
needs); plus a few scalars per student and epoch. ``exchanged_bytes`` counts what one
rank sends per step.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor


class World:
    """One process: every student is local and nothing is exchanged."""

    rank = 0
    size = 1

    def __init__(self, num_students: int):
        self.num_students = num_students
        self.exchanged_bytes = 0  # per step, sent by this rank (0 here)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owner(self, k: int) -> int:
        return k % self.size

    def local(self) -> List[int]:
        return [k for k in range(self.num_students) if self.owner(k) == self.rank]

    def exchange(self, local: Dict[int, List[Tensor]], layers: Sequence[int]) -> List[List[Optional[Tensor]]]:
        """Every student's layer outputs (detached; only ``layers`` are needed), by student."""
        return [local[k] for k in range(self.num_students)]

    def gather_scalars(self, local: Dict[int, Sequence[float]]) -> List[List[float]]:
        """Each student's few per-epoch numbers, by student."""
        return [list(local[k]) for k in range(self.num_students)]

    def gather_results(self, local: Dict[int, dict]) -> List[dict]:
        """Each student's best-epoch entry ``{"val", "test", "epoch", "probs": {split: [n, C]}}``."""
        return [local[k] for k in range(self.num_students)]

    def mean_parts(self, parts: Dict[str, object], count: int) -> Dict[str, object]:
        """The mean over all students of the loss parts (``parts``: the mean over this
        rank's ``count`` students)."""
        return parts

    def max_float(self, value: float) -> float:
        return value


class DistributedWorld(World):
    """This process's share of the students in an initialised ``torch.distributed``
    group (gloo on the CPU, NCCL on GPUs); every rank must make the same calls."""

    def __init__(self, num_students: int, device, group=None):
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("DistributedWorld needs torch.distributed initialised (run under torchrun)")
        super().__init__(num_students)
        self.dist, self.group = dist, group
        self.rank, self.size = dist.get_rank(group), dist.get_world_size(group)
        if num_students < self.size:
            raise ValueError(f"{num_students} students over {self.size} processes: every process "
                             "needs at least one student")
        self.slots = math.ceil(num_students / self.size)  # students per rank, padded
        self.device = torch.device(device)

    def _gather(self, local_stack: Tensor) -> List[Tensor]:
        parts = [torch.empty_like(local_stack) for _ in range(self.size)]
        self.dist.all_gather(parts, local_stack.contiguous(), group=self.group)
        return parts

    def _stack(self, local: Dict[int, Tensor], like: Tensor) -> Tensor:
        """This rank's students' tensors in slot order, padded with zeros to ``slots``."""
        mine = [local[k] for k in self.local()]
        mine += [torch.zeros_like(like)] * (self.slots - len(mine))
        return torch.stack(mine)

    def _unstack(self, gathered: List[Tensor]) -> List[Tensor]:
        return [gathered[self.owner(k)][k // self.size] for k in range(self.num_students)]

    def exchange(self, local, layers):
        out: List[List[Optional[Tensor]]] = [[None] * len(next(iter(local.values()))) for _ in range(self.num_students)]
        sent = 0
        for m in sorted(set(layers)):
            stacked = self._stack({k: h[m] for k, h in local.items()}, next(iter(local.values()))[m])
            sent += stacked.numel() * stacked.element_size()
            for k, h in enumerate(self._unstack(self._gather(stacked))):
                out[k][m] = local[k][m] if k in local else h
        self.exchanged_bytes = sent
        return out

    def gather_scalars(self, local):
        width = len(next(iter(local.values())))
        rows = {k: torch.tensor(list(v), dtype=torch.float64, device=self.device) for k, v in local.items()}
        stacked = self._stack(rows, torch.zeros(width, dtype=torch.float64, device=self.device))
        return [t.tolist() for t in self._unstack(self._gather(stacked))]

    def gather_results(self, local):
        scalars = self.gather_scalars({k: (r["val"], r["test"], r["epoch"]) for k, r in local.items()})
        probs = {}
        for split in next(iter(local.values()))["probs"]:
            like = next(iter(local.values()))["probs"][split]
            stacked = self._stack({k: r["probs"][split] for k, r in local.items()}, like)
            probs[split] = self._unstack(self._gather(stacked))
        return [{"val": v, "test": t, "epoch": int(e), "probs": {sp: probs[sp][k] for sp in probs}}
                for k, (v, t, e) in enumerate(scalars)]

    def mean_parts(self, parts, count):
        keys = list(parts)
        flat = []
        for key in keys:
            v = parts[key]
            flat += list(v) if isinstance(v, list) else [v]
        t = torch.tensor(flat, dtype=torch.float64, device=self.device) * count
        self.dist.all_reduce(t, group=self.group)
        t = (t / self.num_students).tolist()
        out, i = {}, 0
        for key in keys:
            n = len(parts[key]) if isinstance(parts[key], list) else 1
            out[key] = t[i:i + n] if isinstance(parts[key], list) else t[i]
            i += n
        return out

    def max_float(self, value):
        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        self.dist.all_reduce(t, op=self.dist.ReduceOp.MAX, group=self.group)
        return t.item()
