"""The Workplace Assistant environment (NeMo-Gym ``workplace_assistant`` / WorkBench), without pandas.

Public API:

- ``WorkplaceEnv(data_dir=None)``: ``.reset()``; ``.call(name, arguments) -> str`` (the exact text
  the model sees: ``{"output": ...}``, tool exceptions as ``{"output": "Error executing tool
  '<name>': <msg>"}``, unparsable arguments as ``{"error": "Invalid tool call arguments: ..."}``);
  ``.tool_schemas(domains=None)`` (27 schemas in reference order; with domains, those domains'
  tools plus company_directory); ``.calls`` (``{"name", "arguments"}`` made this episode);
  ``.verify(ground_truth) -> float``.
- ``verify_calls(calls, ground_truth, data_dir=None) -> float``: NeMo-Gym's binary reward.
- ``default_data_dir() -> str`` and ``cache_dir() -> Path``: where the sandbox CSVs live.
- For code that runs tools directly (task generation): ``Episode(load_base_tables(data_dir))``;
  ``episode.call(name, args_dict)`` returns the tool's raw Python result (validation failures are
  returned strings such as ``"Email not found."``) or raises ``ToolError`` (message = the
  reference's exception text); ``episode.state`` holds the tables (``state.emails.rows`` ...).
  ``replay(calls, base)`` / ``states_equal(a, b)`` expose the verifier's two steps.

Fidelity: the reference is NeMo-Gym 0.7.0's tool code as a fresh install runs it (pandas 3 with
pyarrow string columns, FastAPI/pydantic serialization). Tool texts, error messages (including the
pandas/pyarrow ones ill-typed arguments provoke), pagination, ordering, index labels and column dtypes
are reproduced; tests/test_workplace_fuzz.py checks 10k random calls and their rewards against the
reference byte for byte. Under pandas 2.x the reference itself behaves differently in corners: it
stores an int where pandas 3 raises, regex search uses Python's ``re`` only, and its columns are all
``object``, so e.g. adding then deleting a customer without an email scores 1.0 there, 0.0 here.
"""

from environment.workplace.data_dir import cache_dir, default_data_dir
from environment.workplace.env import DOMAINS, WorkplaceEnv, load_tool_schemas
from environment.workplace.episode import TOOLS, Episode, ToolError
from environment.workplace.tables import load_base_tables
from environment.workplace.verifier import replay, states_equal, verify_calls

__all__ = [
    "DOMAINS",
    "TOOLS",
    "Episode",
    "ToolError",
    "WorkplaceEnv",
    "cache_dir",
    "default_data_dir",
    "load_base_tables",
    "load_tool_schemas",
    "replay",
    "states_equal",
    "verify_calls",
]
