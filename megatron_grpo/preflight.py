"""`megatron-grpo preflight`: check a config against a cluster shape before any GPU is held.

Why: a TP x PP that does not divide the GPUs, a batch that does not split over data-parallel ranks,
a missing data file or an unreachable Ray head otherwise shows up minutes into a job, after the
allocation was granted and the model was loaded. Every check here runs in seconds on the submit
host (or the first node, before the ranks start) and prints what to change.

    megatron-grpo preflight --config CFG --nodes N --gpus-per-node G [--gpu-memory-gb 80]
                            [--device cuda|cpu] [--json] [--env-out FILE] [section.key=value ...]

Checks (each ``ok``, ``FAIL`` or ``skip`` with the reason): layout (TP x PP divides N x G),
model (heads / query groups by TP, layers by PP; read from ``config.json`` of a local model folder
or the Hugging Face cache for a hub id), batch (samples per step and train_global_batch_size over
DP x micro batch), sampling (a temperature > 0 and no top-p/top-k cut for training), memory
(params + grads + Adam states + activations + generation KV cache vs the GPU), data (train/validation
files), sandbox (the environment's CSV folder), ray (TCP connect to RAY_ADDRESS /
cluster.ray_address), wandb (API key or offline). Exit code 0 when nothing
failed, 1 otherwise, 2 on a bad command line or config.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from megatron_grpo.config import Config, ConfigError, check_training_sampling, load_config

GB = 1024**3


@dataclass
class Check:
    """One preflight result. ``status`` is ok | fail | skip; ``fix`` says what to change on fail."""

    name: str
    status: str
    message: str
    fix: str = ""


@dataclass(frozen=True)
class ModelShape:
    """The few numbers of an HF decoder config that parallelism and memory depend on."""

    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tied_embeddings: bool

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any], where: str) -> ModelShape:
        try:
            heads = int(cfg["num_attention_heads"])
            hidden = int(cfg["hidden_size"])
            return cls(
                hidden_size=hidden,
                intermediate_size=int(cfg["intermediate_size"]),
                num_layers=int(cfg["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
                head_dim=int(cfg.get("head_dim") or hidden // heads),
                vocab_size=int(cfg["vocab_size"]),
                tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            )
        except KeyError as exc:
            raise ValueError(f"{where}: config.json lacks {exc.args[0]!r}") from None

    def layer_params(self) -> int:
        h, hd = self.hidden_size, self.head_dim
        attn = h * self.num_heads * hd * 2 + h * self.num_kv_heads * hd * 2 + 2 * hd
        return attn + 3 * h * self.intermediate_size + 2 * h

    def num_params(self) -> int:
        emb = self.vocab_size * self.hidden_size
        return (
            self.num_layers * self.layer_params()
            + emb * (1 if self.tied_embeddings else 2)
            + self.hidden_size
        )


# ----------------------------------------------------------------------------- model config lookup


def find_model_config(model_name: str) -> tuple[Path | None, str]:
    """Locate ``config.json`` for a local folder or a hub id (HF cache only, never the network).

    Returns (path or None, note). A local-looking name (existing path, or not of the form
    ``org/name``) that has no config.json is an error the caller reports.
    """
    local = Path(model_name).expanduser()
    if local.exists():
        cfg = local / "config.json"
        return (cfg, f"local folder {local}") if cfg.is_file() else (None, f"no config.json in {local}")
    if model_name.count("/") != 1 or model_name.startswith((".", "/", "~")):
        return None, f"model folder {model_name} does not exist"
    hub_cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub"
    )
    snapshots = Path(hub_cache) / ("models--" + model_name.replace("/", "--")) / "snapshots"
    found = (
        sorted(snapshots.glob("*/config.json"), key=lambda p: p.stat().st_mtime) if snapshots.is_dir() else []
    )
    if found:
        return found[-1], f"HF cache {found[-1].parent}"
    return None, f"hub id {model_name} is not in the HF cache ({hub_cache})"


def is_hub_id(model_name: str) -> bool:
    return (
        not Path(model_name).expanduser().exists()
        and model_name.count("/") == 1
        and not model_name.startswith((".", "/", "~"))
    )


# ----------------------------------------------------------------------------- individual checks


def check_layout(world: int, tp: int, pp: int) -> tuple[Check, int | None]:
    from megatron_grpo.distributed import validate_layout

    try:
        dp = validate_layout(world, tp, pp)
    except ValueError as exc:
        return Check(
            "layout",
            "fail",
            str(exc),
            "set policy.tensor_model_parallel_size / "
            "pipeline_model_parallel_size, or --nodes / --gpus-per-node",
        ), None
    return Check("layout", "ok", f"world {world} = TP {tp} x PP {pp} x DP {dp}"), dp


def check_model(cfg: Config, tp: int, pp: int) -> tuple[list[Check], ModelShape | None]:
    from megatron_grpo.distributed import validate_layout

    name = cfg.policy.model_name
    path, note = find_model_config(name)
    if path is None:
        if is_hub_id(name):
            return [Check("model", "skip", f"heads/layers not checked: {note}")], None
        return [
            Check("model", "fail", note, "set policy.model_name to a folder with config.json or a hub id")
        ], None
    try:
        shape = ModelShape.from_hf_config(json.loads(path.read_text()), str(path))
    except (ValueError, json.JSONDecodeError) as exc:
        return [Check("model", "fail", f"{path}: {exc}", "point policy.model_name at a valid HF model")], None
    checks = []
    # validate_layout reports only its first problem, so ask it one question at a time.
    for label, kwargs in (
        ("model.heads", {"num_attention_heads": shape.num_heads}),
        ("model.query_groups", {"num_query_groups": shape.num_kv_heads}),
    ):
        try:
            validate_layout(tp * pp, tp, pp, **kwargs)
            checks.append(Check(label, "ok", f"{next(iter(kwargs.values()))} divisible by TP {tp} ({note})"))
        except ValueError as exc:
            checks.append(Check(label, "fail", str(exc), "change policy.tensor_model_parallel_size"))
    try:
        validate_layout(tp * pp, tp, pp, num_layers=shape.num_layers)
        checks.append(Check("model.layers", "ok", f"{shape.num_layers} layers divisible by PP {pp}"))
    except ValueError as exc:
        checks.append(Check("model.layers", "fail", str(exc), "change policy.pipeline_model_parallel_size"))
    return checks, shape


def check_batch(cfg: Config, dp: int) -> list[Check]:
    g, p = cfg.grpo, cfg.policy
    samples = g.num_prompts_per_step * g.num_generations_per_prompt
    unit = dp * p.train_micro_batch_size
    gbs = p.train_global_batch_size
    checks = []
    if samples % unit:
        checks.append(
            Check(
                "batch.samples",
                "fail",
                f"samples per step {g.num_prompts_per_step} x {g.num_generations_per_prompt} = {samples} "
                f"is not "
                f"divisible by DP {dp} x policy.train_micro_batch_size {p.train_micro_batch_size} = {unit}",
                f"make grpo.num_prompts_per_step x grpo.num_generations_per_prompt a multiple of {unit}, "
                "or change the micro batch / TP x PP",
            )
        )
    else:
        checks.append(
            Check(
                "batch.samples",
                "ok",
                f"{samples} samples per step = {samples // unit} x DP {dp} x "
                f"micro batch {p.train_micro_batch_size}",
            )
        )
    problems = []
    if gbs % unit:
        problems.append(
            f"policy.train_global_batch_size {gbs} is not divisible by DP {dp} x micro batch "
            f"{p.train_micro_batch_size} = {unit}"
        )
    if samples % gbs:
        problems.append(
            f"samples per step {samples} is not a multiple of policy.train_global_batch_size {gbs}"
        )
    if problems:
        checks.append(
            Check(
                "batch.global",
                "fail",
                "; ".join(problems),
                f"set policy.train_global_batch_size={samples} (one optimizer step per rollout batch)",
            )
        )
    else:
        checks.append(
            Check("batch.global", "ok", f"{samples // gbs} optimizer step(s) of {gbs} samples per step")
        )
    return checks


def check_sampling(cfg: Config) -> Check:
    """Training samples from a distribution the policy can score (generation.temperature/top_p/top_k)."""
    try:
        check_training_sampling(cfg)
    except ConfigError as exc:
        return Check("sampling", "fail", str(exc).split(";")[0], str(exc).split(";", 1)[-1].strip())
    return Check("sampling", "ok", f"softmax(logits / {cfg.generation.temperature:g}) for rollouts and the loss")


def estimate_memory(
    cfg: Config, shape: ModelShape, tp: int, pp: int, dp: int, device: str, gpu_memory_gb: float
) -> dict[str, float]:
    """Rough per-GPU peak memory in GiB: training (static + activations + logits) and generation.

    static = weights + fp32 grads + optimizer (fp32 master + Adam m, v; divided by DP with the
    distributed optimizer). Activations follow Korthikanti et al. 2022 without the attention-score
    term (SDPA/flash never materialises it): per layer s*b*h*(10 + 24/t) bytes in 16-bit, s*b*h*34/t
    with sequence parallel, 2*s*b*h with activation checkpointing; 1F1B keeps about PP micro batches
    of L/PP layers in flight on the first stage, i.e. L layers' worth. Logits: fp32 [s, V/t] plus its
    gradient. Generation: vLLM takes gpu_memory_utilization of the GPU; the in-process engines hold a
    KV cache for every rollout of the DP rank at full length.
    """
    p = cfg.policy
    bf16 = p.precision in ("bfloat16", "bf16", "float16", "fp16")
    wbytes = 2 if bf16 else 4
    emb = shape.vocab_size * shape.hidden_size / tp
    stage_params = shape.num_layers * shape.layer_params() / (tp * pp)
    stage_params += emb if (pp > 1 or shape.tied_embeddings) else 2 * emb
    opt_bytes = (12 if bf16 else 8) / (dp if p.optimizer.use_distributed_optimizer else 1)
    weights = stage_params * wbytes
    grads = stage_params * 4
    optim = stage_params * opt_bytes
    s, b, h, t = p.max_total_sequence_length, p.train_micro_batch_size, shape.hidden_size, tp
    scale = 1 if bf16 else 2
    if p.activation_checkpointing:
        per_layer_saved = 2 * s * b * h * scale / (t if p.sequence_parallel else 1)
        full_layer = s * b * h * (34 / t if p.sequence_parallel else 10 + 24 / t) * scale
        acts = shape.num_layers * per_layer_saved + full_layer
    else:
        acts = shape.num_layers * s * b * h * (34 / t if p.sequence_parallel else 10 + 24 / t) * scale
    logits = 2 * s * b * shape.vocab_size / t * 4
    from megatron_grpo.generation import choose_backend

    # the runtime's rule, for a cluster where vLLM is installed
    backend, _ = choose_backend(cfg.generation.backend, device == "cuda", has_vllm=True)
    if backend == "vllm":
        # the engine takes its fraction of what the policy left free when it was built
        policy_static = weights + grads + optim
        kv = cfg.generation.gpu_memory_utilization * max(0.0, gpu_memory_gb * GB - policy_static)
        gen_static = weights + (0 if p.optimizer.offload_during_generation else grads + optim)
    else:
        rollouts = cfg.grpo.num_prompts_per_step * cfg.grpo.num_generations_per_prompt / dp
        kv_heads = max(shape.num_kv_heads // t, 1)
        kv = (
            2
            * shape.num_layers
            / pp
            * kv_heads
            * shape.head_dim
            * wbytes
            * cfg.generation.max_model_len
            * rollouts
        )
        gen_static = weights + (0 if p.optimizer.offload_during_generation else grads + optim)
    return {
        "params_total_b": shape.num_params() / 1e9,
        "weights_gb": weights / GB,
        "grads_gb": grads / GB,
        "optimizer_gb": optim / GB,
        "activations_gb": acts / GB,
        "logits_gb": logits / GB,
        "generation_kv_gb": kv / GB,
        "train_peak_gb": (weights + grads + optim + acts + logits) / GB,
        "generation_peak_gb": (gen_static + kv) / GB,
    }


def check_memory(
    cfg: Config, shape: ModelShape | None, tp: int, pp: int, dp: int | None, device: str, gpu_memory_gb: float
) -> tuple[Check, dict[str, float]]:
    if shape is None or dp is None:
        return Check("memory", "skip", "not estimated: model shape or layout unknown"), {}
    est = estimate_memory(cfg, shape, tp, pp, dp, device, gpu_memory_gb)
    budget = gpu_memory_gb * 0.95  # CUDA context, allocator fragmentation
    peak = max(est["train_peak_gb"], est["generation_peak_gb"])
    what = "GPU" if device == "cuda" else "per-rank host"
    summary = (
        f"{est['params_total_b']:.2f}B params; train peak {est['train_peak_gb']:.1f} GiB (weights "
        f"{est['weights_gb']:.1f}, grads {est['grads_gb']:.1f}, optimizer {est['optimizer_gb']:.1f}, "
        f"activations {est['activations_gb']:.1f}, logits {est['logits_gb']:.1f}); generation peak "
        f"{est['generation_peak_gb']:.1f} GiB (KV/engine {est['generation_kv_gb']:.1f}) vs {what} "
        f"{gpu_memory_gb:.0f} GiB"
    )
    if peak > budget:
        return Check(
            "memory",
            "fail",
            "estimated " + summary,
            "raise TP/PP, set policy.optimizer.use_distributed_optimizer=true, "
            "policy.activation_checkpointing=true, lower policy.max_total_sequence_length / "
            "train_micro_batch_size or generation.gpu_memory_utilization, or pass the real "
            "--gpu-memory-gb",
        ), est
    return Check("memory", "ok", "estimated " + summary), est


def check_data(cfg: Config) -> list[Check]:
    checks = []
    for key in ("train_path", "validation_path"):
        path = Path(getattr(cfg.data, key))
        if path.is_file():
            checks.append(Check(f"data.{key}", "ok", str(path)))
        else:
            checks.append(
                Check(
                    f"data.{key}",
                    "fail",
                    f"data.{key} {path} not found (cwd {Path.cwd()})",
                    f"run `megatron-grpo download` (and `prepare-data`), or set data.{key}=<file>",
                )
            )
    return checks


def check_sandbox(cfg: Config) -> Check:
    fix = "run `megatron-grpo download`, set env.data_dir=<folder> or WORKPLACE_DATA_DIR"
    if cfg.env.data_dir:
        path = Path(cfg.env.data_dir).expanduser()
        if not path.is_dir():
            return Check("sandbox", "fail", f"env.data_dir {path} is not a folder", fix)
    else:
        from environment.workplace.data_dir import default_data_dir

        try:
            path = Path(default_data_dir())
        except FileNotFoundError as exc:
            return Check("sandbox", "fail", str(exc), fix)
    if not (path / "processed").is_dir():
        return Check("sandbox", "fail", f"{path} has no processed/ folder of database CSVs", fix)
    return Check("sandbox", "ok", str(path))


def check_ray(cfg: Config, timeout_s: float = 2.0) -> Check:
    address = cfg.cluster.ray_address or os.environ.get("RAY_ADDRESS")
    if not address or address in ("auto", "local"):
        return Check("ray", "skip", "no Ray address set (the SLURM scripts start one; else a local Ray)")
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return Check(
            "ray",
            "fail",
            f"Ray address {address!r} is not host:port",
            "set RAY_ADDRESS / cluster.ray_address to <head-ip>:<gcs-port>",
        )
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        return Check(
            "ray",
            "fail",
            f"Ray head {host}:{port} not reachable ({exc})",
            "start the head (`ray start --head --port ...`) or unset RAY_ADDRESS / cluster.ray_address",
        )
    return Check("ray", "ok", f"Ray head {host}:{port} reachable")


def check_wandb(cfg: Config) -> Check:
    w = cfg.logger.wandb
    if not w.enabled:
        return Check("wandb", "ok", "disabled")
    mode = os.environ.get("WANDB_MODE") or w.mode
    if mode not in (None, "online", "offline", "disabled"):
        return Check(
            "wandb",
            "fail",
            f"logger.wandb.mode {mode!r} is not online | offline | disabled",
            "set logger.wandb.mode=offline (or online with WANDB_API_KEY)",
        )
    has_key = bool(os.environ.get("WANDB_API_KEY")) or _netrc_has_wandb()
    if mode == "online" and not has_key:
        return Check(
            "wandb",
            "fail",
            "wandb mode is online but no WANDB_API_KEY (nor ~/.netrc entry)",
            "export WANDB_API_KEY=..., or set logger.wandb.mode=offline / WANDB_MODE=offline",
        )
    if mode is None:
        mode = "online" if has_key else "offline"
    return Check("wandb", "ok", f"mode {mode}" + (" (API key found)" if has_key else ""))


def _netrc_has_wandb() -> bool:
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


# ----------------------------------------------------------------------------- driver


def run_checks(
    cfg: Config, nodes: int, gpus_per_node: int, device: str = "cuda", gpu_memory_gb: float = 80.0
) -> tuple[list[Check], dict[str, float]]:
    """All checks for ``cfg`` on ``nodes`` x ``gpus_per_node`` ranks; returns (checks, memory estimate)."""
    tp, pp = cfg.policy.tensor_model_parallel_size, cfg.policy.pipeline_model_parallel_size
    layout, dp = check_layout(nodes * gpus_per_node, tp, pp)
    checks = [layout]
    model_checks, shape = check_model(cfg, tp, pp)
    checks += model_checks
    if dp is not None:
        checks += check_batch(cfg, dp)
    else:
        checks.append(Check("batch", "skip", "not checked: the layout is invalid"))
    checks.append(check_sampling(cfg))
    mem, est = check_memory(cfg, shape, tp, pp, dp, device, gpu_memory_gb)
    checks.append(mem)
    checks += check_data(cfg)
    checks.append(check_sandbox(cfg))
    checks.append(check_ray(cfg))
    checks.append(check_wandb(cfg))
    return checks, est


def _host_memory_gb_per_rank(ranks_per_node: int) -> float:
    import psutil

    return psutil.virtual_memory().total / GB / max(ranks_per_node, 1)


def _shell_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="megatron-grpo preflight", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML config")
    parser.add_argument("--nodes", type=int, default=None, help="nodes (default cluster.num_nodes)")
    parser.add_argument(
        "--gpus-per-node",
        type=int,
        default=None,
        help="ranks per node: GPUs, or CPU processes with --device cpu (default cluster.gpus_per_node)",
    )
    parser.add_argument(
        "--gpu-memory-gb",
        type=float,
        default=None,
        help="memory per GPU in GiB (default 80; with --device cpu: host RAM / ranks per node)",
    )
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    parser.add_argument(
        "--env-out",
        default=None,
        help="write LOG_DIR / CHECKPOINT_DIR of the resolved config as shell assignments (for slurm/)",
    )
    parser.add_argument(
        "overrides", nargs="*", help="dotted overrides, e.g. policy.tensor_model_parallel_size=4"
    )
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"preflight: {exc}", file=sys.stderr)
        return 2
    nodes = args.nodes if args.nodes is not None else cfg.cluster.num_nodes
    per_node = args.gpus_per_node if args.gpus_per_node is not None else cfg.cluster.gpus_per_node
    if nodes < 1 or per_node < 1:
        print(f"preflight: --nodes {nodes} and --gpus-per-node {per_node} must be >= 1", file=sys.stderr)
        return 2
    mem_gb = args.gpu_memory_gb
    if mem_gb is None:
        mem_gb = 80.0 if args.device == "cuda" else _host_memory_gb_per_rank(per_node)
    checks, est = run_checks(cfg, nodes, per_node, args.device, mem_gb)
    failed = [c for c in checks if c.status == "fail"]
    if args.env_out:
        log_dir = cfg.logger.log_dir
        Path(args.env_out).write_text(
            f"LOG_DIR={_shell_quote(log_dir)}\nCHECKPOINT_DIR={_shell_quote(cfg.checkpointing.checkpoint_dir)}\n"
        )
    if args.json:
        print(
            json.dumps(
                {
                    "ok": not failed,
                    "config": str(args.config),
                    "nodes": nodes,
                    "gpus_per_node": per_node,
                    "device": args.device,
                    "gpu_memory_gb": mem_gb,
                    "checks": [asdict(c) for c in checks],
                    "memory_estimate_gb": {k: round(v, 3) for k, v in est.items()},
                    "log_dir": cfg.logger.log_dir,
                    "checkpoint_dir": cfg.checkpointing.checkpoint_dir,
                },
                indent=1,
            )
        )
    else:
        print(
            f"preflight {args.config}: {nodes} node(s) x {per_node} "
            f"{'GPUs' if args.device == 'cuda' else 'ranks'}"
        )
        for c in checks:
            print(f"  {c.status.upper():<4}  {c.name:<22} {c.message}")
            if c.status == "fail":
                print(f"        {'':<22} fix: {c.fix}")
        print(f"preflight: {len(failed)} failure(s)" if failed else "preflight: all checks passed")
    return 1 if failed else 0
