"""Reading PyTC configs: safe YAML, base + overlay merge, `KEY VALUE` overrides, defaults.

Loading never raises on bad input. What cannot be read (a YAML syntax error, an unsafe
tag, a file that does not exist, a key PyTC does not know) becomes a `Problem` with the
file and line, and everything that could be read is still merged, so validation can report
the rest in the same pass.

The merge follows PyTC's `--config-base BASE --config-file CONFIG` and `opts`: defaults,
then the base, then the config, then the overrides, key by key.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from backend.config.problems import ERROR, WARNING, Problem, Source, at
from backend.config.schema import (
    KEYS,
    OLD_ARCHITECTURE_NAMES,
    SECTIONS,
    SWITCHABLE_SECTIONS,
    defaults,
    get,
    put,
)
from backend.config.valuetypes import coerce, literal, type_name

Flat = dict[str, tuple[Any, Source]]


@dataclass
class LoadedConfig:
    """A resolved config: `values` is the full tree the trainer reads (docs/contracts.md)."""

    values: dict[str, Any]
    problems: list[Problem] = field(default_factory=list)
    # Dotted keys the user wrote (base, config or override), with where the last one was.
    user_keys: dict[str, Source] = field(default_factory=dict)
    # False when a file could not be read or parsed: the values are then partial.
    complete: bool = True

    def get(self, key: str) -> Any:
        return get(self.values, key)

    def source(self, key: str) -> Source | None:
        return self.user_keys.get(key)

    def to_yaml(self) -> str:
        """The resolved values as YAML that loads back to the same values."""
        return yaml.dump(
            self.values, Dumper=_Dumper, sort_keys=False, width=100, allow_unicode=True
        )

    def diff_from_defaults(self) -> dict[str, Any]:
        """Dotted key -> value for every key whose value is not PyTC's default."""
        return {
            name: get(self.values, name)
            for name, key in KEYS.items()
            if get(self.values, name) != key.default
        }


class _Dumper(yaml.SafeDumper):
    """Sections as blocks, lists inline: `INPUT_SIZE: [8, 256, 256]`, as PyTC configs look."""

    def represent_flow_list(self, data: Any) -> yaml.SequenceNode:
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_Dumper.add_representer(list, _Dumper.represent_flow_list)


def load_config(
    text: str | None = None,
    *,
    path: Path | None = None,
    base_text: str | None = None,
    base_path: Path | None = None,
    overrides: Sequence[str] = (),
) -> LoadedConfig:
    """Load a config (text or path), over an optional base, under optional overrides.

    Text wins over a path when both are given; the path then only labels problems.
    """
    problems: list[Problem] = []
    merged: Flat = {}
    complete = True
    for label, doc_text, doc_path in (
        ("base", base_text, base_path),
        ("config", text, path),
    ):
        if doc_text is None and doc_path is None:
            continue
        name = str(doc_path) if doc_path is not None else label
        flat, doc_problems, ok = _read_document(doc_text, doc_path, name)
        merged.update(flat)
        problems += doc_problems
        complete = complete and ok
    flat, override_problems = _read_overrides(overrides)
    merged.update(flat)
    problems += override_problems

    values = defaults()
    user_keys: dict[str, Source] = {}
    for name, (value, source) in merged.items():
        put(values, name, coerce(value, KEYS[name].type))
        user_keys[name] = source
    problems += _map_old_architecture(values, user_keys)
    return LoadedConfig(values=values, problems=problems, user_keys=user_keys, complete=complete)


# --- reading one document -----------------------------------------------------------------


