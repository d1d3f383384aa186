"""The browser demo: a static page at `/` and its assets under `/demo/`.

Plain files shipped as package data (no build step, no CDN: it works offline). They are public
even with API keys on (api/auth.py); the page sends its key on the WebSocket itself.
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

# Prefix of the asset URLs; api/auth.py keeps it public.
ASSET_PREFIX = "/demo/"
# A fixed list, not a directory listing: nothing else in the package is ever served.
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# The page changes with the server it ships with: revalidate instead of caching stale copies.
HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

router = APIRouter(include_in_schema=False)


def _asset(name: str) -> Response:
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(status_code=404, detail="Not Found")
    body = resources.files(__name__).joinpath(name).read_bytes()
    return Response(body, media_type=media_type, headers=HEADERS)


@router.get("/")
async def index() -> Response:
    return _asset("index.html")


@router.get(ASSET_PREFIX + "{name}")
async def asset(name: str) -> Response:
    return _asset(name)
