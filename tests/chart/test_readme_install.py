"""Issue 27: the README's install path, followed literally on a real control plane with a node.

The README's own shell blocks (install with the OAuth default connection, `helm test`, the worked example) run
unchanged through bash, with `kubectl` and `helm` (the real Helm v4 engine behind `tests/chart/helm_cli.py`) on
PATH. What differs from a cluster, and only that:
- the image: `PDSO_HELM_SET` points `image.repository`/`image.tag` at a local build, and the hollow node's fake
  runtime starts no process, so `PodRunner` is that image's runtime: for each pod of it the node runs, it starts
  the binary of this checkout with the container's args and env, authenticated as the pod's ServiceAccount with a
  token bound to the pod (what the kubelet projects), and records a pod that ends (`restartPolicy: Never`, as
  `helm test` pods) as Succeeded or Failed by the exit code, as a kubelet would;
- the network: the node has no route to Pipedream, so the pods' egress goes through a proxy that sends
  `api.pipedream.com:443` to the fake Pipedream behind TLS under a CA of the test's (`HTTPS_PROXY`,
  `PIPEDREAM_CA_FILE` in the runner's environment). The connection is the README's, with the real API URL.
"""

import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from kit import ROOT, TARGET, ControlPlane, free_port, kubectl, kubectl_result, wait_http, wait_ready

BINARY = TARGET / "debug" / "pipedream-secrets-operator"
IMAGE = "localhost/pipedream-secrets-operator:dev"


def readme_section(heading):
    text = (ROOT / "README.md").read_text()
    start = text.index(f"\n{heading}\n")
    level = heading.split(" ")[0]
    end = text.find(f"\n{level} ", start + len(heading) + 2)
    return text[start:end if end >= 0 else None]


def sh_blocks(text):
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def one(blocks, marker):
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"the README has {len(found)} install blocks with {marker!r}"
    return found[0]


class PodRunner:
    """The container runtime for `IMAGE` on the hollow nodes (see the module's docstring)."""

    def __init__(self, cp, env, tmp):
        self.cp, self.env, self.tmp = cp, env, tmp
        self.admin = cp.kubeconfig("admin")
        self.roots = {n["name"]: Path(n["root"]) for n in cp.info["nodes"]}
        self.running = {}  # pod uid → (pod, process, log path)
        self.logs_of = {}  # pod uid → log path
        self.ended = {}  # pod uid → exit code
        self.stop = threading.Event()
        self.errors = []
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self):
        while not self.stop.is_set():
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 — reported by the test, not lost in a thread
                self.errors.append(repr(e))
            time.sleep(0.3)

    def step(self):
        pods = json.loads(kubectl(self.admin, "get", "pods", "-A", "-o", "json"))["items"]
        # A pod being deleted has its containers stopped before the object goes, as a kubelet does.
        live = {p["metadata"]["uid"] for p in pods if not p["metadata"].get("deletionTimestamp")}
        for pod in pods:
            uid = pod["metadata"]["uid"]
            if uid in self.running or uid in self.ended or uid not in live:
                continue
            containers = pod["spec"]["containers"]
            if pod.get("status", {}).get("phase") != "Running" or containers[0]["image"] != IMAGE:
                continue
            assert len(containers) == 1, "one container per pod of the operator's image"
            self.start(pod, containers[0])
        for uid, (pod, proc, _) in list(self.running.items()):
            if uid not in live:
                proc.terminate()
                proc.wait(timeout=10)
                del self.running[uid]
            elif pod["spec"].get("restartPolicy") == "Never" and proc.poll() is not None:
                del self.running[uid]
                self.ended[uid] = proc.returncode
                with open(self.logs_of[uid], "a") as f:
                    f.write(f"[exit {proc.returncode}]\n")
        # A kubelet keeps reporting how a container ended. This node's own status sync knows nothing of these
        # processes and can write an ended pod back as Running (a Job then waits out its deadline: seen as a
        # failed `helm uninstall` hook), so the ended phase is written again until the pod shows it.
        for pod in pods:
            uid = pod["metadata"]["uid"]
            if uid not in self.ended or uid not in live:
                continue
            phase = "Succeeded" if self.ended[uid] == 0 else "Failed"
            if pod.get("status", {}).get("phase") != phase:
                kubectl(self.admin, "-n", pod["metadata"]["namespace"], "patch", "pod", pod["metadata"]["name"],
                        "--subresource=status", "--type=merge", "-p", json.dumps({"status": {"phase": phase}}))

    def start(self, pod, container):
        meta = pod["metadata"]
        name = f"{meta['namespace']}.{meta['name']}"
        # The token the kubelet would project into the pod: the pod's ServiceAccount's, bound to the pod, from
        # the TokenRequest API (this control plane runs without the ServiceAccount admission plugin, which adds
        # the kube-api-access volume).
        assert pod["spec"].get("automountServiceAccountToken", True), "the chart's pods use their token"
        token = kubectl(self.admin, "-n", meta["namespace"], "create", "token", pod["spec"]["serviceAccountName"],
                        "--bound-object-kind=Pod", f"--bound-object-name={meta['name']}",
                        f"--bound-object-uid={meta['uid']}", "--duration=2h").strip()
        (self.tmp / f"{name}.token").write_text(token)
        config = yaml.safe_load(self.admin.read_text())
        config["users"] = [{"name": "pod", "user": {"tokenFile": str(self.tmp / f"{name}.token")}}]
        config["contexts"][0]["context"].update(user="pod", namespace=meta["namespace"])
        kubeconfig = self.tmp / f"{name}.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(config))
        env = {"PATH": os.environ["PATH"], "KUBECONFIG": str(kubeconfig), **self.env}
        fields = {"metadata.name": meta["name"], "metadata.namespace": meta["namespace"]}
        for e in container.get("env", []):
            env[e["name"]] = e["value"] if "value" in e else fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
        assert "command" not in container, "the image's entrypoint is the binary"
        # Each pod has its own network namespace; here they share loopback, so listeners move to free ports.
        args = [a for a in container.get("args", []) if not a.startswith(("--metrics-addr", "--health-addr"))]
        if args and args[0] == "run":
            args += [f"--metrics-addr=127.0.0.1:{free_port()}", f"--health-addr=127.0.0.1:{free_port()}"]
        log = self.tmp / f"{name}.log"
        with open(log, "w") as out:
            proc = subprocess.Popen([str(BINARY), *args], env=env, stdout=out, stderr=subprocess.STDOUT)
        self.running[meta["uid"]] = (pod, proc, log)
        self.logs_of[meta["uid"]] = log

    def logs(self):
        return "\n".join(f"--- {p.name}\n{p.read_text()[-4000:]}" for p in sorted(self.tmp.glob("*.log")))

    def close(self):
        self.stop.set()
        self.thread.join(timeout=10)
        for _, proc, _ in self.running.values():
            proc.terminate()
            proc.wait(timeout=10)


