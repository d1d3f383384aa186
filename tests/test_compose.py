"""compose.yaml: valid against the Compose Specification, and its commands fit the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from voxline.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"


def _services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def _check(path: Path) -> subprocess.CompletedProcess[str]:
    """Validate with check-jsonschema's vendored Compose Specification schema."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(path),
        ],
        capture_output=True,
        text=True,
    )


def test_compose_file_matches_the_compose_specification() -> None:
    result = _check(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_compose_file_is_caught(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text("services:\n  api:\n    ports: 8000\n    healthcheck: yes\n")
    result = _check(broken)
    assert result.returncode != 0


def test_services_and_healthchecks() -> None:
    services = _services()
    assert set(services) == {"redis", "api", "worker"}
    for name, service in services.items():
        assert "healthcheck" in service, name
    worker = services["worker"]
    assert "container_name" not in worker and "ports" not in worker, "must scale"
    assert services["api"]["depends_on"]["redis"]["condition"] == "service_healthy"


@pytest.mark.parametrize("service", ["api", "worker"])
def test_commands_parse_with_the_cli(service: str) -> None:
    command = _services()[service]["command"]
    assert command[0] == "voxline"
    args = build_parser().parse_args(command[1:])
    assert args.command == service
    assert args.redis_url == "redis://redis:6379/0"
    if service == "api":
        assert args.host == "0.0.0.0" and args.port == 8000
    else:
        assert args.engine == "espeak"


def test_healthcheck_port_matches_the_api_port() -> None:
    api = _services()["api"]
    port = build_parser().parse_args(api["command"][1:]).port
    assert f"127.0.0.1:{port}/healthz" in " ".join(api["healthcheck"]["test"])
    assert api["ports"] == [f"{port}:{port}"]
