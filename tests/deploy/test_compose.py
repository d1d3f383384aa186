"""compose.yaml (and the CPU override): valid Compose files whose commands, healthchecks, GPU
reservation, Redis persistence and grace periods fit what the processes do."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.deploy.common import (
    MIN_MARGIN_S,
    ROOT,
    seconds,
    setting_env_names,
    settings_from,
)
from voxline.cli import build_parser

COMPOSE = ROOT / "compose.yaml"
CPU_OVERRIDE = ROOT / "compose.cpu.yaml"


class _Reset:
    """Compose's `!reset` tag: the merge removes the attribute it is set on."""


class _ComposeLoader(yaml.SafeLoader):
    pass


# Compose's merge tags; a plain YAML loader (and check-jsonschema) refuses them.
_ComposeLoader.add_constructor("!reset", lambda loader, node: _Reset())
_ComposeLoader.add_constructor(
    "!override", lambda loader, node: loader.construct_object(node, deep=True)
)


def _load(path: Path) -> dict:
    return yaml.load(path.read_text(), Loader=_ComposeLoader)  # a SafeLoader subclass


def _services() -> dict:
    return _load(COMPOSE)["services"]


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


def _compose_schema() -> dict:
    vendored = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(vendored.read_text())


def _without_resets(node: object) -> object:
    """The override file as the schema sees it: a reset attribute is simply absent."""
    if isinstance(node, dict):
        return {k: _without_resets(v) for k, v in node.items() if not isinstance(v, _Reset)}
    if isinstance(node, list):
        return [_without_resets(v) for v in node]
    return node


