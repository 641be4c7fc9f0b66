"""The NeMo-Gym 0.7.0 reference implementation of the Workplace Assistant, for differential tests.

``reference_root()`` finds the nemo-gym wheel in ``<cache>/wheels`` (``pip download`` of the pinned
version when missing; sha256 checked), extracts only ``resources_servers/workplace_assistant`` to a
temporary folder and returns the folder to put on ``sys.path``. ``ReferenceEnv`` then drives the
reference tool modules the way its agent and server do (JSON-decode, drop null arguments, call,
wrap errors, serialize with pydantic), and ``reference_reward`` runs its ``utils.is_correct``.
Only pandas (and pydantic for the response body) are needed; the FastAPI app is not imported.
"""

import atexit
import contextlib
import functools
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

WHEEL_NAME = "nemo_gym-0.7.0-py3-none-any.whl"
WHEEL_SHA256 = "cce78fc3fd048f36b4c465fe8e9fe3cc5e7afb6f6e287bfe831f156988508a70"
PACKAGE_DIR = "resources_servers/workplace_assistant/"
TOOLKITS = ["email", "calendar", "analytics", "project_management", "customer_relationship_manager"]


def _cache_dir() -> Path:
    root = os.environ.get("MEGATRON_GRPO_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "megatron_grpo") / "wheels"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reference_wheel() -> Path:
    """The pinned nemo-gym wheel, downloaded from PyPI into the cache when missing."""
    wheel = _cache_dir() / WHEEL_NAME
    if not wheel.is_file():
        wheel.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--python-version", "3.13.14", "-d", str(wheel.parent), "nemo-gym==0.7.0"]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or not wheel.is_file():
            raise RuntimeError(f"could not download nemo-gym==0.7.0 ({' '.join(cmd)}):\n{result.stderr[-2000:]}")
    digest = _sha256(wheel)
    if digest != WHEEL_SHA256:
        raise RuntimeError(f"{wheel}: sha256 {digest} != pinned {WHEEL_SHA256}; delete it to re-download")
    return wheel


def extract_reference(wheel: Path, dest: Path) -> Path:
    """Extract ``resources_servers/workplace_assistant`` (code + csv_data) under ``dest``."""
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            if member.startswith(PACKAGE_DIR) and "/notebooks/" not in member and "/tests/" not in member:
                archive.extract(member, dest)
    return dest


def reference_root() -> Path:
    """A temporary folder holding the extracted reference package (removed when the process exits)."""
    dest = Path(tempfile.mkdtemp(prefix="nemo_gym_ref_"))
    atexit.register(shutil.rmtree, dest, ignore_errors=True)
    return extract_reference(reference_wheel(), dest)


def import_reference(root: Path):
    """Import the reference ``utils`` module (get_tools, is_correct) from an extracted root."""
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from resources_servers.workplace_assistant import utils

    return utils


def sandbox_dir(root: Path) -> str:
    """The reference's own csv_data folder (our environment reads the same files)."""
    return str(root / PACKAGE_DIR / "csv_data")


@functools.cache
def load_reference() -> tuple[Any, str]:
    """(the reference ``utils`` module, its csv_data folder); extracted once per process."""
    root = reference_root()
    return import_reference(root), sandbox_dir(root)


class ReferenceEnv:
    """One reference session: agent-side JSON decoding + the server's routing and error wrapping."""

    def __init__(self, utils):
        from pydantic import BaseModel, ConfigDict

        class WorkbenchRequest(BaseModel):
            model_config = ConfigDict(extra="allow")

        class WorkbenchResponse(BaseModel):
            model_config = ConfigDict(extra="allow")

        self._utils = utils
        self._request, self._response = WorkbenchRequest, WorkbenchResponse
        self.reset()

    def reset(self) -> None:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.tool_env = self._utils.get_tools(TOOLKITS)

    def _body(self, output: Any) -> str:
        dumped = self._response(output=output).model_dump(mode="json")
        return json.dumps(dumped, ensure_ascii=False, allow_nan=False, separators=(",", ":"))

    def call(self, name: str, arguments: str) -> str:
        try:
            parsed = json.loads(arguments)
        except (json.JSONDecodeError, TypeError) as e:
            return json.dumps({"error": f"Invalid tool call arguments: {e!r}"})
        if not isinstance(parsed, dict):
            return "<422>"  # FastAPI request validation; not modelled here
        body = self._request.model_validate(parsed)
        args = {key: value for key, value in body.model_dump(exclude_unset=True).items() if value is not None}
        try:
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # pandas deprecation noise from the reference code
                result = self.tool_env["functions"][name](**args)
            return self._body(result)
        except Exception as e:
            return self._body(f"Error executing tool '{name}': {str(e)}")


def reference_reward(utils, calls: list[dict], ground_truth: list[dict]) -> float:
    """NeMo-Gym's reward: ``is_correct(predicted, ground_truth, None) * 1.0`` (its prints silenced)."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return 1.0 * utils.is_correct(calls, ground_truth, None)
