"""Chart tests with the real Helm v4 engine: lint, render seven value sets, strict Kubernetes schema validation,
every rendered object through a real API server's admission (server-side dry run), assertions on security, RBAC
and arguments, and a Helm-ordered install into the real control plane with the operator running as the chart's
ServiceAccount."""

import json
import re
import shutil
import os
import subprocess
import time
import urllib.request
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from kit import CHART, ROOT, TARGET, ControlPlane, free_port, kubectl, kubectl_result, wait_http, wait_ready

VALUES = Path(__file__).parent / "values"
K8S_VERSION = "1.33.0"
VALUE_SETS = ["default", "oauth", "apikey", "scoped", "ha", "sharded", "secure"]
OUR_GROUP = "pipedream-secrets.io"


def values(name):
    if name == "default":
        return {}
    return yaml.safe_load((VALUES / f"{name}.yaml").read_text())


def render(vals, namespace="pipedream-secrets-operator", release="pdso"):
    with helm.Chart.load(str(CHART)) as chart:
        files = chart.render(vals, name=release, namespace=namespace)
    docs = []
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            continue
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def by_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


@pytest.fixture(scope="module")
def control_plane(tmp_path_factory):
    """One real control plane for this module, with our CRDs installed."""
    cp = ControlPlane(tmp_path_factory.mktemp("control-plane"))
    yield cp
    cp.stop()


def test_lint_has_no_errors():
    result = helm.lint(str(CHART))
    assert result["errors"] == [], result
    assert all(m["severity"] < 2 for m in result["messages"]), result["messages"]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_values_match_the_schema(name):
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(values(name))


def test_a_parent_charts_global_values_are_accepted():
    # Issue 27 (5): the strict schema refused Helm's `global`, which every parent chart passes to its subcharts,
    # so the chart failed as a dependency of an umbrella chart.
    shared = {"global": {"imageRegistry": "registry.example.com", "imagePullSecrets": [{"name": "pull"}],
                         "anything": {"nested": True}}}
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(shared)
    assert render(shared) == render({}), "global changes nothing this chart renders"


def test_schema_rejects_bad_values():
    with helm.Chart.load(str(CHART)) as chart:
        for bad in [{"replicaCount": 0}, {"logging": {"format": "xml"}}, {"unknownKey": 1},
                    {"defaultConnection": {"oauth": {"projectId": "nope"}}}]:
            with pytest.raises(helm.HelmError):
                chart.validate_schema(bad)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_manifests_validate_strictly(name, control_plane):
    docs = render(values(name))
    assert docs
    admin = control_plane.kubeconfig("admin")
    for ns in sorted({d["metadata"]["namespace"] for d in docs if d["metadata"].get("namespace")}):
        kubectl(admin, "apply", "--server-side", "-f", "-",
                stdin=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
    for doc in docs:
        if not doc["apiVersion"].startswith("monitoring.coreos.com/"):
            # The real API server's admission: its schemas (strict field validation), our CRDs' schemas and CEL
            # rules; a dry run, so nothing is stored.
            kubectl(admin, "apply", "--server-side", "--force-conflicts", "--dry-run=server", "--validate=strict",
                    "-f", "-", stdin=json.dumps(doc))
        if doc["apiVersion"].startswith(OUR_GROUP + "/"):
            continue
        if doc["kind"] == "ServiceMonitor":
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            service_ports = [p["name"] for p in by_kind(docs, "Service")[0]["spec"]["ports"]]
            assert doc["spec"]["endpoints"][0]["port"] in service_ports
        elif doc["kind"] == "PrometheusRule":
            # No schema here for the Prometheus Operator's kinds; promtool checks the rules themselves.
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            assert doc["spec"]["groups"][0]["rules"]
        else:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_pod_is_hardened(name):
    dep = by_kind(render(values(name)), "Deployment")[0]
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    c = pod["containers"][0]
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["runAsUser"] != 0
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in c["env"] if "valueFrom" in e}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}


# Every (apiGroup, resource, verb) the operator's code uses, and why (see the chart's rbac templates).
USED = {
    (OUR_GROUP, "connectedaccounts"): {"list", "watch", "patch", "get"},  # patch: the finalizer; get: Merge writers
    (OUR_GROUP, "connectedaccounts/finalizers"): {"update"},  # blockOwnerDeletion on written Secrets
    (OUR_GROUP, "pipedreamconnections"): {"list", "watch"},
    (OUR_GROUP, "clusterpipedreamconnections"): {"list", "watch"},
    (OUR_GROUP, "connectedaccounts/status"): {"patch"},
    (OUR_GROUP, "pipedreamconnections/status"): {"patch"},
    (OUR_GROUP, "clusterpipedreamconnections/status"): {"patch"},
    ("", "secrets"): {"get", "list", "watch", "create", "patch"},
    ("", "namespaces"): {"get"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("coordination.k8s.io", "leases"): {"get", "list", "create", "update"},  # update: guarded by resourceVersion
    ("apps", "deployments"): {"patch"},
    ("apps", "statefulsets"): {"patch"},
    ("apps", "daemonsets"): {"patch"},
    ("authentication.k8s.io", "tokenreviews"): {"create"},  # metrics.secure: who scrapes
    ("authorization.k8s.io", "subjectaccessreviews"): {"create"},  # metrics.secure: may they get /metrics
}


def aggregated(role):
    """A ClusterRole for users (aggregated into view/edit/admin), not the operator's."""
    return any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in role["metadata"].get("labels", {}))


def for_scrapers(role):
    """The metrics-reader ClusterRole (non-resource URLs only): for Prometheus, not the operator."""
    return all("nonResourceURLs" in rule for rule in role["rules"])


def hook(doc):
    """A Helm hook (the pre-delete uninstall Job and its own RBAC): not the operator's."""
    return "helm.sh/hook" in doc["metadata"].get("annotations", {})


def grants(docs):
    out = set()
    docs = [d for d in docs if not hook(d)]
    for role in [r for r in by_kind(docs, "ClusterRole") if not aggregated(r) and not for_scrapers(r)] + by_kind(docs, "Role"):
        for rule in role["rules"]:
            for g in rule["apiGroups"]:
                for r in rule["resources"]:
                    for v in rule["verbs"]:
                        out.add((g, r, v, role["kind"], role["metadata"].get("namespace")))
    return out


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rbac_grants_only_what_the_code_uses(name):
    docs = render(values(name))
    for g, r, v, _, _ in grants(docs):
        assert "*" not in (g, r, v), "no wildcards"
        assert v in USED.get((g, r), set()), f"unused grant {v} on {g}/{r}"
    apps = {(g, r) for g, r, _, _, _ in grants(docs) if g == "apps"}
    assert bool(apps) == bool(values(name).get("rolloutRestarts", {}).get("enabled")), "apps only for rollout restarts"
    assert not any(r == "secrets" and v == "delete" for _, r, v, _, _ in grants(docs))


def test_scoped_install_renders_roles_only_in_watched_namespaces():
    docs = render(values("scoped"))
    assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
    docs = [d for d in docs if not hook(d)]
    namespaces = sorted(r["metadata"]["namespace"] for r in by_kind(docs, "Role") if "leader" not in r["metadata"]["name"])
    assert namespaces == ["team-a", "team-b"]
    assert not any(r == "clusterpipedreamconnections" for _, r, _, _, _ in grants(docs))
    args = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespaces=team-a,team-b" in args and "--disable-cluster-connections=true" in args
    assert not by_kind(docs, "CustomResourceDefinition"), "crds.install false"
    with pytest.raises(helm.HelmError):
        render({"rbac": {"scoped": True}})


