"""The Helm chart charts/rookery-operator and manifests/install.yaml, checked offline: no cluster,
no broker, no helm binary.

- Helm itself (its Go SDK through the helm-python-sdk package) lints and renders the chart, with
  the default values and with every option on.
- Every rendered object of a built-in kind is validated against the Kubernetes OpenAPI schemas
  that kubernetes-validate ships, in strict mode (an unknown field fails), for the oldest
  Kubernetes the chart supports, 1.30 and the newest the package knows.
- The copies the chart carries (dashboard, rules, CRDs) equal their sources, and
  manifests/install.yaml is what `scripts/sync-chart` would write.
- RBAC is least privilege: no wildcard, nothing beyond the operator's list.

None of these tests uses conftest's broker fixtures.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "rookery-operator"
SYNC = REPO / "scripts" / "sync-chart"
INSTALL = REPO / "manifests" / "install.yaml"
DASHBOARD = REPO / "monitoring" / "grafana" / "rookery-overview.json"
RULES = REPO / "monitoring" / "prometheus" / "rookery-rules.yaml"
CRDS = REPO / "crds"

RELEASE = "rookery-operator"
NAMESPACE = "rookery-system"
WATCHED = "mqtt-prod"
# The chart's kubeVersion floor (Chart.yaml: >=1.26.0-0), 1.30, and the newest schemas shipped
# (kubernetes-validate 1.37 ships 1.25 to 1.37; a later release may drop the oldest ones).
SHIPPED = {".".join(v.split(".")[:2]) for v in all_versions()}
KUBE_VERSIONS = [v for v in ("1.26", "1.30") if v in SHIPPED] + [
    kubernetes_validate.latest_version()
]

# Every option on, and everything that is off by default set.
ALL_ON: dict[str, Any] = {
    "replicaCount": 1,
    "watchNamespace": WATCHED,
    "image": {"tag": "9.9.9", "pullPolicy": "Always", "imagePullSecrets": [{"name": "regcred"}]},
    "serviceAccount": {"annotations": {"example.com/role": "rookery"}},
    "podAnnotations": {"example.com/scrape": "false"},
    "podLabels": {"team": "mqtt"},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "mqtt", "effect": "NoSchedule"}
    ],
    "affinity": {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {
                    "weight": 100,
                    "podAffinityTerm": {
                        "topologyKey": "kubernetes.io/hostname",
                        "labelSelector": {
                            "matchLabels": {"app.kubernetes.io/name": "rookery-operator"}
                        },
                    },
                }
            ]
        }
    },
    "priorityClassName": "system-cluster-critical",
    "logFormat": "text",
    "logLevel": "debug,kube=info",
    "brokerImage": "mirror.example/rookery-broker:9.9.9",
    "haproxyImage": "mirror.example/rookery-haproxy:9.9.9",
    "metrics": {"port": 9090, "serviceAnnotations": {"example.com/metrics": "yes"}},
    "serviceMonitor": {
        "enabled": True,
        "labels": {"release": "kube-prometheus-stack"},
        "scrapeTimeout": "10s",
    },
    "grafanaDashboard": {
        "labels": {"team": "mqtt"},
        "annotations": {"grafana_folder": "Rookery"},
        "namespace": "monitoring",
    },
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
}
CASES = {"default": None, "all-on": ALL_ON}

# Kinds defined by CRDs of other projects (the Prometheus Operator): kubernetes-validate has only
# the Kubernetes built-in schemas, so these are checked by hand (apiVersion, kind, required fields).
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}

# What the operator may do: (apiGroup, resource) -> the verbs it may have there. Anything else in a
# rendered Role or ClusterRole fails the RBAC test.
FULL = {"get", "list", "watch", "create", "patch", "update", "delete"}
ALLOWED: dict[tuple[str, str], set[str]] = {
    ("rookery.dev", "mqttclusters"): {"get", "list", "watch", "patch", "update"},
    ("rookery.dev", "mqttclusters/status"): {"get", "patch", "update"},
    ("rookery.dev", "mqttclusters/finalizers"): {"update"},
    ("apps", "statefulsets"): FULL,
    ("apps", "deployments"): FULL,
    ("", "services"): FULL,
    ("", "configmaps"): FULL,
    ("", "secrets"): FULL,
    ("", "pods"): {"get", "list", "watch", "delete"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("policy", "poddisruptionbudgets"): FULL,
    ("networking.k8s.io", "networkpolicies"): FULL,
    ("monitoring.coreos.com", "servicemonitors"): FULL,
    ("cert-manager.io", "certificates"): FULL,
    ("postgresql.cnpg.io", "clusters"): FULL,
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
}
LEASE_RULE = {
    "apiGroups": ["coordination.k8s.io"],
    "resources": ["leases"],
    "verbs": ["get", "create", "update"],
}


def render(values: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The chart's objects for these values, as Helm renders them offline (NOTES.txt left out)."""
    with helm_python.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        objects += [doc for doc in yaml.safe_load_all(text) if doc]
    return objects


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {case: render(values) for case, values in CASES.items()}


