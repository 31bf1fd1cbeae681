"""The API's documentation pages, Swagger UI at /docs and ReDoc at /redoc, served whole from
the installed packages: they work offline, and load nothing from another site.

Swagger UI and ReDoc come from fastapi-offline, which ships their release bundles; the script
that starts Swagger UI is orch's own file, so the pages' Content-Security-Policy allows scripts
from this site alone. Styles may be inline: ReDoc writes its own at run time. ReDoc's footer
asks for Redocly's logo from their CDN: the policy refuses it, and ReDoc then shows no logo.
The pages and /openapi.json need no token: they describe the API, and every route they list
still asks for one.
"""

from __future__ import annotations

import html
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html
from fastapi.responses import FileResponse, HTMLResponse

ASSETS_URL = "/docs/assets"
_VENDORED = Path(fastapi_offline.__file__).parent / "static"
_OWN = Path(__file__).parent / "docs_assets"
ASSETS = {
    "swagger-ui-bundle.js": _VENDORED / "swagger-ui-bundle.js",
    "swagger-ui.css": _VENDORED / "swagger-ui.css",
    "redoc.standalone.js": _VENDORED / "redoc.standalone.js",
    "favicon.png": _VENDORED / "favicon.png",
    "swagger-init.js": _OWN / "swagger-init.js",
}

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
_PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

_SWAGGER_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="{assets}/swagger-ui.css">
<link rel="icon" href="{assets}/favicon.png">
</head>
<body>
<div id="swagger-ui" data-spec-url="{spec}"></div>
<script src="{assets}/swagger-ui-bundle.js"></script>
<script src="{assets}/swagger-init.js"></script>
</body>
</html>
"""


def add_docs(api: FastAPI) -> None:
    """Serve /docs, /redoc and their assets; `api` serves /openapi.json itself."""
    openapi_url = api.openapi_url or "/openapi.json"

    def urls(request: Request) -> tuple[str, str]:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return html.escape(root + openapi_url), html.escape(root + ASSETS_URL)

    @api.get("/docs", include_in_schema=False)
    def swagger(request: Request) -> HTMLResponse:
        spec, assets = urls(request)
        page = _SWAGGER_PAGE.format(title=html.escape(api.title), spec=spec, assets=assets)
        return HTMLResponse(page, headers=_PAGE_HEADERS)

    @api.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        spec, assets = urls(request)
        page = get_redoc_html(
            openapi_url=spec,
            title=api.title,
            redoc_js_url=f"{assets}/redoc.standalone.js",
            redoc_favicon_url=f"{assets}/favicon.png",
            with_google_fonts=False,
        )
        page.headers.update(_PAGE_HEADERS)
        return page

    @api.get(ASSETS_URL + "/{name}", include_in_schema=False)
    def asset(name: str) -> FileResponse:
        path = ASSETS.get(name)
        if path is None:
            raise HTTPException(404, f"no documentation asset {name}")
        return FileResponse(
            path,
            headers={"Cache-Control": "public, max-age=86400", "X-Content-Type-Options": "nosniff"},
        )
