"""deploy/k8s/: every manifest valid against the Kubernetes schemas (strict: unknown fields are
errors), the KEDA ScaledObject against KEDA's CRD schema, and the semantics that matter: probes,
grace periods, the GPU, and KEDA watching exactly the streams the workers read."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.common import MIN_MARGIN_S, ROOT, setting_env_names, settings_from
from voxline.cli import build_parser
from voxline.shared.keys import JOBS_GROUP, Keys

K8S = ROOT / "deploy" / "k8s"
KEDA_SCHEMA = Path(__file__).parent / "schemas" / "keda-scaledobject-v1alpha1.yaml"
# The oldest release the manifests target, and the newest kubernetes-validate ships.
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]


def _kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def _documents() -> list[dict]:
    return [
        doc
        for name in _kustomization()["resources"]
        for doc in yaml.safe_load_all((K8S / name).read_text())
        if doc
    ]


def _one(kind: str, name: str) -> dict:
    (doc,) = [d for d in _documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _container(deployment: str) -> dict:
    (container,) = _one("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return container


def _config() -> dict[str, str]:
    return _one("ConfigMap", "voxline-config")["data"]


def _scaled_object() -> dict:
    return _one("ScaledObject", "voxline-worker")


def _validate_k8s(doc: dict, version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def _strict(schema: object) -> object:
    """A CRD schema as the API server applies it to `kubectl apply`: a field the schema does not
    declare is an error (strict field validation), not silently pruned."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _validate_scaled_object(doc: dict) -> None:
    jsonschema.validate(doc, _strict(yaml.safe_load(KEDA_SCHEMA.read_text())))
    assert doc["apiVersion"] == "keda.sh/v1alpha1" and doc["kind"] == "ScaledObject"
    # metadata is a plain object in the CRD; the API server checks it as an ObjectMeta.
    holder = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": doc["metadata"]}
    _validate_k8s(holder, K8S_VERSIONS[-1])


def _probe_commands(container: dict) -> Iterator[tuple[str, dict]]:
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        if kind in container:
            yield kind, container[kind]


# --- schemas -------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    listed = set(_kustomization()["resources"])
    present = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_match_the_kubernetes_schema(version: str) -> None:
    checked = 0
    for doc in _documents():
        if doc["kind"] == "ScaledObject":
            continue
        _validate_k8s(doc, version)
        checked += 1
    assert checked >= 10


def _misspelt_field(doc: dict) -> None:
    doc["spec"]["replica"] = doc["spec"].pop("replicas")


