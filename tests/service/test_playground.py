"""The playground's files as HTTP serves them, without a browser and without loading a model.

What it checks: `/` and `/playground` redirect (relatively) to `/playground/`;
every file of service/static/ is served with its content type, `no-cache` and
a content-hash ETag (304 on `If-None-Match`), the Content-Security-Policy that
keeps the page on its own origin, and nosniff; unknown names get the API's
404 error body; the page routes stay out of the OpenAPI document; the files
are package data; the page refers only to files of its own and to the public
API, and its script never writes HTML from strings.

The app is built without running its lifespan (no model is loaded): these
routes do not need one. What it does not check: the page's behaviour (the
browser test, test_playground_browser.py, does).
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.settings import DEFAULT_CHECKPOINT
from tests.service.support import settings_for

STATIC = Path(__file__).resolve().parents[2] / "service" / "static"
REPO = STATIC.parents[1]
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
FILES = sorted(p.name for p in STATIC.iterdir())


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    # Not entered as a context manager: the lifespan (model load) does not run.
    yield TestClient(create_app(settings_for(DEFAULT_CHECKPOINT)), follow_redirects=False)


def url_of(name: str) -> str:
    return "/playground/" if name == "index.html" else f"/playground/{name}"


@pytest.mark.parametrize("path", ["/", "/playground"])
def test_the_root_and_the_bare_name_redirect_relatively_to_the_page(client, path):
    response = client.get(path)
    assert response.status_code == 307
    assert response.headers["location"] == "playground/"  # relative: works under a gateway's path prefix
    page = client.get(path, follow_redirects=True)
    assert page.status_code == 200
    assert str(page.url).endswith("/playground/")
    assert "<title>Temperature playground" in page.text


@pytest.mark.parametrize("name", FILES)
def test_each_file_is_served_with_its_type_revalidation_headers_and_the_csp(client, name):
    response = client.get(url_of(name))
    assert response.status_code == 200
    assert response.content == (STATIC / name).read_bytes()
    assert response.headers["content-type"] == TYPES[Path(name).suffix]
    assert response.headers["cache-control"] == "no-cache"
    assert re.fullmatch(r'"[0-9a-f]{32}"', response.headers["etag"])
    csp = [part.strip() for part in response.headers["content-security-policy"].split(";")]
    assert "default-src 'self'" in csp
    assert "connect-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-request-id"]  # the app's middleware runs for the page too


@pytest.mark.parametrize("name", FILES)
def test_a_matching_etag_gets_304_and_another_one_the_file(client, name):
    etag = client.get(url_of(name)).headers["etag"]
    unchanged = client.get(url_of(name), headers={"If-None-Match": etag})
    assert unchanged.status_code == 304
    assert unchanged.content == b""
    assert unchanged.headers["etag"] == etag
    assert unchanged.headers["cache-control"] == "no-cache"
    stale = client.get(url_of(name), headers={"If-None-Match": '"0123", W/"4567"'})
    assert stale.status_code == 200
    assert stale.content == (STATIC / name).read_bytes()


def test_head_answers_like_get_without_a_body(client):
    head = client.head("/playground/app.js")
    assert head.status_code == 200
    assert head.headers["content-type"] == TYPES[".js"]
    assert head.content == b""


@pytest.mark.parametrize("name", ["missing.js", "..%2Fplayground.py", "%2e%2e%2fapp.py", "app.js.map"])
def test_any_other_name_gets_the_api_404_error_body(client, name):
    response = client.get(f"/playground/{name}")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found"


def test_the_page_routes_are_not_in_the_openapi_document(client):
    paths = client.get("/openapi.json").json()["paths"]
    assert paths  # the API is documented
    assert not [p for p in paths if p == "/" or p.startswith("/playground")]


def test_every_static_file_ships_as_package_data():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["service"]
    assert FILES
    for name in FILES:
        assert any(fnmatch.fnmatch(f"static/{name}", p) for p in patterns), name


def test_the_page_refers_only_to_its_own_files_and_the_public_api():
    html = (STATIC / "index.html").read_text()
    referenced = set(re.findall(r'(?:src|href)="([^"]+)"', html))
    assert referenced == {"favicon.svg", "style.css", "app.js", "./"}
    script = (STATIC / "app.js").read_text()
    assert set(re.findall(r'new URL\("([^"]+)"', script)) == {"../info", "../v1/generate"}
    everything = html + script + (STATIC / "style.css").read_text()
    assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", everything)  # the SVG namespace is a name
    assert "@import" not in everything


def test_the_script_writes_text_never_html():
    script = (STATIC / "app.js").read_text()
    # Uses of the sinks that parse strings as HTML or code (the script's comments may name them).
    for sink in (r"\.(inner|outer)HTML\b", r"\.insertAdjacentHTML\(", r"document\.write", r"\beval\(", r"new Function"):
        assert not re.search(sink, script), sink
    assert ".textContent = " in script
