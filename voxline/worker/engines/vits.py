"""VITS voices through transformers' `VitsModel`: the MMS-TTS checkpoints (facebook/mms-tts-eng
and 1,100+ other languages, one model each) and other VITS checkpoints saved with
`save_pretrained`. Needs the `model` extra (torch, transformers).

A sentence is synthesized whole, then streamed out in 100 ms chunks. Sentences waiting at the
same time (the worker runs several jobs at once) are synthesized as one padded batch: one
batcher task gathers the requests that arrive while a batch computes into the next one, and
every torch call runs on one process-wide thread, so calls are serialized and the event loop
never blocks.

Facts checked against transformers 5.23 (models/vits/modeling_vits.py):
- `speaking_rate` is a forward argument (default `config.speaking_rate`), one float for the
  whole batch, and so is `speaker_id`: a batch holds requests of one speed and one speaker.
- The noise (`noise_scale`, `noise_scale_duration`) is drawn from torch's global RNG for the
  whole padded batch, so with noise a row's audio depends on its batch mates. `seed` reseeds
  before every forward: the same batch (a sentence alone, say) gives the same audio. A
  checkpoint with zero noise is deterministic however it is batched.
- `VitsModel` decodes the padded batch in one go, and HiFi-GAN's convolutions read past each
  row's end, where values are not zero after the first convolution's bias: the last frames of
  every shorter row differ from its solo synthesis (by up to full scale on a random model).
  The engine stops the model at the spectrogram (which its output carries) and decodes itself:
  on CPU row by row (measured: twice as fast as one batched decode of four MMS-sized rows),
  on GPUs as one batch with every convolution's input zeroed past each row's end, which is
  what zero padding gives a row alone. A check at start compares that with the model's own
  decoder; if they disagree (a transformers whose decoder changed), rows are decoded one by
  one everywhere.
- float32 by default on every device: the flows invert splines and exponentiate log-scales,
  and durations are `ceil(exp(...))`, so half precision can shift durations and add artefacts;
  the model is small (36 M parameters for MMS), so float32 costs little.
- `torch.set_num_threads` is per thread under OpenMP: it is set on the model's thread.
- MMS tokenizers lowercase and drop every character outside the model's alphabet (digits,
  most punctuation): numbers are not read out, and a text with nothing left is an error.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import threading
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field, field_validator

from voxline.shared.capabilities import EngineInfo
from voxline.worker.engines.base import (
    AudioChunk,
    Cancellation,
    Engine,
    EngineError,
    SynthesisRequest,
)
from voxline.worker.engines.checkpoints import (
    available_cpus,
    looks_like_path,
    missing_model,
    offline,
    resolve_device,
)
from voxline.worker.engines.options import EngineOptions

if TYPE_CHECKING:
    import torch

log = logging.getLogger("voxline.worker.vits")

DEFAULT_MODEL = "facebook/mms-tts-eng"
DEFAULT_VOICE = "default"
CHUNK_MS = 100
SPEED_RANGE = (0.25, 4.0)
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")
_MMS_LANGUAGE = re.compile(r"mms-tts-([a-z]{3}\S*)$")
_NON_ROMAN = re.compile(r"[^\x00-\x7f]")
# facebook/mms-tts-* weights are CC-BY-NC-4.0: said at start so no one ships them unaware.
MMS_LICENCE = "CC-BY-NC-4.0"
_CARD_LICENCE = re.compile(r"^license:\s*(\S+)\s*$", re.M)


def _missing(name: str, exc: BaseException | None = None) -> RuntimeError:
    return missing_model("vits", "VITS", name, DEFAULT_MODEL, exc)


@dataclass(frozen=True, slots=True)
class _Spec:
    model: str
    device: str
    dtype: str


def _skip_decoder() -> Any:
    """A stand-in for `VitsModel.decoder`: the model's forward then stops at the spectrogram."""
    import torch

    class SkipDecoder(torch.nn.Module):
        def forward(self, spectrogram: torch.Tensor, conditioning: Any = None) -> torch.Tensor:
            return spectrogram.new_zeros(spectrogram.shape[0], 1, 0)

    return SkipDecoder()


