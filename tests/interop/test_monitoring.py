"""The monitoring assets in monitoring/: the Grafana dashboard, the alerting rules (plain and as a
PrometheusRule) and their promtool unit tests, checked with real tools, and end to end against a
real broker scraped by a real Prometheus.

Needs the Debian package `prometheus` (the `promtool` and `prometheus` commands): its absence is
a failure, not a skip. The end-to-end tests need the broker's `--metrics-listen` endpoint.
"""

from __future__ import annotations

import copy
import enum
import json
import re
import shutil
import socket
import subprocess
import sys
import time
import types
import typing
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from conftest import Broker
from mqtt_util import V5, V311, Client

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"
CONTRACT = REPO / "docs" / "operations.md"
DASHBOARD = MONITORING / "grafana" / "rookery-overview.json"
RULES = MONITORING / "prometheus" / "rookery-rules.yaml"
MANIFEST = MONITORING / "prometheus" / "rookery-alerts.yaml"
RULE_TESTS = MONITORING / "prometheus" / "rookery-alerts.test.yaml"
SYNC = MONITORING / "prometheus" / "sync_rules.py"
RENDER = MONITORING / "render_dashboard.py"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SELECTOR = 'job="$job", instance=~"$instance"'
JOB = "rookery"
# Series Prometheus makes itself for every target; not the broker's to export.
PROMETHEUS_OWN = {"up"}
DURATION = re.compile(r"^(0|([0-9]+(ms|s|m|h|d|w|y))+)$")


