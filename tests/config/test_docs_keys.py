"""docs/configuration.md's table of core and accepted keys is the schema's, row for row."""

from __future__ import annotations

from pathlib import Path

from backend.config import schema

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def documented_rows() -> dict[str, tuple[set[str], str]]:
    text = DOC.read_text()
    table = text[text.index("| section | core | accepted, not used |") :].split("\n\n")[0]
    rows = {}
    for line in table.splitlines()[2:]:
        section, core, other = (cell.strip() for cell in line.strip("|").split("|"))
        rows[section] = ({k.strip() for k in core.split(",")} - {"—"}, other)
    return rows


def test_the_core_keys_of_each_section_are_the_schemas() -> None:
    rows = documented_rows()
    for section in schema.SECTIONS_TOP:
        keys = [k for k in schema.KEYS if k.split(".")[0] == section]
        core = {k.split(".", 1)[1] for k in keys if schema.KEYS[k].core}
        assert rows[section][0] == core, section
        for key in keys:
            if not schema.KEYS[key].core and section != "INFERENCE":
                assert key.split(".", 1)[1] in rows[section][1], key
