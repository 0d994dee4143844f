#!/usr/bin/env python3
"""Writes rookery-alerts.yaml (a Prometheus Operator PrometheusRule) from rookery-rules.yaml (the
plain Prometheus rules file, the one to edit), so that the two never drift.

    python3 monitoring/prometheus/sync_rules.py           # rewrite rookery-alerts.yaml
    python3 monitoring/prometheus/sync_rules.py --check   # exit 1 if it is out of date

The rules file's `groups:` document becomes the manifest's `spec:` text for text (indented by two
spaces), so comments and block scalars survive; only the leading comment block is replaced by the
manifest's own header. Standard library only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RULES = HERE / "rookery-rules.yaml"
MANIFEST = HERE / "rookery-alerts.yaml"

HEADER = """\
# GENERATED from rookery-rules.yaml by monitoring/prometheus/sync_rules.py: edit that file and
# rerun the script (tests/interop/test_monitoring.py fails while the two differ).
#
# The Rookery alerting rules for the Prometheus Operator. Apply it in the namespace your
# Prometheus watches for rules:
#   kubectl apply -n monitoring -f monitoring/prometheus/rookery-alerts.yaml
# and give it the labels that Prometheus's ruleSelector asks for (kube-prometheus-stack selects
# `release: <its Helm release name>` by default). The rules expect the brokers' scrape job to be
# named "rookery": with a ServiceMonitor that is the name of the Service (or set jobLabel).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: rookery
  labels:
    app.kubernetes.io/name: rookery
    app.kubernetes.io/component: alerting
spec:
"""


def render(rules_text: str) -> str:
    """The manifest for the rules file's text."""
    lines = rules_text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("groups:")), None)
    if start is None:
        raise SystemExit(f"{RULES}: no top-level `groups:` line")
    body = [("  " + line) if line.strip() else "" for line in lines[start:]]
    return HEADER + "\n".join(body).rstrip("\n") + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="do not write; exit 1 if rookery-alerts.yaml differs"
    )
    args = parser.parse_args()
    want = render(RULES.read_text())
    have = MANIFEST.read_text() if MANIFEST.exists() else ""
    if args.check:
        if have != want:
            print(
                f"{MANIFEST.name} is out of date with {RULES.name}: run "
                "`python3 monitoring/prometheus/sync_rules.py`",
                file=sys.stderr,
            )
            return 1
        return 0
    if have != want:
        MANIFEST.write_text(want)
        print(f"wrote {MANIFEST}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