def command(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` not found: install the Debian package prometheus "
            "(apt-get install -y prometheus), which provides promtool and the prometheus server"
        )
    return path


def run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


# -- the metric contract and the names the assets use --------------------------------------------


@dataclass
class Contract:
    families: dict[str, str] = field(default_factory=dict)  # name -> type column
    samples: set[str] = field(default_factory=set)  # names a query may use
    later: set[str] = field(default_factory=set)  # "(clustering, later)"


def contract() -> Contract:
    """Parses the metrics table of docs/operations.md (the "## Metrics" section)."""
    c = Contract()
    text = CONTRACT.read_text()
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    for line in section.splitlines():
        if not line.startswith("|") or line.startswith("|---") or line.startswith("| name"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        kind, meaning = cells[1], cells[3]
        for name in re.findall(r"\b[a-z_][a-z0-9_]*\b", cells[0]):
            c.families[name] = kind
            names = {name}
            if kind.startswith("histogram"):
                names = {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
            c.samples |= names
            if "(clustering, later)" in meaning:
                c.later |= names
    return c


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(d: dict) -> list[dict]:
    """Every panel, including those nested in collapsed rows."""
    out = []
    for p in d.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def dashboard_exprs(d: dict) -> list[tuple[dict, dict]]:
    return [(p, t) for p in panels(d) for t in p.get("targets", []) if "expr" in t]


def rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


METRIC_LIKE = re.compile(r"\b(?:rookery|process)_[a-z0-9_]+\b|\bup\b")
SELECTOR_NAME = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: rookery_*/process_*/up, and anything written as
    `name{...}` (so a misspelt or foreign metric is caught too). Strings are skipped."""
    bare = STRING.sub('""', expr)
    return set(METRIC_LIKE.findall(bare)) | set(SELECTOR_NAME.findall(bare))


def referenced_names() -> dict[str, set[str]]:
    """metric name -> where it is used."""
    where: dict[str, set[str]] = {}
    for p, t in dashboard_exprs(dashboard()):
        for n in metric_names(t["expr"]):
            where.setdefault(n, set()).add(f"panel {p['id']} {p['title']!r}")
    for r in rules():
        for n in metric_names(r["expr"]):
            where.setdefault(n, set()).add(f"alert {r['alert']}")
    return where


# -- rules ------------------------------------------------------------------------------------


def test_promtool_check_rules():
    r = run([command("promtool"), "check", "rules", str(RULES)])
    assert r.returncode == 0, f"promtool check rules failed:\n{r.stdout}\n{r.stderr}"
    assert "SUCCESS" in r.stdout


def test_promtool_rule_unit_tests():
    r = run([command("promtool"), "test", "rules", str(RULE_TESTS)])
    assert r.returncode == 0, f"promtool test rules failed:\n{r.stdout}\n{r.stderr}"
    assert "SUCCESS" in r.stdout


def test_promtool_tests_cover_every_alert():
    """Every alert has a case where it fires and the healthy group checks it stays quiet."""
    doc = yaml.safe_load(RULE_TESTS.read_text())
    fired = {
        case["alertname"]
        for group in doc["tests"]
        for case in group.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    healthy = next(g for g in doc["tests"] if g.get("name") == "healthy broker")
    quiet = {c["alertname"] for c in healthy["alert_rule_test"] if not c.get("exp_alerts")}
    alerts = {r["alert"] for r in rules()}
    assert alerts - fired == set(), "alerts never seen firing in rookery-alerts.test.yaml"
    assert alerts - quiet == set(), "alerts not checked quiet in the healthy group"


def test_prometheusrule_manifest_matches_rules_file():
    r = run([sys.executable, str(SYNC), "--check"])
    assert r.returncode == 0, r.stderr
    manifest = yaml.safe_load(MANIFEST.read_text())
    assert manifest["apiVersion"] == "monitoring.coreos.com/v1"
    assert manifest["kind"] == "PrometheusRule"
    assert manifest["metadata"]["name"]
    assert manifest["spec"] == yaml.safe_load(RULES.read_text())


def test_alert_rules_are_complete():
    """What the PrometheusRule CRD and our conventions ask of each rule."""
    doc = yaml.safe_load(RULES.read_text())
    names = [r.get("alert") for r in rules()]
    assert len(names) == len(set(names)), "duplicate alert names"
    group_names = [g["name"] for g in doc["groups"]]
    assert len(group_names) == len(set(group_names)), "duplicate group names"
    for r in rules():
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r
        assert r.get("alert") and r.get("expr"), r
        assert DURATION.match(str(r.get("for", ""))), f"{r['alert']}: for {r.get('for')!r}"
        assert r["labels"].get("severity") in {"critical", "warning", "info"}, r["alert"]
        assert set(r["annotations"]) >= {"summary", "description"}, r["alert"]
    expected = {
        "RookeryDown", "RookeryAbsent", "RookeryNotReady", "RookeryStoreDegraded",
        "RookeryStoreErrors", "RookeryQueueFullDrops", "RookeryDeliveryLatencyHigh",
        "RookeryConnectionsNearLimit", "RookeryMemoryPressure", "RookeryAuthFailureSpike",
        "RookeryTLSHandshakeFailureSpike", "RookeryProtocolErrorSpike",
        "RookeryClusterLinkDown", "RookeryFlappingBans",
    }
    assert expected <= set(names)


# -- the dashboard ----------------------------------------------------------------------------


def test_dashboard_structure():
    d = dashboard()
    assert d["uid"] and d["title"]
    assert d["schemaVersion"] >= 39
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("job", "instance"):
        assert variables[name]["type"] == "query"
        assert variables[name]["datasource"] == DATASOURCE

    ids = [p.get("id") for p in panels(d)]
    assert all(isinstance(i, int) for i in ids), ids
    assert len(ids) == len(set(ids)), "panel ids are not unique"
    boxes = []
    for p in panels(d):
        where = f"panel {p.get('id')} {p.get('title')!r}"
        assert p.get("type"), where
        assert p.get("title"), where
        g = p.get("gridPos")
        assert g is not None and set(g) >= {"x", "y", "w", "h"}, where
        assert all(isinstance(g[k], int) for k in "xywh"), where
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["y"] >= 0, where
        assert g["x"] + g["w"] <= 24, f"{where} is wider than the 24-column grid"
        boxes.append((where, g))
        if p["type"] == "row":
            assert g["w"] == 24 and g["h"] == 1, where
            continue
        assert p.get("datasource") == DATASOURCE, where
        targets = p.get("targets")
        assert targets, f"{where} has no targets"
        refs = [t.get("refId") for t in targets]
        assert all(refs) and len(refs) == len(set(refs)), f"{where}: refIds {refs}"
        for t in targets:
            assert t.get("datasource") == DATASOURCE, where
            assert t.get("expr", "").strip(), where
    for i, (wa, a) in enumerate(boxes):
        for wb, b in boxes[i + 1 :]:
            overlap = (
                a["x"] < b["x"] + b["w"]
                and b["x"] < a["x"] + a["w"]
                and a["y"] < b["y"] + b["h"]
                and b["y"] < a["y"] + a["h"]
            )
            assert not overlap, f"{wa} and {wb} overlap: {a} {b}"


def test_dashboard_queries_follow_conventions():
    """Every selector filters on $job and $instance; every range is $__rate_interval."""
    for p, t in dashboard_exprs(dashboard()):
        expr, where = t["expr"], f"panel {p['id']} {p['title']!r}: {t['expr']}"
        for m in re.finditer(r"\b(?:rookery|process)_[a-z0-9_]+\b", expr):
            assert expr[m.end() :].startswith("{" + SELECTOR), where
        for rng in re.findall(r"\[([^\]]*)\]", expr):
            assert rng == "$__rate_interval", where
        for fn in re.findall(r"\b(rate|increase|irate)\(", expr):
            assert fn == "rate", where


def test_dashboard_and_rules_use_only_contract_metrics():
    c = contract()
    unknown = {
        name: where
        for name, where in referenced_names().items()
        if name not in c.samples and name not in PROMETHEUS_OWN
    }
    assert not unknown, f"metric names not in {CONTRACT.name}: {unknown}"


def test_dashboard_shows_every_contract_metric():
    c = contract()
    used = set(referenced_names())
    missing = []
    for name, kind in c.families.items():
        forms = {name} if not kind.startswith("histogram") else {f"{name}_bucket"}
        if not forms & used:
            missing.append(name)
    assert not missing, f"contract metrics the dashboard does not show: {missing}"


# Validation against Grafana's dashboard schema, through grafana-foundation-sdk: Grafana Labs'
# Python types generated from Grafana's own CUE schema (the 11.2 build, schemaVersion 39). Its
# decoder ignores unknown keys and does not check values, so on top of decoding we check that
# nothing was dropped (every key is in the schema) and that every value has the type, enum member
# or literal the schema gives it.


def _schema_roundtrip_errors(orig: object, rt: object, path: str) -> list[str]:
    if isinstance(orig, dict):
        if not isinstance(rt, dict):
            return [f"{path}: object decoded as {type(rt).__name__}"]
        errs = []
        for k, v in orig.items():
            if k not in rt:
                if v is not None:
                    errs.append(f"{path}.{k}: not in Grafana's schema")
            else:
                errs += _schema_roundtrip_errors(v, rt[k], f"{path}.{k}")
        return errs
    if isinstance(orig, list):
        if not isinstance(rt, list) or len(rt) != len(orig):
            return [f"{path}: list not preserved"]
        return [e for i, (a, b) in enumerate(zip(orig, rt)) for e in
                _schema_roundtrip_errors(a, b, f"{path}[{i}]")]
    same_number = (
        isinstance(orig, (int, float)) and isinstance(rt, (int, float)) and float(orig) == float(rt)
    )
    if orig != rt and not same_number:
        return [f"{path}: {orig!r} decoded as {rt!r}"]
    return []


def _is_model(value: object) -> bool:
    return type(value).__module__.startswith("grafana_foundation_sdk.models") and not isinstance(
        value, enum.Enum
    )


def _check_type(value: object, hint: object, path: str, errs: list[str]) -> bool:
    """True when `value` has the shape of `hint`; deeper problems are appended to `errs`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any or hint is object:
        if _is_model(value):
            _check_model(value, path, errs)
        return True
    if origin in (typing.Union, types.UnionType):
        for alternative in args:
            sub: list[str] = []
            if _check_type(value, alternative, path, sub):
                errs.extend(sub)
                return True
        errs.append(f"{path}: {value!r} is none of {hint}")
        return False
    if hint is type(None):
        return value is None
    if value is None:
        errs.append(f"{path}: null where the schema wants {hint}")
        return False
    if origin is typing.Literal:
        if value in args:
            return True
        errs.append(f"{path}: {value!r} is not one of {args}")
        return False
    if origin is list:
        if not isinstance(value, list):
            return False
        for i, item in enumerate(value):
            _check_type(item, args[0], f"{path}[{i}]", errs)
        return True
    if origin is dict:
        if not isinstance(value, dict):
            return False
        for k, item in value.items():
            _check_type(item, args[1], f"{path}.{k}", errs)
        return True
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        raw = value.value if isinstance(value, enum.Enum) else value
        if raw in {e.value for e in hint}:
            return True
        errs.append(f"{path}: {value!r} is not a {hint.__name__} ({[e.value for e in hint]})")
        return False
    if hint is bool:
        return type(value) is bool
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if isinstance(hint, type):
        if not isinstance(value, hint):
            return False
        if _is_model(value):
            _check_model(value, path, errs)
        return True
    errs.append(f"{path}: cannot check against {hint!r}")
    return False


def _check_model(obj: object, path: str, errs: list[str]) -> None:
    for name, hint in typing.get_type_hints(type(obj)).items():
        value = getattr(obj, name, None)
        sub: list[str] = []
        if not _check_type(value, hint, f"{path}.{name}", sub) and not sub:
            sub.append(f"{path}.{name}: {value!r} is not {hint}")
        errs.extend(sub)


def grafana_schema_errors(d: dict) -> list[str]:
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()
    try:
        model = Dashboard.from_json(copy.deepcopy(d))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        return [f"Grafana's schema cannot decode the dashboard: {type(e).__name__}: {e}"]
    errs = _schema_roundtrip_errors(d, json.loads(JSONEncoder().encode(model)), "$")
    _check_model(model, "$", errs)
    return errs


def test_dashboard_matches_grafana_schema():
    errs = grafana_schema_errors(dashboard())
    assert not errs, "\n".join(errs)


@pytest.mark.parametrize(
    "break_it",
    [
        lambda d: d["panels"][1]["gridPos"].__setitem__("h", "4"),
        lambda d: d["panels"][1].__setitem__("colour", "red"),
        lambda d: d["panels"][1]["options"].__setitem__("textMode", "loud"),
        lambda d: d["templating"]["list"][1].__setitem__("type", "guess"),
        lambda d: d["panels"][1]["targets"][0].__setitem__("format", "csv"),
    ],
    ids=["gridPos.h string", "unknown key", "bad stat textMode", "bad variable type",
         "bad query format"],
)
def test_grafana_schema_check_catches(break_it):
    """The schema check above is not a no-op."""
    d = dashboard()
    break_it(d)
    assert grafana_schema_errors(d)


# -- end to end: broker -> Prometheus -> every query ------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 10, headers: dict[str, str] | None = None) -> bytes:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.read()


class Prometheus:
    """A `prometheus` server process scraping the broker every second."""

    def __init__(self, workdir: Path, target: str) -> None:
        self.workdir = workdir
        self.target = target
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.log_path = workdir / "prometheus.log"

    def start(self) -> Prometheus:
        binary = command("prometheus")
        config = self.workdir / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {
                        "scrape_interval": "1s",
                        "scrape_timeout": "1s",
                        "evaluation_interval": "1s",
                    },
                    "rule_files": [str(RULES)],
                    "scrape_configs": [
                        {"job_name": JOB, "static_configs": [{"targets": [self.target]}]}
                    ],
                }
            )
        )
        for attempt in range(3):  # the free port may be taken by the time Prometheus binds it
            port = free_port()
            self.url = f"http://127.0.0.1:{port}"
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [
                        binary,
                        f"--config.file={config}",
                        f"--storage.tsdb.path={self.workdir / f'tsdb-{attempt}'}",
                        f"--web.listen-address=127.0.0.1:{port}",
                        "--storage.tsdb.retention.time=1h",
                    ],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=self.workdir,
                )
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    http_get(f"{self.url}/-/ready", timeout=1)
                    return self
                except (urllib.error.URLError, OSError):
                    time.sleep(0.1)
            self.stop()
            if "address already in use" not in self.log():
                break
        pytest.fail(f"prometheus did not become ready:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-8000:]
        except OSError as e:
            return f"<no log: {e}>"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def api(self, path: str, **params: str | list[str]) -> dict:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params, doseq=True)}"
        try:
            body = http_get(url)
        except urllib.error.HTTPError as e:
            body = e.read()
        return json.loads(body)

    def query(self, expr: str) -> dict:
        return self.api("/api/v1/query", query=expr)

    def value(self, expr: str) -> float | None:
        r = self.query(expr)
        assert r["status"] == "success", f"{expr}: {r}"
        result = r["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, expr: str, ok: typing.Callable[[float | None], bool], timeout: float = 20
                 ) -> float | None:
        deadline = time.monotonic() + timeout
        while True:
            v = self.value(expr)
            if ok(v) or time.monotonic() > deadline:
                return v
            time.sleep(0.25)


@dataclass
class Stack:
    broker: Broker
    metrics_url: str
    instance: str
    prometheus: Prometheus
    published: int
    clients: list[Client]


N_PER_QOS = 20


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A broker with --metrics-listen, a Prometheus scraping it every second with the rules
    loaded, and some MQTT traffic (3.1.1 and 5.0, QoS 0/1/2, a retained message). The clients
    stay connected until the module is done."""
    command("prometheus")
    tmp = tmp_path_factory.mktemp("monitoring")
    metrics_port = free_port()
    instance = f"127.0.0.1:{metrics_port}"
    # Clustered (with no peers), with the CoAP gateway (plain and DTLS) and a bridge (to a port where nothing
    # listens), so that the cluster link, CoAP and bridge metrics are declared too.
    config = tmp / "bridge.toml"
    config.write_text(
        '[[bridge]]\nname = "nowhere"\naddress = "127.0.0.1:1"\n'
        'topics = [{ pattern = "bridged/#" }]\n'
    )
    psk = tmp / "psk"
    psk.write_text("dev1:00ff\n")
    broker = Broker(
        tmp / "broker.log",
        [
            "--metrics-listen", instance, "--cluster-listen", "127.0.0.1:0",
            "--coap-listen", "127.0.0.1:0", "--coaps-listen", "127.0.0.1:0",
            "--psk-file", str(psk), "--config", str(config),
        ],
    )
    prometheus = Prometheus(tmp, instance)
    clients: list[Client] = []
    try:
        broker.start()
        metrics_url = f"http://{instance}/metrics"
        deadline = time.monotonic() + 10
        while True:
            try:
                http_get(metrics_url, timeout=1)
                break
            except (urllib.error.URLError, OSError) as e:
                if time.monotonic() > deadline or broker.proc.poll() is not None:
                    pytest.fail(f"no /metrics on {instance} ({e}):\n{broker.log()[-4000:]}")
                time.sleep(0.1)
        prometheus.start()

        def client(version: int) -> Client:
            c = Client(broker.port, version=version)
            clients.append(c)
            return c.connect()

        sub5, sub3, pub = client(V5), client(V311), client(V5)
        assert sub5.subscribe("monitoring/#", 2) == [2]
        assert sub3.subscribe("monitoring/#", 1) == [1]
        published = 0
        for qos in (0, 1, 2):
            for i in range(N_PER_QOS):
                pub.publish(f"monitoring/q{qos}", b"m" * 100 + str(i).encode(), qos=qos)
                published += 1
        pub.publish("monitoring/retained", b"kept", qos=1, retain=True)
        published += 1
        sub5.expect_n(published)
        sub3.expect_n(published)
        done = time.time()

        # Wait until Prometheus has scraped the broker at least twice since the traffic ended
        # and three times in all (its first scrape comes some 5 s after it starts).
        deadline = time.monotonic() + 30
        while True:
            targets = prometheus.api("/api/v1/targets")["data"]["activeTargets"]
            t = next((t for t in targets if t["labels"].get("job") == JOB), None)
            scrapes = prometheus.value(f'count_over_time(up{{job="{JOB}"}}[1m])') or 0
            if (
                t
                and t["health"] == "up"
                and _rfc3339(t["lastScrape"]) > done + 1.5
                and scrapes >= 3
            ):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"Prometheus did not scrape {instance}: {t}\n{prometheus.log()}")
            time.sleep(0.25)
        yield Stack(broker, metrics_url, instance, prometheus, published, clients)
    finally:
        for c in clients:
            try:
                c.close()
            except Exception:  # noqa: BLE001 - teardown must reach everything
                pass
        prometheus.stop()
        broker.stop()


def _rfc3339(text: str) -> float:
    from datetime import datetime

    text = re.sub(r"(\.\d{6})\d+", r"\1", text).replace("Z", "+00:00")
    return datetime.fromisoformat(text).timestamp()


@pytest.fixture
def e2e(request: pytest.FixtureRequest, stack: Stack) -> Stack:
    """The stack, with the broker log attached to a failing test's report (conftest's hook)."""
    request.node._rookery_brokers = [stack.broker]
    return stack


def substitute(expr: str, s: Stack) -> str:
    return (
        expr.replace("$__rate_interval", "10s")
        .replace("${datasource}", "prometheus")
        .replace("$job", JOB)
        .replace("$instance", s.instance)
    )


def test_every_dashboard_query_runs(e2e: Stack):
    failures = []
    for p, t in dashboard_exprs(dashboard()):
        expr = substitute(t["expr"], e2e)
        r = e2e.prometheus.query(expr)
        if r.get("status") != "success":
            failures.append(f"panel {p['id']} {p['title']!r} {t['refId']}: {expr}\n  -> {r}")
    assert not failures, "\n".join(failures)


def test_dashboard_variables_find_the_broker(e2e: Stack):
    jobs = e2e.prometheus.api("/api/v1/label/job/values", **{"match[]": "rookery_build_info"})
    assert JOB in jobs["data"], jobs
    instances = e2e.prometheus.api(
        "/api/v1/label/instance/values", **{"match[]": f'rookery_build_info{{job="{JOB}"}}'}
    )
    assert e2e.instance in instances["data"], instances


# Panels that must show data for a running broker with connected clients, and a check of the
# value each one shows (None: any value).
CORE_PANELS: dict[str, typing.Callable[[float], bool] | None] = {
    "Ready": lambda v: v == 1,
    "Version": lambda v: v == 1,
    "Uptime": lambda v: v > 0,
    "Connections": lambda v: v >= 3,
    "Sessions": lambda v: v >= 3,
    "Subscriptions": lambda v: v >= 2,
    "Retained messages": lambda v: v >= 1,
    "Queued messages": None,
    "In-flight messages": None,
    "Store": lambda v: v == 0,
    "Memory": lambda v: v == 0,
    "Resident memory": lambda v: v > 0,
    "File descriptors": lambda v: v > 0,
}


def test_core_panels_show_data(e2e: Stack):
    titles = {p["title"]: p for p in panels(dashboard()) if p["type"] != "row"}
    problems = []
    for title, check in CORE_PANELS.items():
        expr = substitute(titles[title]["targets"][0]["expr"], e2e)
        r = e2e.prometheus.query(expr)
        assert r["status"] == "success", f"{expr}: {r}"
        # The panel's total over its series (Sessions is by state, and so on).
        v = sum(float(x["value"][1]) for x in r["data"]["result"]) if r["data"]["result"] else None
        if v is None:
            problems.append(f"{title!r}: no data for {expr}")
        elif check is not None and not check(v):
            problems.append(f"{title!r}: unexpected value {v} for {expr}")
    assert not problems, "\n".join(problems)


def test_traffic_is_counted(e2e: Stack):
    prom, n = e2e.prometheus, e2e.published
    sel = f'job="{JOB}"'
    received = prom.wait_for(f"sum(rookery_messages_received_total{{{sel}}})",
                             lambda v: v is not None and v >= n)
    assert received is not None and received >= n, f"received {received}, published {n}"
    sent = prom.wait_for(f"sum(rookery_messages_sent_total{{{sel}}})",
                         lambda v: v is not None and v >= 2 * n)
    assert sent is not None and sent >= 2 * n, f"sent {sent}, two subscribers of {n}"
    for qos, least in (("0", N_PER_QOS), ("1", N_PER_QOS + 1), ("2", N_PER_QOS)):
        v = prom.value(f'sum(rookery_messages_received_total{{{sel}, qos="{qos}"}})')
        assert v is not None and v >= least, f"QoS {qos}: {v}"
    for protocol, least in (("5.0", 2), ("3.1.1", 1)):
        v = prom.value(f'sum(rookery_connections{{{sel}, protocol="{protocol}"}})')
        assert v is not None and v >= least, f"protocol {protocol}: {v}"
    bytes_in = prom.value(f"sum(rookery_bytes_received_total{{{sel}}})")
    assert bytes_in is not None and bytes_in >= 100 * n
    latency = prom.value(f"sum(rookery_delivery_latency_seconds_count{{{sel}}})")
    assert latency is not None and latency >= 1


def test_rules_load_and_evaluate(e2e: Stack):
    want = {r["alert"] for r in rules()}
    # A healthy broker: these must be (or, right after the first scrape, become) inactive.
    quiet = ("RookeryDown", "RookeryAbsent", "RookeryNotReady", "RookeryStoreDegraded")
    deadline = time.monotonic() + 20
    while True:
        groups = e2e.prometheus.api("/api/v1/rules")["data"]["groups"]
        loaded = {r["name"]: r for g in groups for r in g["rules"]}
        evaluated = bool(groups) and all(
            not g["lastEvaluation"].startswith("0001-") for g in groups
        )
        settled = all(loaded.get(n, {}).get("state") == "inactive" for n in quiet)
        if (set(loaded) == want and evaluated and settled) or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert set(loaded) == want
    bad = {n: r.get("lastError") for n, r in loaded.items() if r["health"] != "ok"}
    assert not bad, f"rules that fail to evaluate: {bad}"
    for name in quiet:
        assert loaded[name]["state"] == "inactive", f"{name} is {loaded[name]['state']}"


TYPE_LINE = re.compile(r"^# TYPE (\S+) (\S+)")


def exported_names(text: str) -> set[str]:
    """Sample names in an exposition (Prometheus text or OpenMetrics), including those a family
    declares with # TYPE but has no sample for yet (a labelled counter nothing has bumped)."""
    names = set()
    suffixes = {
        "counter": ["_total"],
        "histogram": ["_bucket", "_sum", "_count"],
        "gaugehistogram": ["_bucket", "_gsum", "_gcount"],
        "summary": ["", "_sum", "_count"],
        "info": ["_info"],
    }
    for line in text.splitlines():
        m = TYPE_LINE.match(line)
        if m:
            family, kind = m.groups()
            for suffix in suffixes.get(kind, [""]):
                names.add(family if family.endswith(suffix) and suffix else family + suffix)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def test_every_referenced_metric_is_exported(e2e: Stack):
    text = http_get(
        e2e.metrics_url,
        headers={"Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"},
    ).decode()
    exported = exported_names(text)
    later = contract().later
    missing = {
        name: sorted(where)
        for name, where in referenced_names().items()
        if name not in exported and name not in later and name not in PROMETHEUS_OWN
    }
    assert not missing, f"used by the dashboard or the rules but not in /metrics: {missing}"


SAMPLE_LINE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL_PAIR = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')


def test_histograms_are_consistent(e2e: Stack):
    """The latency panels and alerts use histogram_quantile, which is only right when each
    series' buckets are cumulative, never decrease with `le`, and end in an +Inf bucket equal to
    its count."""
    text = http_get(
        e2e.metrics_url,
        headers={"Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"},
    ).decode()
    c = contract()
    histograms = [f for f, kind in c.families.items() if kind.startswith("histogram")]
    buckets: dict[tuple[str, tuple], list[tuple[float, float]]] = {}
    counts: dict[tuple[str, tuple], float] = {}
    for line in text.splitlines():
        m = SAMPLE_LINE.match(line)
        if not m or line.startswith("#"):
            continue
        name, labels_text, value = m.groups()
        labels = dict(LABEL_PAIR.findall(labels_text or ""))
        for family in histograms:
            if name == f"{family}_bucket":
                le = labels.pop("le")
                key = (family, tuple(sorted(labels.items())))
                bound = float("inf") if le == "+Inf" else float(le)
                buckets.setdefault(key, []).append((bound, float(value)))
            elif name in (f"{family}_count", f"{family}_gcount"):
                counts[(family, tuple(sorted(labels.items())))] = float(value)
    problems = []
    for family in histograms:
        if not any(k[0] == family for k in buckets):
            problems.append(f"{family}: no _bucket series")
    for key, series in buckets.items():
        series.sort()
        values = [v for _, v in series]
        where = f"{key[0]}{dict(key[1]) or ''}"
        if series[-1][0] != float("inf"):
            problems.append(f"{where}: no +Inf bucket")
        if any(b < a for a, b in zip(values, values[1:])):
            problems.append(f"{where}: buckets decrease with le: {series}")
        if key in counts and values[-1] != counts[key]:
            problems.append(
                f"{where}: +Inf bucket {values[-1]} != count {counts[key]} (buckets {series})"
            )
    assert not problems, "\n".join(problems)


def test_render_dashboard_png(e2e: Stack, tmp_path: Path):
    out = tmp_path / "dashboard.png"
    r = run(
        [
            sys.executable, str(RENDER), "--prometheus", e2e.prometheus.url, "--last", "1m",
            "--scrape-interval", "1s", "--job", JOB, "--instance", e2e.instance,
            "--output", str(out),
        ],
        timeout=120,
    )
    assert r.returncode == 0, f"render_dashboard.py failed:\n{r.stdout}\n{r.stderr}"
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width == 1800 and height > 1000, (width, height)
