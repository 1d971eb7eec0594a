"""Browser tests: a real `trainboard serve` and Debian's chromium driven by Playwright."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser.helpers import CHROMIUM_ARGS, ROOT, TOKEN, Server, chromium_path


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    """A headless Debian chromium, or a skip that says why there is none."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright for Python is not installed (pip install playwright)")
    executable = chromium_path()
    if executable is None:
        pytest.skip("no chromium found: install Debian's chromium or set TRAINBOARD_CHROMIUM")
    if not (ROOT / "frontend" / "dist" / "index.html").is_file():
        pytest.fail("frontend/dist is missing: run `make frontend-build`")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    live = Server(tmp_path).start()
    live.wait_demo()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture
def page(chromium: Any, server: Server, request: pytest.FixtureRequest) -> Iterator[Any]:
    """A 1280x800 page that has been given the token (the server answers with a cookie)."""
    context = chromium.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{server.url}/?token={TOKEN}")
    try:
        yield page
    finally:
        if errors:
            print("page errors:", *errors, sep="\n  ")
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"
