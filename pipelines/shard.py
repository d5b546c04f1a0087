"""Which work items this process takes: round-robin by rank, with no coordinator.

Under ``torchrun`` (PyTorch's launcher sets ``RANK`` / ``WORLD_SIZE``) each process takes the items
whose index modulo the world size is its rank; ``--shard i/n`` does the same across machines or Slurm
array tasks. Nothing is shared but the output folder: each item is written atomically where every
process can see it, so a rerun skips what is finished and two shards never write the same item.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import TypeVar

__all__ = ["Shard", "parse_shard", "current_shard"]

T = TypeVar("T")


class Shard:
    """Shard ``index`` of ``count`` (0-based)."""

    def __init__(self, index: int = 0, count: int = 1) -> None:
        if count < 1 or not 0 <= index < count:
            raise ValueError(f"a shard is i/n with 0 <= i < n, got {index}/{count}.")
        self.index, self.count = int(index), int(count)

    def take(self, items: Sequence[T]) -> list[T]:
        """This shard's items: every ``count``-th from position ``index``."""
        return [it for i, it in enumerate(items) if i % self.count == self.index]

    def __repr__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"i/n"`` -> :class:`Shard` (a clear ``ValueError`` otherwise)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m:
        raise ValueError(f"--shard must be i/n (e.g. 0/4: the first of four shards), got {text!r}.")
    return Shard(int(m.group(1)), int(m.group(2)))


def current_shard(shard: str | None = None) -> Shard:
    """The shard of this process: ``--shard i/n`` and, under ``torchrun``, ``RANK`` / ``WORLD_SIZE``
    within it (``n`` machines x ``r`` ranks = ``n * r`` shards, rank-major)."""
    outer = parse_shard(shard) if shard else Shard()
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} / WORLD_SIZE={world} from the environment are inconsistent.")
    return Shard(outer.index * world + rank, outer.count * world)
