"""The playground page: `/` and its static assets (`/web/...`, shipped in glassbox/web/).

Both stay open with API keys required: they are Starlette routes and a mount, outside the
app-wide key dependency of the API routes; the page asks for a key when an API call it makes
answers 401, and sends it with its calls."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import FileResponse
from starlette.staticfiles import StaticFiles

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
# The page is small and changes with the server: revalidate instead of caching stale copies.
_NO_STALE = {"Cache-Control": "no-cache"}


class _Assets(StaticFiles):
    """StaticFiles that asks browsers to revalidate (ETag) rather than reuse old assets."""

    def file_response(self, *args, **kwargs):
        response = super().file_response(*args, **kwargs)
        response.headers.update(_NO_STALE)
        return response


async def _index(request: Request) -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", headers=_NO_STALE)


def install_page(app: FastAPI) -> None:
    app.add_route("/", _index, methods=["GET", "HEAD"], include_in_schema=False)
    app.mount("/web", _Assets(directory=WEB_DIR), name="web")
