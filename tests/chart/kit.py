"""What the chart tests share: paths, the test kit's control plane, kubectl."""

import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "pipedream-secrets-operator"
# Where cargo builds (run.sh builds the control plane, the fake Pipedream and the operator there).
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url):
    for _ in range(200):
        try:
            urllib.request.urlopen(url)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"{url} never answered")


class ControlPlane:
    """The test kit's `control-plane` binary: etcd, kube-apiserver and kube-controller-manager on loopback."""

    def __init__(self, tmp, *args):
        self.proc = subprocess.Popen([str(TARGET / "debug" / "control-plane"), "--kubeconfig-dir", str(tmp), *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            code = self.proc.wait(timeout=60)
            err = self.proc.stderr.read()
            if code == 77:
                pytest.skip(err.strip())
            pytest.fail(f"control-plane exited {code}: {err}")
        self.info = json.loads(line)
        self.url = self.info["url"]

    def kubeconfig(self, user):
        return Path(self.info["kubeconfigs"][user])

    def kubeconfig_for_token(self, path, token, namespace=None):
        """A kubeconfig like the administrator's, with another bearer token."""
        config = yaml.safe_load(self.kubeconfig("admin").read_text())
        config["users"][0]["user"]["token"] = token
        if namespace:
            config["contexts"][0]["context"]["namespace"] = namespace
        path.write_text(yaml.safe_dump(config))
        return path

    def audit(self):
        """Every audited request (everyone but the administrator and the control plane's own)."""
        text = Path(self.info["audit_log"]).read_text()
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    def stop(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def kubectl(kc, *args, stdin=None):
    out = subprocess.run([os.environ.get("KUBECTL", "kubectl"), "--kubeconfig", str(kc), *args],
                         input=stdin, capture_output=True, text=True)
    assert out.returncode == 0, f"kubectl {' '.join(args)}: {out.stdout}{out.stderr}"
    return out.stdout


def kubectl_result(kc, *args):
    """kubectl without asserting success, for the refusals and absences a test expects."""
    return subprocess.run([os.environ.get("KUBECTL", "kubectl"), "--kubeconfig", str(kc), *args],
                          capture_output=True, text=True)


def wait_ready(kc, namespace, name, seconds=60):
    """The ConnectedAccount's Ready condition once it is True, or the last one seen after `seconds`."""
    ready = None
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        ca = json.loads(kubectl(kc, "-n", namespace, "get", "connectedaccount", name, "-o", "json"))
        ready = next((c for c in ca.get("status", {}).get("conditions", []) if c["type"] == "Ready"), None)
        if ready and ready["status"] == "True":
            break
        time.sleep(0.1)
    return ready
