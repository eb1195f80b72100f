"""/docs: the interactive API documentation (Swagger UI), served from the installed packages.

What it does: serves a page (`service/docs_static/index.html`, and its
`init.js` that starts Swagger UI on `/openapi.json`) at `/docs`, and Swagger
UI's script and stylesheet at `/docs/swagger-ui-bundle.js` and
`/docs/swagger-ui.css`, read from the pinned `swagger-ui-py` distribution
(its `swagger_ui/static/`, Swagger UI 5, which renders OpenAPI 3.1). FastAPI's
own `/docs` loads those two files from a public CDN: blank offline and in
air-gapped clusters, and every visitor's browser calls a third party. Here
nothing comes from another origin, and the page has the playground's headers
(ETag, no-cache, nosniff, no referrer) and a Content-Security-Policy in its
spirit: same origin only, no inline script, plus `data:` images (Swagger UI's
icons are data URIs in its stylesheet). FastAPI's `/redoc` (also CDN-loaded)
is turned off.

URLs are relative (`docs/...` from `/docs`, `openapi.json` resolved against
the page), so the page works under a gateway's path prefix.

What it does not do: change the document (service/api/openapi.py), or serve
Swagger UI's OAuth2 redirect page (the API uses bearer keys).
"""

from __future__ import annotations

import importlib.util
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service.api.playground import SECURITY_HEADERS, STATIC_PACKAGE, load_assets, serve_asset

SWAGGER_UI_PACKAGE = "swagger_ui"  # the swagger-ui-py distribution, pinned in pyproject.toml
SWAGGER_UI_FILES = ("swagger-ui-bundle.js", "swagger-ui.css")
DOCS_DIR = "docs_static"  # the page and its start-up script, package data of `service`
CONTENT_SECURITY_POLICY = SECURITY_HEADERS["Content-Security-Policy"].replace(
    "img-src 'self'", "img-src 'self' data:"
)
DOCS_HEADERS = {**SECURITY_HEADERS, "Content-Security-Policy": CONTENT_SECURITY_POLICY}


def swagger_ui_dir() -> Path:
    """Swagger UI's files in the installed distribution (found without importing its Python code)."""
    spec = importlib.util.find_spec(SWAGGER_UI_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("swagger-ui-py is not installed (a dependency in pyproject.toml)")
    return Path(next(iter(spec.submodule_search_locations))) / "static"


ASSETS = {
    **load_assets(swagger_ui_dir(), SWAGGER_UI_FILES),
    **load_assets(resources.files(STATIC_PACKAGE).joinpath(DOCS_DIR)),
}
docs = APIRouter(include_in_schema=False)


@docs.api_route("/docs", methods=["GET", "HEAD"])
async def page(request: Request) -> Response:
    return serve_asset(ASSETS, "index.html", request, DOCS_HEADERS, "docs")


@docs.api_route("/docs/{name}", methods=["GET", "HEAD"])
async def asset(name: str, request: Request) -> Response:
    return serve_asset(ASSETS, name, request, DOCS_HEADERS, "docs")
