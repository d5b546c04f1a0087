"""Round-robin work split: --shard i/n, torchrun's RANK / WORLD_SIZE within it, and clear errors."""

from __future__ import annotations

import pytest

from pipelines.shard import Shard, current_shard, parse_shard


def test_shards_partition_the_items() -> None:
    items = list(range(10))
    parts = [Shard(i, 3).take(items) for i in range(3)]
    assert parts == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    assert sorted(sum(parts, [])) == items


def test_parse_and_errors() -> None:
    assert repr(parse_shard(" 1 / 4 ")) == "1/4"
    for bad in ("4/4", "1-4", "a/b", "0/0"):
        with pytest.raises(ValueError, match="i/n"):
            parse_shard(bad)


def test_torchrun_ranks_split_each_machine_shard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert repr(current_shard()) == "0/1" and repr(current_shard("2/3")) == "2/3"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert repr(current_shard()) == "1/2"
    assert repr(current_shard("2/3")) == "5/6"  # machine 2 of 3, rank 1 of 2
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2 / WORLD_SIZE=2"):
        current_shard()
