"""Task samples: read, validate and write the NeMo-Gym JSONL sample format.

One sample per line::

    {"id": int | str,
     "responses_create_params": {"input": [{"role", "content"}, ...], "tools": [schema, ...],
                                 "parallel_tool_calls"?: bool, "temperature"?: number},
     "ground_truth": [{"name": str, "arguments": "<JSON object as text>"}, ...],
     "category": str, "environment_name": str,
     "agent_ref"?: {"type": str, "name": str}}

Why validate up front: a malformed line found mid-training wastes a cluster allocation. Every
problem is reported with file, line and field (``train.jsonl:17: ground_truth[2].arguments: ...``).
Rows in the older nested form (``verifier_metadata: {ground_truth, category, environment_name}``,
NeMo-Gym's environments/ prepare script) are flattened on load.

Imports no torch (used on CPU-only login nodes).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from megatron_grpo.config import UserError

REQUIRED_FIELDS = ("id", "responses_create_params", "ground_truth", "category", "environment_name")
MESSAGE_ROLES = ("system", "developer", "user", "assistant")


class SampleError(UserError, ValueError):
    """Invalid samples. ``problems`` holds ``(file, line, field, message)`` tuples; str() lists them."""

    def __init__(self, problems: list[tuple[str, int, str, str]], truncated: int = 0):
        self.problems = problems
        lines = [f"{file}:{line}: {field}: {message}" for file, line, field, message in problems]
        if truncated:
            lines.append(f"... and {truncated} more problems")
        super().__init__("\n".join(lines))


def check_sample(row: Any) -> list[tuple[str, str]]:
    """Problems with one decoded sample as ``(field, message)`` pairs; [] when it is valid."""
    if not isinstance(row, dict):
        return [("<line>", f"expected a JSON object, got {_type_name(row)}")]
    problems: list[tuple[str, str]] = []
    for name in REQUIRED_FIELDS:
        if name not in row:
            problems.append((name, "missing required field"))

    if "id" in row and (isinstance(row["id"], bool) or not isinstance(row["id"], int | str)):
        problems.append(("id", f"expected an integer or string, got {_type_name(row['id'])}"))
    for name in ("category", "environment_name"):
        if name in row and (not isinstance(row[name], str) or not row[name]):
            problems.append((name, f"expected a non-empty string, got {_short(row[name])}"))

    tool_names: set[str] | None = None
    params = row.get("responses_create_params")
    if "responses_create_params" in row:
        if not isinstance(params, dict):
            problems.append(("responses_create_params", f"expected an object, got {_type_name(params)}"))
        else:
            problems += _check_params(params)
            tools = params.get("tools")
            if isinstance(tools, list):
                tool_names = {
                    t["name"] for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)
                }

    if "ground_truth" in row:
        problems += _check_ground_truth(row["ground_truth"], tool_names)

    if "agent_ref" in row:
        ref = row["agent_ref"]
        if not isinstance(ref, dict):
            problems.append(("agent_ref", f"expected an object, got {_type_name(ref)}"))
        else:
            for key in ("type", "name"):
                if not isinstance(ref.get(key), str) or not ref.get(key):
                    problems.append(
                        (f"agent_ref.{key}", f"expected a non-empty string, got {_short(ref.get(key))}")
                    )
    return problems


def _check_params(params: dict) -> list[tuple[str, str]]:
    where = "responses_create_params"
    problems: list[tuple[str, str]] = []
    messages = params.get("input")
    if "input" not in params:
        problems.append((f"{where}.input", "missing required field"))
    elif not isinstance(messages, list) or not messages:
        problems.append((f"{where}.input", f"expected a non-empty list of messages, got {_short(messages)}"))
    else:
        for i, message in enumerate(messages):
            field = f"{where}.input[{i}]"
            if not isinstance(message, dict):
                problems.append((field, f"expected a message object, got {_type_name(message)}"))
                continue
            if message.get("role") not in MESSAGE_ROLES:
                problems.append(
                    (f"{field}.role", f"expected one of {MESSAGE_ROLES}, got {_short(message.get('role'))}")
                )
            if not isinstance(message.get("content"), str | list):
                problems.append(
                    (
                        f"{field}.content",
                        f"expected a string or a list of parts, got {_type_name(message.get('content'))}",
                    )
                )
        if not any(isinstance(m, dict) and m.get("role") == "user" for m in messages):
            problems.append((f"{where}.input", "no user message"))

    tools = params.get("tools")
    if "tools" not in params:
        problems.append((f"{where}.tools", "missing required field"))
    elif not isinstance(tools, list):
        problems.append((f"{where}.tools", f"expected a list of tool schemas, got {_type_name(tools)}"))
    else:
        seen: set[str] = set()
        for i, tool in enumerate(tools):
            field = f"{where}.tools[{i}]"
            if not isinstance(tool, dict):
                problems.append((field, f"expected a tool schema object, got {_type_name(tool)}"))
                continue
            name = tool.get("name")
            if not isinstance(name, str) or not name:
                problems.append((f"{field}.name", f"expected a non-empty string, got {_short(name)}"))
            elif name in seen:
                problems.append((f"{field}.name", f"duplicate tool name {name!r}"))
            else:
                seen.add(name)
            if tool.get("type", "function") != "function":
                problems.append((f"{field}.type", f"expected 'function', got {_short(tool.get('type'))}"))
            if not isinstance(tool.get("parameters"), dict):
                problems.append(
                    (f"{field}.parameters", f"expected an object, got {_type_name(tool.get('parameters'))}")
                )

    if "parallel_tool_calls" in params and not isinstance(params["parallel_tool_calls"], bool):
        problems.append(
            (
                f"{where}.parallel_tool_calls",
                f"expected a boolean, got {_short(params['parallel_tool_calls'])}",
            )
        )
    temperature = params.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool) or not isinstance(temperature, int | float)
    ):
        problems.append((f"{where}.temperature", f"expected a number, got {_short(temperature)}"))
    return problems


def _check_ground_truth(calls: Any, tool_names: set[str] | None) -> list[tuple[str, str]]:
    if not isinstance(calls, list):
        return [("ground_truth", f"expected a list of calls, got {_type_name(calls)}")]
    problems: list[tuple[str, str]] = []
    for i, call in enumerate(calls):
        field = f"ground_truth[{i}]"
        if not isinstance(call, dict):
            problems.append((field, f"expected a call object, got {_type_name(call)}"))
            continue
        name = call.get("name")
        if not isinstance(name, str) or not name:
            problems.append((f"{field}.name", f"expected a non-empty string, got {_short(name)}"))
        elif tool_names is not None and name not in tool_names:
            problems.append((f"{field}.name", f"{name!r} is not one of the sample's tools"))
        if "arguments" not in call:
            problems.append((f"{field}.arguments", "missing required field"))
            continue
        arguments = call["arguments"]
        if not isinstance(arguments, str):
            problems.append(
                (f"{field}.arguments", f"expected a JSON-encoded string, got {_type_name(arguments)}")
            )
            continue
        try:
            decoded = json.loads(arguments)
        except ValueError as e:
            problems.append((f"{field}.arguments", f"not valid JSON ({e})"))
            continue
        if not isinstance(decoded, dict):
            problems.append((f"{field}.arguments", f"expected a JSON object, got {_type_name(decoded)}"))
    return problems


def normalize_sample(row: Any) -> Any:
    """Flatten the nested ``verifier_metadata`` form into the flat one (other rows are returned as is)."""
    if isinstance(row, dict) and isinstance(row.get("verifier_metadata"), dict) and "ground_truth" not in row:
        row = dict(row)
        meta = row.pop("verifier_metadata")
        for key, value in meta.items():
            row.setdefault(key, value)
    return row


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, Any, str | None]]:
    """Yield ``(line_number, decoded_row, error)`` per non-blank line (1-based; error set on bad JSON)."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield number, None, f"not UTF-8 text ({e.reason} at byte {e.start})"
                continue
            if not line.strip():
                continue
            try:
                yield number, json.loads(line), None
            except ValueError as e:
                yield number, None, f"invalid JSON ({e})"


