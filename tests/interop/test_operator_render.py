"""`rookery-operator render` for every example in manifests/examples/, checked offline.

- Every object it prints of a built-in kind validates against the Kubernetes OpenAPI schemas
  that kubernetes-validate ships, in strict mode (an unknown field fails), for the oldest
  Kubernetes whose types the operator is built with (1.33, k8s-openapi's `earliest`) and the
  newest the package knows. Objects of other operators' kinds (cert-manager's Certificate, the
  Prometheus Operator's ServiceMonitor) are checked by hand: kubernetes-validate has no schema
  for them.
- Everything a pod mounts exists: a ConfigMap or Secret the output makes, or one the user
  provides (the Secrets given with --secrets).
- Every file path in the rendered rookery.toml is under a mount (the operator's `validate`
  already loads the file with the broker's own config loader).
- An invalid resource prints nothing and names the field.

The operator binary comes from $ROOKERY_OPERATOR_BIN (default: <repo>/target/debug/rookery-operator).
None of these tests uses conftest's broker fixtures.
"""

from __future__ import annotations

import base64
import os
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions

REPO = Path(__file__).resolve().parents[2]
# The examples, and the cluster the kind script applies.
EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml")) + [
    REPO / "e2e" / "kind" / "cluster-tls.yaml"
]
OPERATOR = Path(
    os.environ.get("ROOKERY_OPERATOR_BIN", REPO / "target" / "debug" / "rookery-operator")
)
SHIPPED = {".".join(v.split(".")[:2]) for v in all_versions()}
KUBE_VERSIONS = [v for v in ("1.33",) if v in SHIPPED] + [kubernetes_validate.latest_version()]
FOREIGN = {
    "cert-manager.io/v1/Certificate",
    "monitoring.coreos.com/v1/ServiceMonitor",
    "postgresql.cnpg.io/v1/Cluster",
}

# The Secrets the examples refer to, as a user would have created them.
USER_SECRETS = {
    "mqtt-passwords": {"passwd": ""},
    "mqtt-users": {"dashboard": "dashboard-password", "ingest": "ingest-password"},
    "mqtt-redis": {"url": "redis://:pw@redis.data.svc:6379/0"},
    "mqtt-postgres": {"url": "postgres://rookery:pw@pg.data.svc:5432/rookery"},
    "device-ca": {"ca.crt": "-----BEGIN CERTIFICATE-----\n"},
    "mqtt-coap-psk": {"psk": "sensor-9:00ff\n"},
}


def secrets_stream(tmp_path: Path) -> Path:
    docs = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": "iot"},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in keys.items()},
        }
        for name, keys in USER_SECRETS.items()
    ]
    path = tmp_path / "secrets.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return path


def render(
    example: Path, tmp_path: Path, crds: str = "cert-manager,service-monitor,cnpg"
) -> list[dict[str, Any]]:
    if not OPERATOR.exists():
        pytest.fail(f"{OPERATOR} is missing: run `cargo build -p rookery-operator` first")
    out = subprocess.run(
        [
            str(OPERATOR),
            "render",
            "-f",
            str(example),
            "--secrets",
            str(secrets_stream(tmp_path)),
            "--with-crds",
            crds,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    if crds == "cert-manager,service-monitor,cnpg":
        assert "note:" not in out.stderr, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def key(o: dict[str, Any]) -> str:
    return f"{o['apiVersion']}/{o['kind']}"


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_every_object_validates(example: Path, tmp_path: Path) -> None:
    objects = render(example, tmp_path)
    assert objects
    for o in objects:
        if key(o) in FOREIGN:
            assert o["metadata"]["name"] and o["spec"], o
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(o, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{o['kind']}/{o['metadata']['name']} on {version}: {e.path}: {e.message}")


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.stem for e in EXAMPLES])
def test_everything_mounted_exists_and_the_config_points_into_the_mounts(
    example: Path, tmp_path: Path
) -> None:
    objects = render(example, tmp_path)
    made = {(o["kind"], o["metadata"]["name"]) for o in objects}
    made |= {("Secret", name) for name in USER_SECRETS}
    # The brokers' StatefulSet is named after the cluster (managed stores have their own).
    (sts,) = [
        o
        for o in objects
        if o["kind"] == "StatefulSet"
        and o["metadata"]["labels"]["app.kubernetes.io/component"] == "broker"
    ]
    pod = sts["spec"]["template"]["spec"]
    for v in pod["volumes"]:
        if "secret" in v:
            assert ("Secret", v["secret"]["secretName"]) in made or any(
                o["kind"] == "Certificate" and o["spec"]["secretName"] == v["secret"]["secretName"]
                for o in objects
            ), v
        if "configMap" in v:
            assert ("ConfigMap", v["configMap"]["name"]) in made or v["name"] == "acl", v
    mounts = [m["mountPath"] for m in pod["containers"][0]["volumeMounts"]]
    (config,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-config")]
    toml = tomllib.loads(config["data"]["rookery.toml"])
    for k, v in toml.items():
        if isinstance(v, str) and v.startswith("/") and k != "ws_path":
            assert any(v.startswith(m + "/") or v == m for m in mounts), f"{k} = {v} is not mounted"


@pytest.mark.parametrize("crds", ["", "cnpg"])
def test_managed_stores_validate_with_and_without_cloudnativepg(crds: str, tmp_path: Path) -> None:
    objects = render(REPO / "manifests" / "examples" / "managed-stores.yaml", tmp_path, crds or "cert-manager")
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    assert ("StatefulSet", "mqtt-redis") in kinds
    assert ("Secret", "mqtt-redis") in kinds
    if crds == "cnpg":
        assert ("Cluster", "mqtt-postgres") in kinds
        assert ("StatefulSet", "mqtt-postgres") not in kinds
    else:
        assert ("StatefulSet", "mqtt-postgres") in kinds
    for o in objects:
        if key(o) in FOREIGN:
            assert o["spec"], o
            continue
        kubernetes_validate.validate(o, KUBE_VERSIONS[-1], strict=True)


def test_an_invalid_resource_names_its_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: rookery.dev/v1alpha1\nkind: MqttCluster\nmetadata: {name: x}\n"
        "spec: {listeners: {mqtts: {enabled: true, port: 8883}}}\n"
    )
    out = subprocess.run(
        [str(OPERATOR), "render", "-f", str(bad)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 2
    assert out.stdout == ""
    assert "spec.tls" in out.stderr, out.stderr
