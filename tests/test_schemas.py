"""The published JSON Schemas: generated from the code's models, and the click parser keeps to
the click's schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner
from conftest import PUBLISHED_SCHEMAS
from hypothesis import given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from stream.cli import main
from stream.clicks import MAX_ID_CHARS, MAX_INT_ID, MAX_TS, Click, parse_click
from stream.schemas import MESSAGES, json_schema, load_schema


def test_the_committed_schemas_are_what_the_models_generate(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["schemas", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    for name in MESSAGES:
        Draft202012Validator.check_schema(json_schema(name))
        assert load_schema(PUBLISHED_SCHEMAS, name) == json_schema(name), (
            f"deploy/schemas/{name}.schema.json is stale: run `glintstream schemas`"
        )
        assert load_schema(tmp_path, name) == json_schema(name)


# Characters on both sides of the printable rule, and long enough strings to cross the limit.
_TEXT = st.text(alphabet="az7 é日\x00\x1f\x7f\x85", max_size=MAX_ID_CHARS + 2)
_ID = st.one_of(
    _TEXT,
    st.integers(min_value=-5, max_value=MAX_INT_ID + 5),
    st.integers(min_value=MAX_INT_ID - 2, max_value=MAX_INT_ID + 2),
    st.booleans(),
    st.none(),
    # JSON Schema cannot tell 7.0 from 7; the parser refuses both floats, so only fractions here
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: not x.is_integer()),
)
_TS = st.one_of(
    st.floats(min_value=-10, max_value=MAX_TS * 2, allow_nan=False),
    st.integers(min_value=-10, max_value=int(MAX_TS) + 10),
    st.booleans(),
    st.text(max_size=3),
)
_FIELDS = ("user_id", "item_id", "ts", "event_id")


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    values = {"user_id": draw(_ID), "item_id": draw(_ID), "ts": draw(_TS), "event_id": draw(_ID)}
    present = draw(st.sets(st.sampled_from(_FIELDS)))
    document = {name: value for name, value in values.items() if name in present}
    if draw(st.booleans()):
        document["extra"] = draw(st.integers())
    return document


@settings(max_examples=400, deadline=None)
@given(documents())
def test_the_parser_accepts_exactly_the_clicks_the_schema_accepts(document: dict[str, Any]) -> None:
    validator = Draft202012Validator(load_schema(PUBLISHED_SCHEMAS, "click"))
    user = document.get("user_id")
    key = str(user).encode() if isinstance(user, int | str) and not isinstance(user, bool) else b""
    parsed = parse_click(json.dumps(document).encode(), key, max_bytes=1 << 20)
    valid = validator.is_valid(document)
    assert isinstance(parsed, Click) == valid, (document, parsed)
