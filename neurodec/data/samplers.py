"""Batch samplers that respect how the store is chunked.

Reading one random trial from a zarr store decodes its whole chunk (about 1 MB, e.g. 16
trials of 64 x 250 float32). Drawn fully at random, a batch of 256 trials touches ~256
chunks and throws away 15/16 of each. :class:`ChunkAwareBatchSampler` shuffles the chunks,
then shuffles the trials inside a window of consecutive (shuffled) chunks, so that with
the default window of one batch each chunk is decoded once per epoch. With the disk cache
(``cache_dir=``) filled, chunk order no longer matters and a larger ``window_batches``
mixes trials more widely at no cost.

Each batch's indices come sorted, which is the order of the trials in the store (the order
within a batch does not matter to training): every recording's share of the batch is then
read as one sorted selection, written straight into the batch.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
from torch.utils.data import Sampler

from neurodec.errors import ConfigError


class ChunkAwareBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices: shuffled chunks, shuffled trials inside windows of chunks.

    ``dataset`` is a neurodec dataset (its ``chunk_ids()`` labels each item's chunk) or an
    array of such labels. Each epoch's order depends only on ``seed`` and the epoch
    number, which advances by one per iteration or is set with :meth:`set_epoch` (as with
    ``DistributedSampler``). ``num_replicas``/``rank`` give each of several processes every
    ``num_replicas``-th batch, all with the same number of batches.

    >>> sampler = ChunkAwareBatchSampler(dataset, batch_size=256, seed=0)       # doctest: +SKIP
    >>> DataLoader(dataset, batch_size=None, sampler=sampler)                   # doctest: +SKIP
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        window_batches: int = 1,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if batch_size < 1 or window_batches < 1:
            raise ConfigError(f"batch_size and window_batches must be >= 1, found {batch_size} and {window_batches}")
        if not 0 <= rank < num_replicas:
            raise ConfigError(f"rank must be in 0..{num_replicas - 1}, found {rank}")
        chunk_ids = dataset.chunk_ids() if hasattr(dataset, "chunk_ids") else dataset
        self.chunk_ids = np.asarray(chunk_ids, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.window_batches = int(window_batches)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _order(self, epoch: int) -> np.ndarray:
        n = len(self.chunk_ids)
        if not self.shuffle:
            return np.arange(n)
        rng = np.random.default_rng([self.seed, epoch])
        _, chunk_of_item = np.unique(self.chunk_ids, return_inverse=True)
        chunk_rank = rng.permutation(chunk_of_item.max() + 1)[chunk_of_item]
        items_per_rank = np.bincount(chunk_rank)
        first_position_of_rank = np.cumsum(items_per_rank) - items_per_rank
        window = (first_position_of_rank // (self.batch_size * self.window_batches))[chunk_rank]
        return np.lexsort((rng.random(n), window))

    def _batches(self, epoch: int) -> list[np.ndarray]:
        order = self._order(epoch)
        n_full = len(order) // self.batch_size
        batches = [np.sort(order[i * self.batch_size : (i + 1) * self.batch_size]) for i in range(n_full)]
        if not self.drop_last and len(order) % self.batch_size:
            batches.append(np.sort(order[n_full * self.batch_size :]))
        usable = len(batches) - len(batches) % self.num_replicas
        return batches[self.rank : usable : self.num_replicas]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches(self.epoch)
        self.epoch += 1
        for batch in batches:
            yield batch.tolist()

    def __len__(self) -> int:
        n_batches = len(self.chunk_ids) // self.batch_size
        if not self.drop_last and len(self.chunk_ids) % self.batch_size:
            n_batches += 1
        return n_batches // self.num_replicas