class _Model:
    """A loaded checkpoint. Every method runs on the runtime's one thread."""

    def __init__(self, spec: _Spec) -> None:
        import torch
        from transformers import AutoConfig, VitsModel, VitsTokenizer

        self.spec = spec
        self.device = resolve_device("vits", spec.device)
        dtype = getattr(torch, "float32" if spec.dtype == "auto" else spec.dtype)
        path = Path(spec.model).expanduser()
        if not path.is_dir() and looks_like_path(spec.model):
            raise _missing(spec.model)
        source = str(path) if path.is_dir() else spec.model
        local_only = path.is_dir() or offline()
        try:
            config = AutoConfig.from_pretrained(source, local_files_only=local_only)
            if config.model_type != "vits":
                raise RuntimeError(
                    f"vits: model {spec.model!r} is a {config.model_type!r} checkpoint, not VITS"
                )
            model = VitsModel.from_pretrained(
                source, config=config, dtype=dtype, local_files_only=local_only
            )
            self.tokenizer = VitsTokenizer.from_pretrained(source, local_files_only=local_only)
        except (OSError, ValueError) as exc:  # ValueError: a config.json of no known model
            raise _missing(spec.model, exc) from exc
        self.model = model.eval().to(self.device)
        self.decoder = self.model.decoder
        self.model.decoder = _skip_decoder()
        self.config = config
        self.hop = int(np.prod(config.upsample_rates))
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.language = self.tokenizer.language or _language_from_id(spec.model)
        self.romanizer = _romanizer(spec.model, self.tokenizer)
        # Row by row on CPU (see above); batched on GPUs, where one call per row would leave
        # the device mostly idle.
        self.batch_decoding = self._check_decoding() and self.device != "cpu"

    # Text -> token ids

    def encode(self, text: str) -> list[int]:
        if self.romanizer is not None and _NON_ROMAN.search(text):
            # Done here with one Romanizer: the tokenizer would build a new one per call.
            if self.tokenizer.normalize:
                text = self.tokenizer.normalize_text(text)
            text = self.romanizer.romanize_string(text)
        ids: list[int] = self.tokenizer(text)["input_ids"]
        # With add_blank the tokenizer puts a blank between characters: count the characters.
        if not (ids[1::2] if self.tokenizer.add_blank else ids):
            raise EngineError(f"vits: nothing this voice can speak in {text[:60]!r}")
        return ids

    # Batched synthesis

    def synthesize(
        self,
        batch: list[tuple[str, Cancellation]],
        speed: float,
        speaker: int | None,
        seed: int | None,
    ) -> tuple[list[np.ndarray | EngineError | None], int]:
        """Audio (float32) or the error per request, None for one cancelled meanwhile; and the
        number of rows the forward ran (0: none ran)."""
        out: list[np.ndarray | EngineError | None] = [None] * len(batch)
        rows: list[tuple[int, list[int]]] = []
        for index, (text, cancel) in enumerate(batch):
            if cancel.is_set():
                continue
            try:
                rows.append((index, self.encode(text)))
            except EngineError as exc:
                out[index] = exc
        if rows:
            waves = self.forward([ids for _, ids in rows], speed, speaker, seed)
            for (index, _), wave in zip(rows, waves, strict=True):
                out[index] = wave
        return out, len(rows)

    def forward(
        self, batch: list[list[int]], speed: float, speaker: int | None, seed: int | None
    ) -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            spectrogram, frames = self.spectrogram(batch, speed, speaker, seed)
            waves = self.decode(spectrogram, frames, speaker, masked=self.batch_decoding)
            lengths = (frames * self.hop).tolist()
            return [w[:n].float().cpu().numpy() for w, n in zip(waves, lengths, strict=True)]

    def spectrogram(
        self, batch: list[list[int]], speed: float, speaker: int | None, seed: int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The padded batch's spectrogram and each row's length in frames."""
        import torch

        width = max(len(ids) for ids in batch)
        input_ids = torch.full((len(batch), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        if seed is not None:
            torch.manual_seed(seed)
        out = self.model(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            speaker_id=speaker,
            speaking_rate=self.model.speaking_rate * speed,
        )
        return out.spectrogram, out.sequence_lengths // self.hop

    def decode(
        self, spectrogram: torch.Tensor, frames: torch.Tensor, speaker: int | None, *, masked: bool
    ) -> list[torch.Tensor]:
        import torch

        conditioning = None
        if speaker is not None:
            index = torch.tensor([speaker], device=self.device)
            conditioning = self.model.embed_speaker(index).unsqueeze(-1)
        if masked:
            return list(_masked_decode(self.decoder, spectrogram, frames, conditioning))
        return [
            self.decoder(spectrogram[row : row + 1, :, :n], conditioning)[0, 0]
            for row, n in enumerate(frames.tolist())
        ]

    def _check_decoding(self) -> bool:
        """Whether the masked batch decoding matches the model's decoder on each row alone,
        on a two-row warm-up batch (device and dtype problems show here too, at start)."""
        import torch

        ids = [i for i in range(self.config.vocab_size) if i != self.pad_id] or [0]
        batch = [[ids[i % len(ids)] for i in range(n)] for n in (13, 5)]
        speaker = 0 if self.config.num_speakers > 1 else None
        with torch.inference_mode():
            spectrogram, frames = self.spectrogram(batch, 1.0, speaker, None)
            masked = self.decode(spectrogram, frames, speaker, masked=True)
            alone = self.decode(spectrogram, frames, speaker, masked=False)
        tolerance = 1e-3 if self.model.dtype == torch.float32 else 5e-2
        for row, n in enumerate(frames.tolist()):
            a, b = masked[row][: n * self.hop].float(), alone[row].float()
            if a.shape != b.shape or (a - b).abs().max().item() > tolerance:
                log.warning(
                    "vits: batch decoding disagrees with the model's decoder; decoding row by row"
                )
                return False
        return True


def _masked_decode(
    decoder: Any, spectrogram: torch.Tensor, frames: torch.Tensor, conditioning: Any
) -> torch.Tensor:
    """`VitsHifiGan.forward` over a padded batch, with every convolution's input zeroed past
    each row's end (at that layer's resolution): each row decodes as it would alone."""
    import torch
    from torch.nn.functional import leaky_relu

    config = decoder.config
    slope = config.leaky_relu_slope

    def mask(hop: int, length: int) -> torch.Tensor:
        positions = torch.arange(length, device=frames.device)
        keep = positions.unsqueeze(0) < (frames * hop).unsqueeze(1)
        return keep.unsqueeze(1).to(spectrogram.dtype)

    hop, keep = 1, mask(1, spectrogram.shape[-1])
    hidden = decoder.conv_pre(spectrogram * keep)
    if conditioning is not None:
        hidden = hidden + decoder.cond(conditioning)
    kernels = decoder.num_kernels
    for i, upsample in enumerate(decoder.upsampler):
        hidden = upsample(leaky_relu(hidden, slope) * keep)
        hop *= config.upsample_rates[i]
        keep = mask(hop, hidden.shape[-1])
        blocks = decoder.resblocks[i * kernels : (i + 1) * kernels]
        state = _masked_resblock(blocks[0], hidden, keep)
        for block in blocks[1:]:
            state += _masked_resblock(block, hidden, keep)
        hidden = state / kernels
    hidden = decoder.conv_post(leaky_relu(hidden) * keep)  # the default slope, as upstream
    return torch.tanh(hidden).squeeze(1)


def _masked_resblock(block: Any, hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    from torch.nn.functional import leaky_relu

    slope = block.leaky_relu_slope
    for conv1, conv2 in zip(block.convs1, block.convs2, strict=True):
        step = conv1(leaky_relu(hidden, slope) * keep)
        hidden = conv2(leaky_relu(step, slope) * keep) + hidden
    return hidden


def licence_note(model: str) -> str:
    """The weights' licence for the start-up line: a local model card's, else MMS-TTS's for an
    MMS id or directory name."""
    licence = None
    card = Path(model).expanduser() / "README.md"
    if card.is_file():
        front = card.read_text(errors="replace").split("---")
        if len(front) > 2 and (match := _CARD_LICENCE.search(front[1])):
            licence = match.group(1)
    if licence is None and "mms-tts" in model.lower():
        licence = MMS_LICENCE
    if licence is None:
        return f"licence: see the model card (MMS-TTS weights are {MMS_LICENCE})"
    if licence.upper() == MMS_LICENCE:
        return f"licence: {MMS_LICENCE}, non-commercial use only"
    return f"licence: {licence}"


def _language_from_id(model: str) -> str | None:
    match = _MMS_LANGUAGE.search(model.rstrip("/"))
    return match.group(1) if match else None


def _romanizer(model: str, tokenizer: Any) -> Any:
    """The uroman Romanizer for checkpoints trained on romanized text (`is_uroman`); without
    the package the tokenizer would only warn and then drop every non-Latin character."""
    if tokenizer.phonemize:
        from transformers.utils import is_phonemizer_available

        if not is_phonemizer_available():
            raise RuntimeError(
                f"vits: model {model!r} reads phonemes (tokenizer phonemize=true) and the "
                "`phonemizer` package is not installed; pip install phonemizer (and espeak-ng)"
            )
    if not tokenizer.is_uroman:
        return None
    try:
        import uroman
    except ImportError:
        raise RuntimeError(
            f"vits: model {model!r} needs its text romanized with uroman (tokenizer "
            "is_uroman=true) and the `uroman` package is not installed; pip install uroman"
        ) from None
    return uroman.Uroman()


class _Runtime:
    """The process's one model thread and its loaded checkpoints (loaded once per process)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.executor: ThreadPoolExecutor | None = None
        self.users = 0
        self.models: dict[_Spec, _Model] = {}

    def acquire(self) -> ThreadPoolExecutor:
        with self.lock:
            if self.executor is None:
                self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voxline-vits")
            self.users += 1
            return self.executor

    def release(self) -> None:
        with self.lock:
            self.users -= 1
            if self.users == 0 and self.executor is not None:
                # A forward still running finishes on its own; nothing waits for it.
                self.executor.shutdown(wait=False, cancel_futures=True)
                self.executor = None

    def load(self, spec: _Spec, threads: int) -> _Model:
        """On the model thread."""
        import torch

        torch.set_num_threads(threads)
        if spec not in self.models:
            self.models[spec] = _Model(spec)
        return self.models[spec]


