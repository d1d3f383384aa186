"""The README's commands and examples are the ones that work: CI runs its test command, and its
SDK example runs against a live pipeline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.harness import start_pipeline

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_ci_runs_the_readmes_test_command() -> None:
    setup, test = _blocks("bash")[:2]
    assert "voxline serve" in setup and "pytest" in test
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == test.strip()
    # A fresh machine or container has no package lists: an install alone would fail.
    assert "apt-get update && apt-get install" in test


def test_the_batch_example_reads_a_file_of_the_checkout() -> None:
    lines = [line for block in _blocks("bash") for line in block.splitlines()]
    (line,) = [line for line in lines if "voxline batch " in line]
    path = ROOT / line.split("voxline batch ")[1].split()[0]
    assert path.is_file() and len(path.read_text().split()) > 100, path


def test_commands_run_the_virtual_environments_programs() -> None:
    """One command style: `.venv/bin/voxline`, `.venv/bin/pip`, `.venv/bin/python` (bare
    `voxline`, `pip` or `python` would need an activated venv the README never makes)."""
    bare = re.compile(r"(?:^|[\s(&|;])(voxline|pip|python) ")
    commands = [line for block in _blocks("bash") for line in block.splitlines()]
    # Inline code that is a command line (`pip install -e …`), not a command's name in prose
    # (`voxline serve`).
    commands += [c for c in re.findall(r"`([^`\n]+)`", README) if len(c.split()) >= 3]
    offenders = [c for c in commands if bare.search(c.split("#")[0])]
    assert offenders == [], offenders


async def test_the_sdk_example_speaks(
    redis_url: str, key_prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (example,) = [b for b in _blocks("python") if "asyncio.run(main())" in b]
    assert len(example.strip().splitlines()) <= 12
    async with start_pipeline(redis_url, key_prefix) as p:
        code = example.replace("ws://127.0.0.1:8000", p.url).replace("asyncio.run(main())", "")
        scope: dict[str, object] = {}
        exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 (our own README)
        await scope["main"]()  # type: ignore[operator]
    printed = [line.split() for line in capsys.readouterr().out.splitlines()]
    sentences = {int(sentence) for sentence, size in printed if int(size) > 0}
    assert sentences == {0, 1}
