"""The temperature playground: a page that shows the tau the model chose at each token.

What it does: serves the static files in `service/static/` (HTML, CSS,
JavaScript, an SVG icon; no build step, shipped as package data) under
`/playground/`, and redirects `/` and `/playground` there. The page itself
speaks only the public API (`/info`, `/v1/generate` with `stream=true`).

Headers of every file:
- `Content-Type` by extension, with `charset=utf-8` for text.
- `Cache-Control: no-cache` and a strong `ETag` (a hash of the content);
  `If-None-Match` gets a 304. The file names carry no content hash (no build
  step), so a `max-age` would let a browser keep last version's app.js next to
  this version's index.html after an upgrade; revalidating costs one small 304
  per file and never shows a stale page. A hash (not the mtime) gives every
  replica behind the gateway the same ETag.
- `Content-Security-Policy` with `default-src 'self'` (no other origin, no
  inline script or style, no framing), `X-Content-Type-Options: nosniff` and
  `Referrer-Policy: no-referrer`.

Redirects are relative (`Location: playground/`), so the page also works when
a gateway mounts the service under a path prefix; the page calls the API with
relative URLs for the same reason.

The routes are left out of the OpenAPI document: they are not part of the API
that clients generate code from.

What it does not do: anything with the model (the page's requests go through
the same routes as any client's), or authentication: the files are public, and
the page asks for an API key only when `/info` says the server needs one.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

STATIC_PACKAGE = "service"
STATIC_DIR = "static"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
CACHE_CONTROL = "no-cache"
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self'",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str  # quoted, as sent


def load_assets(folder: Traversable | None = None, names: Iterable[str] | None = None) -> dict[str, Asset]:
    """Every file of `folder` (default service/static/) with a known extension, or only `names`, by name,
    read once."""
    folder = folder or resources.files(STATIC_PACKAGE).joinpath(STATIC_DIR)
    wanted = None if names is None else set(names)
    assets: dict[str, Asset] = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if not entry.is_file() or suffix not in CONTENT_TYPES or wanted is not None and entry.name not in wanted:
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        assets[entry.name] = Asset(body, CONTENT_TYPES[suffix], etag)
    if wanted is not None and wanted - assets.keys():
        raise FileNotFoundError(f"missing from {folder}: {sorted(wanted - assets.keys())}")
    return assets


ASSETS = load_assets()
playground = APIRouter(include_in_schema=False)


@playground.api_route("/", methods=["GET", "HEAD"])
async def root() -> Response:
    return RedirectResponse("playground/", status_code=307)


@playground.api_route("/playground", methods=["GET", "HEAD"])
async def playground_no_slash() -> Response:
    # Relative to /playground, "playground/" is /playground/.
    return RedirectResponse("playground/", status_code=307)


@playground.api_route("/playground/", methods=["GET", "HEAD"])
async def page(request: Request) -> Response:
    return _serve("index.html", request)


@playground.api_route("/playground/{name}", methods=["GET", "HEAD"])
async def asset(name: str, request: Request) -> Response:
    return _serve(name, request)


def _serve(name: str, request: Request) -> Response:
    return serve_asset(ASSETS, name, request, SECURITY_HEADERS, "playground")


def serve_asset(assets: dict[str, Asset], name: str, request: Request, security: dict[str, str],
                what: str) -> Response:
    """One of `assets` with the headers of the module docstring (`security`: the page's CSP and the rest)."""
    found = assets.get(name)
    if found is None:
        raise StarletteHTTPException(404, f"no such {what} file: {name[:64]}")
    headers = {"ETag": found.etag, "Cache-Control": CACHE_CONTROL, **security}
    tags = _etags(request.headers.get("if-none-match", ""))
    if found.etag in tags or "*" in tags:
        return Response(status_code=304, headers=headers)
    return Response(found.body, media_type=found.content_type, headers=headers)


def _etags(header: str) -> set[str]:
    """The entity tags of an If-None-Match header (weak ones compare as strong: RFC 9110's weak comparison)."""
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}
