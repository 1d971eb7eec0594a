"""The run page with real training (issue 9): a failure that fits its cause, Start while
another run trains (queued, and cancelled from its page), the trainer's own log live with
levels, train.log and the resolved config to download with the equivalent command, and a
replay that tells the replayed run's own duration. Two tiny 2D demo runs; a minute or two
on two CPU cores."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.browser.helpers import Server, create_run, shot, wait_run

pytestmark = [pytest.mark.browser]


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_failures_logs_and_reproduction(page: Any, server: Server) -> None:
    # ------------------------------------------------------------ a divergence
    # Without normalisation nothing rescales the exploding activations: a sure NaN.
    diverge = ("SOLVER.BASE_LR", "1e30", "MODEL.NORM_MODE", "none")
    diverged = create_run(server, "diverging run", extra=diverge)
    failed = wait_run(server, diverged["run_id"], "Error")
    assert failed["resumable_from"] is None  # it failed before any checkpoint
    page.goto(f"{server.url}/#/runs/{diverged['run_id']}")
    panel = page.locator("[data-testid=error-panel]")
    expect(panel).to_contain_text("SOLVER.BASE_LR")
    retry = page.locator("[data-testid=error-retry]")
    expect(retry).to_have_class(re.compile(r"\bprimary\b"))  # the fix, not a resume
    expect(page.locator("[data-testid=error-resume]")).to_have_count(0)  # nothing to resume
    expect(page.locator("[data-testid=btn-resume]")).to_have_count(0)
    shot(page, "training-diverged")
    retry.click()
    expect(page).to_have_url(re.compile("#/wizard/4"))
    expect(page.locator("[data-testid=retry-key]")).to_contain_text("SOLVER.BASE_LR")
    lr_box = page.locator('[data-testid="num-SOLVER.BASE_LR"]')
    expect(lr_box).to_be_focused()
    page.locator("[data-testid=apply-suggested]").click()
    page.wait_for_function("() => window.trainboard.wizard.value('SOLVER.BASE_LR') < 1")
    # The old run's folder is not offered again: a fresh one is proposed.
    page.wait_for_function(
        "old => { const w = window.trainboard.wizard;"
        " return w.value('DATASET.OUTPUT_PATH') && w.value('DATASET.OUTPUT_PATH') !== old; }",
        arg=failed["output_path"],
        timeout=10_000,
    )
    shot(page, "wizard-4-fix-and-retry")

    # ------------------------------------------------------------ busy: the run is queued
    run = create_run(server, "logged run")
    wait_run(server, run["run_id"], "Training")
    before = len(server.api("GET", "/api/runs")["runs"])
    page.goto(f"{server.url}/#/wizard/6")
    page.locator("#run-name").fill("one too many")
    start = page.locator("[data-testid=start-run]")
    try:
        expect(start).to_be_enabled(timeout=20_000)
    except AssertionError:
        reason = page.locator("[data-testid=start-reason]").all_inner_texts()
        raise AssertionError(f"Start stayed disabled: {reason}") from None
    start.click()
    # The one slot is busy: the new run waits in the queue (contracts §1), and its page says
    # so with a Cancel that takes it out again.
    page.wait_for_url(re.compile(r"#/runs/[0-9a-f]+$"), timeout=30_000)
    expect(page.locator("[data-testid=queued-status]")).to_have_text("Queued — position 1")
    assert len(server.api("GET", "/api/runs")["runs"]) == before + 1
    page.locator("[data-testid=btn-dequeue]").click()
    expect(page.locator("[data-testid=queued-status]")).to_have_count(0)
    assert server.api("GET", "/api/queue")["queued"] == []

    # ------------------------------------------------------------ the trainer's log, live
    page.goto(f"{server.url}/#/runs/{run['run_id']}")
    log = page.locator("[data-testid=log-tail]")
    expect(log).to_contain_text("[Iteration 0000", timeout=120_000)  # train.log's own lines
    wait_run(server, run["run_id"], "Complete")
    expect(page.locator("header.head .badge")).to_have_attribute("data-state", "Complete")
    expect(log).to_contain_text("[Validation 00010]")
    expect(log).to_contain_text("[Checkpoint 00010]")
    page.get_by_label("Log level").select_option("events")
    expect(log).not_to_contain_text("[Iteration")
    page.get_by_label("Log level").select_option("all")

    # ------------------------------------------------------------ reproducible
    train_log = page.locator("[data-testid=download-train-log]").get_attribute("href")
    body = page.request.get(f"{server.url}/{train_log}").text()
    assert "[Iteration 00010]" in body
    on_disk = page.locator("[data-testid=download-config-disk]").get_attribute("href")
    resolved = page.request.get(f"{server.url}/{on_disk}").text()
    assert "ITERATION_TOTAL: 10" in resolved and "# Resolved config of run" in resolved
    command = page.locator("[data-testid=train-command]").inner_text()
    assert command.startswith("trainboard train logged-run.yaml --name 'logged run' --seed 0")
    shot(page, "training-complete-log", full_page=True)

    # ------------------------------------------------------------ replay: its own duration
    ran = page.locator("[data-testid=run-duration]").inner_text()
    page.locator("[data-testid=btn-replay]").click()
    expect(page.locator("[data-testid=replay-bar]")).to_be_visible()
    expect(page.locator("[data-testid=run-duration]")).to_have_text(ran)
