"""The app on a phone and on a wide screen, its colours, and its weight on the wire.

One tiny 2D demo run is trained over REST, then the wizard, the run page and the runs table
are opened at 1440x900 and 390x844 (screenshots of each; no sideways scrolling on the
phone), every state colour is checked for WCAG AA contrast in both themes, and a first
load of the run page is weighed as the browser received it.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.helpers import (
    TOKEN,
    Server,
    create_run,
    horizontal_overflow,
    overflowing,
    shot,
    wait_run,
)

pytestmark = [pytest.mark.browser]

WIRE_BUDGET = 110_000  # bytes of a first load of the run page, preview images aside
AA = 4.5

# Text colour -> the backgrounds it is drawn on (app.css tokens).
COLOUR_PAIRS = [
    (f"--{state}", background)
    for state in ("idle", "training", "complete", "error", "stopped", "warning")
    for background in (f"--{state}-bg", "--surface", "--bg", "--surface-2")
] + [
    ("--text-3", "--surface"),
    ("--text-3", "--bg"),
    ("--text-3", "--surface-2"),
    ("--text-3", "--surface-3"),
    ("--text-2", "--surface-3"),
    ("--accent", "--accent-bg"),
]

# Contrast ratio of two colours as the page computes them (WCAG 2 relative luminance).
CONTRAST_JS = """
([pairs]) => {
  const probe = document.createElement('span');
  document.body.append(probe);
  const rgb = (v) => { probe.style.color = `var(${v})`;
    return getComputedStyle(probe).color.match(/[\\d.]+/g).slice(0, 3).map(Number); };
  const lum = (c) => { const [r, g, b] = c.map((x) => { x /= 255;
    return x <= 0.03928 ? x / 12.92 : ((x + 0.055) / 1.055) ** 2.4; });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
  const ratio = (a, b) => { const [x, y] = [lum(rgb(a)), lum(rgb(b))].sort((p, q) => q - p);
    return (x + 0.05) / (y + 0.05); };
  const out = pairs.map(([fg, bg]) => [fg, bg, ratio(fg, bg)]);
  probe.remove();
  return out;
}
"""


def open_page(chromium: Any, server: Server, width: int, height: int, **options: Any) -> Any:
    context = chromium.new_context(viewport={"width": width, "height": height}, **options)
    page = context.new_page()
    page.goto(f"{server.url}/?token={TOKEN}")
    return page


def test_phone_and_desktop_layouts(chromium: Any, server: Server) -> None:
    run = create_run(server, "layout run")
    ended = wait_run(server, run["run_id"], "Complete", "Error")["state"]  # the layout either way
    views = {
        "wizard": "#/wizard/1",
        "run": f"#/runs/{run['run_id']}",
        "runs-table": "#/history",
    }
    for label, (width, height) in {"desktop": (1440, 900), "phone": (390, 844)}.items():
        page = open_page(chromium, server, width, height)
        try:
            for name, route in views.items():
                page.goto(f"{server.url}/{route}")
                page.wait_for_selector("main h1, main h2")
                page.wait_for_load_state("networkidle")
                if name == "run":
                    page.wait_for_selector(f"header.head .badge[data-state={ended}]")
                if name == "runs-table":
                    page.wait_for_selector(f'tr[data-run-id="{run["run_id"]}"]')
                shot(page, f"{label}-{name}", full_page=True)
                if label == "phone":
                    assert horizontal_overflow(page) == 0, f"{name} at 390 px: {overflowing(page)}"
            if label == "phone":
                for step in range(2, 7):  # every wizard step fits too
                    page.goto(f"{server.url}/#/wizard/{step}")
                    page.wait_for_selector(".wizard .body h2")
                    page.wait_for_timeout(300)
                    assert horizontal_overflow(page) == 0, f"step {step}: {overflowing(page)}"
                shot(page, "phone-wizard-6", full_page=True)
        finally:
            page.context.close()


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_every_text_colour_meets_wcag_aa(chromium: Any, server: Server, scheme: str) -> None:
    page = open_page(chromium, server, 1024, 768, color_scheme=scheme)
    try:
        page.goto(f"{server.url}/#/history")
        page.wait_for_selector("main h1")
        ratios = page.evaluate(CONTRAST_JS, [COLOUR_PAIRS])
        low = [(fg, bg, round(r, 2)) for fg, bg, r in ratios if r < AA]
        assert not low, f"below {AA}:1 in the {scheme} theme: {low}"
        # The connection is said in words, not only by the dot's colour.
        connection = page.locator("[data-testid=connection]")
        page.wait_for_function(
            "() => document.querySelector('[data-testid=connection]').dataset.status === 'live'"
        )
        assert connection.inner_text().strip().endswith("Live")
    finally:
        page.context.close()


def test_a_first_load_of_the_run_page_is_light_on_the_wire(chromium: Any, server: Server) -> None:
    run = create_run(server, "weighed run", start=False)
    context = chromium.new_context(viewport={"width": 1440, "height": 900})
    received: list[tuple[str, int, str | None]] = []

    def on_finished(request: Any) -> None:
        sizes = request.sizes()
        response = request.response()
        encoding = response.header_value("content-encoding") if response else None
        total = sizes["responseBodySize"] + sizes["responseHeadersSize"]
        received.append((request.url, total, encoding))

    try:
        page = context.new_page()
        page.on("requestfinished", on_finished)
        page.goto(f"{server.url}/?token={TOKEN}#/runs/{run['run_id']}")
        page.wait_for_selector("header.head .badge[data-state=Idle]")
        page.wait_for_load_state("networkidle")
        weighed = [(url, n, enc) for url, n, enc in received if "/artifact" not in url]
        total = sum(n for _, n, _ in weighed)
        print(f"first load of the run page: {total} bytes in {len(weighed)} responses")
        for url, n, enc in weighed:
            print(f"  {n:>8}  {enc or '-':<5} {url.replace(server.url, '')}")
        assets = [(url, enc) for url, _, enc in weighed if "/assets/" in url]
        assert assets and all(enc == "br" for _, enc in assets), assets
        assert total <= WIRE_BUDGET, f"{total} bytes > {WIRE_BUDGET}"
    finally:
        context.close()
