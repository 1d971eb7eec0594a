"""The wizard never traps (issue 9): a YAML that does not parse leads to the editor, the
Review says so instead of showing PyTC's defaults, fix links lead where the fix is made,
suggestions apply with a click, typed values are checked before they reach the YAML, a
loaded file never silently mixes its data with the user's, "Start over" asks, Enter keeps
the indentation, and focus follows the steps. No training: seconds."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.browser.helpers import Server, shot

pytestmark = [pytest.mark.browser]


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


def yaml_text(page: Any) -> str:
    text: str = page.evaluate("window.trainboard.wizard.configYaml")
    return text


def preset(server: Server) -> str:
    text: str = next(
        p for p in server.api("GET", "/api/presets")["presets"] if p["name"] == "demo_2d"
    )["yaml"]
    return text


def test_a_syntax_error_leads_to_the_editor(page: Any, server: Server, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    text = preset(server).replace("NAME: Adam", "NAME: [Adam", 1)
    assert "NAME: [Adam" in text
    broken.write_text(text)
    written = next(i + 1 for i, t in enumerate(text.splitlines()) if "[Adam" in t)
    page.goto(f"{server.url}/#/wizard/3")
    page.set_input_files("#yaml-upload", str(broken))
    expect(page.locator("[data-testid=parse-errors]")).to_contain_text("YAML syntax error")
    line = page.evaluate("window.trainboard.wizard.parseError.line")
    assert line in (written, written + 1)  # where the parser noticed

    # The Review says the config does not parse; no PyTC defaults posing as the run.
    expect(page.locator(".steps button").nth(5)).to_be_disabled()
    page.goto(f"{server.url}/#/wizard/6")
    review = page.locator("[data-testid=review-parse-error]")
    expect(review).to_contain_text("does not parse")
    expect(page.locator(".review")).not_to_contain_text("unet_3d")
    expect(page.locator("[data-testid=review-summary]")).to_have_count(0)
    expect(page.locator("[data-testid=start-run]")).to_be_disabled()
    shot(page, "wizard-6-review-does-not-parse")
    # Its fix link opens the editor at the line (where the fix can be made).
    page.locator("[data-testid=fix-link]").first.click()
    expect(page).to_have_url(re.compile("#/wizard/5"))
    editor = page.locator("textarea#yaml-editor")
    expect(editor).to_be_focused()
    caret_line = page.evaluate(
        "() => { const a = document.querySelector('#yaml-editor');"
        " return a.value.slice(0, a.selectionStart).split('\\n').length; }"
    )
    assert caret_line == line

    # Step 3 leads there too, and so do steps 3 and 4's main buttons.
    page.goto(f"{server.url}/#/wizard/3")
    page.locator("[data-testid=fix-in-editor]").click()
    expect(page).to_have_url(re.compile("#/wizard/5"))
    editor.fill(yaml_text(page).replace("NAME: [Adam", "NAME: Adam"))
    expect(page.locator(".gutter .ln.error")).to_have_count(0, timeout=10_000)
    page.goto(f"{server.url}/#/wizard/6")
    expect(page.locator("[data-testid=review-summary]")).to_contain_text("unet_2d")


def test_enter_keeps_the_indentation(page: Any, server: Server) -> None:
    page.goto(f"{server.url}/#/wizard/5")
    editor = page.locator("textarea#yaml-editor")
    expect(editor).to_have_value(re.compile("BASE_LR"))
    # Put the caret at the end of the BASE_LR line and type a new key on the next line.
    page.evaluate(
        "() => { const a = document.querySelector('#yaml-editor');"
        " const i = a.value.indexOf('\\n', a.value.indexOf('BASE_LR'));"
        " a.focus(); a.setSelectionRange(i, i); }"
    )
    editor.press("Enter")
    editor.type("MOMENTUM: 0.95")
    expect(editor).to_have_value(re.compile(r"\n(\s+)BASE_LR: [^\n]*\n\1MOMENTUM: 0.95"))
    page.wait_for_timeout(700)  # validated: the new key is where it belongs
    expect(page.locator("[data-testid=problem-list]")).not_to_contain_text("MOMENTUM")
    editor.press("Control+z")  # the browser's own undo still works
    expect(editor).not_to_have_value(re.compile("MOMENTUM: 0.95"))


def test_values_are_checked_before_they_reach_the_yaml(page: Any, server: Server) -> None:
    page.goto(f"{server.url}/#/wizard/4")
    box = page.locator('[data-testid="num-SOLVER.BASE_LR"]')
    expect(box).to_be_visible()
    before = re.search(r"BASE_LR: (\S+)", yaml_text(page))
    assert before is not None
    for implausible in ("5", "1e6"):
        box.fill(implausible)
        box.press("Enter")
        expect(page.locator('[data-testid="field-warning-SOLVER.BASE_LR"]')).to_contain_text(
            "above the usual range"
        )
    box.fill("-1")
    box.press("Enter")
    expect(page.locator('[data-testid="field-error-SOLVER.BASE_LR"]')).to_contain_text(
        "not applied"
    )
    expect(page.locator("[data-testid=wizard-next]")).to_be_disabled()
    expect(page.locator("[data-testid=next-reason]")).to_contain_text("Not applied")
    assert "BASE_LR: -1" not in yaml_text(page)
    shot(page, "wizard-4-refused-value")
    box.fill("0.002")
    box.press("Enter")
    expect(page.locator("[data-testid=wizard-next]")).to_be_enabled(timeout=10_000)
    assert "BASE_LR: 0.002" in yaml_text(page)


def test_suggestions_apply_and_start_over_asks(page: Any, server: Server) -> None:
    page.goto(f"{server.url}/#/wizard/5")
    editor = page.locator("textarea#yaml-editor")
    expect(editor).to_have_value(re.compile("NUM_GPUS: 0"))
    editor.fill(yaml_text(page).replace("NUM_GPUS: 0", "NUM_GPUS: 4", 1))
    problem = page.locator("[data-testid=problem-list] li", has_text="SYSTEM.NUM_GPUS")
    problem.locator("[data-testid=apply-suggestion]").click()
    expect(editor).to_have_value(re.compile("NUM_GPUS: 0"))
    expect(problem).to_have_count(0, timeout=10_000)

    page.locator("[data-testid=start-over]").click()
    dialog = page.locator("dialog[open]")
    expect(dialog).to_contain_text("Start over?")
    dialog.get_by_role("button", name="Cancel").click()
    expect(page).to_have_url(re.compile("#/wizard/5"))  # nothing wiped
    page.locator("[data-testid=start-over]").click()
    page.locator("dialog[open]").get_by_role("button", name="Clear the wizard").click()
    expect(page).to_have_url(re.compile("#/wizard/1"))


def test_focus_follows_the_steps_and_hidden_inputs_are_no_tab_stops(
    page: Any, server: Server
) -> None:
    page.goto(f"{server.url}/#/wizard/1")
    expect(page.locator("[data-testid=wizard-next]")).to_be_enabled(timeout=20_000)
    page.locator("[data-testid=wizard-next]").click()
    expect(page.locator(".wizard .body h2")).to_be_focused()
    expect(page.locator(".wizard .body h2")).to_have_text("Outputs")
    page.goto(f"{server.url}/#/wizard/3")
    tab_stops = page.evaluate(
        "() => [...document.querySelectorAll('input[type=file]')].map(i => i.tabIndex)"
    )
    assert tab_stops and all(t == -1 for t in tab_stops)


def test_a_loaded_file_asks_whose_data_wins(page: Any, server: Server, tmp_path: Path) -> None:
    page.goto(f"{server.url}/#/wizard/1")
    label = page.locator("[data-testid=vol-label]")
    label.get_by_role("button", name=re.compile("Change|Choose")).click()
    page.locator('button[data-path="demo"]').click()
    page.locator('button[data-path="demo/val_label.tif"]').click()
    expect(page.locator("[data-testid=vol-label-shape]")).to_have_attribute(
        "data-shape", "4x256x256"
    )
    chosen_folder = page.evaluate("window.trainboard.wizard.value('DATASET.INPUT_PATH')")

    other = tmp_path / "other_data.yaml"
    text = re.sub(r"INPUT_PATH: \S+", "INPUT_PATH: /elsewhere/data", preset(server))
    other.write_text(text.replace("train_label.tif", "cells_label.tif"))
    page.goto(f"{server.url}/#/wizard/3")
    page.set_input_files("#yaml-upload", str(other))
    question = page.locator("[data-testid=data-question]")
    expect(question).to_be_visible()
    expect(question).to_contain_text("cells_label.tif")
    shot(page, "wizard-3-data-question")
    page.locator("[data-testid=data-keep-mine]").click()
    expect(page.locator("[data-testid=base-source]")).to_have_text("other_data.yaml")
    page.wait_for_function(
        "() => window.trainboard.wizard.value('DATASET.LABEL_NAME') === 'val_label.tif'"
    )
    config = yaml_text(page)
    assert f"INPUT_PATH: {chosen_folder}" in config  # the name kept its folder
    assert "/elsewhere/data" not in config and "cells_label.tif" not in config


def test_augmented_samples_of_the_chosen_data(page: Any, server: Server) -> None:
    page.goto(f"{server.url}/#/wizard/4")
    panel = page.locator("[data-testid=augment-preview]")
    panel.locator("[data-testid=augment-show]").click()
    images = panel.locator("img")
    expect(images).to_have_count(8, timeout=60_000)  # four samples, image and label each
    assert images.first.get_attribute("src").startswith("data:image/png;base64,")
    shot(page, "wizard-4-augmented-samples")
    # A changed setting dims them until they are rendered again.
    page.locator('[data-testid="num-SOLVER.BASE_LR"]').fill("0.003")
    page.locator('[data-testid="num-SOLVER.BASE_LR"]').press("Enter")
    expect(panel.locator("[data-testid=augment-show]")).to_contain_text("new settings")