def _merge(base: object, override: object) -> object:
    """Compose's merge, as far as these files use it: mappings merge, `!reset` removes."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            if isinstance(value, _Reset):
                merged.pop(key, None)
            else:
                merged[key] = _merge(base.get(key), value) if key in base else value
        return merged
    return override


def _command_args(service: str) -> object:
    command = _services()[service]["command"]
    assert command[0] == "voxline"
    return build_parser().parse_args(command[1:])


def test_compose_file_matches_the_compose_specification() -> None:
    result = _check(COMPOSE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_broken_compose_file_is_caught(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text("services:\n  api:\n    ports: 8000\n    healthcheck: yes\n")
    result = _check(broken)
    assert result.returncode != 0


def test_cpu_override_matches_the_compose_specification() -> None:
    # check-jsonschema cannot parse `!reset`, so the same vendored schema is applied here.
    jsonschema.validate(_without_resets(_load(CPU_OVERRIDE)), _compose_schema())
    broken = {"services": {"worker": {"deploy": {"resources": {"reservations": {"devices": 1}}}}}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, _compose_schema())


def test_cpu_override_drops_the_gpu_reservation_and_nothing_else() -> None:
    base = _load(COMPOSE)
    merged = _merge(base, _load(CPU_OVERRIDE))
    assert isinstance(merged, dict)
    assert "devices" not in merged["services"]["worker"]["deploy"]["resources"]["reservations"]
    expected = copy.deepcopy(base)
    del expected["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert merged == expected
    jsonschema.validate(merged, _compose_schema())


def test_services_and_healthchecks() -> None:
    services = _services()
    assert set(services) == {"redis", "api", "worker", "arq", "worker-kokoro"}
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
    # The neural CPU voice is opt-in: `docker compose up` alone runs the model-free stack.
    assert services["worker-kokoro"]["profiles"] == ["kokoro"]
    for name in ("worker", "arq", "worker-kokoro"):
        service = services[name]
        assert "container_name" not in service and "ports" not in service, f"{name} must scale"


def test_the_start_cannot_deadlock_on_readyz() -> None:
    # /readyz is 503 until a worker heartbeats: nothing may wait for the api to be healthy, and
    # the workers need only Redis.
    services = _services()
    for name, service in services.items():
        assert "api" not in service.get("depends_on", {}), name
    for name in ("api", "worker", "arq"):
        assert services[name]["depends_on"] == {"redis": {"condition": "service_healthy"}}


def test_api_healthcheck_probes_readyz_on_its_port() -> None:
    api = _services()["api"]
    port = _command_args("api").port
    check = " ".join(api["healthcheck"]["test"])
    assert f"http://127.0.0.1:{port}/readyz" in check
    assert api["ports"] == [f"{port}:{port}"]
    # /readyz waits for a worker, which may first load a model.
    assert seconds(api["healthcheck"]["start_period"]) >= 60


def test_worker_healthcheck_reads_the_heartbeat_file_it_is_told_to_touch() -> None:
    worker = _services()["worker"]
    args = _command_args("worker")
    assert args.heartbeat_file
    assert f"'{args.heartbeat_file}'" in " ".join(worker["healthcheck"]["test"])


def test_the_kokoro_worker_runs_kokoro_from_its_own_image() -> None:
    args = _command_args("worker-kokoro")
    assert args.command == "worker" and args.engine == "kokoro" and args.heartbeat_file
    service = _services()["worker-kokoro"]
    assert f"'{args.heartbeat_file}'" in " ".join(service["healthcheck"]["test"])
    assert service["build"]["target"] == "worker-kokoro"
    assert seconds(service["stop_grace_period"]) >= settings_from({}).drain_timeout + MIN_MARGIN_S


@pytest.mark.parametrize("service", ["api", "worker", "arq"])
def test_commands_parse_with_the_cli(service: str) -> None:
    args = _command_args(service)
    assert args.command == service
    if service == "api":
        assert args.host == "0.0.0.0" and args.port == 8000
    elif service == "worker":
        assert args.engine == "espeak", "the stack must run without a model"
        assert args.metrics_port == 9400


def test_settings_come_from_real_voxline_variables() -> None:
    services = _services()
    env = services["api"]["environment"]
    for name in ("worker", "arq"):
        assert services[name]["environment"] == env, "front ends, workers and arq must agree"
    assert set(env) <= setting_env_names(), set(env) - setting_env_names()
    settings = settings_from(env)
    assert settings.redis_url == "redis://redis:6379/0"


def test_worker_reserves_a_gpu() -> None:
    reservations = _services()["worker"]["deploy"]["resources"]["reservations"]
    (device,) = reservations["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert device.get("count") == "all" or int(device["count"]) >= 1


def test_redis_persists_and_never_evicts() -> None:
    compose = _load(COMPOSE)
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    options = dict(zip(command[1::2], command[2::2], strict=True))
    assert options["--appendonly"] == "yes"
    assert options["--appendfsync"] == "everysec"
    # Evicting a stream entry or a lease would lose work silently.
    assert options["--maxmemory-policy"] == "noeviction"
    assert redis["image"].startswith("redis:7"), "consumer-group lag and sharded pub/sub"
    (volume,) = redis["volumes"]
    name, path = volume.split(":")
    assert path == "/data" and name in compose["volumes"], "a named volume"


def test_stop_grace_periods_outlast_drain_and_shutdown() -> None:
    services = _services()
    settings = settings_from(services["api"]["environment"])
    for name, waits in (("api", settings.shutdown_grace), ("worker", settings.drain_timeout)):
        grace = seconds(services[name]["stop_grace_period"])
        assert grace >= waits + MIN_MARGIN_S, name
    # The defaults too, should the environment lines go.
    default = settings_from({})
    assert seconds(services["api"]["stop_grace_period"]) >= default.shutdown_grace + MIN_MARGIN_S
    assert seconds(services["worker"]["stop_grace_period"]) >= default.drain_timeout + MIN_MARGIN_S


def test_builds_name_dockerfile_stages() -> None:
    stages = {
        line.split()[-1]
        for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("FROM ") and " AS " in line
    }
    for name in ("api", "worker", "arq"):
        build = _services()[name]["build"]
        assert build["context"] == "." and build["target"] in stages, name


def test_arq_runs_without_torch_and_shares_the_batch_files_with_the_api() -> None:
    compose = _load(COMPOSE)
    services = compose["services"]
    # It splits, assembles and encodes; the workers synthesize.
    assert services["arq"]["build"]["target"] == "api"
    directory = settings_from(services["api"]["environment"]).batch_dir
    assert directory.startswith("/")
    mounts = {}
    for name in ("api", "arq"):
        (volume,) = services[name]["volumes"]
        source, target = volume.split(":")
        assert target == directory, name
        mounts[name] = source
    assert mounts["api"] == mounts["arq"] and mounts["api"] in compose["volumes"], "one volume"
    # The image owns the directory, so the volume starts out writable by its user.
    assert f"-o voxline -g voxline {directory}" in (ROOT / "Dockerfile").read_text()
    assert seconds(services["arq"]["stop_grace_period"]) >= MIN_MARGIN_S
