from __future__ import annotations

import re
import uuid
from collections import Counter

import pytest
from redis.crc import key_slot

from voxline.shared.keys import Keys, cancel_tokens, sentence_token, shard_tag, utterance_token


def tag_of(name: str) -> str:
    return re.search(r"\{([^}]*)\}", name).group(1)  # type: ignore[union-attr]


def test_per_session_keys_share_one_cluster_hash_tag() -> None:
    keys = Keys("vx")
    names = [keys.audio_channel("abc"), keys.cancelled("abc")]
    assert {tag_of(name) for name in names} == {"abc"}


def test_every_name_is_under_the_prefix_and_distinct() -> None:
    keys = Keys("vx")
    names = [
        *keys.job_streams,
        keys.dead_letters,
        keys.lease("s"),
        keys.cancel_channel,
        keys.workers,
        keys.worker("w1"),
        keys.audio_channel("s"),
        keys.cancelled("s"),
    ]
    assert all(name.startswith("vx:") for name in names)
    assert len(set(names)) == len(names)
    assert Keys("a").job_streams != Keys("b").job_streams


def test_both_streams_of_a_shard_share_one_slot_and_shards_do_not() -> None:
    keys = Keys("vx", shards=8)
    shards = keys.job_shards
    assert [s.index for s in shards] == list(range(8))
    for shard in shards:
        assert tag_of(shard.first) == tag_of(shard.rest)
        assert key_slot(shard.first.encode()) == key_slot(shard.rest.encode())
    assert len({key_slot(s.rest.encode()) for s in shards}) == 8
    # Workers serve first sentences of every shard before any later sentence.
    assert keys.job_streams == tuple(s.first for s in shards) + tuple(s.rest for s in shards)


@pytest.mark.parametrize("masters", range(2, 10))
def test_shards_spread_over_masters_with_even_slot_ranges(masters: int) -> None:
    """`redis-cli --cluster create` gives each master an even, contiguous range of slots: two
    shards per master (the documented setting) leave none without a shard, and no master gets
    more than four."""
    width = 16384 / masters
    owners = Counter(int(key_slot(shard_tag(k).encode()) // width) for k in range(2 * masters))
    assert sorted(owners) == list(range(masters))
    assert max(owners.values()) <= 4
    if masters in (2, 3, 4, 8):  # powers of two, and 3, get one shard each
        assert len({int(key_slot(shard_tag(k).encode()) // width) for k in range(masters)}) == (
            masters
        )


def test_a_shards_name_does_not_depend_on_the_shard_count() -> None:
    # Workers reading more shards than the front ends write still read every written one.
    assert Keys("vx", shards=2).job_shards == Keys("vx", shards=5).job_shards[:2]


def test_a_sessions_jobs_stay_on_one_shard_and_sessions_spread() -> None:
    keys = Keys("vx", shards=4)
    sessions = [uuid.uuid4().hex for _ in range(400)]
    assert all(keys.shard_of(s) == keys.shard_of(s) for s in sessions)
    per_shard = Counter(keys.shard_of(s).index for s in sessions)
    assert set(per_shard) == {0, 1, 2, 3} and min(per_shard.values()) > 50
    assert {Keys("vx").shard_of(s).index for s in sessions} == {0}
    with pytest.raises(ValueError):
        Keys("vx", shards=0)


def test_cancel_tokens_cover_session_utterance_and_sentence() -> None:
    assert cancel_tokens(2, 5) == ["*", utterance_token(2), sentence_token(2, 5)]
    assert utterance_token(2) != utterance_token(20)
    assert sentence_token(1, 12) != sentence_token(11, 2)
