"""What a connection's client hears: worker audio turned into the client's format.

Workers encode the stateless formats themselves (wav, pcm, mulaw, alaw: a sentence needs no
state from the one before). Compressed formats are stateful streams, and the sentences of one
connection come from several workers, so workers send PCM and the front end encodes: one
continuous Ogg/MP3/ADTS/FLAC stream per connection when streaming, one file per sentence when
not.
"""

from __future__ import annotations

from voxline.shared.audio.codecs import StreamEncoder, encode_file
from voxline.shared.audio.formats import COMPRESSED


class ClientAudio:
    """One connection's output stage; one per `session.config`."""

    def __init__(self, fmt: str, rate: int, *, stream: bool) -> None:
        self.fmt = fmt
        self.rate = rate
        self.stream = stream
        self.compressed = fmt in COMPRESSED
        self._encoder = StreamEncoder(fmt, rate) if self.compressed and stream else None
        self._sentence: list[bytes] = []  # PCM of the sentence (compressed, whole files)

    @property
    def worker_format(self) -> tuple[str, bool]:
        """(format, stream_audio) to ask the workers for."""
        if self.compressed:
            return "pcm", True
        return self.fmt, self.stream

    def chunk(self, data: bytes) -> bytes:
        """Client bytes for one worker chunk (b"" while an encoder fills a frame)."""
        if not self.compressed:
            return data
        if self._encoder is not None:
            return self._encoder.encode(data)
        self._sentence.append(data)
        return b""

    def end_sentence(self) -> bytes:
        """What completes the sentence on the client: the encoder drained, so every sample
        so far is playable before `audio.done`, or the sentence's whole file."""
        if not self.compressed:
            return b""
        if self._encoder is not None:
            return self._encoder.end_sentence()
        pcm, self._sentence = b"".join(self._sentence), []
        return encode_file(self.fmt, pcm, self.rate) if pcm else b""

    def drop_sentence(self) -> None:
        """A sentence given up on before its end: nothing of a whole-file sentence is sent."""
        self._sentence = []
