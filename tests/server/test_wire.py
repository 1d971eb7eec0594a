"""JSON on the wire: strict, bounded reading; writing that never fails on what the server holds."""

from __future__ import annotations

import json

import numpy as np
import pytest

from backend.wire import MAX_DEPTH, JSONResponse, WireError, dumps, dumps_text, loads


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (b'{"a": NaN}', "NaN at line 1 column 7"),
        (b'{"a": Infinity}', "Infinity at line 1 column 7"),
        (b'{"a": -Infinity}', "Infinity"),
        (b'{\n "a": 1e400}', "too large (it would be infinite)"),
        (b"[" * 2000 + b"]" * 2000, "nested deeper than"),
        (b'{"a": "\xff"}', "UTF-8"),
        (b'"\\ud800"', "surrogate"),
        (b"", "empty"),
        (b'{"a": 1} x', "line 1"),
    ],
)
def test_what_is_not_json_is_refused_saying_where(text: bytes, says: str) -> None:
    with pytest.raises(WireError) as refused:
        loads(text)
    assert says in str(refused.value)


def test_nesting_is_bounded_exactly() -> None:
    deepest = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert loads(deepest) is not None
    assert loads('{"a":' * MAX_DEPTH + "1" + "}" * MAX_DEPTH) is not None
    with pytest.raises(WireError, match=r"nested deeper than 32 levels \(at a\.a"):
        loads('{"a":' * (MAX_DEPTH + 1) + "1" + "}" * (MAX_DEPTH + 1))
    with pytest.raises(WireError, match=r"\[0\]\[0\]"):
        loads("[" + deepest + "]")


def test_a_wide_body_is_checked_whole() -> None:
    wide = [[{"a": [1]}] for _ in range(10_000)]
    assert loads(json.dumps(wide)) == wide
    deep = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    with pytest.raises(WireError, match=r"at \[10000\]\[0\]\[0\]"):  # the last one
        loads(json.dumps(wide)[:-1] + "," + deep[:1] + deep + deep[-1:] + "]")


def test_ordinary_json_reads_as_the_standard_library_does() -> None:
    text = '{"a": [1, 2.5, -0.0, "é", null, true], "b": {"c": 12345678901234567890}}'
    assert loads(text) == json.loads(text)
    assert loads(text.encode()) == json.loads(text)


def test_writing_never_fails_on_non_finite_floats() -> None:
    value = {"a": float("inf"), "b": [float("nan"), -float("inf")], "c": 1.5}
    assert json.loads(dumps(value)) == {"a": None, "b": [None, None], "c": 1.5}
    # What orjson cannot write goes through the standard library, still finite.
    big = {"n": 10**30, "x": float("nan"), 3: "int key"}
    assert json.loads(dumps(big)) == {"n": 10**30, "x": None, "3": "int key"}
    deep: list[object] = [float("inf")]
    for _ in range(300):  # past orjson's own limit
        deep = [deep]
    assert dumps_text(deep).endswith("[null]" + "]" * 300)
    assert json.loads(dumps({"v": np.float32(0.5), "a": np.arange(3)})) == {
        "v": 0.5,
        "a": [0, 1, 2],
    }


def test_json_response_renders_with_dumps() -> None:
    response = JSONResponse({"loss": float("nan"), "name": "é"})
    assert response.body == b'{"loss":null,"name":"\xc3\xa9"}'
    assert response.headers["content-type"] == "application/json"


# --- the body deadline: only the body is timed ---------------------------------------------


@pytest.mark.parametrize("trickled", [True, False])
@pytest.mark.anyio
async def test_body_deadline_times_the_body_only(
    monkeypatch: pytest.MonkeyPatch, trickled: bool
) -> None:
    """A body that stops arriving is answered 408 and the app sees a disconnect; once the
    body is in, a wait on `receive` (a streaming response listening for a disconnect)
    outlasts the deadline untouched."""
    import asyncio

    from backend import wire

    monkeypatch.setattr(wire, "BODY_GRACE_S", 0.2)
    first = {"type": "http.request", "body": b"{", "more_body": trickled}
    later: dict[str, object] = (
        {"type": "http.disconnect"} if not trickled else {"type": "http.request"}
    )
    inbox: list[dict[str, object]] = [first]
    sent: list[dict[str, object]] = []
    seen: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        if inbox:
            return inbox.pop(0)
        await asyncio.sleep(0.6)  # three times the deadline
        return later

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def app(scope: object, receive: object, send: object) -> None:
        seen.append(await receive())  # type: ignore[operator]
        seen.append(await receive())  # type: ignore[operator]

    await wire.BodyDeadline(app)({"type": "http"}, receive, send)  # type: ignore[arg-type]
    if trickled:
        assert sent[0]["status"] == 408 and seen[-1] == {"type": "http.disconnect"}
        assert json.loads(sent[1]["body"])["error"]["code"] == "request_timeout"  # type: ignore[arg-type]
    else:
        assert sent == [] and seen == [first, later]  # the real disconnect, after 0.6 s
