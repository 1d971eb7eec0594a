"""End to end: the browser app against a real server, a real trainer and a real database.

`test_wizard_guardrails` is quick (no training). `test_training_session` is the whole story
a user lives through: the wizard with the demo data, start, live progress and charts, stop,
resume, complete, the history, a replay, a second run through "edit and run again", the
server killed and restarted mid-run with the page recovering, and the two runs compared.
Screenshots of every view go to test-artifacts/screenshots/.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.browser.helpers import TOKEN, Server, shot

pytestmark = [pytest.mark.browser]

# Keep training tiny: a few iterations of a 64x64 2D patch, batch 1.
TOTAL = 20
TRAINING_TIMEOUT_MS = 400_000


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


def badge(page: Any) -> Any:
    """The run page's state badge (not the one in the top bar)."""
    return page.locator("header.head .badge")


def iteration(page: Any) -> int:
    text = page.locator("[data-testid=progress-count]").inner_text()
    return int(text.split("/")[0].strip().replace(",", ""))


def wait_iteration(page: Any, at_least: int, timeout_ms: int = TRAINING_TIMEOUT_MS) -> None:
    page.wait_for_function(
        """n => {
            const el = document.querySelector('[data-testid=progress-count]');
            return el && parseInt(el.textContent.split('/')[0].replace(/,/g, '')) >= n;
        }""",
        arg=at_least,
        timeout=timeout_ms,
    )


def wait_state(page: Any, *states: str, timeout_ms: int = TRAINING_TIMEOUT_MS) -> str:
    page.wait_for_function(
        """states => {
            const b = document.querySelector('header.head .badge');
            return b && states.includes(b.dataset.state) && b.dataset.stopping !== 'true';
        }""",
        arg=list(states),
        timeout=timeout_ms,
    )
    state: str = badge(page).get_attribute("data-state")
    return state


def set_number(page: Any, key: str, value: str) -> None:
    box = page.locator(f'[data-testid="num-{key}"]')
    box.fill(value)
    box.press("Enter")


def start_from_review(page: Any, name: str) -> str:
    """Name the run, press Start once the server has checked the config; the new run's id."""
    page.locator("#run-name").fill(name)
    start = page.locator("[data-testid=start-run]")
    try:
        expect(start).to_be_enabled(timeout=20_000)
    except AssertionError:
        reason = page.locator("[data-testid=start-reason]").all_inner_texts()
        problems = page.evaluate("JSON.stringify(window.trainboard.wizard.problems)")
        raise AssertionError(f"Start stayed disabled: {reason}; problems: {problems}") from None
    shot(page, f"wizard-6-review-{name.replace(' ', '-')}")
    start.click()
    page.wait_for_url(re.compile(r"#/runs/[0-9a-f]+$"), timeout=30_000)
    run_id: str = page.url.rsplit("/", 1)[-1]
    return run_id


def server_metric_iterations(server: Server, run_id: str) -> list[int]:
    """The run's training curve as stored, with a resumed attempt replacing later points."""
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        page = server.api("GET", f"/api/runs/{run_id}/events?after={after}&limit=10000")
        events += page["events"]
        if not page["more"] or not page["events"]:
            break
        after = page["next_after"]
    curve: list[int] = []
    for event in events:
        if event["type"] == "metric":
            it = event["data"]["iteration"]
            while curve and curve[-1] >= it:
                curve.pop()
            curve.append(it)
    return curve


def client_metric_iterations(page: Any, run_id: str) -> list[int]:
    result: list[int] = page.evaluate(
        "id => [...window.trainboard.conn.foldedRun(id).metrics.iteration]", run_id
    )
    return result