def _port_as_name(doc: dict) -> None:
    doc["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"


def _no_containers(doc: dict) -> None:
    del doc["spec"]["template"]["spec"]["containers"]


@pytest.mark.parametrize("breakage", [_misspelt_field, _port_as_name, _no_containers])
def test_a_broken_manifest_is_caught(breakage) -> None:  # type: ignore[no-untyped-def]
    doc = copy.deepcopy(_one("Deployment", "voxline-api"))
    breakage(doc)
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate_k8s(doc, K8S_VERSIONS[0])


def test_manifests_name_no_namespace() -> None:
    for doc in _documents():
        assert "namespace" not in doc["metadata"], doc["metadata"]["name"]
    (namespace,) = [d for d in _documents() if d["kind"] == "Namespace"]
    assert namespace["metadata"]["name"] == _kustomization()["namespace"]


def test_scaled_object_matches_the_keda_crd() -> None:
    _validate_scaled_object(_scaled_object())


def _no_target(doc: dict) -> None:
    del doc["spec"]["scaleTargetRef"]


def _metadata_not_a_string(doc: dict) -> None:
    doc["spec"]["triggers"][0]["metadata"]["lagCount"] = 8


def _trigger_without_type(doc: dict) -> None:
    del doc["spec"]["triggers"][0]["type"]


def _unknown_field(doc: dict) -> None:
    doc["spec"]["triggers"][0]["lagcount"] = "8"


def _replicas_as_string(doc: dict) -> None:
    doc["spec"]["minReplicaCount"] = "1"


def _window_over_an_hour(doc: dict) -> None:
    behavior = doc["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    behavior["scaleDown"]["stabilizationWindowSeconds"] = 4000


def _label_not_a_string(doc: dict) -> None:
    doc["metadata"]["labels"]["replicas"] = 8


@pytest.mark.parametrize(
    "breakage",
    [
        _no_target,
        _metadata_not_a_string,
        _trigger_without_type,
        _unknown_field,
        _replicas_as_string,
        _window_over_an_hour,
        _label_not_a_string,
    ],
)
def test_a_broken_scaled_object_is_caught(breakage) -> None:  # type: ignore[no-untyped-def]
    doc = copy.deepcopy(_scaled_object())
    breakage(doc)
    with pytest.raises(jsonschema.ValidationError):
        _validate_scaled_object(doc)


# --- settings ------------------------------------------------------------------------------


def test_config_map_holds_real_settings() -> None:
    config = _config()
    assert set(config) <= setting_env_names(), set(config) - setting_env_names()
    settings_from(config)  # every value parses as its setting's type


def test_pods_load_the_config_map() -> None:
    for name in ("voxline-api", "voxline-worker"):
        sources = _container(name)["envFrom"]
        refs = [s["configMapRef"]["name"] for s in sources if "configMapRef" in s]
        assert refs == ["voxline-config"], name


# --- KEDA ----------------------------------------------------------------------------------


def test_keda_watches_exactly_the_jobs_streams() -> None:
    settings = settings_from(_config())
    streams = list(Keys(settings.key_prefix, settings.job_shards).job_streams)
    triggers = _scaled_object()["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"redis-streams"}
    lag = [t["metadata"] for t in triggers if "lagCount" in t["metadata"]]
    pending = [t["metadata"] for t in triggers if "pendingEntriesCount" in t["metadata"]]
    assert len(lag) + len(pending) == len(triggers)
    # One of each per stream: waiting work and work in flight (the formula adds them).
    assert sorted(m["stream"] for m in lag) == sorted(streams)
    assert sorted(m["stream"] for m in pending) == sorted(streams)
    for meta in lag + pending:
        assert meta["consumerGroup"] == JOBS_GROUP
        assert int(meta.get("lagCount") or meta["pendingEntriesCount"]) > 0


def test_the_formula_adds_every_trigger_once() -> None:
    spec = _scaled_object()["spec"]
    names = [t["name"] for t in spec["triggers"]]
    assert all(re.fullmatch(r"[a-z_][a-z0-9_]*", n) for n in names), "formula identifiers"
    modifiers = spec["advanced"]["scalingModifiers"]
    terms = [t.strip() for t in modifiers["formula"].split("+")]
    assert sorted(terms) == sorted(names)
    assert modifiers["metricType"] == "AverageValue" and int(modifiers["target"]) > 0


def test_keda_reaches_the_redis_service_by_its_full_name() -> None:
    service = _one("Service", "redis")
    (port,) = service["spec"]["ports"]
    # KEDA's operator runs in its own namespace: a short name would not resolve there.
    expected = f"redis.{_kustomization()['namespace']}.svc.cluster.local:{port['port']}"
    for trigger in _scaled_object()["spec"]["triggers"]:
        assert trigger["metadata"]["address"] == expected
    assert settings_from(_config()).redis_url == f"redis://redis:{port['port']}/0"


def test_keda_scales_the_worker_deployment() -> None:
    spec = _scaled_object()["spec"]
    worker = _one("Deployment", "voxline-worker")
    target = spec["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        worker["apiVersion"],
        worker["kind"],
        worker["metadata"]["name"],
    )
    # The ScaledObject owns the count: a replicas field would reset it on every apply.
    assert "replicas" not in worker["spec"]
    # Never zero: /readyz needs a live worker.
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    assert spec["cooldownPeriod"] > 0 and spec["pollingInterval"] > 0


# --- pods ----------------------------------------------------------------------------------


def test_api_probes_readyz_and_healthz_on_its_port() -> None:
    api = _one("Deployment", "voxline-api")
    assert api["spec"]["replicas"] >= 2
    container = _container("voxline-api")
    args = build_parser().parse_args(container["command"][1:])
    assert container["command"][0] == "voxline" and args.command == "api"
    (port,) = container["ports"]
    assert port["containerPort"] == args.port
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    annotations = api["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(args.port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_worker_probes_the_heartbeat_file_it_touches() -> None:
    worker = _one("Deployment", "voxline-worker")
    container = _container("voxline-worker")
    args = build_parser().parse_args(container["command"][1:])
    assert container["command"][0] == "voxline" and args.command == "worker"
    probes = dict(_probe_commands(container))
    assert set(probes) == {"startupProbe", "readinessProbe", "livenessProbe"}
    for kind, probe in probes.items():
        assert f"'{args.heartbeat_file}'" in " ".join(probe["exec"]["command"]), kind
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert str(Path(args.heartbeat_file).parent) in mounts, "a writable /tmp"
    (port,) = container["ports"]
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert port["containerPort"] == args.metrics_port == int(annotations["prometheus.io/port"])


def test_worker_runs_a_neural_engine_from_the_model_volume() -> None:
    container = _container("voxline-worker")
    args = build_parser().parse_args(container["command"][1:])
    assert args.engine == "pocket-tts"
    (models,) = [m for m in container["volumeMounts"] if args.model.startswith(m["mountPath"])]
    assert models["readOnly"] is True
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in container["env"]


def test_worker_requests_a_gpu() -> None:
    container = _container("voxline-worker")
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == 1
    tolerations = _one("Deployment", "voxline-worker")["spec"]["template"]["spec"]["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)


def test_grace_periods_outlast_drain_and_shutdown() -> None:
    defaults, configured = settings_from({}), settings_from(_config())
    api = _one("Deployment", "voxline-api")["spec"]["template"]["spec"]
    sleep_command = _container("voxline-api")["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep_command[0] == "sleep"
    sleep = int(sleep_command[1])
    for settings in (defaults, configured):
        needed = sleep + settings.shutdown_grace + MIN_MARGIN_S
        assert api["terminationGracePeriodSeconds"] >= needed
    worker = _one("Deployment", "voxline-worker")["spec"]["template"]["spec"]
    for settings in (defaults, configured):
        assert worker["terminationGracePeriodSeconds"] >= settings.drain_timeout + MIN_MARGIN_S


def test_every_container_has_resources_and_runs_unprivileged() -> None:
    for doc in _documents():
        template = doc.get("spec", {}).get("template")
        if template is None:
            continue
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, doc["metadata"]["name"]
        for container in pod["containers"]:
            resources = container["resources"]
            assert "memory" in resources["limits"] and resources["requests"], container["name"]
            assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_services_and_budgets_select_their_pods() -> None:
    templates = [d["spec"]["template"] for d in _documents() if "template" in d.get("spec", {})]

    def selects(selector: dict[str, str]) -> list[dict]:
        return [t for t in templates if selector.items() <= t["metadata"]["labels"].items()]

    for doc in _documents():
        if doc["kind"] == "Service":
            (pod,) = selects(doc["spec"]["selector"])
            names = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
            for port in doc["spec"]["ports"]:
                assert port["targetPort"] in names, doc["metadata"]["name"]
        elif doc["kind"] in {"PodDisruptionBudget", "NetworkPolicy", "Deployment", "StatefulSet"}:
            key = "podSelector" if doc["kind"] == "NetworkPolicy" else "selector"
            assert selects(doc["spec"][key]["matchLabels"]), doc["metadata"]["name"]


def test_redis_persists_and_never_evicts() -> None:
    (container,) = _one("StatefulSet", "redis")["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[0] == "redis-server"
    options = dict(zip(args[1::2], args[2::2], strict=True))
    assert options["--appendonly"] == "yes" and options["--appendfsync"] == "everysec"
    assert options["--maxmemory-policy"] == "noeviction"
    assert container["image"].startswith("redis:7")
    (mount,) = container["volumeMounts"]
    (claim,) = _one("StatefulSet", "redis")["spec"]["volumeClaimTemplates"]
    assert mount["mountPath"] == "/data" and mount["name"] == claim["metadata"]["name"]
