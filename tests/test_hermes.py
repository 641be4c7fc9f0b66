"""Hermes tool-call parser: exact cases and hypothesis properties (never raises, round trips)."""

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_grpo.rollout.hermes import (
    ToolCall,
    invalid_arguments_output,
    parse_arguments,
    parse_tool_calls,
)

NAMES = st.from_regex(r"[a-z][a-z_]{0,30}", fullmatch=True)
SCALARS = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=20)
JSON_VALUES = st.recursive(
    SCALARS, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
    max_leaves=8,
)
# a tag inside an argument string would end the block early (for the reference's regex too)
ARGS = st.dictionaries(st.text(min_size=1, max_size=10), JSON_VALUES, max_size=4).filter(
    lambda a: "tool_call>" not in json.dumps(a))
FREE_TEXT = st.text(max_size=30).filter(lambda s: "<tool_call>" not in s and "</tool_call>" not in s)
WHITESPACE = st.sampled_from(["", "\n", " ", "\n\n", "\t ", " \n "])


def render_call(name: str, args: dict, ws: str = "\n", args_as_string: bool = False) -> str:
    """A call as Qwen3's template writes it (``ws`` replaces the newlines inside the tags)."""
    arg_text = json.dumps(json.dumps(args)) if args_as_string else json.dumps(args)
    return f'<tool_call>{ws}{{"name": "{name}", "arguments": {arg_text}}}{ws}</tool_call>'


def test_single_call_as_template_renders_it():
    text = '<tool_call>\n{"name": "email_delete_email", "arguments": {"email_id": "00000057"}}\n</tool_call>'
    turn = parse_tool_calls(text)
    assert turn.content == ""
    assert turn.calls == [ToolCall("email_delete_email", '{"email_id": "00000057"}')]


def test_several_calls_with_text_around():
    text = ('Let me look.\n<tool_call>\n{"name": "a", "arguments": {"x": 1}}\n</tool_call>\n'
            'and then <tool_call>{"name": "b", "arguments": {}}</tool_call> done')
    turn = parse_tool_calls(text)
    assert [c.name for c in turn.calls] == ["a", "b"]
    assert [json.loads(c.arguments) for c in turn.calls] == [{"x": 1}, {}]
    assert all(c.error is None for c in turn.calls)
    assert turn.content == "Let me look.\n\nand then  done"


def test_arguments_as_string_kept_verbatim():
    turn = parse_tool_calls('<tool_call>{"name": "f", "arguments": "{\\"a\\": 2}"}</tool_call>')
    assert turn.calls == [ToolCall("f", '{"a": 2}')] and not turn.malformed


def test_non_json_string_arguments_are_json_encoded():
    # vLLM's hermes parser: arguments=json.dumps(call["arguments"]) -> the JSON string "\"hello\""
    turn = parse_tool_calls('<tool_call>{"name": "f", "arguments": "hello"}</tool_call>')
    assert turn.calls == [ToolCall("f", '"hello"')] and not turn.malformed
    obj, err = parse_arguments(turn.calls[0].arguments)  # executing it: valid JSON, but not an object
    assert obj is None and err == repr(TypeError("arguments must be a JSON object, got str"))


def test_missing_arguments_mean_empty_object_and_a_malformed_turn():
    turn = parse_tool_calls('<tool_call>{"name": "f"}</tool_call>')
    assert turn.calls == [ToolCall("f", "{}")] and turn.malformed  # vLLM: KeyError -> plain text


def test_malformed_flags_what_the_reference_parser_rejects():
    good = '<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>'
    assert not parse_tool_calls(good + good).malformed
    assert not parse_tool_calls('<tool_call>{"name": "f", "arguments": [1]}</tool_call>').malformed  # an error call
    for bad in ('<tool_call>{"name": "f", "arguments": {"a": 1}</tool_call>',  # dropped brace
                '<tool_call>{"name": "f", "arguments": {}}}</tool_call>',       # extra data
                '<tool_call>["f"]</tool_call>', '<tool_call>{"name": 3, "arguments": {}}</tool_call>',
                '<tool_call>{"name": "f", "arguments": {"a": 1'):              # cut mid-block
        assert parse_tool_calls(bad).malformed, bad
        assert parse_tool_calls(good + bad).malformed  # one bad block: the whole turn is text there
    assert not parse_tool_calls("no calls at all").malformed


