"""Hermes tool-call parser for Qwen3 assistant turns.

Why our own: token-in/token-out rollouts never go through a server-side parser, and the agent loop
must be able to reproduce the reference recipe's episodes exactly. There, vLLM's hermes parser reads
the turn: if ANY ``<tool_call>`` block is not a JSON object with a string ``name`` and an
``arguments`` key (vLLM issues 22885, 17790: Qwen3-2507 drops a closing brace or adds trailing data),
the whole turn becomes plain text with no function call, so NeMo-Gym's simple_agent ends the
episode. :attr:`ParsedTurn.malformed` says exactly that. The agent loop's
``on_malformed_tool_call`` decides what to do with such a turn (agent_loop.py): end the episode as
the reference does (default), or execute every block, a malformed one as a call that fails visibly
with the reference agent's error text (``{"error": "Invalid tool call arguments: <repr>"}``, what
simple_agent returns when ``json.loads(arguments)`` fails), and give the model another step. The
parser never raises.

Accepted forms (Qwen3's chat template renders the first):

    <tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>
    <tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>     arguments as a JSON string
    text before <tool_call>...</tool_call> text between <tool_call>...   several calls, text around
    ... <tool_call>{"name": "f", "arguments": {"a": 1}}                   unterminated last block

Rules: ``arguments`` given as an object is re-serialised with ``json.dumps`` (key order kept); given
as a string holding JSON it is kept verbatim, as a string that is not JSON (``"hello"``) it is
JSON-encoded (``json.dumps("hello")``, as vLLM does, so the call's arguments are always JSON text); missing
means ``{}`` (and makes the turn malformed for the reference). Strict JSON: a block with trailing
data (``{...}}``) is invalid, as ``json.loads`` would say. ``content`` is the text outside the
blocks, stripped.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"

_BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>|<tool_call>(.*)\Z", re.DOTALL)
_NAME = re.compile(r'"name"\s*:\s*"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class ToolCall:
    """One call as the verifier and the environment see it.

    ``arguments`` is a JSON text (the Responses-API ``function_call.arguments``). ``error`` is set when
    the block could not be parsed: then ``arguments`` holds the raw block text and the call is not
    executed; its output is :func:`invalid_arguments_output`.
    """

    name: str
    arguments: str
    error: str | None = None

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "arguments": self.arguments}


@dataclass
class ParsedTurn:
    """``malformed``: at least one block the reference's parser rejects (the whole turn is then plain
    text there: no call at all)."""

    content: str
    calls: list[ToolCall] = field(default_factory=list)
    malformed: bool = False


def invalid_arguments_output(error_repr: str) -> str:
    """The tool output the reference agent returns for arguments it cannot ``json.loads``."""
    return json.dumps({"error": f"Invalid tool call arguments: {error_repr}"})


def parse_arguments(arguments: str) -> tuple[dict | None, str | None]:
    """``json.loads`` as the reference agent does -> (object, None) or (None, repr of the error).

    A valid JSON text that is not an object (``[1]``, ``"x"``) is an error too: tools take keyword
    arguments (the reference would fail later, at the HTTP layer).
    """
    try:
        value = json.loads(arguments)
    except (json.JSONDecodeError, TypeError) as exc:
        return None, repr(exc)
    if not isinstance(value, dict):
        return None, repr(TypeError(f"arguments must be a JSON object, got {type(value).__name__}"))
    return value, None


def _parse_block(block: str) -> tuple[ToolCall, bool]:
    """One block -> (the call, whether the reference's parser rejects the block)."""
    text = block.strip()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        match = _NAME.search(text)
        name = match.group(1) if match else ""
        return ToolCall(name=name, arguments=text, error=repr(exc)), True
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        err = ValueError('a tool call must be a JSON object {"name": <string>, "arguments": <object>}')
        return ToolCall(name="", arguments=text, error=repr(err)), True
    malformed = "arguments" not in obj
    args = obj.get("arguments", {})
    if isinstance(args, str):
        try:
            json.loads(args)
        except json.JSONDecodeError:
            args = json.dumps(args, ensure_ascii=False)
        return ToolCall(name=obj["name"], arguments=args), malformed
    if isinstance(args, dict):
        return ToolCall(name=obj["name"], arguments=json.dumps(args, ensure_ascii=False)), malformed
    err = TypeError(f"arguments must be a JSON object, got {type(args).__name__}")
    return ToolCall(name=obj["name"], arguments=json.dumps(args, ensure_ascii=False), error=repr(err)), malformed


def parse_tool_calls(text: str) -> ParsedTurn:
    """Split an assistant turn's text (special tokens kept, end-of-turn token removed) into content
    and calls, in order. Never raises."""
    calls: list[ToolCall] = []
    pieces: list[str] = []
    malformed = False
    pos = 0
    for match in _BLOCK.finditer(text):
        pieces.append(text[pos : match.start()])
        block = match.group(1) if match.group(1) is not None else match.group(2)
        call, bad = _parse_block(block)
        calls.append(call)
        malformed |= bad
        pos = match.end()
    pieces.append(text[pos:])
    return ParsedTurn(content="".join(pieces).strip(), calls=calls, malformed=malformed)
