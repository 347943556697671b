"""Issue 27 (6): the Argo CD health checks in examples/argocd/argocd-cm-health.yaml, run under Lua 5.1 (Argo CD
evaluates them with gopher-lua, a Lua 5.1) against ConnectedAccounts and connections recorded from the real API
server by tests/system.rs (`metrics_have_the_documented_names_types_and_labels`)."""

import copy
import json
import os
from pathlib import Path

import pytest
import yaml
from lupa import lua51

ROOT = Path(__file__).resolve().parents[2]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
OBJECTS = TARGET / "tmp" / "objects"
PREFIX = "resource.customizations.health.pipedream-secrets.io_"


def checks():
    data = yaml.safe_load((ROOT / "examples" / "argocd" / "argocd-cm-health.yaml").read_text())["data"]
    return {key[len(PREFIX):]: script for key, script in data.items()}


def health(kind, obj):
    """What Argo CD shows for `obj`: the script runs with the object as the global `obj`."""
    lua = lua51.LuaRuntime()
    lua.globals().obj = lua.table_from(obj, recursive=True)
    hs = lua.execute(checks()[kind])
    return hs["status"], hs["message"]


def recorded(name):
    path = OBJECTS / f"{name}.json"
    assert path.exists(), "no objects recorded: run `cargo test --test system` first (the README's test command does)"
    return json.loads(path.read_text())


def test_every_kind_has_a_health_check():
    assert set(checks()) == {"ConnectedAccount", "PipedreamConnection", "ClusterPipedreamConnection"}


@pytest.mark.parametrize("name,kind,status,needle", [
    ("connectedaccount-synced", "ConnectedAccount", "Healthy", "SecretSynced"),
    ("connectedaccount-failing", "ConnectedAccount", "Degraded", "AccountNotFound"),
    ("clusterpipedreamconnection-ready", "ClusterPipedreamConnection", "Healthy", ""),
    ("clusterpipedreamconnection-failing", "ClusterPipedreamConnection", "Degraded", "absent"),
])
def test_recorded_objects_get_the_health_their_ready_condition_says(name, kind, status, needle):
    obj = recorded(name)
    got, message = health(kind, obj)
    assert got == status, (got, message)
    assert needle in message, message
    ready = [c for c in obj["status"]["conditions"] if c["type"] == "Ready"][0]
    assert ready["reason"] in message


def test_an_object_the_operator_has_not_reached_is_progressing():
    synced = recorded("connectedaccount-synced")
    fresh = {k: v for k, v in synced.items() if k != "status"}
    assert health("ConnectedAccount", fresh) == ("Progressing", "Waiting for the operator")
    edited = copy.deepcopy(synced)
    edited["metadata"]["generation"] = synced["status"]["observedGeneration"] + 1
    status, message = health("ConnectedAccount", edited)
    assert status == "Progressing" and str(edited["metadata"]["generation"]) in message


def test_pods_at_risk_stays_healthy_and_says_so():
    obj = copy.deepcopy(recorded("connectedaccount-synced"))
    obj["status"]["conditions"].append({"type": "PodsAtRisk", "status": "True", "reason": "RefreshTooLate",
                                        "message": "Pipedream refreshes 30s before expiry"})
    status, message = health("ConnectedAccount", obj)
    assert status == "Healthy" and "PodsAtRisk: Pipedream refreshes 30s" in message