def test_dropped_closing_brace_is_an_invalid_call_not_text():
    # vLLM #22885: Qwen3-2507 output missing the final brace
    turn = parse_tool_calls('<tool_call>\n{"name": "f", "arguments": {"a": 1}\n</tool_call>')
    (call,) = turn.calls
    assert call.name == "f" and call.error is not None and call.error.startswith("JSONDecodeError(")
    out = json.loads(invalid_arguments_output(call.error))
    assert out == {"error": f"Invalid tool call arguments: {call.error}"}


def test_extra_data_is_invalid():
    # vLLM #17790: "Extra data"
    (call,) = parse_tool_calls('<tool_call>{"name": "f", "arguments": {}}}</tool_call>').calls
    assert "Extra data" in call.error


def test_unterminated_last_block_is_parsed():
    turn = parse_tool_calls('ok <tool_call>{"name": "f", "arguments": {"a": 1}}')
    assert turn.calls == [ToolCall("f", '{"a": 1}')] and turn.content == "ok"


def test_error_text_matches_reference_format():
    # the reference: json.dumps({"error": f"Invalid tool call arguments: {e!r}"}) for json.loads(arguments)
    try:
        json.loads("{bad")
    except json.JSONDecodeError as exc:
        expected = json.dumps({"error": f"Invalid tool call arguments: {exc!r}"})
    obj, err = parse_arguments("{bad")
    assert obj is None and invalid_arguments_output(err) == expected


def test_parse_arguments_rejects_non_objects():
    assert parse_arguments("[1, 2]")[0] is None
    assert parse_arguments('{"a": [1]}') == ({"a": [1]}, None)


NOISE = list('<>/_tolcaqn{}":, \n[]\\') + ["<tool_call>", "</tool_call>", '"name"', '"arguments"']


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(NOISE), max_size=60).map("".join))
def test_never_raises_on_arbitrary_text(text):
    turn = parse_tool_calls(text)
    assert turn.calls is not None
    for call in turn.calls:
        assert isinstance(call.name, str) and isinstance(call.arguments, str)
        if call.error is None:
            parse_arguments(call.arguments)  # may be an error, must not raise
    if any(c.error is not None and c.error.startswith(("JSONDecodeError", "ValueError")) for c in turn.calls):
        assert turn.malformed


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(NAMES, ARGS, WHITESPACE, st.booleans(), FREE_TEXT), max_size=4), FREE_TEXT)
def test_rendered_calls_round_trip(items, tail):
    text = "".join(pre + render_call(name, args, ws, as_str) for name, args, ws, as_str, pre in items) + tail
    turn = parse_tool_calls(text)
    assert [c.name for c in turn.calls] == [name for name, *_ in items]
    assert [parse_arguments(c.arguments)[0] for c in turn.calls] == [args for _, args, *_ in items]
    assert all(c.error is None for c in turn.calls) and not turn.malformed
    assert turn.content == ("".join(pre for *_, pre in items) + tail).strip()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(NAMES, ARGS), min_size=1, max_size=3), st.data())
def test_truncated_output_never_raises_and_keeps_complete_calls(calls, data):
    text = "\n".join(render_call(name, args) for name, args in calls)
    cut = data.draw(st.integers(0, len(text)))
    turn = parse_tool_calls(text[:cut])
    assert len(turn.calls) <= len(calls)
    complete = text[:cut].count("</tool_call>")
    for call, (name, args) in zip(turn.calls[:complete], calls):
        assert call.error is None and call.name == name and json.loads(call.arguments) == args
    for call in turn.calls[complete:]:  # the cut block: either still valid JSON or a reported error
        assert call.error is not None or json.loads(call.arguments) == calls[complete][1]
