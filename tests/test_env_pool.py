"""The Ray environment pool on a local 2-CPU Ray: routing, parity with the in-process pool, and
recovery from killed actors with no episode lost or executed twice."""

import json
import threading

import pytest
import ray
from data_paths import sandbox_dir

from environment.pool import LocalEnvPool, RayEnvPool, ensure_ray

DATA_DIR = sandbox_dir()


@pytest.fixture(scope="module")
def local_ray():
    ensure_ray(num_cpus=2)
    yield
    ray.shutdown()


def send(i):
    args = {"recipient": "raj.patel@atlas.com", "subject": f"pool test {i}", "body": f"body {i}"}
    return {"name": "email_send_email", "arguments": json.dumps(args)}


def search(i):
    return {"name": "email_search_emails", "arguments": json.dumps({"query": f"pool test {i}"})}


def test_local_pool_executes_and_rewards():
    pool = LocalEnvPool(DATA_DIR)
    ids = pool.open(2)
    (out_a,), (out_b,) = pool.step(ids, [[send(0)], [{"name": "x", "arguments": "{", "error": "E('x')"}]])
    assert json.loads(out_a) == {"output": "Email sent successfully."}
    assert out_b == json.dumps({"error": "Invalid tool call arguments: E('x')"})
    assert pool.rewards(ids, [[send(0)], []]) == [1.0, 1.0]  # the invalid call changes nothing
    assert pool.reward(ids[0], []) == 0.0
    pool.close(ids)


def test_ray_pool_matches_local_and_survives_killed_actors(local_ray):
    n = 6
    local = LocalEnvPool(DATA_DIR)
    pool = RayEnvPool(num_actors=3, data_dir=DATA_DIR)  # more actors than CPUs: 2/3 CPU each
    try:
        ids, local_ids = pool.open(n), local.open(n)
        assert [len(s.episodes) for s in pool.slots] == [2, 2, 2]

        step1 = [[send(i)] for i in range(n)]
        assert pool.step(ids, step1) == local.step(local_ids, step1)

        # an actor dies between steps: its episodes are replayed from their logs before step 2
        ray.kill(pool.actors[0])
        step2 = [[search(i), send(100 + i)] for i in range(n)]
        out2 = pool.step(ids, step2)
        assert out2 == local.step(local_ids, step2)
        assert pool.replacements == 1
        for i, (found, _) in enumerate(out2):  # the step-1 email exists exactly once
            assert found.count(f'"subject":"pool test {i}"') == 1, found

        # an actor dies while a step is in flight
        step3 = [[search(100 + i)] * 40 for i in range(n)]
        killer = threading.Timer(0.02, lambda: ray.kill(pool.actors[2]))
        killer.start()
        out3 = pool.step(ids, step3)
        killer.join()
        assert out3 == local.step(local_ids, step3)

        # rewards: each episode once, on exactly its own calls (a duplicated send would score 0)
        truths = [[send(i), send(100 + i)] for i in range(n)]
        rewards = pool.rewards(ids, truths)
        assert rewards == [1.0] * n == local.rewards(local_ids, truths)
        assert pool.rewards(ids, [[send(i)] for i in range(n)]) == [0.0] * n
        assert pool.replacements >= 1
        pool.close(ids)
        assert all(not s.episodes for s in pool.slots) and not pool.logs
        with pytest.raises(KeyError, match="not open"):
            pool.step([ids[0]], [[search(0)]])
    finally:
        pool.shutdown()


def test_local_ray_refuses_clients_without_its_token(local_ray):
    """The local Ray that ensure_ray starts authenticates: no token or a wrong one is refused."""
    from ray_probe import gcs_answer

    from environment.ray_auth import new_token, token_from_env

    address = ray.get_runtime_context().gcs_address
    token = token_from_env()
    assert token is not None and len(token) == 64
    assert gcs_answer(address, None) == "UNAUTHENTICATED"
    assert gcs_answer(address, new_token()) == "UNAUTHENTICATED"
    assert gcs_answer(address, token) == "OK"


def test_pools_on_one_ray_split_its_cpus_and_an_unplaceable_pool_fails_in_one_line(local_ray):
    """Two pools of 2 actors on a 2-CPU Ray (two data-parallel ranks): half a CPU each, both start.
    A pool whose actors cannot be placed stops with one line naming the fix, not a wait without end."""
    pools = [RayEnvPool(num_actors=2, data_dir=DATA_DIR, pools_sharing_cluster=2) for _ in range(2)]
    try:
        for pool in pools:
            (out,) = pool.step(pool.open(1), [[send(0)]])[0]
            assert json.loads(out) == {"output": "Email sent successfully."}
    finally:
        for pool in pools:
            pool.shutdown()
    with pytest.raises(RuntimeError, match=r"not up on the Ray cluster after 2 s .*lower env.num_actors"):
        RayEnvPool(num_actors=1, data_dir=DATA_DIR, cpus_per_actor=3.0, start_timeout_s=2)
