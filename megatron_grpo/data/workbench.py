"""WorkBench tasks (``data/processed/queries_and_answers/*.csv``) -> samples in the NeMo-Gym format.

WorkBench (olly-styles/WorkBench, MIT) stores each task as a CSV row ``query, answer, base_template,
chosen_template, domains`` whose ``answer`` is a Python-literal list of call strings such as
``email.send_email.func(recipient="a@b.com", subject="x", body="y")``. Each call becomes
``{"name": "email_send_email", "arguments": "{\"recipient\": ...}"}`` (our tool name is
``<domain>_<tool>``; arguments are JSON text, as in NeMo-Gym's ground truth). Calls are parsed with
``ast`` and only keyword arguments with literal values are accepted: nothing is evaluated.

Category is ``workplace_assistant_<file domain>`` (``..._multi_domain`` for the multi-domain file), and
every sample gets the 27 reference tool schemas and the reference system prompt.

Imports no torch.
"""

from __future__ import annotations

import ast
import csv
import json
from importlib import resources
from pathlib import Path

CATEGORY_PREFIX = "workplace_assistant_"
FILE_SUFFIX = "_queries_and_answers.csv"
ENVIRONMENT_NAME = "workplace_assistant"


class WorkbenchError(ValueError):
    """A WorkBench row that cannot be converted; the message names file, row and call."""


def tool_schemas() -> list[dict]:
    """The 27 model-facing tool schemas in reference order (environment/workplace/tool_schemas.json)."""
    text = resources.files("environment.workplace").joinpath("tool_schemas.json").read_text(encoding="utf-8")
    return json.loads(text)


def system_prompt() -> str:
    from environment.workplace.prompt import SYSTEM_PROMPT

    return SYSTEM_PROMPT


def find_queries_folder(path: str | Path) -> Path | None:
    """The ``queries_and_answers`` folder at or under ``path`` (a WorkBench checkout, its data/, ...)."""
    path = Path(path)
    for candidate in (
        path,
        path / "queries_and_answers",
        path / "processed" / "queries_and_answers",
        path / "data" / "processed" / "queries_and_answers",
    ):
        if candidate.is_dir() and any(candidate.glob(f"*{FILE_SUFFIX}")):
            return candidate
    return None


def convert_call(text: str, schemas_by_name: dict[str, dict]) -> dict:
    """One WorkBench call string -> ``{"name", "arguments"}`` (arguments as JSON text, keyword order kept).

    Raises WorkbenchError when the string is not ``<domain>.<tool>.func(k=<literal>, ...)``, names an
    unknown tool, or passes an argument the tool's schema does not have.
    """
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as e:
        raise WorkbenchError(f"not a call: {text!r} ({e.msg})") from e
    if not isinstance(node, ast.Call) or node.args:
        raise WorkbenchError(f"expected <domain>.<tool>.func(k=v, ...) with keyword arguments only: {text!r}")
    parts = []
    target = node.func
    while isinstance(target, ast.Attribute):
        parts.append(target.attr)
        target = target.value
    if isinstance(target, ast.Name):
        parts.append(target.id)
    parts.reverse()
    if len(parts) != 3 or parts[2] != "func":
        raise WorkbenchError(f"expected <domain>.<tool>.func(...): {text!r}")
    name = f"{parts[0]}_{parts[1]}"
    schema = schemas_by_name.get(name)
    if schema is None:
        raise WorkbenchError(f"unknown tool {name!r} in {text!r}")
    allowed = schema["parameters"]["properties"]
    arguments = {}
    for keyword in node.keywords:
        if keyword.arg is None:
            raise WorkbenchError(f"**kwargs are not supported: {text!r}")
        if keyword.arg not in allowed:
            raise WorkbenchError(f"{name} has no argument {keyword.arg!r}: {text!r}")
        try:
            arguments[keyword.arg] = ast.literal_eval(keyword.value)
        except ValueError as e:
            raise WorkbenchError(f"argument {keyword.arg!r} is not a literal: {text!r}") from e
    return {"name": name, "arguments": json.dumps(arguments)}


def parse_answer(answer: str, schemas_by_name: dict[str, dict]) -> list[dict]:
    """A CSV ``answer`` cell (Python-literal list of call strings) -> list of ground-truth calls."""
    try:
        calls = ast.literal_eval(answer)
    except (ValueError, SyntaxError) as e:
        raise WorkbenchError(f"answer is not a Python list literal: {answer[:80]!r}") from e
    if not isinstance(calls, list) or not all(isinstance(c, str) for c in calls):
        raise WorkbenchError(f"answer is not a list of call strings: {answer[:80]!r}")
    return [convert_call(call, schemas_by_name) for call in calls]


def load_workbench(path: str | Path) -> list[dict]:
    """All WorkBench tasks under ``path`` as samples, files in name order, ids 0..n-1 in that order."""
    folder = find_queries_folder(path)
    if folder is None:
        raise WorkbenchError(f"{path}: no *{FILE_SUFFIX} files here or under processed/queries_and_answers")
    schemas = tool_schemas()
    schemas_by_name = {schema["name"]: schema for schema in schemas}
    prompt = system_prompt()
    samples: list[dict] = []
    for csv_path in sorted(folder.glob(f"*{FILE_SUFFIX}")):
        domain = csv_path.name[: -len(FILE_SUFFIX)]
        with open(csv_path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            missing = {"query", "answer"} - set(reader.fieldnames or ())
            if missing:
                raise WorkbenchError(f"{csv_path}: missing column(s) {sorted(missing)}")
            # Row numbers count the header as line 1, as a spreadsheet shows them.
            for row_number, row in enumerate(reader, start=2):
                try:
                    ground_truth = parse_answer(row["answer"], schemas_by_name)
                except WorkbenchError as e:
                    raise WorkbenchError(f"{csv_path}:{row_number}: answer: {e}") from e
                if not row["query"].strip():
                    raise WorkbenchError(f"{csv_path}:{row_number}: query: empty")
                samples.append(
                    {
                        "id": len(samples),
                        "responses_create_params": {
                            "input": [
                                {"role": "system", "content": prompt},
                                {"role": "user", "content": row["query"]},
                            ],
                            "tools": schemas,
                            "parallel_tool_calls": False,
                            "temperature": 1.0,
                        },
                        "ground_truth": ground_truth,
                        "category": CATEGORY_PREFIX + domain,
                        "environment_name": ENVIRONMENT_NAME,
                    }
                )
    return samples
