"""GET /dashboard: a self-contained page (no CDN, no inline script) that anyone may load."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from .conftest import MakeClient


def test_the_page_and_its_script_are_public_and_self_contained(make_client: MakeClient) -> None:
    client = make_client()  # keys configured: the page still loads without one
    page = client.get("/dashboard")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp
    html = page.text
    for element in (
        'id="chart-backlog"',
        'id="chart-rate"',
        'id="chart-projlag"',
        'id="deadletters"',
        'id="projections"',
        'id="apikey"',
    ):
        assert element in html
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S)
    assert scripts == [(' src="/dashboard/app.js"', "")]  # no inline script
    js = client.get("/dashboard/app.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    for text in (html, js.text):
        assert not re.search(r"(?:https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), (
            "the page must not load anything from another host"
        )
    # what the script polls and posts exist
    assert "/api/ops/overview" in js.text and "/requeue" in js.text
    assert "innerHTML" not in js.text  # data reaches the page through textContent only


def test_the_page_and_script_ship_as_package_data() -> None:
    root = Path(__file__).resolve().parents[2]
    config = tomllib.loads((root / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["api"]
    shipped = {p.name for pattern in patterns for p in (root / "api").glob(pattern)}
    assert {"dashboard.html", "dashboard.js"} <= shipped
