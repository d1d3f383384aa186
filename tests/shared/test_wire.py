from __future__ import annotations

import pytest

from shared.wire import Cancel, Event, EventKind, Job


def test_job_round_trips_every_field() -> None:
    job = Job(
        session_id="s1",
        utterance=2,
        sentence=7,
        text="Grüße, 世界!",
        voice="en",
        format="mulaw",
        sample_rate=8000,
        stream_audio=True,
        speed=1.5,
        language="de",
        word_timestamps=True,
        enqueued_at=1234.5,
        extra={"instructions": "calm"},
    )
    assert Job.unpack(job.pack()) == job


@pytest.mark.parametrize(
    "event",
    [
        Event(EventKind.STARTED, 0, 0, 0, "worker-1"),
        Event(EventKind.AUDIO, 1, 2, 3, b"\x00\x01" * 100),
        Event(EventKind.WORDS, 0, 1, 2, [{"word": "hi", "start_ms": 0, "end_ms": 120}]),
        Event(EventKind.DONE, 0, 1, 9, 4800),
        Event(EventKind.ERROR, 0, 1, 1, "engine failure"),
    ],
)
def test_event_round_trips(event: Event) -> None:
    back = Event.unpack(event.pack())
    assert back == event and back.kind is event.kind


def test_audio_bytes_stay_bytes() -> None:
    back = Event.unpack(Event(EventKind.AUDIO, 0, 0, 1, b"\xff\xfe").pack())
    assert isinstance(back.data, bytes)


@pytest.mark.parametrize(
    ("cancel", "utterance", "sentence", "hit"),
    [
        (Cancel("s"), 3, 4, True),
        (Cancel("s", 3), 3, 4, True),
        (Cancel("s", 2), 3, 4, False),
        (Cancel("s", 3, 4), 3, 4, True),
        (Cancel("s", 3, 5), 3, 4, False),
        (Cancel("other"), 3, 4, False),
    ],
)
def test_cancel_matching(cancel: Cancel, utterance: int, sentence: int, hit: bool) -> None:
    job = Job("s", utterance, sentence, "x", "v")
    assert cancel.matches(job) is hit
    assert Cancel.unpack(cancel.pack()) == cancel
