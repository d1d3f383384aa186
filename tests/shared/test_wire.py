from __future__ import annotations

import msgpack
import pytest

from voxline.shared.wire import Cancel, Event, EventKind, Job


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


# What the previous version wrote (voxline before the map encoding): the fields in order.
def previous_job_encoding(job: Job) -> bytes:
    return msgpack.packb(
        [
            job.session_id,
            job.utterance,
            job.sentence,
            job.text,
            job.voice,
            job.format,
            job.sample_rate,
            job.stream_audio,
            job.speed,
            job.language,
            job.word_timestamps,
            job.enqueued_at,
            job.extra,
            job.batch,
        ]
    )


def test_a_job_from_the_previous_version_reads_back_whole() -> None:
    job = Job("s1", 2, 7, "Hello.", "en", "mulaw", 8000, True, 1.5, "de", True, 12.5, {}, "b1")
    assert Job.unpack(previous_job_encoding(job)) == job


def test_a_job_from_a_newer_or_older_writer_reads_with_what_it_knows() -> None:
    job = Job("s1", 0, 3, "Hello.", "en", stream_audio=True)
    newer = msgpack.unpackb(job.pack()) | {"priority": 5, "trace": {"id": "abc"}}
    assert Job.unpack(msgpack.packb(newer)) == job  # the fields it does not know: ignored
    older = {"session_id": "s1", "utterance": 0, "sentence": 3, "text": "Hi.", "voice": "en"}
    back = Job.unpack(msgpack.packb(older))
    assert back.batch == "" and back.speed == 1.0 and back.format == "wav"  # defaults
    with pytest.raises(TypeError):  # a required field missing is malformed
        Job.unpack(msgpack.packb({"session_id": "s1"}))
    with pytest.raises(ValueError, match="a job is a map"):
        Job.unpack(msgpack.packb("s1"))


def test_events_and_cancels_read_with_fields_added_at_the_end_or_not_yet() -> None:
    newer = msgpack.packb([int(EventKind.DONE), 0, 1, 9, 4800, 2, "a field from later"])
    assert Event.unpack(newer) == Event(EventKind.DONE, 0, 1, 9, 4800, 2)
    before_attempts = msgpack.packb([int(EventKind.STARTED), 0, 1, 0, "w1"])
    assert Event.unpack(before_attempts).attempt == 1
    assert Cancel.unpack(msgpack.packb(["s", 1, None, "later"])) == Cancel("s", 1)
