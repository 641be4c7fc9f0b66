"""Process-group bootstrap: launcher variables, layout validation, real gloo TP x PP x DP grids."""

from __future__ import annotations

import pytest
from dist_utils import DistributedTestError, run_distributed

from megatron_grpo.distributed import (
    destroy_distributed,
    expand_nodelist,
    init_distributed,
    read_launch_env,
    validate_layout,
)


def test_expand_nodelist_bracket_forms():
    assert expand_nodelist("node[01-03,07]") == ["node01", "node02", "node03", "node07"]
    assert expand_nodelist("a[1-2]b[08-09],c") == ["a1b08", "a1b09", "a2b08", "a2b09", "c"]
    assert expand_nodelist("gpu-17") == ["gpu-17"]
    with pytest.raises(ValueError, match="unbalanced"):
        expand_nodelist("node[01-02")


def test_read_launch_env_prefers_torchrun_then_slurm():
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "16", "SLURM_LOCALID": "5",
             "SLURM_JOB_NODELIST": "nid[0098-0099]", "SLURM_JOB_ID": "4242"}
    env = read_launch_env(slurm)
    assert (env.rank, env.world_size, env.local_rank, env.source) == (5, 16, 5, "slurm")
    assert env.master_addr == "nid0098" and env.master_port == 15000 + 4242
    both = dict(slurm, RANK="1", WORLD_SIZE="2", LOCAL_RANK="1", MASTER_ADDR="h", MASTER_PORT="123")
    env = read_launch_env(both)
    assert (env.rank, env.world_size, env.master_addr, env.master_port, env.source) == (1, 2, "h", 123, "torchrun")
    assert read_launch_env({}).world_size == 1
    with pytest.raises(ValueError, match="outside world size"):
        read_launch_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_validate_layout_names_the_fix():
    assert validate_layout(8, 2, 2) == 2
    assert validate_layout(16, 4, 1, num_attention_heads=32, num_query_groups=8, num_layers=36) == 4
    with pytest.raises(ValueError, match=r"world size 6 is not divisible .* 2 x 2 = 4"):
        validate_layout(6, 2, 2)
    with pytest.raises(ValueError, match=r"num_attention_heads 6 .* use a TP size dividing 6 \(1, 2, 3, 6\)"):
        validate_layout(4, 4, 1, num_attention_heads=6)
    with pytest.raises(ValueError, match=r"num_key_value_heads \(query groups\) 2 .* TP size dividing 2"):
        validate_layout(4, 4, 1, num_attention_heads=8, num_query_groups=2)
    with pytest.raises(ValueError, match=r"num_hidden_layers 3 .* PP size dividing 3"):
        validate_layout(2, 1, 2, num_layers=3)
    with pytest.raises(ValueError, match="positive integer"):
        validate_layout(2, 0, 1)


def _grid_on_four_ranks():
    import torch
    import torch.distributed as dist
    from megatron.core import parallel_state

    layout = init_distributed(tp=2, pp=2, sequence_parallel=True)
    again = init_distributed(tp=2, pp=2, sequence_parallel=True)
    assert again is layout
    try:
        init_distributed(tp=1, pp=1)
        raise AssertionError("a different layout must be refused while initialised")
    except RuntimeError as e:
        assert "destroy_distributed" in str(e)
    # The TP group really exchanges tensors: the sum of ranks in my TP group.
    t = torch.tensor([float(layout.rank)])
    dist.all_reduce(t, group=parallel_state.get_tensor_model_parallel_group())
    tp_peers = dist.get_process_group_ranks(parallel_state.get_tensor_model_parallel_group())
    assert t.item() == sum(tp_peers)
    # megatron's seeded model-parallel RNG tracker works on CPU (dropout forks it).
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    with get_cuda_rng_tracker().fork():
        torch.rand(2)
    out = dict(rank=layout.rank, tp_rank=layout.tp_rank, pp_rank=layout.pp_rank, dp=layout.dp,
               sp=layout.sequence_parallel, backend=layout.backend, tp_peers=tp_peers)
    destroy_distributed(keep_process_group=True)
    layout1 = init_distributed(tp=1, pp=1)  # another layout in the same processes
    out["dp_after"] = layout1.dp
    return out


def test_tp2_pp2_grid_on_four_gloo_ranks():
    res = run_distributed(_grid_on_four_ranks, 4)
    # megatron's default order tp-cp-ep-dp-pp: consecutive ranks share a TP group.
    assert [(r["tp_rank"], r["pp_rank"]) for r in res] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert [r["tp_peers"] for r in res] == [[0, 1], [0, 1], [2, 3], [2, 3]]
    assert all(r["dp"] == 1 and r["sp"] and r["backend"] == "gloo" and r["dp_after"] == 4 for r in res)


def _fails_on_rank_one():
    layout = init_distributed()
    if layout.rank == 1:
        raise KeyError("boom on rank one")
    return layout.rank


def test_child_failure_carries_traceback():
    with pytest.raises(DistributedTestError, match=r"(?s)rank 1 of 2.*KeyError: 'boom on rank one'"):
        run_distributed(_fails_on_rank_one, 2)


def _device_mode_per_thread():
    import threading

    import torch

    from megatron_grpo import cpu_compat

    init_distributed()
    assert cpu_compat.is_active()
    main_thread = torch.zeros(2, device="cuda").device.type  # megatron-style factory call
    seen = {}

    def worker():
        if torch.cuda.is_available():  # a forked child must not touch a real GPU
            seen["bare"] = "not tried on a CUDA machine"
        else:
            try:
                torch.zeros(2, device="cuda")
                seen["bare"] = "ok"
            except (AssertionError, RuntimeError) as e:  # CPU-only torch refuses CUDA tensors
                seen["bare"] = type(e).__name__
        with cpu_compat.cpu_device_mode(), cpu_compat.cpu_device_mode():  # re-entry is a no-op
            seen["mode"] = torch.ones(2, device="cuda").cuda().device.type

    t = threading.Thread(target=worker)
    t.start()
    t.join()
    return main_thread, seen


def test_cpu_device_mode_is_per_thread():
    (main_thread, seen), = run_distributed(_device_mode_per_thread, 1)
    assert main_thread == "cpu"
    assert seen == {"bare": seen["bare"], "mode": "cpu"} and seen["bare"] != "ok"
