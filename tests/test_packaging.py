"""What the package installs: one import root, `voxline`; the SDK on its own two dependencies;
the server as the `server` extra. Checked on a built wheel and in fresh interpreters."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.harness import start_pipeline
from tests.test_readme import _blocks

ROOT = Path(__file__).resolve().parent.parent
# What only the server needs: a client machine must be able to go without every one.
SERVER_ONLY = (
    "numpy",
    "av",
    "redis",
    "fastapi",
    "torch",
    "msgpack",
    "starlette",
    "uvicorn",
    "pydantic_settings",
)
SERVER_PACKAGES = ("voxline.api", "voxline.worker", "voxline.batch", "voxline.speech.queue")


def _server_parts(loaded: set[str]) -> list[str]:
    return [m for m in loaded if any(m == p or m.startswith(p + ".") for p in SERVER_PACKAGES)]


# Run first in a fresh interpreter: the server's dependencies cannot be imported there, as on a
# machine with the base install alone (websockets, pydantic).
WITHOUT_SERVER = f"""
import sys
class _Absent:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {SERVER_ONLY!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, _Absent())
"""


def _python(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


def _loaded_after(module: str) -> set[str]:
    result = _python(f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))")
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


@pytest.mark.parametrize(
    "module", ["voxline.client", "voxline.events", "voxline.say", "voxline.batch_client"]
)
def test_the_sdk_loads_none_of_the_servers_dependencies(module: str) -> None:
    loaded = _loaded_after(module)
    assert not {m.partition(".")[0] for m in loaded} & set(SERVER_ONLY)
    assert not _server_parts(loaded)


def test_the_command_loads_the_server_only_for_its_server_commands() -> None:
    loaded = _loaded_after("voxline.cli")
    assert not {m.partition(".")[0] for m in loaded} & set(SERVER_ONLY)


def test_the_pipecat_adapter_adds_none_of_the_server() -> None:
    # Pipecat itself brings numpy; what voxline's adapter adds must be client code only.
    loaded = _loaded_after("voxline.pipecat")
    assert not {m.partition(".")[0] for m in loaded} & (set(SERVER_ONLY) - {"numpy"})
    assert not _server_parts(loaded)


async def test_the_sdk_speaks_where_the_server_cannot_be_imported(
    redis_url: str, key_prefix: str
) -> None:
    (example,) = [b for b in _blocks("python") if "asyncio.run(main())" in b]
    async with start_pipeline(redis_url, key_prefix) as p:
        code = WITHOUT_SERVER + example.replace("ws://127.0.0.1:8000", p.url)
        out, err = await _async_python(code)
    sentences = {int(s) for s, size in (line.split() for line in out.splitlines()) if int(size)}
    assert sentences == {0, 1}, err


async def _async_python(code: str) -> tuple[str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode(), err.decode()


@pytest.mark.parametrize("command", ["serve", "api", "worker", "arq", "hash-key"])
def test_a_server_command_without_the_server_extra_says_how_to_get_it(command: str) -> None:
    result = _python(WITHOUT_SERVER + f"from voxline.cli import main; main([{command!r}])")
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"voxline {command}: this install is the SDK alone"), last
    assert "pip install 'voxline[server]'" in last and "Traceback" not in result.stderr


@pytest.mark.integration  # builds the wheel (a few seconds)
def test_the_wheel_installs_one_import_package_and_the_sdk_needs_two_dependencies(
    tmp_path: Path,
) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    shutil.copytree(
        ROOT / "voxline", source / "voxline", ignore=shutil.ignore_patterns("__pycache__")
    )
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp_path / "dist").glob("voxline-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = next(n.partition("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(f"{info}/METADATA").decode())
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
    assert {n.partition("/")[0] for n in names} == {"voxline", info}
    assert {n.split("/")[1] for n in names if n.count("/") >= 2 and n.startswith("voxline/")} >= {
        "api",
        "worker",
        "batch",
        "shared",
        "speech",
    }
    assert "voxline/api/demo/index.html" in names, "the demo page is package data"
    assert "voxline = voxline.cli:main" in entry_points
    requires = [Requirement(r) for r in metadata.get_all("Requires-Dist") or []]
    base = {r.name for r in requires if r.marker is None}
    assert base == {"websockets", "pydantic"}
    server = {r.name for r in requires if r.marker and r.marker.evaluate({"extra": "server"})}
    assert {"fastapi", "redis", "numpy", "av"} <= server
