"""The Grafana dashboard queries only metrics voxline exports, and shows every one of them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

import voxline.shared.metrics  # noqa: F401  (registers the metrics)

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "voxline.json"
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
}
# Identifiers in PromQL that name series; functions, keywords and labels are not voxline_*.
SERIES = re.compile(r"\bvoxline_[a-z0-9_]+\b")


def exported() -> dict[str, str]:
    """Series name -> metric family, for every voxline metric on the default registry."""
    names: dict[str, str] = {}
    for family in REGISTRY.collect():
        if family.name.startswith("voxline_"):
            for suffix in SUFFIXES[family.type]:
                names[family.name + suffix] = family.name
    return names


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.extend(panel.get("panels", []) if panel["type"] == "row" else [panel])
    return found


def test_dashboard_shape(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]


def test_every_query_names_an_exported_metric(dashboard: dict[str, Any]) -> None:
    names = exported()
    for panel in panels(dashboard):
        for target in panel["targets"]:
            used = SERIES.findall(target["expr"])
            assert used, f"{panel['title']!r}: {target['expr']} queries no voxline metric"
            unknown = set(used) - names.keys()
            assert not unknown, f"{panel['title']!r} queries {unknown}, not in shared.metrics"


def test_every_metric_is_on_the_dashboard(dashboard: dict[str, Any]) -> None:
    names = exported()
    shown = {
        names[series]
        for panel in panels(dashboard)
        for target in panel["targets"]
        for series in SERIES.findall(target["expr"])
        if series in names
    }
    assert set(names.values()) - shown == set()