def _read_document(
    text: str | None, path: Path | None, name: str
) -> tuple[Flat, list[Problem], bool]:
    if text is None:
        assert path is not None
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            problem = Problem(ERROR, "", f"cannot read the file: {reason}", file=name)
            return {}, [problem], False
    data, lines, problems, parsed = _parse_yaml(text, name)
    if not parsed:
        return {}, problems, False
    if data is None:
        return {}, problems, True  # an empty file sets nothing
    if not isinstance(data, dict):
        problems.append(
            Problem(
                ERROR,
                "",
                f"the top level is a {type_name(data)}, not a mapping of sections",
                expected="a mapping with SYSTEM, MODEL, DATASET, AUGMENTOR, SOLVER, ...",
                file=name,
                line=1,
            )
        )
        return {}, problems, False
    flat: Flat = {}
    _flatten(data, "", lines, name, flat, problems)
    return flat, problems, True


def _parse_yaml(text: str, name: str) -> tuple[Any, dict[str, int], list[Problem], bool]:
    """Safe-load one YAML document and the 1-based line of every mapping key by dotted path.

    Only `yaml.SafeLoader` constructors exist, so `!!python/object` and friends are refused
    rather than executed.
    """
    lines: dict[str, int] = {}
    problems: list[Problem] = []
    try:
        loader = yaml.SafeLoader(text)
    except yaml.YAMLError as exc:  # a character YAML never allows (NUL, other controls)
        return None, lines, [_yaml_problem(exc, name)], False
    try:
        node = loader.get_single_node()
        if node is None:
            return None, lines, problems, True
        if _expanded_size(node, {}) > MAX_VALUES:
            # Aliases of aliases ("billion laughs") would make every later step explode.
            message = f"the document expands to more than {MAX_VALUES} values through aliases"
            problems.append(Problem(ERROR, "", message, file=name, line=1))
            return None, lines, problems, False
        _key_lines(node, "", name, lines, problems)
        return loader.construct_document(node), lines, problems, True
    except yaml.YAMLError as exc:
        problems.append(_yaml_problem(exc, name))
    except RecursionError:
        problems.append(Problem(ERROR, "", "the document is nested too deeply", file=name))
    finally:
        loader.dispose()
    return None, lines, problems, False


# A full PyTC config has a few hundred values; this leaves room for any real one.
MAX_VALUES = 100_000


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Values the document holds once aliases are expanded, counted in linear time."""
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = 1  # a cycle counts once
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, memo) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    memo[id(node)] = size
    return size


def _key_lines(
    node: yaml.Node, prefix: str, name: str, lines: dict[str, int], problems: list[Problem]
) -> None:
    if not isinstance(node, yaml.MappingNode):
        return
    seen: set[str] = set()
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
            continue
        path = f"{prefix}.{key_node.value}" if prefix else str(key_node.value)
        line = key_node.start_mark.line + 1
        if path in seen:
            problems.append(
                Problem(
                    WARNING,
                    path,
                    "duplicate key: the later value wins",
                    suggestion="remove one of them",
                    file=name,
                    line=line,
                )
            )
        seen.add(path)
        lines[path] = line
        if path in SECTIONS:  # below unknown keys nothing is reported: no need to descend
            _key_lines(value_node, path, name, lines, problems)


_TAG = re.compile(r"tag '([^']+)'")


def _yaml_problem(exc: yaml.YAMLError, name: str) -> Problem:
    line = None
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        message = " ".join(p for p in (exc.context, exc.problem) if p)
    else:
        message = str(exc)
    tag = _TAG.search(message) if isinstance(exc, yaml.constructor.ConstructorError) else None
    if tag:
        shown = tag.group(1).replace("tag:yaml.org,2002:", "!!")
        return Problem(
            ERROR,
            "",
            f"YAML tag {shown} is not allowed: configs are read as plain data",
            expected="plain YAML (mappings, lists, strings, numbers, booleans, null)",
            suggestion=f"remove the {shown} tag",
            file=name,
            line=line,
        )
    return Problem(ERROR, "", f"YAML syntax error: {message or exc}", file=name, line=line)


def _flatten(
    mapping: dict[Any, Any],
    prefix: str,
    lines: dict[str, int],
    name: str,
    out: Flat,
    problems: list[Problem],
) -> None:
    for raw_key, value in mapping.items():
        path = f"{prefix}.{raw_key}" if prefix else str(raw_key)
        source = Source(name, lines.get(path))
        if path in SECTIONS and isinstance(value, dict):
            _flatten(value, path, lines, name, out, problems)
        else:
            _place(path, value, source, out, problems)


def _place(path: str, value: Any, source: Source, out: Flat, problems: list[Problem]) -> None:
    """Record one written value at `path`, or the problem with it."""
    if path in KEYS:
        out[path] = (value, source)
    elif path in SWITCHABLE_SECTIONS and isinstance(value, bool):
        # Older configs switch a section with a bare boolean: `ROTATE: True`.
        out[f"{path}.ENABLED"] = (value, source)
    elif path in SECTIONS:
        if value is None:
            return  # an empty section (`SOLVER:` with nothing under it) sets nothing
        problems.append(
            at(
                source,
                ERROR,
                path,
                f"{path} is a section, got {type_name(value)} {value!r}",
                expected="a mapping" + (" or true/false" if path in SWITCHABLE_SECTIONS else ""),
            )
        )
    else:
        problems.append(unknown_key(path, source))


def unknown_key(path: str, source: Source | None) -> Problem:
    """PyTC's "Non-existent config key", with the closest real keys as the suggestion."""
    close = closest_keys(path)
    suggestion = ""
    if close:
        suggestion = "did you mean " + " or ".join(close) + "?"
    return at(source, ERROR, path, "non-existent config key", suggestion=suggestion)