def only(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def validate(obj: dict[str, Any], where: str) -> None:
    """Validate one built-in object against the Kubernetes schemas of every KUBE_VERSIONS."""
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(
                f"{where}: {obj['kind']}/{obj['metadata']['name']} is not valid for "
                f"Kubernetes {version}: {path}: {e.message}"
            )


def check_crd_kind(obj: dict[str, Any], where: str) -> None:
    """By hand, for the kinds kubernetes-validate has no schema for: the Prometheus Operator's
    monitoring.coreos.com/v1 ServiceMonitor and PrometheusRule, their required fields."""
    assert obj["apiVersion"] == "monitoring.coreos.com/v1", where
    meta = obj["metadata"]
    assert meta["name"] and meta["namespace"] == NAMESPACE, where
    assert all(isinstance(v, str) for v in meta.get("labels", {}).values()), where
    spec = obj["spec"]
    if obj["kind"] == "ServiceMonitor":
        assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}, where
        assert spec["selector"]["matchLabels"], where
        assert spec["endpoints"], where
        for ep in spec["endpoints"]:
            assert set(ep) <= {"port", "path", "interval", "scrapeTimeout"}, where
            assert ep["port"] == "http-metrics" and ep["path"] == "/metrics", where
    else:
        assert list(spec) == ["groups"] and spec["groups"], where
        for group in spec["groups"]:
            assert (
                set(group) <= {"name", "interval", "rules"} and group["name"] and group["rules"]
            ), where
            for rule in group["rules"]:
                assert ("alert" in rule) != ("record" in rule), (where, rule)
                assert isinstance(rule["expr"], str) and rule["expr"], (where, rule)
                assert set(rule) <= {
                    "alert",
                    "record",
                    "expr",
                    "for",
                    "keep_firing_for",
                    "labels",
                    "annotations",
                }, (where, rule)


def check_all(objects: list[dict[str, Any]], where: str) -> None:
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            check_crd_kind(obj, where)
        else:
            validate(obj, where)


def install_objects() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(INSTALL.read_text()) if doc]


def leaf_keys(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        if (
            isinstance(value, dict)
            and value
            and key not in {"resources", "podSecurityContext", "securityContext", "labels"}
        ):
            yield from leaf_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


# -- Helm ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_helm_lint_finds_no_error_or_warning(case: str) -> None:
    report = helm_python.lint(
        CHART, CASES[case], strict=True, namespace=NAMESPACE, kube_version="v1.30.0"
    )
    # Severity 1 (info) is only "icon is recommended".
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not serious, report


def test_default_render_has_the_expected_objects(rendered: dict[str, list[dict[str, Any]]]) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in rendered["default"])
    assert kinds == [
        ("ClusterRole", "rookery-operator"),
        ("ClusterRoleBinding", "rookery-operator"),
        ("ConfigMap", "rookery-operator-dashboard"),
        ("Deployment", "rookery-operator"),
        ("Role", "rookery-operator-leader-election"),
        ("RoleBinding", "rookery-operator-leader-election"),
        ("Service", "rookery-operator-metrics"),
        ("ServiceAccount", "rookery-operator"),
    ]
    for obj in rendered["default"]:
        if obj["kind"] not in {"ClusterRole", "ClusterRoleBinding"}:
            assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]


@pytest.mark.parametrize("case", CASES)
def test_every_rendered_object_validates(
    rendered: dict[str, list[dict[str, Any]]], case: str
) -> None:
    check_all(rendered[case], f"render {case}")
    if case == "all-on":
        assert {o["kind"] for o in rendered[case]} >= CRD_KINDS


def test_deployment_defaults(rendered: dict[str, list[dict[str, Any]]]) -> None:
    deploy = only(rendered["default"], "Deployment")
    assert deploy["spec"]["replicas"] == 2
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["name"] == "rookery-operator"
    assert container["image"] == "rookery/operator:0.1.0"
    assert container["args"] == [
        "run",
        "--metrics-listen",
        "0.0.0.0:8080",
        "--log-format",
        "json",
        "--leader-election",
    ]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["RUST_LOG"]["value"] == "info"
    # No image values: the operator's built-in defaults, not an empty variable.
    assert "ROOKERY_BROKER_IMAGE" not in env and "ROOKERY_HAPROXY_IMAGE" not in env
    assert container["ports"] == [
        {"name": "http-metrics", "containerPort": 8080, "protocol": "TCP"}
    ]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    # The "restricted" Pod Security Standard.
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 65532
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["serviceAccountName"] == "rookery-operator"
    # The Service selects exactly the Deployment's pods.
    svc = only(rendered["default"], "Service")
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["ports"] == [
        {"name": "http-metrics", "port": 8080, "targetPort": "http-metrics", "protocol": "TCP"}
    ]