def test_the_uninstall_hook_stops_the_operator_then_lets_every_connectedaccount_go():
    """Issue 27 (4): `helm uninstall` stranded `deletionPolicy: Retain` ConnectedAccounts on their finalizer. A
    pre-delete hook runs `uninstall` (tests/system.rs runs that command against the real API server): the Job
    scales the operator's Deployments (not itself) to zero, then removes the finalizer everywhere the operator
    watched, with RBAC for exactly that, all of it deleted once it succeeded."""
    for name, vals in [("default", {}), ("scoped", values("scoped")), ("sharded", values("sharded")),
                       ("oauth", values("oauth"))]:
        docs = [d for d in render(vals) if hook(d) and d["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"]
        assert docs, name
        for d in docs:
            ann = d["metadata"]["annotations"]
            assert ann["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
        job = by_kind(docs, "Job")[0]
        assert int(job["metadata"]["annotations"]["helm.sh/hook-weight"]) > max(
            int(d["metadata"]["annotations"]["helm.sh/hook-weight"]) for d in docs if d["kind"] != "Job"), "RBAC first"
        pod = job["spec"]["template"]
        args = pod["spec"]["containers"][0]["args"]
        assert args[0] == "uninstall"
        selector = [a for a in args if a.startswith("--operator-selector=")][0].split("=", 1)[1]
        wanted = dict(kv.split("=", 1) for kv in selector.split(",") if "!=" not in kv)
        operators = [d for d in render(vals) if d["kind"] == "Deployment"]
        for dep in operators:
            labels = dep["spec"]["template"]["metadata"]["labels"]
            assert all(labels.get(k) == v for k, v in wanted.items()), "the selector finds every operator Deployment"
        assert not all(pod["metadata"]["labels"].get(k) == v for k, v in wanted.items()), "but not the Job's own pod"
        if name == "scoped":
            assert "--namespaces=team-a,team-b" in args
            assert not by_kind(docs, "ClusterRole")
            assert sorted(r["metadata"]["namespace"] for r in by_kind(docs, "Role")) == \
                ["pipedream-secrets-operator", "team-a", "team-b"]
        else:
            assert "--all-namespaces" in args
        hook_grants = {(g, r, v) for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role")
                       for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
                       for v in rule["verbs"]}
        expected = {("apps", "deployments", "list"), ("apps", "deployments", "patch"),
                    ("", "pods", "list"), ("pipedream-secrets.io", "connectedaccounts", "list"),
                    ("pipedream-secrets.io", "connectedaccounts", "patch"),
                    ("", "secrets", "get"), ("", "secrets", "patch")}
        if name == "oauth":
            # The default connection, which Helm leaves behind when the install created it as a hook: that one.
            assert "--delete-cluster-connection=default" in args
            expected.add(("pipedream-secrets.io", "clusterpipedreamconnections", "delete"))
            rule = [r for role in by_kind(docs, "ClusterRole") for r in role["rules"]
                    if r["resources"] == ["clusterpipedreamconnections"]]
            assert [r["resourceNames"] for r in rule] == [["default"]]
        else:
            assert not [a for a in args if a.startswith("--delete-cluster-connection")]
        assert hook_grants == expected, hook_grants
    # Where the chart restricts the operator's network, the hook gets DNS and the API server only.
    policy = [d for d in by_kind(render(values("ha")), "NetworkPolicy")
              if hook(d) and d["metadata"]["annotations"]["helm.sh/hook"] == "pre-delete"][0]
    job_pod = [d for d in render(values("ha")) if hook(d) and d["kind"] == "Job"][0]["spec"]["template"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= job_pod["metadata"]["labels"].items()
    assert [r["ports"][0]["port"] for r in policy["spec"]["egress"]] == [53, 6443]
    assert "ingress" not in policy["spec"], "nothing reaches it"
    assert not [d for d in render({"uninstallHook": {"enabled": False}}) if hook(d)]


def test_helm_test_checks_the_default_connection_with_least_privilege():
    """Issue 27 (9): `helm test` runs `check --wait` on the default connection (test_readme_install.py runs it on a
    real cluster); its ServiceAccount may get that connection and its Secret, nothing else."""
    def tests(vals):
        return [d for d in render(vals) if hook(d) and d["metadata"]["annotations"]["helm.sh/hook"] == "test"]
    docs = tests(values("oauth"))
    pod = by_kind(docs, "Pod")[0]
    c = pod["spec"]["containers"][0]
    assert c["args"] == ["check", "--connection=default", "--wait", "--timeout=120s"]
    assert pod["spec"]["restartPolicy"] == "Never"
    operator = by_kind(render(values("oauth")), "Deployment")[0]["spec"]["template"]["spec"]
    assert c["image"] == operator["containers"][0]["image"]
    assert c["securityContext"] == operator["containers"][0]["securityContext"]
    assert pod["spec"]["serviceAccountName"] != operator["serviceAccountName"]
    grants = {(g, r, v, tuple(rule.get("resourceNames", []))) for role in by_kind(docs, "ClusterRole") +
              by_kind(docs, "Role") for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
              for v in rule["verbs"]}
    assert grants == {("pipedream-secrets.io", "clusterpipedreamconnections", "get", ("default",)),
                      ("", "secrets", "get", ("pd-oauth",))}, grants
    key = by_kind(tests(values("apikey")), "Role")[0]["rules"][0]["resourceNames"]
    assert key == [values("apikey")["defaultConnection"]["apiKey"]["existingSecret"]]
    assert not tests({}), "no default connection, nothing to test"
    # With the network restricted, the test pod reaches what the operator reaches, and nothing reaches it.
    restricted = {"defaultConnection": values("oauth")["defaultConnection"], "networkPolicy": {"enabled": True}}
    policies = by_kind(render(restricted), "NetworkPolicy")
    mine = [p for p in policies if hook(p)]
    assert len(mine) == 2 and [p for p in mine if p["metadata"]["annotations"]["helm.sh/hook"] == "test"]
    test_policy = [p for p in mine if p["metadata"]["annotations"]["helm.sh/hook"] == "test"][0]
    operator_policy = [p for p in policies if not hook(p)][0]
    assert test_policy["spec"]["egress"] == operator_policy["spec"]["egress"]
    assert "ingress" not in test_policy["spec"]
    test_pod = by_kind(tests(restricted), "Pod")[0]
    assert test_policy["spec"]["podSelector"]["matchLabels"].items() <= test_pod["metadata"]["labels"].items()


def test_an_egress_proxy_reaches_the_operator_and_narrows_the_network_policy():
    """Issue 27 (10): the operator honours HTTPS_PROXY/HTTP_PROXY/NO_PROXY (tests/system.rs runs it and the CLI
    through a proxy on the real API server); the chart sets them, and with network policies on, Pipedream egress
    goes to the proxy only."""
    vals = {"egressProxy": {"url": "http://proxy.corp.example:3128", "noProxy": ".corp.example,10.0.0.0/8",
                            "cidrs": ["10.20.30.40/32"], "port": 3128},
            "networkPolicy": {"enabled": True, "apiServer": {"cidrs": ["10.0.0.1/32"], "port": 6443}}}
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(vals)
        with pytest.raises(helm.HelmError):
            chart.validate_schema({"egressProxy": {"url": "proxy.corp.example:3128"}})
    docs = render(vals)
    env = {e["name"]: e.get("value") for e in by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["HTTPS_PROXY"] == env["HTTP_PROXY"] == "http://proxy.corp.example:3128"
    assert env["NO_PROXY"] == ".corp.example,10.0.0.0/8"
    policy = [p for p in by_kind(docs, "NetworkPolicy") if not hook(p)][0]
    rules = policy["spec"]["egress"]
    assert [r["ports"][0]["port"] for r in rules] == [53, 6443, 3128]
    assert rules[2]["to"] == [{"ipBlock": {"cidr": "10.20.30.40/32"}}], "only the proxy, not every address on 443"
    plain = render({})
    env = [e["name"] for e in by_kind(plain, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert "HTTPS_PROXY" not in env and "NO_PROXY" not in env
    # The proxy's CA, from a ConfigMap, trusted besides the image's roots (tests/system.rs: refused without it).
    pod = by_kind(render({"pipedreamCA": {"configMap": "corp-ca", "key": "bundle.pem"}}), "Deployment")[0]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert "--pipedream-ca-file=/etc/pipedream-secrets-operator/pipedream-ca/ca.crt" in container["args"]
    volume = [v for v in pod["volumes"] if v["name"] == "pipedream-ca"][0]
    assert volume["configMap"] == {"name": "corp-ca", "items": [{"key": "bundle.pem", "path": "ca.crt"}]}
    mount = [m for m in container["volumeMounts"] if m["name"] == "pipedream-ca"][0]
    assert mount["mountPath"] == "/etc/pipedream-secrets-operator/pipedream-ca" and mount["readOnly"]
    assert not any(a.startswith("--pipedream-ca-file") for a in
                   by_kind(plain, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"])


def test_values_reach_the_container_args():
    args = by_kind(render(values("ha")), "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--concurrency=16" in args
    assert "--leader-election=true" in args, "forced on with replicaCount > 1"
    assert "--leader-election-lease=pdso-pipedream-secrets-operator" in args
    assert "--allowed-api-hosts=api.pipedream.com,api2.pipedream.com" in args
    dep = by_kind(render(values("ha")), "Deployment")[0]
    assert dep["spec"]["replicas"] == 3
    spread = dep["spec"]["template"]["spec"]["topologySpreadConstraints"][0]
    assert spread["topologyKey"] == "topology.kubernetes.io/zone"
    assert spread["labelSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
    default_args = by_kind(render({}), "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--allowed-api-hosts=api.pipedream.com" in default_args, "tenants may reach only Pipedream by default"
    args = by_kind(render(values("apikey")), "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--default-connection=workspace" in args and "--log-format=text" in args and "--log-level=debug" in args
    single = by_kind(render({"leaderElection": {"enabled": False}}), "Deployment")[0]
    assert single["spec"]["strategy"]["type"] == "Recreate", "no overlapping writers without leader election"


def test_sharding_forces_leader_election_which_guards_shard_count_changes():
    # Issue 25 (10): the guard against two shard counts writing at once (during a change of sharding.shards) lives
    # in leader election; with it off, old and new shards ran side by side.
    for replicas in (1, 2):
        docs = render({"sharding": {"shards": 2}, "replicaCount": replicas, "leaderElection": {"enabled": False}})
        for d in by_kind(docs, "Deployment"):
            args = d["spec"]["template"]["spec"]["containers"][0]["args"]
            assert "--leader-election=true" in args, args


def test_sharding_renders_a_deployment_and_pdb_per_shard_with_disjoint_selectors():
    base = by_kind(render({}), "Deployment")
    assert len(base) == 1 and not any(a.startswith("--shard") for a in base[0]["spec"]["template"]["spec"]["containers"][0]["args"])
    name = base[0]["metadata"]["name"]
    docs = render(values("sharded"))
    deps = by_kind(docs, "Deployment")
    assert [d["metadata"]["name"] for d in deps] == [f"{name}-shard-{i}" for i in range(3)]
    selectors = []
    for i, d in enumerate(deps):
        assert d["spec"]["replicas"] == 2
        args = d["spec"]["template"]["spec"]["containers"][0]["args"]
        assert f"--shard={i}/3" in args, args
        # Every shard runs leader election on the same base name; the operator suffixes -shard-i-of-n itself.
        assert "--leader-election=true" in args and f"--leader-election-lease={name}" in args, args
        sel = d["spec"]["selector"]["matchLabels"]
        assert sel["pipedream-secrets.io/shard"] == str(i)
        pod_labels = d["spec"]["template"]["metadata"]["labels"]
        assert all(pod_labels[k] == v for k, v in sel.items()), "the selector matches its own pods"
        selectors.append(sel)
    # No pod of one shard matches another shard's selector.
    for i, d in enumerate(deps):
        labels = d["spec"]["template"]["metadata"]["labels"]
        for j, sel in enumerate(selectors):
            assert (i == j) == all(labels.get(k) == v for k, v in sel.items())
    pdbs = by_kind(docs, "PodDisruptionBudget")
    assert [p["spec"]["selector"]["matchLabels"] for p in pdbs] == selectors
    # The Service (and so the ServiceMonitor) selects the pods of every shard.
    svc = by_kind(docs, "Service")[0]
    assert all(all(d["spec"]["template"]["metadata"]["labels"].get(k) == v for k, v in svc["spec"]["selector"].items()) for d in deps)


def test_default_connection_is_bootstrapped_from_values():
    conn = by_kind(render(values("oauth")), "ClusterPipedreamConnection")[0]
    oauth = conn["spec"]["auth"]["oauth"]
    assert oauth["clientSecretRef"] == {"name": "pd-oauth", "key": "client_secret", "namespace": "pipedream-secrets-operator"}
    assert oauth["projectId"] == "proj_abc123"
    assert conn["spec"]["access"][0]["externalUserIds"] == ["tenant-42"]
    key = by_kind(render(values("apikey")), "ClusterPipedreamConnection")[0]
    assert key["spec"]["auth"]["apiKey"]["credentialsPath"] == "credentials"
    with pytest.raises(helm.HelmError):
        render({"defaultConnection": {"enabled": True, "oauth": {"clientId": "x"}}})


def test_chart_crds_are_the_crds_directory_with_keep():
    chart_files = sorted(p.name for p in (CHART / "files" / "crds").iterdir())
    assert chart_files == sorted(p.name for p in (ROOT / "crds").iterdir())
    for name in chart_files:
        assert (CHART / "files" / "crds" / name).read_text() == (ROOT / "crds" / name).read_text(), name
    rendered = {d["metadata"]["name"]: d for d in by_kind(render({}), "CustomResourceDefinition")}
    for name in chart_files:
        crd = yaml.safe_load((ROOT / "crds" / name).read_text())
        got = rendered[crd["metadata"]["name"]]
        assert got["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert got["spec"] == crd["spec"]


def test_checkov_finds_nothing_unexplained(tmp_path):
    for name in VALUE_SETS:
        docs = [d for d in render(values(name)) if d["kind"] != "CustomResourceDefinition"]
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump_all(docs))
    checkov = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "checkov"
    if not checkov.exists():
        checkov = ROOT / ".venv" / "bin" / "checkov"
    out = subprocess.run([str(checkov), "-d", str(tmp_path), "--framework", "kubernetes", "--skip-download", "--compact", "-o", "json"],
                         capture_output=True, text=True, check=False)
    reports = json.loads(out.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [(c["check_id"], c["resource"]) for r in reports for c in r["results"]["failed_checks"]]
    assert failed == [], f"checkov findings without a reason in the chart: {failed}"
    skipped = [c for r in reports for c in r["results"].get("skipped_checks", [])]
    assert skipped, "the accepted findings are reported as skipped"
    # Each skip is explained on the resource it skips (checkov names it Kind.namespace.name).
    reasons = {}
    for name in VALUE_SETS:
        for d in render(values(name)):
            meta = d["metadata"]
            resource = f"{d['kind']}.{meta.get('namespace', 'default')}.{meta['name']}"
            for k, v in meta.get("annotations", {}).items():
                if k.startswith("checkov.io/skip"):
                    check, reason = v.split("=", 1)
                    reasons[(check, resource)] = reason
    for c in skipped:
        reason = reasons.get((c["check_id"], c["resource"]), "")
        assert len(reason) > 20, f"{c['check_id']} is skipped on {c['resource']} without a reason in the chart"
    assert sum(r["summary"]["passed"] for r in reports) > 100


def test_rbac_matches_what_the_operator_used_in_the_system_tests():
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    files = sorted((target / "tmp" / "rbac-audit").glob("*.json"))
    assert files, "no audit recorded: run `cargo test --test system` first (the README's test command does)"
    used = {(e["group"], e["resource"], e["verb"]) for f in files for e in json.loads(f.read_text())}
    # The default install's grants, those secure metrics add (tests/metrics_auth.rs runs the operator with
    # --metrics-secure: its TokenReviews and SubjectAccessReviews are in the audit) and those rollout restarts add
    # (tests/pods.rs restarts Deployments, StatefulSets and DaemonSets listed in rolloutRestartTargets).
    restarts = render({"rolloutRestarts": {"enabled": True}})
    granted = {(g, r, v) for g, r, v, _, _ in grants(render({})) | grants(render(values("secure"))) | grants(restarts)}
    missing = used - granted
    assert not missing, f"the operator used {sorted(missing)} but the chart does not grant it"
    # Grants the system tests do not exercise, each with its reason.
    justified = {
        ("", "secrets", "create"): "server-side apply that creates a Secret needs create",
        ("", "namespaces", "get"): "namespaceSelector access rules of ClusterPipedreamConnections",
        ("events.k8s.io", "events", "patch"): "repeated Events become a patched event series",
        ("pipedream-secrets.io", "pipedreamconnections/status", "patch"): "status of namespaced connections",
        ("pipedream-secrets.io", "connectedaccounts/finalizers", "update"): "blockOwnerDeletion under OwnerReferencesPermissionEnforcement",
        ("pipedream-secrets.io", "connectedaccounts", "get"): "Merge key owners on other shards (the system tests run no Merge conflict)",
        # Watches take their initial lists as streams (a watch to the authorizer) where the API server can; where
        # it cannot (WatchList off, older servers) they list in pages.
        ("", "secrets", "list"): "paged initial lists where the API server cannot stream them",
        ("pipedream-secrets.io", "pipedreamconnections", "list"): "paged initial lists where the API server cannot stream them",
        ("pipedream-secrets.io", "clusterpipedreamconnections", "list"): "paged initial lists where the API server cannot stream them",
    }
    unused = granted - used - set(justified)
    assert not unused, f"the chart grants {sorted(unused)}, which the operator never used and nothing justifies"


def test_network_policy_allows_egress_only_to_dns_the_api_server_and_pipedream_on_443():
    pol = by_kind(render(values("ha")), "NetworkPolicy")[0]
    ports = sorted({p["port"] for rule in pol["spec"]["egress"] for p in rule["ports"]})
    assert ports == [53, 443, 6443], ports
    pipedream = pol["spec"]["egress"][-1]
    assert [p["port"] for p in pipedream["ports"]] == [443]
    assert not by_kind(render({}), "NetworkPolicy"), "off unless enabled (API server ports differ per cluster)"


def test_network_policy_defaults_reach_kube_dns_only_and_the_api_server_on_443_and_6443():
    pol = by_kind(render({"networkPolicy": {"enabled": True}}), "NetworkPolicy")[0]
    dns, api, pipedream = pol["spec"]["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    # DNS only to kube-dns, not port 53 anywhere (an open 53 is an exfiltration path).
    assert dns["to"] == [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
        "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
    }], dns
    # The API server's Service says 443, but NetworkPolicy sees the endpoint after DNAT: 6443 on most clusters.
    assert sorted(p["port"] for p in api["ports"]) == [443, 6443], api
    assert [p["port"] for p in pipedream["ports"]] == [443]
    # The older single `port` still works, alone.
    legacy = by_kind(render({"networkPolicy": {"enabled": True, "apiServer": {"port": 8443}}}), "NetworkPolicy")[0]
    assert [p["port"] for p in legacy["spec"]["egress"][1]["ports"]] == [8443]
    # A cluster whose DNS runs elsewhere names it.
    custom = by_kind(render({"networkPolicy": {"enabled": True, "dns": {"to": [{"ipBlock": {"cidr": "169.254.20.10/32"}}]}}}), "NetworkPolicy")[0]
    assert custom["spec"]["egress"][0]["to"] == [{"ipBlock": {"cidr": "169.254.20.10/32"}}]


def test_network_policy_reaches_pipedream_over_ipv4_and_ipv6_but_not_in_cluster_ranges():
    """Issue 25 (10): Pipedream's egress rule was 0.0.0.0/0 on 443, which reaches every in-cluster HTTPS service
    (and the cloud metadata address), and had no ::/0, so IPv6-only clusters could not reach Pipedream or the API
    server. Now both families, each without the private, shared and link-local ranges pods and Services live in."""
    import ipaddress
    pol = by_kind(render({"networkPolicy": {"enabled": True}}), "NetworkPolicy")[0]
    _, api, pipedream = pol["spec"]["egress"]
    blocks = {t["ipBlock"]["cidr"]: t["ipBlock"].get("except", []) for t in pipedream["to"]}
    assert set(blocks) == {"0.0.0.0/0", "::/0"}, blocks
    for cidr, excepts in blocks.items():
        # What the API server checks: every except is strictly inside its cidr (so of the same family).
        net = ipaddress.ip_network(cidr)
        for e in excepts:
            sub = ipaddress.ip_network(e)
            assert sub.version == net.version and sub.subnet_of(net) and sub != net, (cidr, e)
    v4 = [ipaddress.ip_network(e) for e in blocks["0.0.0.0/0"]]
    v6 = [ipaddress.ip_network(e) for e in blocks["::/0"]]
    inside = ["10.96.0.1", "10.244.3.7", "172.20.0.10", "192.168.1.5", "100.64.0.10", "169.254.169.254"]
    for addr in inside:
        assert any(ipaddress.ip_address(addr) in n for n in v4), f"{addr} (in-cluster or metadata) is reachable on 443"
    for addr in ["fd00:10:96::1", "fe80::1"]:
        assert any(ipaddress.ip_address(addr) in n for n in v6), f"{addr} is reachable on 443"
    for addr in ["104.18.0.1", "2606:4700::1"]:
        nets = v4 if ":" not in addr else v6
        assert not any(ipaddress.ip_address(addr) in n for n in nets), f"public {addr} is excluded"
    # The API server is reachable over IPv6 too.
    assert {t["ipBlock"]["cidr"] for t in api["to"]} == {"0.0.0.0/0", "::/0"}
    # A cluster names its own ranges; a narrower cidr of the user's gets no except (it could fall outside it).
    own = by_kind(render({"networkPolicy": {"enabled": True, "pipedream": {
        "cidrs": ["0.0.0.0/0", "::/0", "52.0.0.0/8"], "except": ["10.96.0.0/12", "fd00:10:96::/112"]}}}), "NetworkPolicy")[0]
    blocks = {t["ipBlock"]["cidr"]: t["ipBlock"].get("except") for t in own["spec"]["egress"][2]["to"]}
    assert blocks == {"0.0.0.0/0": ["10.96.0.0/12"], "::/0": ["fd00:10:96::/112"], "52.0.0.0/8": None}, blocks
    # The READMEs say what the rules allow, no more.
    for readme in (ROOT / "README.md", CHART / "README.md"):
        assert "so a tenant's apiUrl cannot reach other services" not in readme.read_text(), readme


SECURE = {"metrics": {"secure": {"enabled": True,
                                 "readers": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": "monitoring"}]},
                      "serviceMonitor": {"enabled": True}}}


def container(docs):
    return by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]


def test_secure_metrics_pass_the_flag_grant_the_reviews_and_ship_a_metrics_reader_role():
    """Issue 25 (4): metrics.secure.enabled serves /metrics over HTTPS to whoever the API server authenticates and
    allows `get` on /metrics, as controller-runtime does; the probes move to a plain port of their own."""
    docs = render(SECURE)
    c = container(docs)
    assert "--metrics-secure=true" in c["args"] and "--health-addr=0.0.0.0:8081" in c["args"], c["args"]
    assert not any(a.startswith("--metrics-cert-dir") for a in c["args"]), "self-signed unless a Secret is named"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"https-metrics": 8080, "http-health": 8081}
    assert c["livenessProbe"]["httpGet"]["port"] == "http-health" and c["readinessProbe"]["httpGet"]["port"] == "http-health"
    operator = [r for r in by_kind(docs, "ClusterRole") if r["metadata"]["name"] == "pdso-pipedream-secrets-operator"][0]
    rules = [(g, r, v) for rule in operator["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]]
    assert ("authentication.k8s.io", "tokenreviews", "create") in rules
    assert ("authorization.k8s.io", "subjectaccessreviews", "create") in rules
    reader = [r for r in by_kind(docs, "ClusterRole") if r["metadata"]["name"] == "pdso-pipedream-secrets-operator-metrics-reader"][0]
    assert reader["rules"] == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]
    binding = [b for b in by_kind(docs, "ClusterRoleBinding") if b["roleRef"]["name"] == reader["metadata"]["name"]][0]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "prometheus", "namespace": "monitoring"}]
    svc = by_kind(docs, "Service")[0]
    assert [(p["name"], p["targetPort"]) for p in svc["spec"]["ports"]] == [("https-metrics", "https-metrics")]
    # Default: none of it.
    plain = render({"metrics": {"serviceMonitor": {"enabled": True}}})
    assert not any(a.startswith("--metrics-secure") for a in container(plain)["args"])
    assert not [r for r in by_kind(plain, "ClusterRole") if r["metadata"]["name"].endswith("-metrics-reader")]
    assert not any(r in ("tokenreviews", "subjectaccessreviews") for _, r, _, _, _ in grants(plain))
    # Without readers, the role is there for you to bind, and no binding is made.
    alone = render({"metrics": {"secure": {"enabled": True}}})
    assert [r for r in by_kind(alone, "ClusterRole") if r["metadata"]["name"].endswith("-metrics-reader")]
    assert not [b for b in by_kind(alone, "ClusterRoleBinding") if b["roleRef"]["name"].endswith("-metrics-reader")]


def test_secure_metrics_service_monitor_scrapes_https_with_a_bearer_token():
    ep = by_kind(render(SECURE), "ServiceMonitor")[0]["spec"]["endpoints"][0]
    assert ep["port"] == "https-metrics" and ep["scheme"] == "https" and ep["path"] == "/metrics"
    # Prometheus's own ServiceAccount token; the operator's self-signed certificate is not verified (the token,
    # not the certificate, decides who reads).
    assert ep["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert ep["tlsConfig"] == {"insecureSkipVerify": True}
    # A certificate from a Secret (cert-manager) is mounted and named; a CA and a token Secret reach the monitor.
    tls = {"ca": {"secret": {"name": "pdso-metrics-tls", "key": "ca.crt"}},
           "serverName": "pdso-pipedream-secrets-operator-metrics.pipedream-secrets-operator.svc"}
    auth = {"type": "Bearer", "credentials": {"name": "prometheus-token", "key": "token"}}
    docs = render({"metrics": {"secure": {"enabled": True, "certSecret": "pdso-metrics-tls"},
                               "serviceMonitor": {"enabled": True, "tlsConfig": tls, "authorization": auth}}})
    ep = by_kind(docs, "ServiceMonitor")[0]["spec"]["endpoints"][0]
    assert ep["tlsConfig"] == tls and ep["authorization"] == auth and "bearerTokenFile" not in ep
    pod = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]
    volume = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "pdso-metrics-tls"][0]
    mount = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]][0]
    assert mount["readOnly"] is True
    assert f"--metrics-cert-dir={mount['mountPath']}" in pod["containers"][0]["args"]
    # Plain metrics keep their plain monitor.
    ep = by_kind(render({"metrics": {"serviceMonitor": {"enabled": True}}}), "ServiceMonitor")[0]["spec"]["endpoints"][0]
    assert ep["port"] == "http-metrics" and "scheme" not in ep and "tlsConfig" not in ep and "bearerTokenFile" not in ep


def test_secure_metrics_are_refused_where_they_cannot_work():
    # TokenReview and SubjectAccessReview are cluster-scoped: a scoped install has no ClusterRole to grant them.
    with pytest.raises(helm.HelmError, match="rbac.scoped"):
        render({**values("scoped"), "metrics": {"secure": {"enabled": True}}})
    # A probe still aimed at the metrics port would hit HTTPS with a plain request.
    with pytest.raises(helm.HelmError, match="http-health"):
        render({"metrics": {"secure": {"enabled": True}},
                "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http-metrics"}}})


PROMTOOL = os.environ.get("PROMTOOL", shutil.which("promtool") or "promtool")


def test_alert_rules_fire_on_synthetic_series_and_stay_silent_when_healthy(tmp_path):
    rule = by_kind(render(values("ha")), "PrometheusRule")[0]
    assert not by_kind(render({}), "PrometheusRule"), "off by default"
    groups = rule["spec"]["groups"]
    alerts = [r for g in groups for r in g["rules"]]
    assert {a["alert"] for a in alerts} == {
        "PipedreamSecretHoldsExpiredCredentials", "PipedreamCredentialsExpiringWithoutSync",
        "PipedreamConnectedAccountNotReady", "PipedreamConnectionAuthFailing", "PipedreamRateLimited",
        "PipedreamSecretsOperatorNoLeader", "PipedreamPodsAtRiskOfExpiredCredentials"}
    for a in alerts:
        # Runbook-style: what broke and what to do.
        assert len(a["annotations"]["summary"]) > 20 and len(a["annotations"]["description"]) > 80, a["alert"]
        assert a["labels"]["severity"] in ("warning", "critical")
    # promtool compares annotations too; the firing conditions are what is tested here.
    stripped = {"groups": [{**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
                           for g in groups]}
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(stripped))
    shutil.copy(ROOT / "tests" / "chart" / "alerts_test.yaml", tmp_path / "alerts_test.yaml")
    check = subprocess.run([PROMTOOL, "check", "rules", str(tmp_path / "rules.yaml")], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    out = subprocess.run([PROMTOOL, "test", "rules", "alerts_test.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def github_anchor(heading):
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_links_its_runbook_section_and_can_be_tuned_or_turned_off_one_by_one():
    """Issue 27 (7): alerts had no runbook_url and could be neither disabled nor tuned one by one."""
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", runbook, re.M)}
    base = {"metrics": {"prometheusRule": {"enabled": True}}}
    default_url = yaml.safe_load((CHART / "values.yaml").read_text())["metrics"]["prometheusRule"]["runbookUrl"]
    rules = by_kind(render(base), "PrometheusRule")[0]["spec"]["groups"][0]["rules"]
    assert len(rules) == 7
    for r in rules:
        url, _, anchor = r["annotations"]["runbook_url"].partition("#")
        assert url == default_url and anchor == r["alert"].lower(), r["annotations"]["runbook_url"]
        assert anchor in anchors, f"docs/runbook.md has no section for {r['alert']}"
    tuned = {"metrics": {"prometheusRule": {"enabled": True, "runbookUrl": "https://wiki.example.com/pdso",
        "alerts": {"PipedreamRateLimited": {"enabled": False},
                   "PipedreamConnectedAccountNotReady": {"for": "30m", "severity": "page",
                                                         "labels": {"team": "platform"}}}}}}
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(tuned)
    rules = {r["alert"]: r for r in by_kind(render(tuned), "PrometheusRule")[0]["spec"]["groups"][0]["rules"]}
    assert "PipedreamRateLimited" not in rules and len(rules) == 6
    not_ready = rules["PipedreamConnectedAccountNotReady"]
    assert not_ready["for"] == "30m" and not_ready["labels"] == {"severity": "page", "team": "platform"}
    assert not_ready["annotations"]["runbook_url"] == "https://wiki.example.com/pdso#pipedreamconnectedaccountnotready"
    assert rules["PipedreamSecretHoldsExpiredCredentials"]["for"] == "1m", "the others keep their defaults"
    with helm.Chart.load(str(CHART)) as chart:
        for bad in [{"PipedreamTypo": {"enabled": False}},
                    {"PipedreamRateLimited": {"for": "soon"}},
                    {"PipedreamRateLimited": {"labels": {"severity": "info"}}}]:
            with pytest.raises(helm.HelmError):
                chart.validate_schema({"metrics": {"prometheusRule": {"alerts": bad}}})


def test_a_shard_without_a_leader_alerts_while_the_others_lead(tmp_path):
    """Issue 27 (7): `(max(pipedream_secrets_leader) or vector(0)) < 1` stayed quiet while one shard of several had
    no leader (another shard's 1 was the max). One rule per shard: shard 0 leads, shard 1 has only a standby,
    shard 2 no pod at all; the alert fires for 1 and 2, not for 0, and for none once they lead."""
    vals = {**values("sharded"), "metrics": {"prometheusRule": {"enabled": True}}}
    rules = by_kind(render(vals), "PrometheusRule")[0]["spec"]["groups"][0]["rules"]
    no_leader = [r for r in rules if r["alert"] == "PipedreamSecretsOperatorNoLeader"]
    assert sorted(r["labels"]["shard"] for r in no_leader) == ["0", "1", "2"]
    groups = [{"name": "pdso", "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in no_leader]}]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    test = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [
            {"series": 'pipedream_secrets_leader{pod="a",shard="0"}', "values": "1x30"},
            {"series": 'pipedream_secrets_leader{pod="b",shard="0"}', "values": "0x30"},
            {"series": 'pipedream_secrets_leader{pod="c",shard="1"}', "values": "0x10 1x20"},
            {"series": 'pipedream_secrets_leader{pod="d",shard="2"}', "values": "_x10 1x20"},
        ],
        "alert_rule_test": [
            {"eval_time": "1m", "alertname": "PipedreamSecretsOperatorNoLeader", "exp_alerts": []},
            {"eval_time": "5m", "alertname": "PipedreamSecretsOperatorNoLeader", "exp_alerts": [
                {"exp_labels": {"severity": "critical", "shard": "1"}},
                {"exp_labels": {"severity": "critical", "shard": "2"}}]},
            {"eval_time": "20m", "alertname": "PipedreamSecretsOperatorNoLeader", "exp_alerts": []},
        ]}]}
    (tmp_path / "shards_test.yaml").write_text(yaml.safe_dump(test))
    out = subprocess.run([PROMTOOL, "test", "rules", "shards_test.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def scrape_to_series(text, hold="1x30"):
    """promtool input series holding each sample of an OpenMetrics scrape constant for half an hour."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        if value in ("NaN", "+Inf", "-Inf") or sample.endswith("_created"):
            continue
        steps = hold.split("x", 1)[1]
        out.append({"series": sample, "values": f"{value}x{steps}"})
    return out


def sample_labels(text, prefix):
    """The label sets of the samples of metric `prefix` in a scrape."""
    found = []
    for line in text.splitlines():
        if line.startswith(prefix + "{"):
            body = line[len(prefix) + 1:line.index("}")]
            found.append(dict(re.findall(r'(\w+)="([^"]*)"', body)))
    return found


@pytest.mark.parametrize("scrape_file", ["scrape.txt", "scrape-after-restart.txt"])
def test_alerts_fire_on_a_real_scrape_of_a_failing_account_and_not_for_a_synced_one(tmp_path, scrape_file):
    """Issue 17 (1): the not-Ready alert selected a series the operator never emitted. Fed a real scrape of the
    running operator (one ConnectedAccount SecretSynced, one failing with AccountNotFound; and the same right after an
    operator restart, before any pass), the chart's rules fire for the failing one, by reason, and not for the
    synced one."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    path = target / "tmp" / "metrics" / scrape_file
    assert path.exists(), "no scrape recorded: run `cargo test --test system` first (the README's test command does)"
    text = path.read_text()
    reasons = sample_labels(text, "pipedream_secrets_connectedaccount_ready_reason")
    failing = [r for r in reasons if r["reason"] != "SecretSynced"]
    synced = [r for r in reasons if r["reason"] == "SecretSynced"]
    assert failing and synced, reasons
    rule = by_kind(render(values("ha")), "PrometheusRule")[0]
    groups = [{**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
              for g in rule["spec"]["groups"]]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    not_ready = [{"exp_labels": {"severity": "warning", "namespace": r["namespace"], "name": r["name"],
                                 "reason": r["reason"]}} for r in failing]
    test = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": scrape_to_series(text),
        "alert_rule_test": [
            {"eval_time": "9m", "alertname": "PipedreamConnectedAccountNotReady", "exp_alerts": []},
            {"eval_time": "11m", "alertname": "PipedreamConnectedAccountNotReady", "exp_alerts": not_ready},
            {"eval_time": "11m", "alertname": "PipedreamSecretsOperatorNoLeader", "exp_alerts": []},
        ]}]}
    (tmp_path / "scrape_test.yaml").write_text(yaml.safe_dump(test))
    out = subprocess.run([PROMTOOL, "test", "rules", "scrape_test.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_pods_at_risk_alert_fires_on_a_real_scrape_for_the_account_refreshed_too_late(tmp_path):
    """Issue 24: fed the scrape of a running operator (tests/pods.rs: one account Pipedream refreshes 30 s before
    expiry, less than the 100 s propagation time, and one refreshed in time), the PodsAtRisk alert fires for the
    first after its `for` (15m) and never for the second."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    path = target / "tmp" / "metrics" / "scrape-pods-at-risk.txt"
    assert path.exists(), "no scrape recorded: run `cargo test --test pods` first (the README's test command does)"
    text = path.read_text()
    risk = {r["name"]: r for r in sample_labels(text, "pipedream_secrets_connectedaccount_pods_at_risk")}
    assert {"tight", "roomy"} <= set(risk), risk
    rule = by_kind(render(values("ha")), "PrometheusRule")[0]
    groups = [{**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
              for g in rule["spec"]["groups"]]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    tight = risk["tight"]
    test = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": scrape_to_series(text),
        "alert_rule_test": [
            {"eval_time": "14m", "alertname": "PipedreamPodsAtRiskOfExpiredCredentials", "exp_alerts": []},
            {"eval_time": "16m", "alertname": "PipedreamPodsAtRiskOfExpiredCredentials",
             "exp_alerts": [{"exp_labels": {"severity": "warning", **tight}}]},
        ]}]}
    (tmp_path / "scrape_test.yaml").write_text(yaml.safe_dump(test))
    out = subprocess.run([PROMTOOL, "test", "rules", "scrape_test.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def scraped_metric_names():
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    scrape = target / "tmp" / "metrics" / "scrape.txt"
    assert scrape.exists(), "no scrape recorded: run `cargo test --test system` first (the README's test command does)"
    names = set()
    for line in scrape.read_text().splitlines():
        if line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def test_dashboard_is_valid_json_and_every_query_names_a_scraped_metric():
    cm = [c for c in by_kind(render(values("ha")), "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")][0]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert not [c for c in by_kind(render({}), "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")]
    dash = json.loads(cm["data"]["pipedream-secrets-operator.json"])
    assert dash["uid"] == "pipedream-secrets-operator" and dash["panels"]
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    scraped = scraped_metric_names()
    used = {m for e in exprs for m in re.findall(r"pipedream_secrets_[a-z_]+", e)}
    missing = sorted(m for m in used if m not in scraped)
    assert not missing, f"dashboard queries name metrics the operator does not export: {missing}"
    # What the issue asks the dashboard to show.
    for needed in ("connectedaccount_credentials_expiration_timestamp_seconds", "syncs_total",
                   "pipedream_request_duration_seconds_bucket", "pipedream_requests_total",
                   "rate_limit_wait_seconds_total", "reconcile_queue_depth"):
        assert any(needed in e for e in exprs), needed


# Helm's install order (pkg/release/util/kind_sorter.go), for the kinds this chart renders.
HELM_INSTALL_ORDER = ["Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange", "PodSecurityPolicy",
                      "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList", "ConfigMap", "StorageClass",
                      "PersistentVolume", "PersistentVolumeClaim", "CustomResourceDefinition", "ClusterRole",
                      "ClusterRoleList", "ClusterRoleBinding", "ClusterRoleBindingList", "Role", "RoleList",
                      "RoleBinding", "RoleBindingList", "Service", "DaemonSet", "Pod", "ReplicationController",
                      "ReplicaSet", "Deployment", "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob",
                      "IngressClass", "Ingress", "APIService"]


def test_helm_install_into_a_real_control_plane_runs_an_account_as_the_charts_service_account(tmp_path, control_plane):
    """The chart installed as Helm would (its order, its manifests) into a real API server; the operator binary
    started with the Deployment's rendered args and env, authenticated as the chart's ServiceAccount with a
    TokenRequest token, so the real RBAC authorizer decides; a ConnectedAccount goes through it. Any request the
    API server refuses the ServiceAccount fails the test."""
    ns = "pdso-system"
    pd_port = free_port()
    pd_url = f"http://127.0.0.1:{pd_port}"
    seed = {"clients": {"oa_chart": "chart-secret"},
            "accounts": [{"id": "apn_Chart1", "project_id": "proj_chart", "external_id": "tenant-42",
                          "credentials": {"oauth_access_token": "tok-chart"}, "lifetime_secs": 3600}]}
    (tmp_path / "seed.json").write_text(json.dumps(seed))
    procs = [subprocess.Popen([str(TARGET / "debug" / "fake-pipedream"), "--listen", f"127.0.0.1:{pd_port}",
                               "--accounts", str(tmp_path / "seed.json")], stdout=subprocess.DEVNULL)]
    log = open(tmp_path / "operator.log", "w")
    try:
        wait_http(pd_url + "/_fake/stats")
        admin = control_plane.kubeconfig("admin")
        vals = {"defaultConnection": {"enabled": True, "apiUrl": pd_url, "mode": "oauth",
                                      "oauth": {"clientId": "oa_chart", "projectId": "proj_chart",
                                                "existingSecret": "pd-oauth"},
                                      "access": [{"namespaces": ["team-a"]}]}}
        docs = render(vals, namespace=ns)
        # Helm: CRDs from crds/ first, then the release's manifests in its kind order, custom resources last.
        rank = {k: i for i, k in enumerate(HELM_INSTALL_ORDER)}
        docs.sort(key=lambda d: rank.get(d["kind"], len(rank)))
        kubectl(admin, "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
        for n in (ns, "team-a"):
            kubectl(admin, "apply", "--server-side", "-f", "-",
                    stdin=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n}}))
        kubectl(admin, "apply", "--server-side", "-f", "-", stdin=json.dumps({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "pd-oauth", "namespace": ns},
            "stringData": {"client_secret": "chart-secret"}}))
        cluster_scoped = ("ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "ClusterPipedreamConnection")
        for doc in docs:
            if doc["kind"] not in cluster_scoped:
                doc["metadata"].setdefault("namespace", ns)
            kubectl(admin, "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=json.dumps(doc))
        deployment = by_kind(docs, "Deployment")[0]
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        account = pod["serviceAccountName"]
        sa_user = f"system:serviceaccount:{ns}:{account}"
        token = kubectl(admin, "-n", ns, "create", "token", account, "--duration=24h").strip()
        operator_kc = control_plane.kubeconfig_for_token(tmp_path / "operator.kubeconfig", token)
        env = {"KUBECONFIG": str(operator_kc), "PATH": os.environ["PATH"]}
        field = {"metadata.namespace": ns, "metadata.name": "pdso-0"}
        for e in container.get("env", []):
            env[e["name"]] = e["value"] if "value" in e else field[e["valueFrom"]["fieldRef"]["fieldPath"]]
        # The rendered args, except the listen addresses (the pod's ports would clash on a shared machine).
        metrics_port, health_port = free_port(), free_port()
        args = [a for a in container["args"] if not a.startswith(("--metrics-addr", "--health-addr"))]
        args += [f"--metrics-addr=127.0.0.1:{metrics_port}", f"--health-addr=127.0.0.1:{health_port}"]
        assert any(a.startswith("--default-connection=") for a in args)
        procs.append(subprocess.Popen([str(TARGET / "debug" / "pipedream-secrets-operator"), *args],
                                      env=env, stdout=log, stderr=log))
        kubectl(admin, "apply", "--server-side", "-f", "-", stdin=json.dumps({
            "apiVersion": "pipedream-secrets.io/v1alpha1", "kind": "ConnectedAccount",
            "metadata": {"name": "gh", "namespace": "team-a"}, "spec": {"accountId": "apn_Chart1"}}))
        ready = wait_ready(admin, "team-a", "gh", seconds=30)
        logs = (tmp_path / "operator.log").read_text()
        assert ready and ready["status"] == "True", f"{ready}\n{logs[-3000:]}"
        secret = json.loads(kubectl(admin, "-n", "team-a", "get", "secret", "gh", "-o", "json"))
        assert secret["data"]["oauth_access_token"]
        assert "forbidden" not in logs.lower(), logs[-3000:]
        # Leader election ran on the chart's Lease.
        leases = json.loads(kubectl(admin, "-n", ns, "get", "leases", "-o", "json"))["items"]
        lease = [a.split("=", 1)[1] for a in args if a.startswith("--leader-election-lease=")]
        assert [item["metadata"]["name"] for item in leases] == lease, "the default chart elects a leader"
        # The real authorizer decided every request: it allowed them all, and it refuses what the chart does not
        # grant, in its own words.
        mine = [e for e in control_plane.audit() if e["user"]["username"] == sa_user]
        assert mine, "the operator's requests are audited under its ServiceAccount"
        refused = [(e["verb"], e["objectRef"]) for e in mine if e.get("responseStatus", {}).get("code") == 403]
        assert not refused, f"the API server refused the chart's ServiceAccount: {refused}"
        out = kubectl_result(operator_kc, "-n", "team-a", "delete", "secret", "gh")
        assert out.returncode != 0, out.stdout
        assert f'User "{sa_user}" cannot delete resource "secrets" in API group "" in the namespace "team-a"' \
            in out.stderr, out.stderr
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
        log.close()


def https_status(url, token=None):
    """The status of a GET over HTTPS without verifying the certificate (the operator's is self-signed)."""
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""


def test_secure_metrics_install_lets_only_the_bound_reader_scrape(tmp_path, control_plane):
    """Issue 25 (4): the chart with metrics.secure.enabled installed into a real API server, the operator running
    with the Deployment's rendered args as the chart's ServiceAccount: the chart's grants let it review tokens (no
    request refused), the ServiceAccount listed in metrics.secure.readers scrapes, another gets 403, none 401."""
    ns, release = "pdso-secure", "pdsosec"
    admin = control_plane.kubeconfig("admin")
    vals = {"metrics": {"secure": {"enabled": True,
                                   "readers": [{"kind": "ServiceAccount", "name": "prometheus", "namespace": ns}]}}}
    docs = render(vals, namespace=ns, release=release)
    rank = {k: i for i, k in enumerate(HELM_INSTALL_ORDER)}
    docs.sort(key=lambda d: rank.get(d["kind"], len(rank)))
    kubectl(admin, "apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))
    kubectl(admin, "apply", "--server-side", "-f", "-",
            stdin=json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
    for doc in docs:
        kubectl(admin, "apply", "--server-side", "--force-conflicts", "-f", "-", stdin=json.dumps(doc))
    container = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]
    account = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["serviceAccountName"]
    sa_user = f"system:serviceaccount:{ns}:{account}"
    token = kubectl(admin, "-n", ns, "create", "token", account, "--duration=1h").strip()
    env = {"KUBECONFIG": str(control_plane.kubeconfig_for_token(tmp_path / "operator.kubeconfig", token)),
           "PATH": os.environ["PATH"], "POD_NAMESPACE": ns, "POD_NAME": "pdsosec-0"}
    metrics_port, health_port = free_port(), free_port()
    args = [a for a in container["args"] if not a.startswith(("--metrics-addr", "--health-addr"))]
    assert "--metrics-secure=true" in args
    args += [f"--metrics-addr=127.0.0.1:{metrics_port}", f"--health-addr=127.0.0.1:{health_port}"]
    for name in ("prometheus", "stranger"):
        kubectl(admin, "-n", ns, "create", "serviceaccount", name)
    prometheus = kubectl(admin, "-n", ns, "create", "token", "prometheus").strip()
    stranger = kubectl(admin, "-n", ns, "create", "token", "stranger").strip()
    log = open(tmp_path / "operator.log", "w")
    proc = subprocess.Popen([str(TARGET / "debug" / "pipedream-secrets-operator"), *args], env=env,
                            stdout=log, stderr=log)
    try:
        url = f"https://127.0.0.1:{metrics_port}/metrics"
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            time.sleep(0.1)
        logs = lambda: (tmp_path / "operator.log").read_text()[-3000:]
        assert https_status(url)[0] == 401, logs()
        assert https_status(url, stranger)[0] == 403, logs()
        code, body = https_status(url, prometheus)
        assert code == 200 and "pipedream_secrets_build_info" in body and body.endswith("# EOF\n"), (code, logs())
        mine = [e for e in control_plane.audit() if e["user"]["username"] == sa_user]
        reviews = {(e["objectRef"]["resource"], e["responseStatus"]["code"]) for e in mine
                   if e["objectRef"].get("apiGroup") in ("authentication.k8s.io", "authorization.k8s.io")}
        assert ("tokenreviews", 201) in reviews and ("subjectaccessreviews", 201) in reviews, reviews
        refused = [(e["verb"], e["objectRef"]) for e in mine if e.get("responseStatus", {}).get("code") == 403]
        assert not refused, f"the API server refused the chart's ServiceAccount: {refused}"
        assert prometheus not in logs() and stranger not in logs()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


# Issue 19: values users bring from External Secrets and Vault Secrets Operator charts (same names, same meaning).
ESO_STYLE = {
    "revisionHistoryLimit": 7,
    "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
    "deploymentAnnotations": {"team": "platform"},
    "commonLabels": {"cost-center": "42"},
    "serviceAccount": {"automount": False, "extraLabels": {"sa-label": "yes"}},
    "extraVolumes": [{"name": "corp-ca", "configMap": {"name": "corp-ca"}}],
    "extraVolumeMounts": [{"name": "corp-ca", "mountPath": "/etc/ssl/corp", "readOnly": True}],
    "extraContainers": [{"name": "sidecar", "image": "busybox:1.36"}],
    "extraInitContainers": [{"name": "init", "image": "busybox:1.36"}],
    "extraObjects": [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "{{ .Release.Name }}-extra"}, "data": {"a": "b"}},
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: as-text\n",
    ],
    "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http-metrics"}, "periodSeconds": 33, "failureThreshold": 5},
    "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http-metrics"}, "periodSeconds": 11},
    "terminationGracePeriodSeconds": 45,
    "dnsPolicy": "None",
    "dnsConfig": {"nameservers": ["10.0.0.10"], "options": [{"name": "ndots", "value": "2"}]},
    "hostAliases": [{"ip": "10.1.2.3", "hostnames": ["pd.internal"]}],
    "runtimeClassName": "gvisor",
    "podDisruptionBudget": {"enabled": True, "maxUnavailable": 1},
}


def test_eso_style_values_are_in_the_schema_documented_and_rendered():
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(ESO_STYLE)
    documented = (CHART / "values.yaml").read_text()
    for key in ["revisionHistoryLimit", "strategy", "deploymentAnnotations", "commonLabels", "automount", "extraLabels",
                "extraVolumes", "extraVolumeMounts", "extraContainers", "extraInitContainers", "extraObjects",
                "livenessProbe", "readinessProbe", "terminationGracePeriodSeconds", "dnsPolicy", "dnsConfig",
                "hostAliases", "runtimeClassName", "maxUnavailable", "aggregateToView", "aggregateToEdit",
                "aggregateToAdmin"]:
        lines = documented.splitlines()
        at = next((i for i, line in enumerate(lines) if line.strip().startswith(f"{key}:")), None)
        assert at is not None, f"{key} is not in values.yaml"
        j = at - 1
        while j > 0 and lines[j].strip().startswith("#") and not lines[j].strip().startswith("# --"):
            j -= 1
        assert lines[j].strip().startswith("# --"), f"{key} has no `# --` comment in values.yaml"
    docs = render(ESO_STYLE)
    dep = by_kind(docs, "Deployment")[0]
    assert dep["spec"]["revisionHistoryLimit"] == 7
    assert dep["spec"]["strategy"] == ESO_STYLE["strategy"]
    assert dep["metadata"]["annotations"]["team"] == "platform"
    pod = dep["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["volumes"] == ESO_STYLE["extraVolumes"]
    operator = pod["containers"][0]
    assert operator["volumeMounts"] == ESO_STYLE["extraVolumeMounts"]
    assert [c["name"] for c in pod["containers"]] == ["operator", "sidecar"]
    assert [c["name"] for c in pod["initContainers"]] == ["init"]
    assert operator["livenessProbe"]["periodSeconds"] == 33 and operator["readinessProbe"]["periodSeconds"] == 11
    assert pod["terminationGracePeriodSeconds"] == 45
    assert pod["dnsPolicy"] == "None" and pod["dnsConfig"] == ESO_STYLE["dnsConfig"]
    assert pod["hostAliases"] == ESO_STYLE["hostAliases"]
    assert pod["runtimeClassName"] == "gvisor"
    pdb = by_kind(docs, "PodDisruptionBudget")[0]
    assert pdb["spec"] == {**{"maxUnavailable": 1}, "selector": pdb["spec"]["selector"]}, "maxUnavailable replaces minAvailable"
    sa = by_kind(docs, "ServiceAccount")[0]
    assert sa["metadata"]["labels"]["sa-label"] == "yes"
    extra = sorted(d["metadata"]["name"] for d in by_kind(docs, "ConfigMap"))
    assert extra == ["as-text", "pdso-extra"], extra
    for d in docs:
        if d["metadata"]["name"] in extra:
            continue  # the user's own objects, as given
        assert d["metadata"]["labels"].get("cost-center") == "42", f"{d['kind']}/{d['metadata']['name']} lacks commonLabels"
    # The defaults keep today's behaviour.
    dep = by_kind(render({}), "Deployment")[0]
    pod = dep["spec"]["template"]["spec"]
    assert dep["spec"]["revisionHistoryLimit"] == 3 and "strategy" not in dep["spec"]
    assert pod["automountServiceAccountToken"] is True and "volumes" not in pod and "initContainers" not in pod
    assert pod["containers"][0]["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["terminationGracePeriodSeconds"] == 30
    # Without leader election, a rolling update would run two writers: Recreate wins over the value.
    one = by_kind(render({"leaderElection": {"enabled": False}, "strategy": {"type": "RollingUpdate"}}), "Deployment")[0]
    assert one["spec"]["strategy"] == {"type": "Recreate"}


def test_namespace_users_get_connected_account_rights_through_aggregated_cluster_roles():
    docs = render({})
    roles = {r["metadata"]["name"]: r for r in by_kind(docs, "ClusterRole") if aggregated(r)}
    by_label = {k.rsplit("-", 1)[-1]: r for r in roles.values() for k in r["metadata"]["labels"]
                if k.startswith("rbac.authorization.k8s.io/aggregate-to-")}
    assert set(by_label) == {"view", "edit", "admin"}, sorted(roles)
    def verbs(role, resource):
        return {v for rule in role["rules"] if resource in rule["resources"] for v in rule["verbs"]}
    assert verbs(by_label["view"], "connectedaccounts") == {"get", "list", "watch"}
    assert verbs(by_label["view"], "pipedreamconnections") == {"get", "list", "watch"}
    for kind in ["edit", "admin"]:
        assert verbs(by_label[kind], "connectedaccounts") == {"create", "delete", "deletecollection", "patch", "update"}
        assert verbs(by_label[kind], "pipedreamconnections") == {"create", "delete", "deletecollection", "patch", "update"}
    for r in roles.values():
        for rule in r["rules"]:
            assert "secrets" not in rule["resources"] and "clusterpipedreamconnections" not in rule["resources"]
            assert not any(res.endswith("/status") and v != "get" for res in rule["resources"] for v in rule["verbs"])
    off = render({"rbac": {"aggregateToView": False, "aggregateToEdit": False, "aggregateToAdmin": False}})
    assert not [r for r in by_kind(off, "ClusterRole") if aggregated(r)]
    assert not [r for r in by_kind(render(values("scoped")), "ClusterRole")], "a scoped install makes no ClusterRole"


def test_chart_readme_is_generated_from_values_yaml_and_every_comment_lands():
    import values_doc
    text = (CHART / "values.yaml").read_text()
    rows = values_doc.entries(text)
    assert len(rows) == text.count("# --"), "a `# --` comment not attached to a key"
    keys = [k for k, _ in rows]
    assert len(keys) == len(set(keys))
    committed = (CHART / "README.md").read_text()
    assert committed == values_doc.render(), "run `python tests/chart/values_doc.py --write` and commit the result"


# Prometheus Operator attaches these target labels to every scraped sample of a ServiceMonitor endpoint.
def target_labels(release_ns):
    return {"job": "pdso-metrics", "namespace": release_ns, "pod": "pdso-7d9f-abcde", "service": "pdso-metrics",
            "endpoint": "http-metrics", "instance": "10.0.0.7:8080", "container": "operator"}


def relabel_like_prometheus(text, endpoint, release_ns):
    """A scrape as Prometheus stores it for this ServiceMonitor endpoint (scrape.go mutateSampleLabels): with
    honorLabels a scraped label wins over a target label of the same name (a target label fills in where the scraped
    value is empty); without, a clashing scraped label becomes `exported_<name>`. Then metricRelabelings (the
    `labeldrop`/`replace` actions)."""
    honor = endpoint.get("honorLabels", False)
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        name, _, body = sample.partition("{")
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', body))
        merged = {k: v for k, v in labels.items() if v != ""}
        for k, v in target_labels(release_ns).items():
            if honor:
                merged.setdefault(k, v)
            else:
                if k in merged:
                    merged[f"exported_{k}"] = merged.pop(k)
                merged[k] = v
        for r in endpoint.get("metricRelabelings", []):
            if r.get("action") == "labeldrop":
                merged = {k: v for k, v in merged.items() if not re.fullmatch(r["regex"], k)}
            elif r.get("action", "replace") == "replace" and "targetLabel" in r:
                src = ";".join(merged.get(s, "") for s in r.get("sourceLabels", []))
                m = re.fullmatch(r.get("regex", "(.*)"), src)
                if m:
                    merged[r["targetLabel"]] = m.expand(r.get("replacement", "$1").replace("$", "\\"))
        rendered = ",".join(f'{k}="{v}"' for k, v in sorted(merged.items()))
        out.append(f"{name}{{{rendered}}} {value}")
    return "\n".join(out) + "\n"


def test_rules_and_dashboard_select_the_right_series_from_a_scrape_relabelled_as_the_default_service_monitor(tmp_path):
    """Issue 19: per-object series carry `namespace` (the ConnectedAccount's); Prometheus's own `namespace` target
    label (the operator's) replaced it (`exported_namespace`) unless the ServiceMonitor honours labels, and every
    rule and panel selecting by namespace then pointed at the operator's namespace."""
    release_ns = "pipedream-secrets-operator"
    sm = by_kind(render(values("ha"), namespace=release_ns), "ServiceMonitor")[0]
    endpoint = sm["spec"]["endpoints"][0]
    assert endpoint.get("honorLabels") is True, "the default ServiceMonitor honours the operator's labels"
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    raw = (target / "tmp" / "metrics" / "scrape.txt").read_text()
    failing = [r for r in sample_labels(raw, "pipedream_secrets_connectedaccount_ready_reason")
               if r["reason"] != "SecretSynced"]
    assert failing and all(r["namespace"] != release_ns for r in failing)

    def alerts_and_panels(scrape):
        rule = by_kind(render(values("ha"), namespace=release_ns), "PrometheusRule")[0]
        groups = [{**g, "rules": [{k: v for k, v in r.items() if k != "annotations"} for r in g["rules"]]}
                  for g in rule["spec"]["groups"]]
        (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
        expected = [{"exp_labels": {"severity": "warning", "namespace": r["namespace"], "name": r["name"],
                                    "reason": r["reason"]}} for r in failing]
        # The dashboard's per-object panels group by the objects' namespace.
        panel = 'group by (namespace, name) (pipedream_secrets_connectedaccount_ready_reason{reason!="SecretSynced"})'
        test = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": [{
            "interval": "1m", "input_series": scrape_to_series(scrape),
            "alert_rule_test": [{"eval_time": "11m", "alertname": "PipedreamConnectedAccountNotReady",
                                 "exp_alerts": expected}],
            "promql_expr_test": [{"expr": panel, "eval_time": "5m", "exp_samples": [
                {"labels": f'{{namespace="{r["namespace"]}", name="{r["name"]}"}}', "value": 1} for r in failing]}],
        }]}
        (tmp_path / "t.yaml").write_text(yaml.safe_dump(test))
        return subprocess.run([PROMTOOL, "test", "rules", "t.yaml"], cwd=tmp_path, capture_output=True, text=True)

    out = alerts_and_panels(relabel_like_prometheus(raw, endpoint, release_ns))
    assert out.returncode == 0, out.stdout + out.stderr
    # The same check fails as it did before honorLabels: the namespace is the operator's.
    broken = relabel_like_prometheus(raw, {**endpoint, "honorLabels": False}, release_ns)
    assert "exported_namespace" in broken
    assert alerts_and_panels(broken).returncode != 0
    # The knobs users know from ESO's and cert-manager's charts reach the ServiceMonitor.
    custom = {"metrics": {"serviceMonitor": {"enabled": True, "honorLabels": False,
                                             "relabelings": [{"action": "labeldrop", "regex": "pod"}],
                                             "metricRelabelings": [{"action": "labeldrop", "regex": "container"}],
                                             "scrapeTimeout": "10s"}}}
    ep = by_kind(render(custom), "ServiceMonitor")[0]["spec"]["endpoints"][0]
    assert ep["honorLabels"] is False and ep["scrapeTimeout"] == "10s"
    assert ep["relabelings"] == [{"action": "labeldrop", "regex": "pod"}]
    assert ep["metricRelabelings"] == [{"action": "labeldrop", "regex": "container"}]