def test_wizard_guardrails(page: Any, server: Server) -> None:
    """Next waits for what is missing and says why; problems show at their lines; the
    wizard survives a reload; Start stays off while the configuration has an error."""
    page.goto(f"{server.url}/#/wizard/1")
    # The demo preset is loaded and its volumes are read from the server.
    shape = page.locator("[data-testid=vol-image-shape]")
    expect(shape).to_have_attribute("data-shape", "16x256x256")
    expect(page.locator("[data-testid=wizard-next]")).to_be_enabled()

    page.goto(f"{server.url}/#/wizard/5")
    editor = page.locator("textarea#yaml-editor")
    expect(editor).to_have_value(re.compile("ARCHITECTURE: unet_2d"))
    editor.fill(editor.input_value().replace("ARCHITECTURE: unet_2d", "ARCHITECTURE: unet_9d"))
    line = next(
        i + 1 for i, text in enumerate(editor.input_value().splitlines()) if "ARCHITECTURE" in text
    )
    # Validated as you type: the problem at its line, Next off with the reason beside it.
    expect(page.locator(".gutter .ln.error")).to_have_count(1, timeout=10_000)
    expect(page.locator(".gutter .ln.error")).to_contain_text(str(line))
    expect(page.locator("[data-testid=problem-list]")).to_contain_text("MODEL.ARCHITECTURE")
    expect(page.locator("[data-testid=wizard-next]")).to_be_disabled()
    expect(page.locator("[data-testid=next-reason]")).to_contain_text("error")
    page.get_by_role("button", name=f"line {line}").click()  # jumps to it in the editor
    shot(page, "wizard-5-advanced-problem")

    # A reload keeps everything, the mistake included.
    page.reload()
    expect(page.locator("textarea#yaml-editor")).to_have_value(re.compile("unet_9d"))
    page.goto(f"{server.url}/#/wizard/6")
    expect(page.locator("[data-testid=start-run]")).to_be_disabled()
    expect(page.locator("[data-testid=start-reason]")).to_contain_text("error")
    shot(page, "wizard-6-review-blocked")

    # Revert to the preset in step 3 clears it.
    page.goto(f"{server.url}/#/wizard/3")
    expect(page.locator("[data-testid=modified-badge]")).to_be_visible()
    page.locator("[data-testid=revert]").click()
    expect(page.locator("[data-testid=modified-badge]")).to_have_count(0)
    page.goto(f"{server.url}/#/wizard/6")
    expect(page.locator("[data-testid=start-run]")).to_be_enabled(timeout=10_000)