def test_deployment_with_every_option(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["all-on"]
    deploy = only(objects, "Deployment")
    assert deploy["spec"]["replicas"] == 1
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "rookery/operator:9.9.9"
    # Leader election stays on with one replica: a rolling update runs two pods.
    assert container["args"] == [
        "run",
        "--metrics-listen",
        "0.0.0.0:9090",
        "--log-format",
        "text",
        "--leader-election",
        "--watch-namespace",
        WATCHED,
    ]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["RUST_LOG"] == "debug,kube=info"
    assert env["ROOKERY_BROKER_IMAGE"] == ALL_ON["brokerImage"]
    assert env["ROOKERY_HAPROXY_IMAGE"] == ALL_ON["haproxyImage"]
    assert container["ports"][0]["containerPort"] == 9090
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == ALL_ON["nodeSelector"]
    assert pod["tolerations"] == ALL_ON["tolerations"]
    assert pod["affinity"] == ALL_ON["affinity"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert deploy["spec"]["template"]["metadata"]["labels"]["team"] == "mqtt"
    assert deploy["spec"]["template"]["metadata"]["annotations"] == ALL_ON["podAnnotations"]
    svc = only(objects, "Service")
    assert svc["spec"]["ports"][0]["port"] == 9090
    assert svc["metadata"]["annotations"] == ALL_ON["metrics"]["serviceAnnotations"]
    sm = only(objects, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert sm["spec"]["selector"]["matchLabels"] == svc["spec"]["selector"]
    assert sm["spec"]["endpoints"][0]["scrapeTimeout"] == "10s"
    assert (
        only(objects, "PrometheusRule")["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    )


# -- the dashboard, the rules, the CRDs -----------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_dashboard_configmap_carries_the_dashboard(
    rendered: dict[str, list[dict[str, Any]]], case: str
) -> None:
    cm = only(rendered[case], "ConfigMap", "rookery-operator-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert list(cm["data"]) == ["rookery-overview.json"]
    assert json.loads(cm["data"]["rookery-overview.json"]) == json.loads(DASHBOARD.read_text())
    # Text for text: the {{label}} legends were not read as templates.
    assert cm["data"]["rookery-overview.json"].rstrip("\n") == DASHBOARD.read_text().rstrip("\n")
    if case == "all-on":
        assert cm["metadata"]["labels"]["team"] == "mqtt"
        assert cm["metadata"]["namespace"] == "monitoring"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "Rookery"}


def test_dashboard_can_be_turned_off() -> None:
    assert not [
        o for o in render({"grafanaDashboard": {"enabled": False}}) if o["kind"] == "ConfigMap"
    ]


def test_prometheus_rule_groups_are_the_rules_file(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    rule = only(rendered["all-on"], "PrometheusRule")
    assert rule["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    assert not [o for o in rendered["default"] if o["kind"] in CRD_KINDS]


def test_chart_files_equal_their_sources() -> None:
    assert (CHART / "files" / "rookery-overview.json").read_bytes() == DASHBOARD.read_bytes()
    assert (CHART / "files" / "rookery-rules.yaml").read_bytes() == RULES.read_bytes()


def test_chart_crds_equal_the_repository_crds() -> None:
    repo = {p.name: p.read_bytes() for p in CRDS.glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in (CHART / "crds").iterdir()}
    assert "mqttclusters.rookery.dev.yaml" in repo
    assert chart == repo, "charts/rookery-operator/crds/ differs from crds/: run scripts/sync-chart"
    for text in repo.values():
        for crd in yaml.safe_load_all(text):
            if crd:
                validate(crd, "crds/")


def test_values_are_all_documented_in_the_readme() -> None:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [key for key in leaf_keys(values) if f"| `{key}` |" not in readme]
    assert not missing, (
        f"values missing from the table in charts/rookery-operator/README.md: {missing}"
    )


def test_notes_render() -> None:
    with helm_python.Chart.load(CHART) as chart:
        for values in CASES.values():
            notes = chart.render(values, name=RELEASE, namespace=NAMESPACE)[
                f"{RELEASE}/templates/NOTES.txt"
            ]
            assert "kind: MqttCluster" in notes and "apiVersion: rookery.dev/v1alpha1" in notes


# -- RBAC ------------------------------------------------------------------------------------------


def rbac(objects: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (o["kind"], o["metadata"]["name"]): o
        for o in objects
        if o["apiVersion"].startswith("rbac.")
    }


@pytest.mark.parametrize("case", CASES)
def test_rbac_is_least_privilege(rendered: dict[str, list[dict[str, Any]]], case: str) -> None:
    objects = rbac(rendered[case])
    granted: dict[tuple[str, str], set[str]] = {}
    for (kind, name), obj in objects.items():
        if kind not in {"Role", "ClusterRole"}:
            continue
        for rule in obj["rules"]:
            assert set(rule) == {"apiGroups", "resources", "verbs"}, (
                name,
                rule,
            )  # no resourceNames, nonResourceURLs
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (name, rule)
            if rule == LEASE_RULE:
                assert kind == "Role" and obj["metadata"]["namespace"] == NAMESPACE
                continue
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    key = (group, resource)
                    assert key in ALLOWED, f"{kind} {name} grants {rule['verbs']} on {key}"
                    assert set(rule["verbs"]) <= ALLOWED[key], (
                        f"{kind} {name}: {key} {rule['verbs']}"
                    )
                    granted.setdefault(key, set()).update(rule["verbs"])
    # Everything the operator needs is granted, in one place or the other.
    assert granted == ALLOWED
    # Every binding points at a role of the chart and at the operator's ServiceAccount only.
    for (kind, _), obj in objects.items():
        if kind.endswith("Binding"):
            assert (obj["roleRef"]["kind"], obj["roleRef"]["name"]) in objects
            assert obj["subjects"] == [
                {"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}
            ]


def test_rbac_scope_follows_watch_namespace(rendered: dict[str, list[dict[str, Any]]]) -> None:
    default = rbac(rendered["default"])
    assert ("ClusterRole", RELEASE) in default and ("Role", RELEASE) not in default
    scoped = rbac(rendered["all-on"])
    assert ("ClusterRole", RELEASE) not in scoped
    assert scoped[("Role", RELEASE)]["metadata"]["namespace"] == WATCHED
    assert scoped[("RoleBinding", RELEASE)]["metadata"]["namespace"] == WATCHED
    # The one cluster-wide grant left: reading CRDs (which are cluster-scoped).
    (cluster_role,) = [o for (k, _), o in scoped.items() if k == "ClusterRole"]
    assert cluster_role["rules"] == [
        {
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    for objects in (default, scoped):
        lease = objects[("Role", f"{RELEASE}-leader-election")]
        assert lease["metadata"]["namespace"] == NAMESPACE and lease["rules"] == [LEASE_RULE]


# -- manifests/install.yaml ------------------------------------------------------------------------


def test_sync_chart_check_passes() -> None:
    """manifests/install.yaml and the chart's copies are up to date (run scripts/sync-chart)."""
    result = subprocess.run(
        [sys.executable, str(SYNC), "--check"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_install_yaml_objects_validate() -> None:
    objects = install_objects()
    assert objects[0] == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "name": NAMESPACE,
            "labels": {
                "app.kubernetes.io/part-of": "rookery",
                "pod-security.kubernetes.io/enforce": "restricted",
            },
        },
    }
    kinds = [o["kind"] for o in objects]
    assert kinds[1] == "CustomResourceDefinition"
    assert kinds.index("Deployment") == len(kinds) - 1
    check_all(objects, "manifests/install.yaml")
    # The same objects as the chart renders by default, after the Namespace and the CRDs.
    crds = [d for p in sorted(CRDS.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d]
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    assert objects[1 : 1 + len(crds)] == crds
    assert sorted(objects[1 + len(crds) :], key=key) == sorted(render(None), key=key)


def test_sync_chart_check_names_a_stale_file(tmp_path: Path) -> None:
    """--check fails, and says which file, when install.yaml is stale: run on a copy of the files
    the script reads, with install.yaml edited."""
    for rel in (
        "scripts/sync-chart",
        "charts",
        "crds",
        "manifests",
        "monitoring/grafana",
        "monitoring/prometheus",
    ):
        src, dst = REPO / rel, tmp_path / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            dst.write_bytes(src.read_bytes())
    stale = tmp_path / "manifests" / "install.yaml"
    stale.write_text(stale.read_text().replace("replicas: 2", "replicas: 3"))
    result = subprocess.run(
        [sys.executable, str(tmp_path / "scripts" / "sync-chart"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "stale: manifests/install.yaml" in result.stderr
