"""The experiment views against a real server: the queue, run management, the runs table's
view in the URL, and a sweep from the wizard to its page.

Runs are tiny (10 iterations of a 64x64 2D patch, batch 1, `helpers.TINY`); the server has
one slot (CPU), so a second start waits in the queue. Screenshots go to
test-artifacts/screenshots/ (`experiments-*`).
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from tests.browser.helpers import TINY, Server, create_run, shot, wait_run

pytestmark = [pytest.mark.browser]


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


def queue_ids(server: Server) -> list[str]:
    ids: list[str] = server.api("GET", "/api/queue")["queued"]
    return ids


def row(page: Any, run_id: str) -> Any:
    return page.locator(f'[data-testid=runs-table] tr[data-run-id="{run_id}"]')


def test_queue_in_the_top_bar(page: Any, server: Server) -> None:
    """Three starts on a one-slot server: one trains, two wait. The top bar counts them and
    opens the queue, which reorders and cancels; the table and the run page show the
    positions."""
    first = create_run(server, "queue first")
    wait_run(server, first["run_id"], "Training")
    second = create_run(server, "queue second")
    third = create_run(server, "queue third")
    assert queue_ids(server) == [second["run_id"], third["run_id"]]

    page.goto(page.url.split("#")[0] + "#/history")
    expect(page.locator("[data-testid=queued-count]")).to_have_text("2 queued")
    expect(row(page, second["run_id"]).locator("[data-testid=queue-position]")).to_have_text(
        "Queued #1"
    )
    page.locator("[data-testid=queue] summary").click()
    items = page.locator("[data-testid=queue-list] li")
    expect(items).to_have_count(2)
    expect(items.nth(0)).to_contain_text("queue second")
    shot(page, "experiments-queue")

    page.get_by_role("button", name="Move queue third up").click()
    expect(items.nth(0)).to_contain_text("queue third")
    assert queue_ids(server) == [third["run_id"], second["run_id"]]
    expect(row(page, third["run_id"]).locator("[data-testid=queue-position]")).to_have_text(
        "Queued #1"
    )

    page.get_by_role("button", name="Cancel queue third").click()
    expect(items).to_have_count(1)
    expect(page.locator("[data-testid=queued-count]")).to_have_text("1 queued")
    assert queue_ids(server) == [second["run_id"]]
    summary = server.api("GET", f"/api/runs/{third['run_id']}")["run"]
    assert summary["state"] == "Idle" and summary["queued"] is False

    # The queued run's own page says where it stands, and cancels too.
    page.goto(page.url.split("#")[0] + f"#/runs/{second['run_id']}")
    expect(page.locator("[data-testid=queued-status]")).to_have_text("Queued — position 1")
    shot(page, "experiments-queued-run")
    page.locator("[data-testid=btn-dequeue]").click()
    expect(page.locator("[data-testid=queued-status]")).to_have_count(0)
    expect(page.locator("[data-testid=queued-count]")).to_have_text("0 queued")
    assert queue_ids(server) == []


def test_manage_runs_from_the_table_and_the_run_page(page: Any, server: Server) -> None:
    """Rename in place, tag and filter by the tag, archive (hidden until asked), notes as
    safe Markdown on the run page, delete with its confirmation."""
    keep = create_run(server, "manage keep", start=False)
    drop = create_run(server, "manage drop", start=False)
    base = page.url.split("#")[0]
    page.goto(base + "#/history")
    r = row(page, keep["run_id"])
    r.locator("[data-testid=rename]").click()
    r.locator("[data-testid=rename-input]").fill("kept and renamed")
    r.locator("[data-testid=rename-input]").press("Enter")
    expect(r.locator(".name > a")).to_have_text("kept and renamed")
    assert server.api("GET", f"/api/runs/{keep['run_id']}")["run"]["name"] == "kept and renamed"

    r.locator("[data-testid=add-tag]").click()
    r.locator("[data-testid=tag-input]").fill("baseline")
    r.locator("[data-testid=tag-input]").press("Enter")
    expect(r.locator(".chip[data-tag=baseline]")).to_be_visible()
    page.locator("[data-testid=tag-filter]").select_option("baseline")
    expect(page.locator("[data-testid=runs-table] tbody tr")).to_have_count(1)
    assert "tag=baseline" in page.url
    page.locator("[data-testid=tag-filter]").select_option("")

    d = row(page, drop["run_id"])
    d.locator("[data-testid=archive]").click()
    expect(d).to_have_count(0)
    page.locator("[data-testid=show-archived]").check()
    expect(d).to_contain_text("archived")
    shot(page, "experiments-manage-table")
    d.locator("[data-testid=delete]").click()
    dialog = page.locator("dialog[open]")
    expect(dialog).to_contain_text("Also remove its files")
    dialog.locator("[data-testid=delete-files]").check()
    dialog.get_by_role("button", name="Delete run").click()
    expect(d).to_have_count(0)
    deleted = server.api("GET", f"/api/runs/{drop['run_id']}")["run"]
    assert deleted["deleted"] is True

    # Notes on the run page: Markdown rendered, the author's HTML shown as text.
    page.goto(base + f"#/runs/{keep['run_id']}")
    page.locator("header.head details.notes-box summary").click()
    page.locator("[data-testid=notes-edit]").click()
    page.locator("[data-testid=notes-input]").fill("# Idea\nTry **lower** LR <b>not bold</b>")
    page.locator("[data-testid=notes-save]").click()
    view = page.locator("[data-testid=notes-view]")
    expect(view.locator("strong")).to_have_text("lower")
    expect(view).to_contain_text("<b>not bold</b>")
    expect(view.locator("b")).to_have_count(0)
    shot(page, "experiments-notes")
    notes = server.api("GET", f"/api/runs/{keep['run_id']}")["run"]["notes"]
    assert notes == "# Idea\nTry **lower** LR <b>not bold</b>"


def test_runs_table_view_survives_a_reload(page: Any, server: Server) -> None:
    """A config column chosen in the picker, a parameter filter and a sort by the column:
    the URL keeps them, so a reload (or a shared link) shows the same view."""
    low = create_run(server, "lr low", start=False, extra=("SOLVER.BASE_LR", "0.001"))
    high = create_run(server, "lr high", start=False, extra=("SOLVER.BASE_LR", "0.01"))
    mid = create_run(server, "lr mid", start=False, extra=("SOLVER.BASE_LR", "0.005"))
    page.goto(page.url.split("#")[0] + "#/history")
    page.locator("[data-testid=columns]").click()
    page.locator("[data-testid=column-search]").fill("base_lr")
    page.locator('input[data-key="SOLVER.BASE_LR"]').check()
    page.locator("[data-testid=columns]").click()  # closes the picker
    cells = page.locator('[data-testid=runs-table] td[data-col="SOLVER.BASE_LR"]')
    expect(cells).to_have_count(3)
    page.locator("[data-testid=condition-input]").fill("SOLVER.BASE_LR>=0.005")
    page.locator("[data-testid=condition-input]").press("Enter")
    expect(cells).to_have_count(2)
    header = page.locator('th[data-col="SOLVER.BASE_LR"] button.sort')
    header.click()  # descending first
    header.click()  # then ascending
    expect(cells.nth(0)).to_have_text("0.005")
    expect(cells.nth(1)).to_have_text("0.01")
    url = page.url
    assert "cols=SOLVER.BASE_LR" in url and "sort=param" in url and "where=" in url

    page.reload()
    expect(cells).to_have_count(2)
    expect(cells.nth(0)).to_have_text("0.005")
    expect(page.locator("[data-testid=condition]")).to_have_text(
        re.compile("SOLVER.BASE_LR>=0.005")
    )
    ids = page.locator("[data-testid=runs-table] tbody tr").evaluate_all(
        "rows => rows.map((r) => r.dataset.runId)"
    )
    assert ids == [mid["run_id"], high["run_id"]]
    assert low["run_id"] not in ids
    shot(page, "experiments-table-view")

    # Compare any number of the selected runs.
    for run_id in ids:
        row(page, run_id).locator("td.sel input").check()
    link = page.locator("[data-testid=compare-selected]")
    expect(link).to_have_attribute("href", f"#/compare?runs={ids[0]},{ids[1]}")


@pytest.mark.timeout(900)  # two trials one after the other, on a shared 2-core machine
def test_a_sweep_from_the_wizard_to_its_page(page: Any, server: Server) -> None:
    """The learning rate marked "sweep" in the wizard, two trials started from the Review;
    the sweep page shows its trial table, best-so-far curve, parallel coordinates, Optuna's
    importances and the trials' validation curves, and opens a new run from the best
    trial."""
    preset = next(p for p in server.api("GET", "/api/presets")["presets"] if p["name"] == "demo_2d")
    output = str(server.data_root / "demo" / "outputs" / "sweep-base")
    edits = dict(zip(TINY[::2], TINY[1::2], strict=True))
    # Shorter still: four iterations, validated once at the end (the objective).
    short = ("SOLVER.ITERATION_TOTAL", "SOLVER.ITERATION_SAVE", "SOLVER.ITERATION_VAL")
    edits |= dict.fromkeys(short, "4") | {"MONITOR.ITERATION_NUM": "[1, 4]"}
    page.goto(page.url.split("#")[0] + "#/wizard/1")
    page.wait_for_function("() => window.trainboard && window.trainboard.wizard")
    page.evaluate(
        """([preset, edits, output]) => {
            const w = window.trainboard.wizard;
            w.loadPreset(preset);
            for (const [k, v] of Object.entries(edits)) w.setParam(k, JSON.parse(v));
            w.setData('DATASET.OUTPUT_PATH', output);
        }""",
        [preset, edits, output],
    )
    page.goto(page.url.split("#")[0] + "#/wizard/4")
    page.locator('[data-testid="sweep-SOLVER.BASE_LR"]').check()
    page.locator('[data-testid="sweep-low-SOLVER.BASE_LR"]').fill("0.001")
    page.locator('[data-testid="sweep-low-SOLVER.BASE_LR"]').press("Tab")
    page.locator('[data-testid="sweep-high-SOLVER.BASE_LR"]').fill("0.01")
    page.locator('[data-testid="sweep-high-SOLVER.BASE_LR"]').press("Tab")
    shot(page, "experiments-wizard-sweep-mark")
    page.goto(page.url.split("#")[0] + "#/wizard/6")
    page.locator("[data-testid=sweep-trials]").fill("2")
    page.locator("[data-testid=sweep-pruner]").select_option("none")
    page.locator("#run-name").fill("lr sweep")
    start = page.locator("[data-testid=start-sweep]")
    expect(start).to_be_enabled(timeout=20_000)
    shot(page, "experiments-wizard-sweep-review")
    start.click()
    page.wait_for_url(re.compile(r"#/sweep/sweep-[0-9a-f]+$"), timeout=30_000)
    sweep_id = page.url.rsplit("/", 1)[-1]

    deadline = time.monotonic() + 800
    while time.monotonic() < deadline:
        state = server.api("GET", f"/api/sweeps/{sweep_id}")
        if (state.get("sweep") or state).get("state") == "Complete":
            break
        time.sleep(1)
    else:
        raise AssertionError(f"the sweep did not complete: {state}")

    trials = page.locator("[data-testid=trials-table] tbody tr[data-trial]")
    expect(trials).to_have_count(2, timeout=20_000)
    expect(page.locator("[data-testid=sweep-state]")).to_have_text("Complete", timeout=20_000)
    lrs = [float(t) for t in trials.locator("td.mono").all_inner_texts()]
    assert all(0.001 <= lr <= 0.01 for lr in lrs), lrs
    expect(page.locator("[data-testid=parallel-coords] path.trial")).to_have_count(2)
    expect(page.locator("[data-testid=importances]")).to_contain_text("SOLVER.BASE_LR")
    page.wait_for_function(
        "() => [...document.querySelectorAll('figure.chart')]"
        ".filter(f => Number(f.dataset.points) > 0).length >= 2",
        timeout=20_000,
    )
    shot(page, "experiments-sweep-page", full_page=True)

    best = server.api("GET", f"/api/sweeps/{sweep_id}")["sweep"]
    page.locator("[data-testid=new-from-best]").click()
    page.wait_for_url(re.compile(r"#/wizard/4$"))
    # The best trial's configuration, once the wizard has validated it (its overrides).
    page.wait_for_function(
        "lr => { const w = window.trainboard.wizard;"
        " return w.fresh && w.value('SOLVER.BASE_LR') === lr; }",
        arg=best["best_params"]["SOLVER.BASE_LR"],
        timeout=20_000,
    )
    assert page.evaluate("() => window.trainboard.wizard.sweeping") is False
