"""What the neural engines share about where a model comes from and where it runs: offline
mode, the one error for a model that is not there, the device, the CPU threads."""

from __future__ import annotations

import os
from pathlib import Path

_TRUE = ("1", "true", "yes", "on")


def offline() -> bool:
    """Whether the hub must not be asked (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    return any(
        os.environ.get(v, "").lower() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def looks_like_path(name: str) -> bool:
    """A model argument meant as a directory (a hub id is `owner/name`)."""
    return name.startswith(("/", "./", "../", "~")) or name.count("/") > 1


def available_cpus() -> int:
    """CPUs this process may run on: the default for torch's CPU threads."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def missing_model(
    engine: str, kind: str, name: str, default: str, exc: BaseException | None = None
) -> RuntimeError:
    """The one error for a checkpoint that cannot be loaded, naming it and saying how to
    provide it on a machine that cannot download."""
    if Path(name).expanduser().is_dir():
        what = f"model directory {name!r} holds no loadable {kind} checkpoint"
    elif looks_like_path(name):
        what = f"model directory {name!r} does not exist"
    elif offline():
        what = f"model {name!r} not found locally and the hub is off (HF_HUB_OFFLINE)"
    else:
        what = f"model {name!r} not found locally and the hub is unreachable or has no such model"
    hub_id = name if not (Path(name).expanduser().is_dir() or looks_like_path(name)) else default
    how = (
        f"download it on a connected machine with `hf download {hub_id} --local-dir DIR` and "
        "start the worker with --model DIR, or set HF_HOME to a cache holding it"
    )
    cause = ""
    if exc is not None and str(exc).strip():
        cause = f" ({type(exc).__name__}: {str(exc).strip().splitlines()[0]})"
    return RuntimeError(f"{engine}: {what}; {how}{cause}")


def resolve_device(engine: str, device: str) -> str:
    """`auto` → cuda when torch sees a GPU, else cpu; a CUDA device torch cannot see is an
    error, not a quiet run on the CPU."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise RuntimeError(
                f"{engine}: device {device!r} asked for, but torch {torch.__version__} sees "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    return device
