from __future__ import annotations

import re

from shared.keys import Keys, cancel_tokens, sentence_token, utterance_token


def test_per_session_keys_share_one_cluster_hash_tag() -> None:
    keys = Keys("vx")
    names = [keys.audio_channel("abc"), keys.cancelled("abc")]
    tags = {re.search(r"\{([^}]*)\}", name).group(1) for name in names}  # type: ignore[union-attr]
    assert tags == {"abc"}


def test_every_name_is_under_the_prefix_and_distinct() -> None:
    keys = Keys("vx")
    names = [
        keys.jobs,
        keys.cancel_channel,
        keys.workers,
        keys.worker("w1"),
        keys.audio_channel("s"),
        keys.cancelled("s"),
    ]
    assert all(name.startswith("vx:") for name in names)
    assert len(set(names)) == len(names)
    assert Keys("a").jobs != Keys("b").jobs


def test_cancel_tokens_cover_session_utterance_and_sentence() -> None:
    assert cancel_tokens(2, 5) == ["*", utterance_token(2), sentence_token(2, 5)]
    assert utterance_token(2) != utterance_token(20)
    assert sentence_token(1, 12) != sentence_token(11, 2)
