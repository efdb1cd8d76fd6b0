"""A deterministic stream of training batches: everything is a pure function of ``(seed, counter)``.

Micro-batch ``m`` draws one task (the processor takes one ``task=`` per call, and every process
must run the same heads in a step for DDP); its sample ``b`` on rank ``r`` of ``W`` has the global
index ``j = (m * W + r) * B + b``, and ``j`` alone fixes the row, the augmentation and the object
order. Resuming "exactly" therefore needs no replay and no ``skip_first_batches``: the stream
restarts at micro-batch ``step * accumulation`` and yields the very examples an uninterrupted run
would have seen — and the global batch is the same whatever the number of GPUs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch


def sample_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """The random generator of counter ``index`` in an independent ``stream``."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


class TaskMixture:
    """Which task a micro-batch trains and which item each of its samples reads.

    Args:
        sizes: number of training items of each task.
        weights: sampling weight of each task (normalized here).
        seed: the run's seed.
    """

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], seed: int) -> None:
        if len(sizes) != len(weights):
            raise ValueError(f"one weight per task: {len(sizes)} tasks, {len(weights)} weights")
        if any(s <= 0 for s in sizes):
            raise ValueError(f"every task needs at least one training item, got sizes {list(sizes)}")
        w = np.asarray(weights, dtype=np.float64)
        if (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"task weights must be non-negative and not all zero, got {list(weights)}")
        self.sizes = list(sizes)
        self.cdf = np.cumsum(w / w.sum())
        self.seed = seed
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    def task_of(self, micro_batch: int) -> int:
        """The task index of micro-batch ``micro_batch`` (identical on every process)."""
        u = sample_rng(self.seed, micro_batch, stream=1).random()
        return min(int(np.searchsorted(self.cdf, u, side="right")), len(self.sizes) - 1)

    def item_of(self, task: int, index: int) -> tuple[int, np.random.Generator]:
        """Item of ``task`` read by global sample ``index``, and that sample's generator.

        Items are visited through a seeded permutation per pass over the counter: with one task every
        item is seen exactly once per epoch; with several, each task's items in a seeded order.
        """
        size = self.sizes[task]
        epoch, offset = divmod(index, size)
        key = (task, epoch)
        if key not in self._perms:
            if len(self._perms) > 64:
                self._perms.clear()
            seq = np.random.SeedSequence([self.seed, 2, task, epoch])
            self._perms[key] = np.random.default_rng(seq).permutation(size)
        return int(self._perms[key][offset]), sample_rng(self.seed, index, stream=3)


class SampleStream(torch.utils.data.IterableDataset):
    """Yields this process's micro-batches from ``start`` on, forever.

    Args:
        make_batch: ``make_batch(micro_batch, sample_indices) -> batch``.
        batch_size: samples per micro-batch on this process.
        rank: this process's rank.
        world_size: number of processes.
        start: the first micro-batch (``step * gradient_accumulation_steps`` when resuming).
    """

    def __init__(
        self,
        make_batch: Callable[[int, list[int]], Any],
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
    ) -> None:
        super().__init__()
        self.make_batch = make_batch
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.start = start

    def indices(self, micro_batch: int) -> list[int]:
        """Global sample indices of ``micro_batch`` on this rank."""
        first = (micro_batch * self.world_size + self.rank) * self.batch_size
        return list(range(first, first + self.batch_size))

    def __iter__(self) -> Iterator[Any]:
        # DataLoader reads its workers round-robin, so worker w taking micro-batches
        # start + w, start + w + n, … keeps the stream in order.
        info = torch.utils.data.get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        m = self.start + worker
        while True:
            yield self.make_batch(m, self.indices(m))
            m += workers


__all__ = ["SampleStream", "TaskMixture", "sample_rng"]