def test_the_readme_install_path_gives_a_ready_connected_account_and_helm_test_passes(tmp_path):
    install = sh_blocks(readme_section("## Install"))
    oauth_install = one(install, "defaultConnection.oauth.clientId")
    helm_test = one(install, "helm test")
    worked_example = one(install, "examples/connectedaccount-oauth.yaml")
    # What the README's placeholders name, as the fake Pipedream's one client, project and account.
    client = re.search(r"oauth\.clientId=(\S+)", oauth_install).group(1)
    project = re.search(r"oauth\.projectId=(\S+)", oauth_install).group(1)
    client_secret = re.search(r"client_secret=(\S+)", oauth_install).group(1)
    example = yaml.safe_load((ROOT / "examples" / "connectedaccount-oauth.yaml").read_text())
    account = example["spec"]["accountId"]
    seed = {"clients": {client: client_secret},
            "accounts": [{"id": account, "project_id": project, "external_id": "readme-user", "app": "github",
                          "credentials": {"oauth_access_token": "gho-readme"}, "lifetime_secs": 3600}]}
    (tmp_path / "seed.json").write_text(json.dumps(seed))

    cp = ControlPlane(tmp_path / "cp", "--nodes", "1", "--no-crds", "--sync-frequency-secs", "5")
    pd_port, proxy_port = free_port(), free_port()
    ca = tmp_path / "egress-ca.pem"
    fake = subprocess.Popen([str(TARGET / "debug" / "fake-pipedream"), "--listen", f"127.0.0.1:{pd_port}",
                             "--accounts", str(tmp_path / "seed.json"), "--as-host", "api.pipedream.com",
                             "--proxy-listen", f"127.0.0.1:{proxy_port}", "--ca-out", str(ca)],
                            stdout=subprocess.DEVNULL)
    runs = tmp_path / "pods"
    runs.mkdir()
    runner = PodRunner(cp, {"HTTPS_PROXY": f"http://127.0.0.1:{proxy_port}", "NO_PROXY": "127.0.0.1,localhost",
                            "PIPEDREAM_CA_FILE": str(ca)}, runs)
    shims = tmp_path / "bin"
    shims.mkdir()
    helm_shim = shims / "helm"
    helm_shim.write_text(f"#!/bin/sh\nexec '{ROOT / '.venv' / 'bin' / 'python'}' "
                         f"'{ROOT / 'tests' / 'chart' / 'helm_cli.py'}' \"$@\"\n")
    helm_shim.chmod(0o755)
    repository, tag = IMAGE.rsplit(":", 1)
    env = {**os.environ, "KUBECONFIG": str(cp.kubeconfig("admin")), "PATH": f"{shims}:{os.environ['PATH']}",
           "PDSO_HELM_SET": f"image.repository={repository},image.tag={tag}"}

    def sh(block):
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=ROOT, env=env, capture_output=True,
                             text=True, timeout=600)
        assert out.returncode == 0, f"{block}\n{out.stdout}{out.stderr}\n{runner.logs()}"
        return out.stdout

    try:
        wait_http(f"http://127.0.0.1:{pd_port}/_fake/stats")
        sh(oauth_install)
        sh(worked_example)
        admin = cp.kubeconfig("admin")
        ready = wait_ready(admin, "team-a", "github-bot", seconds=120)
        assert ready and ready["status"] == "True", \
            f"{ready}\n{runner.errors}\n{kubectl(admin, 'get', 'pods', '-A', '-o', 'wide')}\n{runner.logs()}"
        assert not runner.errors, runner.errors
        secret = json.loads(kubectl(admin, "-n", "team-a", "get", "secret", "github-bot-credentials", "-o", "json"))
        assert set(secret["data"]) >= {"GITHUB_TOKEN"}
        # The worked example's pod reads the token from its mounted file on the node.
        token = None
        for _ in range(300):
            pods = json.loads(kubectl(admin, "-n", "team-a", "get", "pods", "-o", "json"))["items"]
            running = [p for p in pods if p.get("status", {}).get("phase") == "Running"]
            if running:
                pod = running[0]
                vol = next(v["name"] for v in pod["spec"]["volumes"]
                           if v.get("secret", {}).get("secretName") == "github-bot-credentials")
                path = (runner.roots[pod["spec"]["nodeName"]] / "pods" / pod["metadata"]["uid"] / "volumes"
                        / "kubernetes.io~secret" / vol / "GITHUB_TOKEN")
                if path.exists():
                    token = path.read_text()
                    break
            time.sleep(0.2)
        assert token is not None and token.startswith("gho-readme"), token
        # The operator ran from the chart's Deployment, through the proxy, to "api.pipedream.com".
        operator_pods = json.loads(kubectl(admin, "-n", "pipedream-secrets-operator", "get", "pods", "-o", "json"))
        images = {p["spec"]["containers"][0]["image"] for p in operator_pods["items"]}
        assert images == {IMAGE}, images
        # `helm test`: its pod waits for the default connection Ready and authenticates with it.
        out = sh(helm_test)
        assert "STATUS: deployed" in out, out
        assert list(runner.ended.values()) == [0], (runner.ended, runner.logs())
        check_log = next(runs.glob("pipedream-secrets-operator.*-test.log")).read_text()
        assert re.search(r"^connection +ClusterPipedreamConnection/default \(https://api\.pipedream\.com", check_log,
                         re.M), check_log
        assert re.search(r"^auth +ok$", check_log, re.M), check_log
        # `helm upgrade` adopts the connection the install made as a hook (same object, no flap for its accounts).
        uid = json.loads(kubectl(admin, "get", "clusterpipedreamconnection", "default", "-o", "json"))["metadata"]["uid"]
        sh(one(install, "helm upgrade"))
        after = json.loads(kubectl(admin, "get", "clusterpipedreamconnection", "default", "-o", "json"))
        assert after["metadata"]["uid"] == uid
        # `helm uninstall`: the pre-delete Job stops the operator, lets the ConnectedAccount go and deletes the
        # default connection (Helm would not, had no upgrade adopted it); the synced Secret stays.
        sh(one(install, "helm uninstall"))
        kubectl(admin, "-n", "team-a", "get", "connectedaccount", "github-bot")
        job_log = next(runs.glob("pipedream-secrets-operator.*-uninstall-*.log")).read_text()
        assert "clusterpipedreamconnection default: deleted" in job_log, job_log
        gone = kubectl_result(admin, "get", "clusterpipedreamconnection", "default")
        assert gone.returncode != 0 and "NotFound" in gone.stderr, gone.stdout + gone.stderr
        kubectl(admin, "-n", "team-a", "get", "secret", "github-bot-credentials")
        # Installed again (the README's helm line; the CRDs stayed, so the connection is an ordinary object of the
        # release now), `helm test` passes again, and uninstalled again nothing is left behind.
        sh(oauth_install[oauth_install.index("helm install"):])
        conn = json.loads(kubectl(admin, "get", "clusterpipedreamconnection", "default", "-o", "json"))
        assert "helm.sh/hook" not in conn["metadata"].get("annotations", {})
        sh(helm_test)
        sh(one(install, "helm uninstall"))
        gone = kubectl_result(admin, "get", "clusterpipedreamconnection", "default")
        assert gone.returncode != 0 and "NotFound" in gone.stderr, gone.stdout + gone.stderr
        assert list(runner.ended.values()) == [0, 0, 0, 0], (runner.ended, runner.logs())
        # Every request of the chart's ServiceAccounts was allowed by the real authorizer.
        refused = [(e["user"].get("username", ""), e["verb"], e.get("objectRef")) for e in cp.audit()
                   if e["user"].get("username", "").startswith("system:serviceaccount:pipedream-secrets-operator:")
                   and e.get("responseStatus", {}).get("code") == 403]
        assert not refused, refused
        assert not runner.errors, runner.errors
    finally:
        runner.close()
        fake.terminate()
        fake.wait(timeout=10)
        cp.stop()
