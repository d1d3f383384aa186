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
