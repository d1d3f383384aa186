"""The Dockerfile, read instruction by instruction (no Docker engine here): a slim api image with
no torch at all, a worker image with CUDA torch at the version the `model` extra pins, both
unprivileged, with commands the CLI accepts."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from importlib import metadata

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.common import ROOT
from voxline.cli import DEFAULT_PORT, build_parser

NEURAL = {"torch", "transformers", "torchaudio", "torchvision", "triton"}


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        found = self.all(keyword)
        assert found, f"{self.name}: no {keyword}"
        return found[-1]

    def args(self) -> dict[str, str]:
        return dict(a.split("=", 1) for a in self.all("ARG") if "=" in a)


def _instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments), continuation lines joined, comments dropped."""
    out, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    return out


def _stages() -> dict[str, Stage]:
    """Every named stage, with the instructions of the stages it builds on."""
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for keyword, args in _instructions((ROOT / "Dockerfile").read_text()):
        if keyword == "FROM":
            base, _, name = args.partition(" AS ")
            current = Stage(name.strip(), base.strip())
            if base in stages:
                current.instructions = list(stages[base].instructions)
            stages[current.name] = current
        else:
            assert current is not None, "instruction before FROM"
            current.instructions.append((keyword, args))
    return stages


def _expand(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], text)


def _pip_installs(stage: Stage) -> list[list[str]]:
    """The argument lists of every `pip install` the stage runs, build args expanded."""
    installs = []
    for run in stage.all("RUN"):
        command: list[str] = []
        for word in [*shlex.split(_expand(run, stage.args())), "&&"]:
            if word not in {"&&", "||", ";"}:
                command.append(word)
                continue
            if command[:2] == ["pip", "install"]:
                installs.append(command[2:])
            command = []
    return installs


def _exec_form(instruction: str) -> list[str]:
    words = json.loads(instruction.removeprefix("CMD").strip())
    assert isinstance(words, list), "exec form, so SIGTERM reaches the process"
    return words


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _closure(requirements: list[str]) -> set[str]:
    """Every distribution `pip install` of these requirements pulls in, as installed here."""
    seen: set[str] = set()
    todo = [(Requirement(r), "") for r in requirements]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        name = canonicalize_name(req.name)
        for wanted in {"", *req.extras}:
            key = f"{name}[{wanted}]"
            if key in seen:
                continue
            seen.add(key)
            todo.extend((Requirement(r), wanted) for r in metadata.requires(name) or [])
    return {key.partition("[")[0] for key in seen}


def test_stages() -> None:
    stages = _stages()
    assert {"api", "worker"} <= set(stages)
    assert stages["base"].base == "python:3.11-slim"


def _server_requirements() -> list[str]:
    project = _pyproject()["project"]
    return project["dependencies"] + project["optional-dependencies"]["server"]


def test_api_stage_installs_the_server_dependencies_only() -> None:
    (install,) = _pip_installs(_stages()["api"])
    assert install == [".[server]"], "the server extra alone: the `model` extra is torch"
    named = {canonicalize_name(Requirement(r).name) for r in _server_requirements()}
    assert not named & NEURAL


def test_nothing_the_api_image_installs_pulls_in_torch() -> None:
    # The server's requirements and their own, as resolved in this environment.
    pulled = _closure(_server_requirements())
    assert "fastapi" in pulled and "uvicorn" in pulled
    assert not pulled & NEURAL, pulled & NEURAL


def test_worker_stage_installs_cuda_torch_at_the_pinned_version() -> None:
    worker = _stages()["worker"]
    torch_install, project_install = _pip_installs(worker)
    index = torch_install[torch_install.index("--index-url") + 1]
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", index), index
    (pin,) = [w for w in torch_install if w.startswith("torch==")]
    extra = [Requirement(r) for r in _pyproject()["project"]["optional-dependencies"]["model"]]
    (torch,) = [r for r in extra if r.name == "torch"]
    assert torch.specifier.contains(pin.removeprefix("torch=="))
    assert str(torch.specifier) == "==" + pin.removeprefix("torch=="), "the extra's exact pin"
    # Then the project with its `model` extra, held to the CUDA build already there.
    assert ".[model]" in project_install and "--constraint" in project_install
    runs = worker.all("RUN")
    cuda_checks = [r for r in runs if "torch.version.cuda is None" in r]
    assert len(cuda_checks) == 2, "fails the build on a CPU-only torch, before and after"


def test_worker_downloads_torch_before_copying_the_sources() -> None:
    # A code change must not invalidate the multi-gigabyte torch layer.
    own = _stages()["worker"].instructions[len(_stages()["base"].instructions) :]
    keywords = [kw for kw, _ in own]
    torch_run = next(i for i, (kw, a) in enumerate(own) if kw == "RUN" and "torch==" in a)
    assert torch_run < keywords.index("COPY")


@pytest.mark.parametrize("stage", ["api", "worker"])
def test_images_run_unprivileged(stage: str) -> None:
    user = _stages()[stage].last("USER")
    assert user not in {"root", "0"}
    assert any("useradd" in r and user in r for r in _stages()["base"].all("RUN"))


@pytest.mark.parametrize("stage", ["api", "worker"])
def test_image_commands_parse_with_the_cli(stage: str) -> None:
    command = _exec_form(_stages()[stage].last("CMD"))
    assert command[0] == "voxline"
    args = build_parser().parse_args(command[1:])
    assert args.command == stage
    exposed = {int(p) for p in _stages()[stage].last("EXPOSE").split()}
    if stage == "api":
        assert args.host == "0.0.0.0" and exposed == {args.port} == {DEFAULT_PORT}
    else:
        assert args.engine == "espeak", "runs without a model"
        assert exposed == {args.metrics_port}
        # The image's healthcheck reads the file the command touches.
        assert f"'{args.heartbeat_file}'" in _stages()[stage].last("HEALTHCHECK")


def test_dockerignore_keeps_what_the_build_copies() -> None:
    lines = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "everything else stays out of the context"
    kept = {line[1:] for line in lines if line.startswith("!")}
    for stage in _stages().values():
        for copy in stage.all("COPY"):
            *sources, _ = copy.split()
            assert set(sources) <= kept, (stage.name, sources)
