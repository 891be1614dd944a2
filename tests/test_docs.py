"""`GET /docs` works with no network: the page and every asset it loads come from the service
itself (Swagger UI's files are installed with the package, not fetched from a CDN)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import urljoin

import httpx
import pytest
from sqlalchemy import Engine

from collab_billing.api.app import create_app
from collab_billing.config import Settings
from tests.servers import ServerThread


@pytest.fixture
def api(settings: Settings, engine: Engine) -> Iterator[httpx.Client]:
    app = create_app(settings.model_copy(update={"reconcile_enabled": False}), engine)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def referenced(page: str) -> list[str]:
    """What the page loads: scripts, style sheets, icons, and the OpenAPI document."""
    assets = re.findall(r"""(?:src|href|spec-url)=["']([^"']+)["']""", page)
    specs = re.findall(r"""url:\s*["']([^"']+)["']""", page)
    return assets + specs


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_docs_load_everything_from_the_service(api: httpx.Client, path: str) -> None:
    page = api.get(path)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    urls = referenced(page.text)
    assert any(url.endswith(".js") for url in urls), urls
    assert "/openapi.json" in urls
    assert "https://" not in page.text and "http://" not in page.text
    base = str(api.base_url)
    for url in urls:
        absolute = urljoin(base + path, url)
        assert absolute.startswith(base), f"{url} is not served by the service"
        asset = api.get(absolute)
        assert asset.status_code == 200, url
        assert len(asset.content) > 100, url