_runtime = _Runtime()


@dataclass(eq=False)
class _Request:
    text: str
    key: tuple[float, int | None]  # (speed, speaker): what one forward shares
    cancel: Cancellation
    future: asyncio.Future[np.ndarray | None]

    def dropped(self) -> bool:
        return self.cancel.is_set() or self.future.done()


class VitsOptions(EngineOptions):
    model: str = Field(DEFAULT_MODEL, min_length=1)
    """Hub id or local checkpoint directory."""
    device: str = "auto"
    """auto (cuda when torch sees a GPU, else cpu), cpu, cuda or cuda:N."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """The weights' precision; auto is float32 (see the module's docstring)."""
    threads: int | None = Field(None, ge=1)
    """torch CPU threads (default: the CPUs this process may use)."""
    max_batch: int = Field(8, ge=1)
    """Requests per forward."""
    seed: int | None = None
    """Reseed torch with this before every forward (default: never)."""

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if not _DEVICE.fullmatch(device):
            raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {device!r}")
        return device


class VitsEngine(Engine):
    Options = VitsOptions

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        device: str = "auto",
        dtype: str = "auto",
        threads: int | None = None,
        max_batch: int = 8,
        seed: int | None = None,
    ) -> None:
        threads = available_cpus() if threads is None else threads
        self.spec = _Spec(model, device, dtype)
        self.threads = threads
        self.max_batch = max_batch
        self.seed = seed
        self._info: EngineInfo | None = None
        self._model: _Model | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pending: collections.deque[_Request] = collections.deque()
        self._wakeup = asyncio.Event()
        self._batcher: asyncio.Task[None] | None = None
        self._running: list[_Request] = []  # the batch on the model thread
        # Observed by tests: forwards run, requests they held, the largest batch, requests
        # dropped (cancelled) before their batch ran.
        self.stats = {"forwards": 0, "rows": 0, "largest_batch": 0, "dropped": 0}

    @property
    def info(self) -> EngineInfo:  # type: ignore[override]
        if self._info is None:
            raise RuntimeError("VitsEngine.info is known after start()")
        return self._info

    async def start(self) -> None:
        if self._model is not None:
            return
        executor = _runtime.acquire()
        try:
            loop = asyncio.get_running_loop()
            model = await loop.run_in_executor(executor, _runtime.load, self.spec, self.threads)
        except BaseException:
            _runtime.release()
            raise
        self._executor, self._model = executor, model
        speakers = model.config.num_speakers
        voices = (
            (DEFAULT_VOICE,) if speakers <= 1 else tuple(f"speaker-{i}" for i in range(speakers))
        )
        self._info = EngineInfo(
            name="vits",
            sample_rate=model.config.sampling_rate,
            voices=voices,
            default_voice=voices[0],
            languages=(model.language,) if model.language else (),
            word_timestamps=False,
            speed_range=SPEED_RANGE,
        )
        self._wakeup = asyncio.Event()
        self._batcher = asyncio.create_task(self._batch_loop(), name="vits-batcher")
        log.info(
            "vits: %s on %s (%s), %d threads, batches of up to %d; %s",
            self.spec.model,
            model.device,
            model.model.dtype,
            self.threads,
            self.max_batch,
            licence_note(self.spec.model),
        )

    async def close(self) -> None:
        if self._model is None:
            return
        waiting = [*self._running, *self._pending]  # read first: the batcher's exit clears them
        if self._batcher is not None:
            self._batcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._batcher
        for request in waiting:
            self._resolve(request, EngineError("vits engine closed"))
        self._running, self._pending = [], collections.deque()
        self._model = self._executor = self._batcher = None
        _runtime.release()

    def _speaker(self, voice: str) -> int | None:
        voices = self.info.voices
        voice = voice or self.info.default_voice
        if voice not in voices:
            raise EngineError(f"unknown vits voice {voice!r}; this model has {list(voices)}")
        return None if voices == (DEFAULT_VOICE,) else voices.index(voice)

    def _check(self, request: SynthesisRequest) -> tuple[float, int | None]:
        speaker = self._speaker(request.voice)
        if request.language != "Auto" and request.language not in self.info.languages:
            raise EngineError(f"this vits model speaks {list(self.info.languages)} only")
        low, high = SPEED_RANGE
        if not low <= request.speed <= high:
            raise EngineError(f"speed must be {low}..{high}, got {request.speed}")
        if not request.text.strip():
            raise EngineError("vits: empty text")
        return request.speed, speaker

    async def synthesize(
        self, request: SynthesisRequest, cancel: Cancellation
    ) -> AsyncGenerator[AudioChunk, None]:
        if self._batcher is None:
            raise EngineError("vits engine is not started")
        key = self._check(request)
        if cancel.is_set():
            return
        pending = _Request(request.text, key, cancel, asyncio.get_running_loop().create_future())
        self._pending.append(pending)
        self._wakeup.set()
        try:
            audio = await pending.future
        finally:
            pending.future.cancel()  # no-op once resolved; else drops it from its batch
        if audio is None:
            return
        pcm = np.rint(np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
        step = max(1, self.info.sample_rate * CHUNK_MS // 1000)
        for start in range(0, len(pcm), step):
            if cancel.is_set():
                return
            yield AudioChunk(pcm[start : start + step])

    async def _batch_loop(self) -> None:
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            batch = self._take_batch()
            if batch:
                await self._run(batch)

    def _take_batch(self) -> list[_Request]:
        """The oldest request and the next ones of its speed and speaker, up to max_batch;
        requests cancelled meanwhile are dropped. The others keep their places."""
        batch: list[_Request] = []
        kept: collections.deque[_Request] = collections.deque()
        while self._pending:
            request = self._pending.popleft()
            if request.dropped():
                self.stats["dropped"] += 1
                self._resolve(request, None)
            elif len(batch) < self.max_batch and (not batch or request.key == batch[0].key):
                batch.append(request)
            else:
                kept.append(request)
        self._pending = kept
        return batch

    async def _run(self, batch: list[_Request]) -> None:
        model, executor = self._model, self._executor
        assert model is not None and executor is not None
        speed, speaker = batch[0].key
        work = [(r.text, r.cancel) for r in batch]
        loop = asyncio.get_running_loop()
        self._running = batch
        try:
            results, rows = await loop.run_in_executor(
                executor, model.synthesize, work, speed, speaker, self.seed
            )
        except Exception as exc:
            log.exception("vits: batch of %d failed", len(batch))
            for request in batch:
                self._resolve(request, EngineError(f"vits synthesis failed: {type(exc).__name__}"))
            return
        finally:
            self._running = []
        if rows:
            self.stats["forwards"] += 1
            self.stats["rows"] += rows
            self.stats["largest_batch"] = max(self.stats["largest_batch"], rows)
        self.stats["dropped"] += sum(1 for r in results if r is None)
        for request, result in zip(batch, results, strict=True):
            self._resolve(request, result)

    @staticmethod
    def _resolve(request: _Request, result: np.ndarray | EngineError | None) -> None:
        if request.future.done():
            return
        if isinstance(result, EngineError):
            request.future.set_exception(result)
        else:
            request.future.set_result(result)