def test_uploads(page: Any, server: Server, tmp_path: Path) -> None:
    """A volume uploaded into the data root is read back (shape, thumbnail); a YAML file
    loads as the config, and another as an overlay over it."""
    import numpy as np

    volume = tmp_path / "tiny_volume.npy"
    np.save(volume, np.zeros((2, 8, 8), dtype=np.uint8))
    page.goto(f"{server.url}/#/wizard/1")
    page.set_input_files("#upload-input", str(volume))
    entry = page.locator('button[data-path="tiny_volume.npy"]')
    expect(entry).to_be_visible()
    card = page.locator("[data-testid=vol-val-image]")
    card.get_by_role("button", name="Change").click()
    entry.click()
    expect(page.locator("[data-testid=vol-val-image-shape]")).to_have_attribute(
        "data-shape", "2x8x8"
    )
    # Its shape differs from the validation label's: said at once.
    expect(page.locator(".problem-list")).to_contain_text("differ in shape")
    shot(page, "wizard-1-upload")

    preset = server.api("GET", "/api/presets")["presets"][0]["yaml"]
    config = tmp_path / "my_config.yaml"
    config.write_text(preset.replace("BASE_LR: 0.002", "BASE_LR: 0.003"))
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("SOLVER:\n  BASE_LR: 0.01\n")
    page.goto(f"{server.url}/#/wizard/3")
    page.set_input_files("#yaml-upload", str(config))
    # The file names its own validation image; the uploaded volume was chosen: asked.
    expect(page.locator("[data-testid=data-question]")).to_contain_text("tiny_volume.npy")
    page.locator("[data-testid=data-keep-mine]").click()
    expect(page.locator("[data-testid=base-source]")).to_have_text("my_config.yaml")
    page.set_input_files("#overlay-upload", str(overlay))
    expect(page.locator("[data-testid=base-source]")).to_have_text(
        "overlay.yaml over my_config.yaml"
    )
    shot(page, "wizard-3-overlay")
    page.goto(f"{server.url}/#/wizard/4")
    expect(page.locator('[data-testid="num-SOLVER.BASE_LR"]')).to_have_value("0.01")


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_training_session(page: Any, server: Server, chromium: Any) -> None:
    # ------------------------------------------------------------------ 1 Data
    page.goto(f"{server.url}/#/wizard/1")
    image = page.locator("[data-testid=vol-image]")
    image.get_by_role("button", name=re.compile("Change|Choose")).click()
    page.locator('button[data-path="demo"]').click()
    page.locator('button[data-path="demo/train_image.tif"]').click()
    # Choosing moves on to the label, then the validation volumes.
    page.locator('button[data-path="demo/train_label.tif"]').click()
    page.locator('button[data-path="demo/val_image.tif"]').click()
    page.locator('button[data-path="demo/val_label.tif"]').click()
    for volume, shape in (
        ("image", "16x256x256"),
        ("label", "16x256x256"),
        ("val-image", "4x256x256"),
    ):
        expect(page.locator(f"[data-testid=vol-{volume}-shape]")).to_have_attribute(
            "data-shape", shape
        )
    expect(page.locator("[data-testid=vol-image] img")).to_be_visible()
    shot(page, "wizard-1-data")
    page.locator("[data-testid=wizard-next]").click()

    # ------------------------------------------------------------------ 2 Outputs
    expect(page).to_have_url(re.compile("#/wizard/2"))
    page.get_by_role("button", name="New folder per run").click()
    expect(page.locator("[data-testid=output-status]")).to_contain_text("will be created")
    shot(page, "wizard-2-outputs")
    page.locator("[data-testid=wizard-next]").click()

    # ------------------------------------------------------------------ 3 Base config
    expect(page.locator('button[data-preset="demo_2d"]')).to_have_attribute("aria-pressed", "true")
    shot(page, "wizard-3-base")
    page.locator("[data-testid=wizard-next]").click()

    # ------------------------------------------------------------------ 4 Parameters
    expect(page.locator('[data-testid="num-SOLVER.ITERATION_TOTAL"]')).to_be_visible()
    set_number(page, "SOLVER.ITERATION_TOTAL", str(TOTAL))
    set_number(page, "SOLVER.SAMPLES_PER_BATCH", "1")
    set_number(page, "SOLVER.ITERATION_SAVE", "5")
    set_number(page, "SOLVER.ITERATION_VAL", "10")
    expect(page.locator(".head .pill.warn", has_text="modified")).to_be_visible()
    page.wait_for_timeout(600)  # the debounced validation
    shot(page, "wizard-4-parameters")
    page.locator("[data-testid=wizard-next]").click()

    # ------------------------------------------------------------------ 5 Advanced
    editor = page.locator("textarea#yaml-editor")
    text = editor.input_value()
    assert f"ITERATION_TOTAL: {TOTAL}" in text  # the sliders wrote into the YAML
    editor.fill(text.replace("[1, 128, 128]", "[1, 64, 64]"))
    page.locator("[data-testid=diff-tab]").click()
    expect(page.locator(".diff .r.add").first).to_be_visible()
    shot(page, "wizard-5-advanced-diff")
    page.get_by_role("tab", name="Editor").click()
    expect(page.locator("[data-testid=wizard-next]")).to_be_enabled(timeout=10_000)
    page.locator("[data-testid=wizard-next]").click()

    # ------------------------------------------------------------------ 6 Review, start
    run_a = start_from_review(page, "e2e first run")

    # ------------------------------------------------------------------ live training
    wait_state(page, "Training", timeout_ms=60_000)
    wait_iteration(page, 3)
    page.wait_for_function(
        "() => Number(document.querySelector('figure.chart').dataset.points) > 0"
    )
    expect(page.locator("[data-testid=btn-stop]")).to_be_enabled()
    expect(page.locator("[data-testid=btn-resume]")).to_have_count(0)
    shot(page, "training-live")

    # ------------------------------------------------------------------ stop (confirm)
    page.locator("[data-testid=btn-stop]").click()
    dialog = page.locator("dialog[open]")
    expect(dialog).to_contain_text("Stop this run?")
    shot(page, "training-stop-confirm")
    dialog.get_by_role("button", name="Stop training").click()
    wait_state(page, "Stopped", timeout_ms=180_000)
    expect(page.locator("[data-testid=btn-resume]")).to_be_enabled()
    expect(page.locator("[data-testid=btn-stop]")).to_have_count(0)
    shot(page, "training-stopped")
    stopped_at = iteration(page)

    # ------------------------------------------------------------------ resume, complete
    page.locator("[data-testid=btn-resume]").click()
    wait_state(page, "Training", timeout_ms=60_000)
    wait_state(page, "Complete")
    assert iteration(page) == TOTAL
    assert stopped_at < TOTAL
    expect(page.locator("[data-testid=preview-image]")).to_be_visible()
    expect(page.locator("[data-testid=preview-iteration]")).to_have_text(str(TOTAL))
    expect(page.locator("[data-testid=btn-resume]")).to_have_count(0)
    expect(page.locator("[data-testid=btn-stop]")).to_have_count(0)
    expect(page.locator("[data-testid=export-csv]")).to_have_attribute("href", re.compile("csv"))
    assert client_metric_iterations(page, run_a) == server_metric_iterations(server, run_a)
    shot(page, "training-complete", full_page=True)

    # ------------------------------------------------------------------ history
    page.goto(f"{server.url}/#/history")
    row = page.locator(f'[data-testid=runs-table] tr[data-run-id="{run_a}"]')
    expect(row).to_contain_text("e2e first run")
    expect(row.locator(".badge")).to_have_attribute("data-state", "Complete")
    shot(page, "history")

    # ------------------------------------------------------------------ replay
    row.get_by_role("link").first.click()
    page.locator("[data-testid=btn-replay]").click()
    expect(page.locator("[data-testid=replay-bar]")).to_be_visible()
    page.locator("[data-testid=replay-play]").click()  # pause the autoplay
    page.locator("[data-testid=replay-play]").click()  # and play again
    page.get_by_label("Replay speed").select_option("100")
    scrubber = page.locator("[data-testid=replay-scrubber]")
    expect(scrubber).to_have_attribute("max", re.compile(r"[1-9]\d*"))
    # Scrub to the middle: the view redraws as of that moment.
    page.eval_on_selector(
        "[data-testid=replay-scrubber]",
        """el => { el.value = String(Math.floor(Number(el.max) / 2));
                   el.dispatchEvent(new Event('input', { bubbles: true })); }""",
    )
    mid = iteration(page)
    assert 0 <= mid < TOTAL
    expect(badge(page)).not_to_have_attribute("data-state", "Complete")
    shot(page, "replay")
    page.get_by_role("button", name="Back to live").click()
    wait_state(page, "Complete", timeout_ms=10_000)

    # ------------------------------------------------------------------ a second run
    page.locator("[data-testid=btn-retry]").click()
    expect(page).to_have_url(re.compile("#/wizard/4"))
    set_number(page, "SOLVER.BASE_LR", "0.005")
    page.goto(f"{server.url}/#/wizard/2")
    page.get_by_role("button", name="New folder per run").click()
    expect(page.locator("[data-testid=output-status]")).to_contain_text("will be created")
    page.goto(f"{server.url}/#/wizard/6")
    run_b = start_from_review(page, "e2e second run")
    assert run_b != run_a
    wait_state(page, "Training", timeout_ms=60_000)
    wait_iteration(page, 2)

    # ------------------------------------------------------------------ server restart
    server.kill()
    expect(page.locator("[data-testid=disconnected-banner]")).to_be_visible(timeout=20_000)
    shot(page, "training-disconnected")
    server.start()
    expect(page.locator("[data-testid=disconnected-banner]")).to_have_count(0, timeout=30_000)
    # The trainer noticed its server die and stopped at a checkpoint (Stopped), or the
    # restarted server reconciled it as interrupted (Error), or re-attached it (Training).
    state = wait_state(page, "Error", "Stopped", "Complete", "Training", timeout_ms=90_000)
    if state == "Training":
        state = wait_state(page, "Error", "Stopped", "Complete")
    if state in ("Error", "Stopped"):
        if state == "Error":
            expect(page.locator("[data-testid=error-panel]")).to_be_visible()
        # Why it is not training any more, beside Resume.
        expect(page.locator("[data-testid=interrupted]")).to_contain_text("server")
        shot(page, "training-after-restart")
        page.locator("[data-testid=btn-resume]").click()
        wait_state(page, "Training", timeout_ms=60_000)
        wait_state(page, "Complete")
    # Nothing lost, nothing twice: the page's curve is the stored one.
    assert client_metric_iterations(page, run_b) == server_metric_iterations(server, run_b)
    shot(page, "training-recovered")

    # ------------------------------------------------------------------ compare
    page.goto(f"{server.url}/#/history")
    expect(page.locator("[data-testid=runs-table] tbody tr")).to_have_count(2)
    page.get_by_role("button", name=re.compile("Best Dice")).click()  # sortable
    shot(page, "history-two-runs")
    page.get_by_label("Select e2e first run for comparison").check()
    page.get_by_label("Select e2e second run for comparison").check()
    page.locator("[data-testid=compare-selected]").click()
    expect(page.locator("[data-testid=config-diff]")).to_contain_text("SOLVER.BASE_LR")
    page.wait_for_function(
        "() => [...document.querySelectorAll('figure.chart')]"
        ".some(f => Number(f.dataset.points) > 0)"
    )
    shot(page, "compare", full_page=True)

    # ------------------------------------------------------------------ dark, narrow
    dark = chromium.new_context(viewport={"width": 1024, "height": 768}, color_scheme="dark")
    try:
        other = dark.new_page()
        other.goto(f"{server.url}/?token={TOKEN}#/runs/{run_a}")
        wait_state(other, "Complete", timeout_ms=30_000)
        shot(other, "training-complete-dark")
    finally:
        dark.close()
