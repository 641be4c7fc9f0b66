"""Every shipped config loads and is self-consistent; the reference recipe; loader errors and overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_grpo.config import ConfigError, load_config
from megatron_grpo.grpo import steps_per_epoch, total_train_steps

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SEED = CONFIGS / "grpo_workplace_assistant_qwen3_4binstruct.yaml"
NUM_TRAIN_TASKS = 1129  # the reference recipe's train split (1,255 tasks: 1,129 train / 126 validation)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_config_loads_and_is_consistent(path):
    cfg = load_config(path)
    samples = cfg.grpo.num_prompts_per_step * cfg.grpo.num_generations_per_prompt
    assert samples % cfg.policy.train_global_batch_size == 0, "rollouts must fill whole optimizer steps"
    assert cfg.policy.train_global_batch_size % cfg.policy.train_micro_batch_size == 0
    assert cfg.grpo.val_period >= 1 and cfg.checkpointing.save_period >= 1
    if cfg.grpo.use_leave_one_out_baseline:
        assert cfg.grpo.num_generations_per_prompt >= 2
    assert cfg.checkpointing.metric_name.split(":")[0] in ("val", "train")
    assert cfg.policy.precision in ("bfloat16", "float32")
    assert cfg.generation.backend in ("auto", "vllm", "megatron", "hf")
    assert cfg.loss_fn.reference_policy_kl_type in ("k1", "k2", "k3")
    assert cfg.env.tool_subset in ("all", "domain")
    if cfg.policy.precision == "bfloat16":  # GPU configs: the model-parallel group fits the cluster
        world = cfg.cluster.num_nodes * cfg.cluster.gpus_per_node
        assert world % (cfg.policy.tensor_model_parallel_size * cfg.policy.pipeline_model_parallel_size) == 0


def test_seed_recipe():
    cfg = load_config(SEED)
    assert cfg.policy.model_name == "Qwen/Qwen3-4B-Instruct-2507"
    assert (cfg.grpo.num_prompts_per_step, cfg.grpo.num_generations_per_prompt) == (64, 16)
    assert cfg.policy.train_global_batch_size == 64 * 16
    assert cfg.grpo.max_rollout_turns == 6
    assert cfg.policy.max_total_sequence_length == 32768
    assert cfg.policy.precision == "bfloat16" and cfg.policy.tensor_model_parallel_size == 2
    assert cfg.grpo.use_leave_one_out_baseline and cfg.grpo.normalize_rewards
    assert cfg.loss_fn.reference_policy_kl_penalty == 0.0
    loss = cfg.loss_fn
    assert (loss.ratio_clip_min, loss.ratio_clip_max, loss.ratio_clip_c) == (0.2, 0.2, None)
    assert cfg.loss_fn.token_level_loss
    assert cfg.grpo.val_period == 10
    ck = cfg.checkpointing
    assert (ck.enabled, ck.keep_top_k, ck.metric_name, ck.higher_is_better) == (True, 3, "val:accuracy", True)
    assert (cfg.cluster.num_nodes, cfg.cluster.gpus_per_node) == (8, 8)
    assert cfg.policy.optimizer.lr == 1.0e-6 and cfg.grpo.seed == 42
    assert cfg.policy.shared_prefix and cfg.policy.transformer_impl == "local"  # exact, fewer tokens


def test_one_node_quick_check():
    cfg = load_config(CONFIGS / "grpo_workplace_assistant_1node_quick.yaml")
    assert (cfg.grpo.num_prompts_per_step, cfg.grpo.num_generations_per_prompt) == (4, 4)
    assert total_train_steps(NUM_TRAIN_TASKS, 4, cfg.grpo.max_num_epochs, cfg.grpo.max_num_steps) == 5
    assert not cfg.checkpointing.enabled and cfg.cluster.num_nodes == 1
    assert cfg.policy.model_name == "Qwen/Qwen3-4B-Instruct-2507"  # inherited from the base file
    assert cfg.policy.tensor_model_parallel_size == 2


def test_one_node_epoch():
    cfg = load_config(CONFIGS / "grpo_workplace_assistant_1node_epoch.yaml")
    assert (cfg.grpo.num_prompts_per_step, cfg.grpo.num_generations_per_prompt) == (32, 8)
    assert steps_per_epoch(NUM_TRAIN_TASKS, 32) == 36  # ceil(1129 / 32)
    assert total_train_steps(NUM_TRAIN_TASKS, 32, cfg.grpo.max_num_epochs, cfg.grpo.max_num_steps) == 36
    assert cfg.grpo.val_period == 36 and cfg.checkpointing.save_period == 36
    assert cfg.checkpointing.enabled and cfg.cluster.num_nodes == 1


def test_tiny_cpu():
    cfg = load_config(CONFIGS / "tiny_cpu.yaml")
    assert cfg.policy.precision == "float32" and cfg.generation.backend == "hf"
    assert cfg.grpo.max_rollout_turns == 2
    assert cfg.policy.model_name == "results/tiny/model"  # the placeholder the demo overrides
    assert not cfg.logger.wandb.enabled


# ----------------------------------------------------------------------------- loader behaviour


def test_bad_key_names_closest_valid_key(tmp_path):
    with pytest.raises(ConfigError, match=r"grpo\.num_prompt_per_step.*did you mean 'num_prompts_per_step'"):
        load_config(SEED, ["grpo.num_prompt_per_step=4"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"defaults: {SEED}\nloss_fn:\n  ratio_clip_maxx: 0.3\n")
    with pytest.raises(ConfigError, match=r"ratio_clip_maxx.*did you mean 'ratio_clip_max'.*bad\.yaml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="did you mean 'checkpointing'"):
        load_config(None, ["checkpointng.keep_top_k=2"])


def test_bad_types_are_named():
    with pytest.raises(ConfigError, match=r"'grpo\.val_period' must be an integer"):
        load_config(SEED, ["grpo.val_period=ten"])
    with pytest.raises(ConfigError, match=r"'grpo\.normalize_rewards' must be true or false"):
        load_config(SEED, ["grpo.normalize_rewards=1"])
    with pytest.raises(ConfigError, match=r"'logger\.wandb' must be a mapping"):
        load_config(SEED, ["logger.wandb=yes"])


def test_overrides_in_the_seed_forms():
    cfg = load_config(
        CONFIGS / "grpo_workplace_assistant_1node_quick.yaml",
        ["grpo.max_num_steps=7", "++grpo.num_prompts_per_step=8", "logger.wandb.name=run1",
         "loss_fn.ratio_clip_c=3", "checkpointing.keep_top_k=null"],
    )
    assert cfg.grpo.max_num_steps == 7 and cfg.grpo.num_prompts_per_step == 8
    assert cfg.logger.wandb.name == "run1" and cfg.logger.wandb.project == "megatron-grpo"
    assert cfg.loss_fn.ratio_clip_c == 3.0 and isinstance(cfg.loss_fn.ratio_clip_c, float)
    assert cfg.checkpointing.keep_top_k is None
    assert cfg.grpo.num_generations_per_prompt == 4  # untouched keys keep the file's values


def test_exponent_without_dot_is_a_float():
    from megatron_grpo.config import load_config

    cfg = load_config(None, ["policy.optimizer.lr=2e-5", "grpo.val_period=3"])
    assert cfg.policy.optimizer.lr == 2e-5 and cfg.grpo.val_period == 3
    with pytest.raises(ConfigError, match="must be a number"):
        load_config(None, ["policy.optimizer.lr=fast"])
