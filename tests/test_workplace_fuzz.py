"""Fuzzing the environment with 10k random calls (bad JSON, unknown tools, extra, missing, null and
ill-typed arguments, regex metacharacters, odd dates).

- never raises: every call returns JSON text, the verifier always answers 0.0 or 1.0;
- differential: the same call sequences through NeMo-Gym's own tool code (tests/reference_env.py)
  give byte-identical tool outputs and the same rewards.
"""

import json
import random
import sys
from pathlib import Path

import pytest

from environment.workplace import WorkplaceEnv, verify_calls

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_env import ReferenceEnv, load_reference, reference_reward  # noqa: E402
from workplace_fuzzgen import CallGenerator  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATA_DIR = str(SHARED / "data" / "workplace_assistant" / "csv_data")
EPISODES, CALLS_PER_EPISODE = 100, 100  # 10k calls


def test_ten_thousand_calls_never_raise():
    env = WorkplaceEnv(DATA_DIR)
    gen = CallGenerator(DATA_DIR, random.Random(1234))
    for episode in range(EPISODES):
        env.reset()
        for _ in range(CALLS_PER_EPISODE):
            name, arguments = gen.call()
            body = json.loads(env.call(name, arguments))
            assert set(body) <= {"output", "error", "detail"} and len(body) == 1
        if episode % 10 == 0:  # replaying costs as much as the calls themselves
            half = len(env.calls) // 2
            assert verify_calls(env.calls[:half], env.calls[half:], DATA_DIR) in (0.0, 1.0)
            assert env.verify(env.calls) == 1.0


@pytest.mark.slow
def test_ten_thousand_calls_match_reference():
    utils, sandbox = load_reference()
    ours, reference = WorkplaceEnv(sandbox), ReferenceEnv(utils)
    gen = CallGenerator(sandbox, random.Random(99))
    mismatches, compared, rewards = [], 0, 0
    for episode in range(EPISODES):
        ours.reset()
        reference.reset()
        for _ in range(CALLS_PER_EPISODE):
            name, arguments = gen.call()
            expected, got = reference.call(name, arguments), ours.call(name, arguments)
            if expected == "<422>":  # valid JSON that is not an object: FastAPI's validation, not modelled
                continue
            compared += 1
            if expected != got and len(mismatches) < 5:
                mismatches.append((name, arguments, expected[:300], got[:300]))
        if episode % 5 == 0:
            calls = ours.calls
            truth = calls[: len(calls) // 3]
            assert verify_calls(calls, truth, sandbox) == reference_reward(utils, calls, truth)
            rewards += 1
    assert not mismatches, mismatches
    assert compared > 9500 and rewards == EPISODES // 5