def validate_file(
    path: str | Path, max_problems: int = 50
) -> tuple[list[dict], list[tuple[str, int, str, str]], int]:
    """Read and check every line of a JSONL file: ``(samples, problems[:max_problems], n_more_problems)``."""
    samples: list[dict] = []
    problems: list[tuple[str, int, str, str]] = []
    seen_ids: dict[Any, int] = {}
    extra = 0
    for number, row, error in iter_jsonl(path):
        found = [("<line>", error)] if error else check_sample(row := normalize_sample(row))
        if not error and isinstance(row, dict) and "id" in row and _hashable(row["id"]):
            if row["id"] in seen_ids:
                found.append(("id", f"duplicate id {row['id']!r} (first on line {seen_ids[row['id']]})"))
            else:
                seen_ids[row["id"]] = number
        for field, message in found:
            if len(problems) < max_problems:
                problems.append((str(path), number, field, message))
            else:
                extra += 1
        if not found:
            samples.append(row)
    return samples, problems, extra


class SampleFileMissing(UserError, FileNotFoundError):
    """A sample file that does not exist; the message says which command writes it."""


MAKE_DATA_HINT = (
    "create it with `megatron-grpo download` (the Workplace Assistant tasks, split 90/10) or "
    "`megatron-grpo generate-tasks --out DIR` (generated tasks)"
)


def load_samples(path: str | Path, setting: str | None = None) -> list[dict]:
    """All samples of a JSONL file, each validated; raises SampleError listing every problem found.

    ``setting`` names the config key the path came from (``data.train_path``), for the error messages.
    Raises SampleFileMissing when the file does not exist, SampleError when it has no rows.
    """
    path = Path(path)
    where = f"{setting}={path}" if setting else str(path)
    if not path.is_file():
        raise SampleFileMissing(f"{where}: no such file; {MAKE_DATA_HINT}")
    samples, problems, extra = validate_file(path)
    if problems:
        raise SampleError(problems, truncated=extra)
    if not samples:
        raise SampleError([(str(path), 0, "<file>", f"no samples (an empty file); {MAKE_DATA_HINT}")])
    return samples


def check_rows(rows: Iterable[Any], source: str) -> list[dict]:
    """Validate rows that did not come from a file (e.g. a Hugging Face split); ``source`` names them."""
    out: list[dict] = []
    problems: list[tuple[str, int, str, str]] = []
    for number, row in enumerate(rows, start=1):
        row = normalize_sample(row)
        found = check_sample(row)
        problems += [(source, number, field, message) for field, message in found]
        if not found:
            out.append(row)
    if problems:
        raise SampleError(problems[:50], truncated=max(0, len(problems) - 50))
    return out


def write_jsonl(path: str | Path, rows: Iterable[dict]) -> int:
    """Write rows as JSONL atomically (a temp file renamed into place); returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
                count += 1
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes it private; give it the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def _hashable(value: Any) -> bool:
    return isinstance(value, int | str)


def _type_name(value: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
