"""/docs: Swagger UI served from the package (service/api/docs_page.py), nothing from a CDN; the browser test with
other origins unreachable is in test_playground_browser.py."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.api.docs_page import ASSETS, DOCS_DIR, SWAGGER_UI_FILES
from service.settings import Settings

REPO = Path(__file__).resolve().parents[2]
PAGE_DIR = REPO / "service" / DOCS_DIR


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    # No model is loaded (the lifespan does not run outside a `with`): the pages need none.
    return TestClient(create_app(Settings(checkpoint=tmp_path_factory.mktemp("none"))))


@pytest.mark.parametrize("path", ["/docs", *[f"/docs/{name}" for name in (*SWAGGER_UI_FILES, "init.js")]])
def test_the_docs_page_and_swagger_ui_are_served_here_with_a_same_origin_csp(client, path):
    response = client.get(path)
    assert response.status_code == 200 and response.content
    csp = response.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "script-src 'self';" in csp and "https:" not in csp
    assert response.headers["etag"] and response.headers["cache-control"] == "no-cache"
    assert client.get(path, headers={"If-None-Match": response.headers["etag"]}).status_code == 304


def test_the_page_loads_only_its_own_files_and_no_cdn(client):
    html = client.get("/docs").text
    referenced = set(re.findall(r'(?:src|href)="([^"]+)"', html))
    assert referenced == {"docs/swagger-ui.css", "docs/swagger-ui-bundle.js", "docs/init.js", "playground/favicon.svg"}
    assert not re.search(r"https?://", html)  # no absolute URL: nothing from another origin
    assert "<script>" not in html  # no inline script: the CSP allows none
    assert client.get("/redoc").status_code == 404  # FastAPI's ReDoc page loads a CDN script: off


def test_the_served_swagger_ui_is_version_5_which_renders_openapi_3_1(client):
    bundle = client.get("/docs/swagger-ui-bundle.js").text
    assert re.search(r'"5\.\d+\.\d+"', bundle)
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
    assert "validatorUrl: null" in client.get("/docs/init.js").text  # no third-party validator badge


def test_the_page_files_ship_as_package_data_and_swagger_ui_is_a_pinned_dependency():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["service"]
    names = sorted(p.name for p in PAGE_DIR.iterdir())
    assert names == ["index.html", "init.js"] and set(names) <= ASSETS.keys()
    for name in names:
        assert any(fnmatch.fnmatch(f"{DOCS_DIR}/{name}", p) for p in patterns), name
    assert any(d.startswith("swagger-ui-py==") for d in config["project"]["dependencies"])
