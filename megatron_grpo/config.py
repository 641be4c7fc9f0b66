"""Typed configuration: one small dataclass per component, loaded from YAML plus dotted overrides.

Why: a typo in a config key must fail at load time naming the closest valid key, not silently
train with a default. Every default lives here and only here.

Override forms (as the reference recipe accepts them):
    grpo.max_num_steps=5          set an existing key
    ++grpo.num_prompts_per_step=4  same (the "++" prefix is accepted for compatibility)
    logger.wandb.name=run1         nested sections

Values in overrides are parsed as YAML scalars (``5`` -> int, ``true`` -> bool, ``null`` -> None).

Every field's type is checked at load, and so are its allowed values: a ``Literal`` names the
choices (a typo gets the closest valid choice), and ``Annotated[..., Range(...)]`` bounds a number.
Nothing downstream re-checks these.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml


class UserError(Exception):
    """A problem the user fixes (a setting, a file, a folder). The message is one line naming it and
    the fix; the command line prints it without a traceback (cli.py)."""


class ConfigError(UserError, ValueError):
    """A config file or override that does not fit the schema; the message names the key."""


@dataclass(frozen=True)
class Range:
    """Allowed interval of a number field: ``min``/``max`` inclusive unless ``open_min``/``open_max``."""

    min: float | None = None
    max: float | None = None
    open_min: bool = False
    open_max: bool = False

    def check(self, value: float, path: str) -> None:
        low_ok = self.min is None or (value > self.min if self.open_min else value >= self.min)
        high_ok = self.max is None or (value < self.max if self.open_max else value <= self.max)
        if not (low_ok and high_ok):
            raise ConfigError(f"'{path}' must be {self.describe()}, got {value!r}")

    def describe(self) -> str:
        parts = []
        if self.min is not None:
            parts.append(f"{'>' if self.open_min else '>='} {self.min:g}")
        if self.max is not None:
            parts.append(f"{'<' if self.open_max else '<='} {self.max:g}")
        return " and ".join(parts)


PositiveInt = Annotated[int, Range(min=1)]
NonNegativeInt = Annotated[int, Range(min=0)]
NonNegativeFloat = Annotated[float, Range(min=0)]
PositiveFloat = Annotated[float, Range(min=0, open_min=True)]
UnitFraction = Annotated[float, Range(min=0, max=1, open_min=True)]  # (0, 1]


@dataclass
class GRPOConfig:
    """Sampling and step math. ``num_prompts_per_step * num_generations_per_prompt`` samples per step."""

    num_prompts_per_step: PositiveInt = 32
    num_generations_per_prompt: PositiveInt = 8
    max_num_steps: PositiveInt = 1_000_000
    max_num_epochs: PositiveInt = 1
    max_rollout_turns: PositiveInt = 6
    normalize_rewards: bool = True
    use_leave_one_out_baseline: bool = True
    use_dynamic_sampling: bool = False
    dynamic_sampling_max_gen_batches: PositiveInt = 10
    val_period: NonNegativeInt = 10  # 0: no validation during training
    val_at_start: bool = True
    max_val_samples: PositiveInt | None = None
    seed: int = 42


@dataclass
class LossConfig:
    """Clipped policy-gradient loss (NeMo-RL ClippedPGLoss names)."""

    ratio_clip_min: NonNegativeFloat = 0.2
    ratio_clip_max: NonNegativeFloat = 0.2
    ratio_clip_c: Annotated[float, Range(min=1, open_min=True)] | None = None  # dual clip, > 1
    reference_policy_kl_penalty: NonNegativeFloat = 0.0
    reference_policy_kl_type: Literal["k1", "k2", "k3"] = "k3"
    token_level_loss: bool = True  # false: mean of per-sequence means over every sample of the batch
    # truncated importance sampling: scale each token's policy-gradient term by
    # min(pi_old / pi_gen, truncated_importance_sampling_ratio) (training vs generation numerics)
    use_importance_sampling_correction: bool = False
    truncated_importance_sampling_ratio: PositiveFloat | None = 2.0  # the cap C; null: no truncation


@dataclass
class OptimizerConfig:
    lr: NonNegativeFloat = 1.0e-6
    min_lr: NonNegativeFloat = 1.0e-7
    weight_decay: NonNegativeFloat = 0.01
    adam_beta1: Annotated[float, Range(min=0, max=1, open_max=True)] = 0.9
    adam_beta2: Annotated[float, Range(min=0, max=1, open_max=True)] = 0.999
    adam_eps: PositiveFloat = 1.0e-8
    clip_grad: NonNegativeFloat = 1.0  # 0: no clipping
    lr_warmup_steps: NonNegativeInt = 0
    lr_decay_style: Literal["constant", "cosine", "linear"] = "constant"
    lr_decay_steps: PositiveInt | None = None  # steps from lr to min_lr (None: the run's max steps)
    lr_warmup_init: NonNegativeFloat = 0.0  # lr at step 0 of a warmup (megatron's lr_warmup_init)
    use_distributed_optimizer: bool = True
    offload_during_generation: bool = False


@dataclass
class PolicyConfig:
    """The Megatron policy. ``model_name`` is a local HF folder or a hub id."""

    model_name: str = "Qwen/Qwen3-4B-Instruct-2507"
    tokenizer_name: str | None = None  # defaults to model_name
    tensor_model_parallel_size: PositiveInt = 1
    pipeline_model_parallel_size: PositiveInt = 1
    sequence_parallel: bool = False
    precision: Literal["bfloat16", "float32"] = "bfloat16"
    train_global_batch_size: PositiveInt = 256
    train_micro_batch_size: PositiveInt = 1
    logprob_batch_size: PositiveInt = 1
    max_total_sequence_length: PositiveInt = 32768
    transformer_impl: Literal["local", "transformer_engine"] = "local"  # local: torch SDPA core attention
    activation_checkpointing: bool = False
    # one row [prefix | rest_1 .. rest_G] per group in logprobs/train_step (shared_prefix.py)
    shared_prefix: bool = False
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)


@dataclass
class GenerationConfig:
    """Rollout generation. backend=auto picks vllm, else megatron on GPU, hf on CPU."""

    backend: Literal["auto", "vllm", "megatron", "hf"] = "auto"
    # training samples from softmax(logits / temperature) and the policy's old/new logprobs use the
    # same temperature (> 0); top_p < 1 or top_k > 0 is refused for training (evaluation only)
    temperature: NonNegativeFloat = 1.0
    val_temperature: NonNegativeFloat | None = None  # validation sampling; None: same as temperature, 0: greedy
    top_p: UnitFraction = 1.0
    top_k: NonNegativeInt | None = None  # None or 0: disabled
    max_new_tokens: PositiveInt = 4096
    max_model_len: PositiveInt = 32768
    gpu_memory_utilization: UnitFraction = 0.6  # vllm on GPU: fraction of the memory free when the engine is built
    cpu_kv_cache_gib: PositiveFloat = 2.0  # vllm on CPU: its KV cache (vLLM's own default reserves most of the RAM)
    refit_bucket_mb: PositiveFloat = 512  # refit stream bucket size (MiB; fractions for tests)
    enable_prefix_caching: bool = True


@dataclass
class EnvConfig:
    """The Workplace Assistant environment and its Ray actor pool."""

    data_dir: str | None = None  # sandbox csv_data; None -> WORKPLACE_DATA_DIR or the download cache
    num_actors: NonNegativeInt = 4  # 0: run episodes in the trainer's process (no Ray)
    tool_subset: Literal["all", "domain"] = "all"  # domain: the task's domains + company_directory (WorkBench)
    # a <tool_call> block that is not valid JSON: plain_text (the reference: the turn is text, no
    # call, the episode ends) | error_output (run it as a failing call, the model gets another step)
    on_malformed_tool_call: Literal["plain_text", "error_output"] = "plain_text"


@dataclass
class DataConfig:
    train_path: str = "data/workplace_assistant/train.jsonl"
    validation_path: str = "data/workplace_assistant/validation.jsonl"
    shuffle: bool = True


@dataclass
class CheckpointingConfig:
    enabled: bool = True
    checkpoint_dir: str = "results/grpo_workplace_assistant/checkpoints"
    metric_name: str = "val:accuracy"
    higher_is_better: bool = True
    keep_top_k: PositiveInt | None = 3
    save_period: PositiveInt = 10
    resume: str = "auto"  # auto | none | <path to a step_N folder>
    export_hf_at_end: bool = False


@dataclass
class WandbConfig:
    enabled: bool = False
    project: str = "megatron-grpo"
    name: str | None = None
    mode: Literal["online", "offline", "disabled"] | None = None  # None: online when WANDB_API_KEY is set


@dataclass
class LoggerConfig:
    log_dir: str = "results/grpo_workplace_assistant/logs"
    jsonl: bool = True
    tensorboard: bool = False
    wandb: WandbConfig = field(default_factory=WandbConfig)
    # rollout traces in <log_dir>/rollouts/step_N.jsonl (megatron-grpo show-rollouts): the first
    # rollout_groups_per_step GRPO groups of every step (null: all, 0: none) and, when
    # rollout_validation is true, every validation episode
    rollout_groups_per_step: int | None = 2
    rollout_validation: bool = True


@dataclass
class ClusterConfig:
    num_nodes: PositiveInt = 1
    gpus_per_node: NonNegativeInt = 8  # 0: CPU ranks
    ray_address: str | None = None  # None -> RAY_ADDRESS, else a local Ray


@dataclass
class Config:
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    loss_fn: LossConfig = field(default_factory=LossConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpointing: CheckpointingConfig = field(default_factory=CheckpointingConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)


def check_training_sampling(cfg: Config) -> None:
    """Training samples must come from a distribution the policy can score: softmax(logits / T) with
    T = generation.temperature > 0 and no top-k/top-p cut (generation/base.py, logprob convention)."""
    g = cfg.generation
    if g.temperature <= 0:
        raise ConfigError(f"generation.temperature={g.temperature}: GRPO training samples need a temperature "
                          f"> 0 (greedy rollouts give identical samples per group); use "
                          f"generation.val_temperature=0 for greedy validation only")
    if g.top_p < 1.0 or (g.top_k is not None and g.top_k > 0):
        raise ConfigError(f"generation.top_p={g.top_p}, generation.top_k={g.top_k}: training cannot use a "
                          f"top-p/top-k cut (the policy's logprobs would not match the distribution that "
                          f"sampled the rollouts); set generation.top_p=1.0 and generation.top_k=null, and "
                          f"lower generation.temperature for sharper samples")


# ----------------------------------------------------------------------------- loading


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _unknown_key(key: str, where: str, valid: list[str]) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(valid))}"
    return ConfigError(f"unknown config key '{where}{key}'{hint}")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int, float, str, bool, Literal, Annotated with a
    Range, X | None, list, dataclass) and return it converted (ints to float for float fields)."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        base, *extras = typing.get_args(tp)
        value = _coerce(value, base, path)
        for extra in extras:
            if isinstance(extra, Range):
                extra.check(value, path)
        return value
    if origin is Literal:
        choices = typing.get_args(tp)
        if value in choices and type(value) is type(choices[choices.index(value)]):
            return value
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"'{path}' must be one of {', '.join(map(str, choices))}, got {value!r}{hint}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{path}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"'{path}' must be a mapping, got {value!r}")
        return _build(tp, value, path + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"'{path}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"'{path}' must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "2e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"'{path}' must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"'{path}' must be a string, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{path}' must be a list, got {value!r}")
        (item_tp,) = typing.get_args(tp)[:1]
        return [_coerce(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _build(cls: type, values: dict[str, Any], where: str = "") -> Any:
    types_ = _field_types(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in types_:
            raise _unknown_key(key, where, list(types_))
        kwargs[key] = _coerce(value, types_[key], where + key)
    return cls(**kwargs)


def _deep_merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"++a.b=3"`` -> (["a", "b"], 3). Raises ConfigError on a malformed override."""
    body = text[2:] if text.startswith("++") else text.lstrip("+")
    if "=" not in body:
        raise ConfigError(f"override '{text}' is not of the form section.key=value")
    key, raw = body.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override '{text}' has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({exc})") from exc
    return parts, value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (optional) and apply dotted overrides; validate every key and type.

    A YAML file may name a base with ``defaults: other.yaml`` (relative to its own folder); the file's
    own values win over the base's.
    """
    values: dict[str, Any] = {}
    if path is not None:
        values = _read_yaml(Path(path))
    for text in overrides or []:
        parts, value = parse_override(text)
        nested: Any = value
        for part in reversed(parts):
            nested = {part: nested}
        values = _deep_merge(values, nested)
    try:
        return _build(Config, values)
    except ConfigError as exc:
        where = f" (in {path})" if path is not None else ""
        raise ConfigError(f"{exc}{where}") from None


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in seen:
        raise ConfigError(f"config 'defaults' cycle through {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    base = values.pop("defaults", None)
    if base is not None:
        base_values = _read_yaml(path.parent / base, seen + (path.resolve(),))
        values = _deep_merge(base_values, values)
    return values


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain data (for logging and checkpoints)."""
    return dataclasses.asdict(config)
