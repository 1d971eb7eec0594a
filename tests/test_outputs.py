"""Who owns an output folder, and which free folder is proposed instead."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from backend.outputs import (
    MARKER,
    OutputInUse,
    Owner,
    check,
    claim,
    describe,
    owner_of,
    propose,
    read_marker,
)


@dataclass
class Known:
    output_path: str | None
    name: str
    created_at: float | None = None
    state: str | None = "Idle"


def setup(tmp_path: Path, layout: dict[str, str]) -> None:
    """Folders under tmp_path: 'ckpt' holds a checkpoint, 'marker:<run>' a marker, 'empty'."""
    for folder, content in layout.items():
        path = tmp_path / folder
        path.mkdir(parents=True, exist_ok=True)
        if content == "ckpt":
            (path / "checkpoint_00010.pth.tar").write_bytes(b"x")
        elif content.startswith("marker:"):
            claim(str(path), content.split(":", 1)[1], "marked run")
        elif content == "other files":
            (path / "notes.txt").write_text("not a checkpoint")


RUNS = {
    "aaaaaaaaaaaa": Known("{tmp}/a", "run a", 1.0),
    "bbbbbbbbbbbb": Known("{tmp}/shared", "run b", 2.0, "Complete"),
    "cccccccccccc": Known("{tmp}/shared", "run c", 3.0, "Error"),
    "dddddddddddd": Known(None, "no output yet"),
}


def known(tmp_path: Path) -> dict[str, Known]:
    return {
        rid: Known(
            r.output_path and r.output_path.format(tmp=tmp_path), r.name, r.created_at, r.state
        )
        for rid, r in RUNS.items()
    }


# One row per case: (folder asked about, who asks, folder layout, expected owner or None).
CASES = [
    ("new", None, {}, None),
    ("empty", None, {"empty": "empty"}, None),
    ("files", None, {"files": "other files"}, None),  # PyTC's habit: any folder without ckpts
    ("a", None, {}, Owner("aaaaaaaaaaaa", "run a", "Idle")),
    ("a", "aaaaaaaaaaaa", {}, None),  # its own folder
    ("shared", None, {}, Owner("cccccccccccc", "run c", "Error")),  # the newest user
    ("shared", "bbbbbbbbbbbb", {}, None),
    ("marked", None, {"marked": "marker:eeeeeeeeeeee"}, Owner("eeeeeeeeeeee", "marked run")),
    ("marked", "eeeeeeeeeeee", {"marked": "marker:eeeeeeeeeeee"}, None),
    ("ckpt", None, {"ckpt": "ckpt"}, "unknown"),
    ("ckpt", "aaaaaaaaaaaa", {"ckpt": "ckpt"}, "unknown"),
]


@pytest.mark.parametrize(("folder", "asking", "layout", "expected"), CASES)
def test_owner_of(
    tmp_path: Path, folder: str, asking: str | None, layout: dict[str, str], expected: object
) -> None:
    setup(tmp_path, layout)
    owner = owner_of(str(tmp_path / folder), asking, known(tmp_path))
    if expected == "unknown":
        assert owner is not None and owner.run_id is None
        assert owner.name is not None and "1 checkpoint file(s)" in owner.name
    else:
        assert owner == expected


def test_a_symlinked_alias_is_the_same_folder(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    os.symlink(tmp_path / "a", tmp_path / "alias")
    owner = owner_of(str(tmp_path / "alias"), None, known(tmp_path))
    assert owner is not None and owner.run_id == "aaaaaaaaaaaa"


@pytest.mark.parametrize(
    ("folder", "layout", "proposed"),
    [
        ("new", {}, "new"),  # free: itself
        ("a", {}, "a-2"),
        ("a", {"a-2": "ckpt", "a-3": "marker:ffffffffffff"}, "a-4"),
        ("a-2", {"a-2": "ckpt"}, "a-3"),  # counts on from a numbered folder
        ("shared", {"shared-2": "other files"}, "shared-2"),  # no checkpoints: free
    ],
)
def test_propose_a_free_sibling(
    tmp_path: Path, folder: str, layout: dict[str, str], proposed: str
) -> None:
    setup(tmp_path, layout)
    runs = known(tmp_path)
    runs["gggggggggggg"] = Known(str(tmp_path / "a-5"), "a later one")
    assert propose(str(tmp_path / folder), runs) == str(tmp_path / proposed)


def test_check_refuses_unless_reused(tmp_path: Path) -> None:
    runs = known(tmp_path)
    with pytest.raises(OutputInUse) as refused:
        check(str(tmp_path / "a"), "zzzzzzzzzzzz", runs)
    assert refused.value.details() == {
        "output_path": str(tmp_path / "a"),
        "owner": {"run_id": "aaaaaaaaaaaa", "name": "run a"},
        "proposed": str(tmp_path / "a-2"),
    }
    assert "run 'aaaaaaaaaaaa' (run a)" in str(refused.value)
    assert check(str(tmp_path / "a"), "zzzzzzzzzzzz", runs, reuse=True) == Owner(
        "aaaaaaaaaaaa", "run a", "Idle"
    )
    assert check(str(tmp_path / "new"), "zzzzzzzzzzzz", runs) is None


def test_claim_writes_the_marker_and_the_newest_claim_wins(tmp_path: Path) -> None:
    folder = str(tmp_path / "deep" / "out")
    claim(folder, "aaaaaaaaaaaa", "first")
    claim(folder, "bbbbbbbbbbbb", "second")
    assert read_marker(folder) == {"run_id": "bbbbbbbbbbbb", "name": "second"}
    assert sorted(p.name for p in Path(folder).iterdir()) == [MARKER]  # no partial left
    (Path(folder) / MARKER).write_text("{not json")
    assert read_marker(folder) is None


def test_describe_is_the_paths_output_answer(tmp_path: Path) -> None:
    runs = known(tmp_path)
    assert describe(str(tmp_path / "new"), runs) == {
        "path": str(tmp_path / "new"),
        "owner": None,
        "proposed": str(tmp_path / "new"),
    }
    assert describe(str(tmp_path / "shared"), runs) == {
        "path": str(tmp_path / "shared"),
        "owner": {"run_id": "cccccccccccc", "name": "run c", "state": "Error"},
        "proposed": str(tmp_path / "shared-2"),
    }