def closest_keys(path: str, n: int = 3) -> list[str]:
    """Real keys near `path`: a typo among its siblings first, then the same name elsewhere."""
    parent, _, leaf = path.rpartition(".")
    names = [*KEYS, *SECTIONS]
    siblings = {k.rpartition(".")[2]: k for k in names if k.rpartition(".")[0] == parent}
    # Compare leaf names: the shared "SOLVER." prefix would make every sibling look close.
    found = [siblings[m] for m in difflib.get_close_matches(leaf, siblings, n=n, cutoff=0.7)]
    # The right name in the wrong section: MODEL.BASE_LR -> SOLVER.BASE_LR.
    found += [k for k in names if k.rpartition(".")[2] == leaf and k != path]
    if not found:
        found = difflib.get_close_matches(path, names, n=n, cutoff=0.75)
    return list(dict.fromkeys(found))[:n]


# --- overrides ----------------------------------------------------------------------------


def _read_overrides(overrides: Sequence[str]) -> tuple[Flat, list[Problem]]:
    """`["SOLVER.BASE_LR", "0.01", ...]`: values are literal-evaluated as PyTC does."""
    items = list(overrides)
    out: Flat = {}
    problems: list[Problem] = []
    source = Source("override")
    if len(items) % 2:
        problems.append(
            at(
                source,
                ERROR,
                str(items[-1]),
                "override without a value",
                expected="KEY VALUE pairs",
                suggestion=f"write {items[-1]} VALUE",
            )
        )
        items = items[:-1]
    for key, raw in zip(items[::2], items[1::2], strict=True):
        value = literal(raw) if isinstance(raw, str) else raw
        if str(key) in SECTIONS and isinstance(value, dict):  # AUGMENTOR.ROTATE "{'P': 0.5}"
            _flatten(value, str(key), {}, source.file, out, problems)
        else:
            _place(str(key), value, source, out, problems)
    return out, problems


# --- old names ----------------------------------------------------------------------------


def _map_old_architecture(values: dict[str, Any], user_keys: dict[str, Source]) -> list[Problem]:
    name = "MODEL.ARCHITECTURE"
    old = get(values, name)
    if not isinstance(old, str) or old not in OLD_ARCHITECTURE_NAMES:
        return []
    new = OLD_ARCHITECTURE_NAMES[old]
    put(values, name, new)
    return [
        at(
            user_keys.get(name),
            WARNING,
            name,
            f"{old!r} is an old PyTC architecture name, read as {new!r}",
            suggestion=f"write ARCHITECTURE: {new}",
        )
    ]
