"""``WorkplaceEnv``: the model-facing environment (JSON in, the reference's exact JSON text out)."""

import copy
import json
import math
from pathlib import Path
from typing import Any

from environment.workplace.episode import Episode, ToolError
from environment.workplace.tables import load_base_tables
from environment.workplace.verifier import verify_calls

DOMAINS = ("email", "calendar", "analytics", "project_management", "customer_relationship_manager")
_SCHEMAS_PATH = Path(__file__).with_name("tool_schemas.json")


def _json_safe(value: Any) -> Any:
    """What the server's JSON serializer sends: NaN/inf become null, tuples become lists."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def response_text(output: Any) -> str:
    """The HTTP body the reference server returns for a tool result: compact JSON, UTF-8 kept."""
    return json.dumps({"output": _json_safe(output)}, ensure_ascii=False, separators=(",", ":"))


def _validation_error_text(parsed: Any) -> str:
    """FastAPI's 422 body when the arguments are valid JSON but not an object."""
    if parsed is None:
        error = {"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}
    else:
        error = {
            "type": "model_attributes_type",
            "loc": ["body"],
            "msg": "Input should be a valid dictionary or object to extract fields from",
            "input": _json_safe(parsed),
        }
    return json.dumps({"detail": [error]}, ensure_ascii=False, separators=(",", ":"))


def load_tool_schemas() -> list[dict]:
    """The 27 tool schemas in the reference order (company directory first)."""
    return json.loads(_SCHEMAS_PATH.read_text())


class WorkplaceEnv:
    """One agent's environment: isolated databases per episode, the 27 tools, and the reward.

    ``call`` returns exactly the text the reference shows the model for a tool call; ``calls`` lists
    the calls made since the last ``reset`` (for ``verify``/``verify_calls``).
    """

    def __init__(self, data_dir: str | None = None):
        if data_dir is None:
            from environment.workplace.data_dir import default_data_dir

            data_dir = default_data_dir()
        self.data_dir = str(data_dir)
        self._base = load_base_tables(self.data_dir)
        self._schemas: list[dict] | None = None
        self.reset()

    def reset(self) -> None:
        """Start a new episode on fresh databases (copy-on-write; no CSV is read again)."""
        self.episode = Episode(self._base)
        self.calls: list[dict] = []

    def call(self, name: str, arguments: str | dict) -> str:
        """Run one tool call as the reference agent + server do and return the tool output text."""
        self.calls.append({"name": name, "arguments": arguments})
        if isinstance(arguments, dict):
            parsed = arguments
        else:
            try:
                parsed = json.loads(arguments)
            except (json.JSONDecodeError, TypeError, RecursionError) as e:
                # (the reference agent would crash on a RecursionError; the model sees it as invalid here)
                return json.dumps({"error": f"Invalid tool call arguments: {e!r}"})
        if not isinstance(parsed, dict):
            return _validation_error_text(parsed)
        if not isinstance(name, str) or name == "" or "/" in name:
            return json.dumps({"detail": "Not Found"}, separators=(",", ":"))
        args = {key: value for key, value in parsed.items() if value is not None}
        try:
            output = self.episode.call(name, args)
        except ToolError as e:
            output = f"Error executing tool '{name}': {e}"
        return response_text(output)

    def tool_schemas(self, domains: list[str] | None = None) -> list[dict]:
        """All 27 schemas, or only the given domains' tools plus the company directory."""
        if self._schemas is None:
            self._schemas = load_tool_schemas()
        if domains is None:
            return copy.deepcopy(self._schemas)
        unknown = sorted(set(domains) - set(DOMAINS))
        if unknown:
            raise ValueError(f"unknown domain(s) {unknown}; choose from {list(DOMAINS)}")
        keep = ("company_directory_",) + tuple(f"{d}_" for d in domains)
        return copy.deepcopy([s for s in self._schemas if s["name"].startswith(keep)])

    def verify(self, ground_truth: list[dict]) -> float:
        """The reward of this episode's calls against ``ground_truth`` (NeMo-Gym's verifier)."""
        return verify_calls(self.calls, ground_truth, self.data_dir)
