"""The alert rules, the Prometheus configuration and the dashboard, checked offline by
Debian's ``promtool``: the rules parse and pass their unit tests (alerts_test.yml), every
alert has a test and a runbook entry, the configuration loads, and every panel names the
provisioned datasource. tests/deploy/test_prometheus_live.py evaluates them for real."""

from __future__ import annotations

import re
from pathlib import Path

from .tools import (
    DEPLOY,
    LOOPBACK,
    PROMETHEUS_DIR,
    ROOT,
    dashboard,
    panels,
    run,
    scrape_config,
    tool,
)

ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
OPERATIONS = ROOT / "docs" / "operations.md"


def alert_names() -> list[str]:
    return re.findall(r"^\s+- alert: (\w+)$", ALERTS.read_text(), flags=re.M)


def test_rules_pass_promtool_check() -> None:
    done = run([tool("promtool"), "check", "rules", str(ALERTS)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in done.stdout + done.stderr


def test_rules_pass_their_unit_tests() -> None:
    done = run([tool("promtool"), "test", "rules", ALERTS_TEST.name], cwd=PROMETHEUS_DIR)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_is_unit_tested_and_has_a_runbook_entry() -> None:
    names = alert_names()
    assert len(names) >= 6 and len(set(names)) == len(names), names
    tested = set(re.findall(r"alertname: (\w+)", ALERTS_TEST.read_text()))
    assert set(names) <= tested, f"alerts without a unit test: {set(names) - tested}"
    runbook = OPERATIONS.read_text()
    headings = {h.strip().lower() for h in re.findall(r"^#+ (.+)$", runbook, flags=re.M)}
    for name in names:
        assert name.lower() in headings, f"docs/operations.md has no '### {name}' heading"
        assert f"docs/operations.md#{name.lower()}" in ALERTS.read_text()


def test_prometheus_config_loads(tmp_path: Path) -> None:
    key = tmp_path / "metrics_key"
    key.write_text("a-key-for-the-check\n")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        scrape_config(
            api_target=f"{LOOPBACK}:8000",
            key_file=key,
            redis_url=f"redis://{LOOPBACK}:6379",
            exporter=f"{LOOPBACK}:9121",
            prometheus=f"{LOOPBACK}:9090",
        )
    )
    done = run([tool("promtool"), "check", "config", str(config)])
    assert done.returncode == 0, done.stdout + done.stderr
    # and the shipped file as it is (its secret file exists only in the container)
    shipped = run(
        [tool("promtool"), "check", "config", "--syntax-only", "prometheus.yml"],
        cwd=PROMETHEUS_DIR,
    )
    assert shipped.returncode == 0, shipped.stdout + shipped.stderr


def test_dashboard_panels_use_the_provisioned_datasource() -> None:
    provisioned = (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    uid = re.search(r"uid: (\S+)", provisioned)
    assert uid is not None
    board = dashboard()
    assert board["uid"] and board["title"]
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels(board):
        assert panel["datasource"]["uid"] == uid.group(1), panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid.group(1), panel["title"]
            assert target["expr"].strip(), panel["title"]
