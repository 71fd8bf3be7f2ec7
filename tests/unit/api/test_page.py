"""The playground's assets: what index.html and the modules load exists, the package data of
pyproject.toml ships every asset, and `/` and `/web/...` answer without a key."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from glassbox.api.page import WEB_DIR, install_page

ROOT = Path(__file__).resolve().parents[3]


def assets() -> list[Path]:
    return sorted(p for p in WEB_DIR.rglob("*") if p.is_file())


def test_every_asset_the_page_loads_exists() -> None:
    index = (WEB_DIR / "index.html").read_text()
    for ref in re.findall(r'(?:src|href)="web/([^"]+)"', index):
        assert (WEB_DIR / ref).is_file(), ref
    for module in (WEB_DIR / "js").glob("*.js"):
        for ref in re.findall(r'from "\./([^"]+)"', module.read_text()):
            assert (WEB_DIR / "js" / ref).is_file(), f"{module.name} imports {ref}"


def test_package_data_ships_every_asset() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["glassbox"]
    package = WEB_DIR.parent
    missing = [
        str(p.relative_to(package))
        for p in assets()
        if not any(fnmatch.fnmatch(str(p.relative_to(package)), g) for g in globs)
    ]
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"


def test_the_page_and_its_assets_are_served_without_a_key() -> None:
    app = FastAPI()
    install_page(app)
    with TestClient(app) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'id="chat-input"' in page.text
        for path in assets():
            r = client.get(f"/web/{path.relative_to(WEB_DIR).as_posix()}")
            assert r.status_code == 200, path
        assert client.get("/web/js/main.js").headers["content-type"].startswith("text/javascript")
        assert client.get("/web/nothing.js").status_code == 404
