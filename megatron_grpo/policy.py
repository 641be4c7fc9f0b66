"""The Megatron policy: per-token logprobs, one optimizer step, the refit weight stream.

Why: GRPO needs exactly three things from the trained model. (1) ``logprobs``: log p(token | prefix)
for every token of a batch of sequences (old-policy logprobs before training, and the train/generation
mismatch metric). (2) ``train_step``: one optimizer step on a loss the caller defines over those
logprobs. (3) ``weight_stream``: the updated weights as Hugging Face-named tensors for the generation
engine. Everything else (TP/PP/DP/SP, micro-batches, the pipeline schedule, mixed precision, the
distributed optimizer, grad clipping, LR schedule) is megatron-core's, used as Megatron-LM uses it.

SPMD contract: every rank of the job constructs the policy and calls every method with the SAME
arguments (the full global batch). Each data-parallel rank works on its contiguous slice of the
batch; results are returned identically on every rank.

Loss contract of ``train_step``: ``loss_fn(logprobs, micro_batch) -> (loss, metrics)`` returns the
micro-batch's CONTRIBUTION to the global-batch loss, i.e. already divided by the global normalizer
(for a token-level loss: 1 / number of loss tokens in the WHOLE batch). The applied gradient is the
gradient of the SUM of all contributions over micro-batches and DP ranks, so the update does not
depend on ``train_micro_batch_size`` nor on the DP size. Implementation: megatron's schedule divides
each micro-batch loss by the number of micro-batches and DDP averages gradients over DP unless
``TransformerConfig.calculate_per_token_loss`` is set; we set it, return a 3-tuple from the loss
function (no division) and call ``finalize_model_grads`` without a token count (no rescaling), so
megatron sums.

Batching: ``train_step`` is ONE optimizer step on exactly the batch it is given (the trainer cuts
a rollout batch into ``policy.train_global_batch_size`` chunks if it wants several steps). Rows are
right-padded; each micro-batch is trimmed to its own longest row (with PP: to the batch's longest,
the p2p shapes being fixed); causal attention keeps padding out of the valid positions. With
``policy.shared_prefix`` (local spec), each run of ``group_size`` consecutive rows (a GRPO group)
is one packed row ``[prefix | rest_1 .. rest_G]`` and one micro-batch (shared_prefix.py); groups
stay whole on one DP rank and are split only past ``micro-batch rows x max_total_sequence_length``
tokens; logprobs and loss inputs keep the per-row layout, so loss functions are unchanged.

Precision: bf16 parameters with fp32 main weights/grads (Float16Module + megatron's mixed-precision
optimizer) when CUDA is available and ``policy.precision == "bfloat16"``; fp32 everywhere on CPU.
Tested (CPU, gloo) with megatron-core 0.16.1 and 0.19.2 at TP=2 (+SP), PP=2, DP=2 (+DistOpt).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist

from megatron_grpo import cpu_compat, shared_prefix
from megatron_grpo import optimizer as optim
from megatron_grpo.config import PolicyConfig
from megatron_grpo.distributed import reduce_loss_metrics
from megatron_grpo.grpo import LossFn

if TYPE_CHECKING:
    from megatron_grpo.distributed import ParallelLayout

log = logging.getLogger(__name__)



class PolicyInputError(ValueError):
    """A batch the policy cannot process; the message names the offending field and the fix."""


def token_logprobs(
    logits: torch.Tensor, input_ids: torch.Tensor, temperature: float = 1.0, *, overwrite_logits: bool = False
) -> torch.Tensor:
    """Vocab-parallel log p(input_ids[:, t] | input_ids[:, :t]) from this TP rank's logits shard.

    logits: [b, s, v/tp] (any float dtype), input_ids: [b, s] int64 -> [b, s] float32 with 0 at t=0.
    Never gathers the full vocabulary: megatron's ``vocab_parallel_cross_entropy`` all-reduces the
    max and the sum of exponentials over the TP group. It works IN PLACE on its input, so fp32
    logits are cloned first unless ``overwrite_logits`` (the caller never reads them again: saves
    one [b, s, v/tp] fp32 buffer, 10 GB for one 32k-token sequence of Qwen3 at TP=2; autograd is
    unaffected, as in megatron's own loss path, since no backward needs the logits themselves).
    """
    from megatron.core import tensor_parallel

    x = logits.float()
    x = x.clone() if x is logits and not overwrite_logits else x
    if temperature != 1.0:
        x.div_(temperature)
    labels = torch.zeros_like(input_ids)
    labels[:, :-1] = input_ids[:, 1:]
    nll = tensor_parallel.vocab_parallel_cross_entropy(x, labels)  # [b, s]: predicts token t+1 at t
    out = torch.zeros_like(nll)
    out[:, 1:] = -nll[:, :-1]
    return out


def _length_mask(lengths: torch.Tensor, seq_len: int) -> torch.Tensor:
    """[b, s] float: 1 where 1 <= t < length (positions with a logprob), else 0."""
    t = torch.arange(seq_len, device=lengths.device)[None, :]
    return ((t >= 1) & (t < lengths[:, None])).float()


class MegatronPolicy:
    """A Qwen3-family GPTModel shard for this rank, its DDP wrapper, optimizer and LR schedule.

    Construct after ``megatron_grpo.distributed.init_distributed`` (parallel_state must be set up).

    Args:
        cfg: the ``policy`` config section (parallel sizes must match the initialized layout).
        layout: the ParallelLayout returned by ``init_distributed`` (kept for the caller's use).
        hf_dir: a local Hugging Face folder (config.json + safetensors) to initialize the weights from.
        temperature: the sampling temperature of the generation engine; logits are divided by it
            so that ``logprobs`` match the distribution the tokens were sampled from.
        train_iters: total optimizer steps planned (for linear/cosine LR decay when
            ``optimizer.lr_decay_steps`` is not set).
    """

    def __init__(
        self,
        cfg: PolicyConfig,
        layout: ParallelLayout,
        hf_dir: str,
        *,
        temperature: float = 1.0,
        train_iters: int | None = None,
    ) -> None:
        from megatron.core import parallel_state
        from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
        from transformers import AutoConfig

        from megatron_grpo.models.hf_mapping import load_hf_checkpoint
        from megatron_grpo.models.qwen3 import build_qwen3_model, transformer_config_from_hf

        self.cfg = cfg
        self.layout = layout
        self.hf_dir = str(hf_dir)
        self.temperature = float(temperature)
        self._check_layout(parallel_state)
        on_gpu = cpu_compat.cuda_enabled()  # MEGATRON_GRPO_DEVICE=cpu forces the CPU path
        self.device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else None
        self.bf16 = on_gpu and cfg.precision == "bfloat16"
        params_dtype = torch.bfloat16 if self.bf16 else torch.float32
        if cfg.precision == "bfloat16" and not self.bf16:
            log.info("policy.precision=bfloat16 without CUDA: training in float32 on CPU")

        self.hf_config = AutoConfig.from_pretrained(self.hf_dir)
        self.config = transformer_config_from_hf(
            self.hf_config,
            tp=cfg.tensor_model_parallel_size,
            pp=cfg.pipeline_model_parallel_size,
            sequence_parallel=cfg.sequence_parallel,
            params_dtype=params_dtype,
            calculate_per_token_loss=True,  # megatron sums micro-batch losses and DP grads (see module doc)
            **_recompute_overrides(cfg.activation_checkpointing),
        )
        model = build_qwen3_model(self.hf_config, self.config, impl=cfg.transformer_impl)
        load_hf_checkpoint(model, self.hf_dir)
        self.model = model  # the bare GPTModel of this PP stage
        self.shared_prefix = cfg.shared_prefix and cfg.transformer_impl == "local"
        if cfg.shared_prefix and not self.shared_prefix:
            log.info("policy.shared_prefix: the %s spec has no shared-prefix attention; using the unshared "
                     "layout (one row per sample)", cfg.transformer_impl)
        if self.shared_prefix:
            shared_prefix.install_rope_positions(model)
        if self.bf16:
            from megatron.core.transformer.module import Float16Module

            # as Megatron-LM: bf16 compute with fp32 logits out; every parameter (norms included)
            # in bf16 so that the mixed-precision optimizer maps all of them to fp32 main weights
            model = Float16Module(self.config, model)
        ddp_config = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=False,
            use_distributed_optimizer=cfg.optimizer.use_distributed_optimizer,
        )
        self.ddp = DistributedDataParallel(config=self.config, ddp_config=ddp_config, module=model)
        self.config.finalize_model_grads_func = _finalize_grads_summed
        self.optimizer, self.scheduler = optim.build_optimizer(cfg, self.ddp, params_dtype, train_iters)
        self._optimizer_offloaded = False
        self.tokens_processed = 0  # tokens (padding included) this rank fed the model in the last call
        self._reference: list[torch.Tensor] | None = None  # keep_reference(): the KL reference weights (CPU)

    # ------------------------------------------------------------------ checks

    def _check_layout(self, parallel_state: Any) -> None:
        if not parallel_state.model_parallel_is_initialized():
            raise RuntimeError("MegatronPolicy needs megatron_grpo.distributed.init_distributed() first")
        have = (
            parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_pipeline_model_parallel_world_size(),
        )
        want = (self.cfg.tensor_model_parallel_size, self.cfg.pipeline_model_parallel_size)
        if have != want:
            raise PolicyInputError(
                f"policy.tensor_model_parallel_size/pipeline_model_parallel_size = {want} but the "
                f"initialized layout has TP,PP = {have}; pass the same sizes to init_distributed"
            )

    def _check_sequences(self, input_ids: torch.Tensor, lengths: torch.Tensor, what: str) -> None:
        if not torch.is_tensor(input_ids) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
            raise PolicyInputError(f"{what}: input_ids must be an int64 tensor [B, S], got "
                                   f"{getattr(input_ids, 'dtype', type(input_ids))} "
                                   f"{tuple(getattr(input_ids, 'shape', ()))}")
        b, s = input_ids.shape
        if not torch.is_tensor(lengths) or lengths.shape != (b,):
            raise PolicyInputError(f"{what}: lengths must be a tensor [B={b}], got "
                                   f"{tuple(getattr(lengths, 'shape', ()))}")
        if b == 0:
            raise PolicyInputError(f"{what}: empty batch")
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 1 or hi > s:
            bad = int(((lengths < 1) | (lengths > s)).nonzero()[0])
            raise PolicyInputError(f"{what}: lengths[{bad}] = {int(lengths[bad])} is outside [1, S={s}]")
        limit = self.cfg.max_total_sequence_length
        if hi > limit:
            bad = int(lengths.argmax())
            raise PolicyInputError(
                f"{what}: sample {bad} has {hi} tokens > policy.max_total_sequence_length={limit}; "
                f"raise policy.max_total_sequence_length or lower generation.max_new_tokens"
            )
        vocab = int(self.hf_config.vocab_size)
        valid = torch.arange(s, device=input_ids.device)[None, :] < lengths.to(input_ids.device)[:, None]
        ids = input_ids[valid]
        out_of_range = ids[(ids < 0) | (ids >= vocab)]
        if out_of_range.numel():
            raise PolicyInputError(
                f"{what}: token id {int(out_of_range[0])} outside the vocabulary [0, {vocab}) of {self.hf_dir}"
            )

    # ------------------------------------------------------------------ batching

    def _seq_multiple(self) -> int:
        return self.cfg.tensor_model_parallel_size if self.cfg.sequence_parallel else 1

    def _micro_batches(
        self, batch: dict[str, torch.Tensor], lengths: torch.Tensor, start: int, stop: int, mbs: int
    ) -> tuple[list[dict[str, torch.Tensor]], int]:
        """Cut rows [start, stop) into micro-batches of ``mbs`` rows, each trimmed to its own longest
        sequence (with pipeline parallelism: to the batch's longest, since the p2p shapes are fixed).
        Tensors with a sequence axis (dim 1 of size S) are trimmed with input_ids."""
        s_full = batch["input_ids"].shape[1]
        mult = self._seq_multiple()
        round_up = lambda n: -(-n // mult) * mult
        fixed = None
        if self.cfg.pipeline_model_parallel_size > 1:
            fixed = round_up(int(lengths.max()))
        out = []
        for lo in range(start, stop, mbs):
            hi = lo + mbs
            s_mb = fixed or round_up(int(lengths[lo:hi].max()))
            mb = {}
            for key, value in batch.items():
                v = value[lo:hi]
                if v.dim() >= 2 and v.shape[1] == s_full:
                    if s_mb <= s_full:
                        v = v[:, :s_mb]
                    else:  # rounded up past S for sequence parallelism: pad with zeros
                        pad = torch.zeros((v.shape[0], s_mb - s_full, *v.shape[2:]), dtype=v.dtype)
                        v = torch.cat([v, pad], dim=1)
                mb[key] = v.to(self.device) if self.device is not None else v
            out.append(mb)
        self.tokens_processed = sum(mb["input_ids"].numel() for mb in out)
        return out, (fixed or 0)

    def _packed_micro_batches(
        self, batch: dict[str, torch.Tensor], group_size: int, rows_per_micro_batch: int
    ) -> tuple[list[dict[str, Any]], int]:
        """Shared-prefix micro-batches of this DP rank: one packed row each (whole groups, split when
        prefix + rests exceed ``rows_per_micro_batch`` x max_total_sequence_length tokens). Each
        holds the pack (``_pack``) and the per-row tensors of its rows, per-token ones trimmed to
        the pack's width. Returns them and the common packed length when PP needs one (else 0)."""
        from megatron.core import parallel_state

        ids, lengths = batch["input_ids"], batch["lengths"]
        budget = rows_per_micro_batch * self.cfg.max_total_sequence_length
        packs = shared_prefix.plan(ids, lengths, group_size, budget)
        per_rank = shared_prefix.split_for_ranks(packs, lengths, parallel_state.get_data_parallel_world_size())
        mult = self._seq_multiple()
        round_up = lambda n: -(-n // mult) * mult
        fixed = 0
        if self.cfg.pipeline_model_parallel_size > 1:
            fixed = round_up(max(shared_prefix.pack_tokens(ids, lengths, rows) for rows in packs))
        s_full = ids.shape[1]
        out = []
        for rows in per_rank[parallel_state.get_data_parallel_rank()]:
            pack = shared_prefix.build_pack(ids, lengths, rows, fixed or round_up(
                shared_prefix.pack_tokens(ids, lengths, rows)))
            mb: dict[str, Any] = {}
            for key, value in batch.items():
                v = value[rows]
                if v.dim() >= 2 and v.shape[1] == s_full:
                    v = v[:, : pack.width]
                mb[key] = v.to(self.device) if self.device is not None else v
            mb["_pack"] = pack
            out.append(mb)
        self.tokens_processed = sum(mb["_pack"].ids.numel() for mb in out)
        return out, fixed

    def _token_logprobs(self, logits: torch.Tensor, mb: dict[str, Any]) -> torch.Tensor:
        """Masked per-token logprobs [b, s_mb] of a micro-batch (unpacked from a shared-prefix row)."""
        if "_pack" in mb:
            return shared_prefix.token_logprobs(logits, mb["_pack"], self.temperature)
        logp = token_logprobs(logits, mb["input_ids"], self.temperature, overwrite_logits=True)
        return logp * _length_mask(mb["lengths"], logp.shape[1])

    def _forward(self, model: torch.nn.Module, mb: dict[str, Any]) -> torch.Tensor:
        if "_pack" in mb:
            return shared_prefix.packed_forward(model, mb["_pack"], self.device)
        input_ids = mb["input_ids"]
        b, s = input_ids.shape
        position_ids = torch.arange(s, device=input_ids.device)[None, :].expand(b, s)
        # right padding + causal attention: padded positions never influence valid ones
        return model(input_ids, position_ids, None)

    # ------------------------------------------------------------------ logprobs

    @torch.no_grad()
    def logprobs(self, input_ids: torch.Tensor, lengths: torch.Tensor, group_size: int = 1) -> torch.Tensor:
        """Per-token logprobs of right-padded sequences.

        input_ids: [B, S] int64, lengths: [B] -> [B, S] float32 (CPU) where out[b, t] =
        log p(input_ids[b, t] | input_ids[b, :t]) for 1 <= t < lengths[b] and 0 elsewhere.
        Runs in micro-batches of ``policy.logprob_batch_size`` through megatron's schedule (so PP
        works), rows split over DP; every rank returns the same tensor. With
        ``policy.shared_prefix``, each run of ``group_size`` consecutive rows is one packed row.
        """
        from megatron.core import parallel_state

        self._check_sequences(input_ids, lengths, "logprobs")
        input_ids, lengths = input_ids.cpu(), lengths.cpu()  # micro-batches go to the device one by one
        if self.shared_prefix:
            return self._shared_logprobs(input_ids, lengths, group_size)
        b, s = input_ids.shape
        dp = parallel_state.get_data_parallel_world_size()
        dp_rank = parallel_state.get_data_parallel_rank()
        mbs = max(1, self.cfg.logprob_batch_size)
        per_rank = -(-b // (dp * mbs)) * mbs  # pad B up with 1-token dummy rows
        pad_rows = per_rank * dp - b
        ids = torch.cat([input_ids, torch.zeros((pad_rows, s), dtype=torch.long)]) if pad_rows else input_ids
        lens = torch.cat([lengths, torch.ones(pad_rows, dtype=lengths.dtype)]) if pad_rows else lengths
        lo = dp_rank * per_rank
        micro, fixed = self._micro_batches({"input_ids": ids, "lengths": lens}, lens, lo, lo + per_rank, mbs)

        def forward_step(data_iterator: Iterator, model: torch.nn.Module):
            mb = next(data_iterator)
            output = self._forward(model, mb)

            def loss_func(logits: torch.Tensor):
                logp = self._token_logprobs(logits, mb)
                return logp.sum() * 0.0, torch.ones((), dtype=torch.int), {"logprobs": logp}

            return output, loss_func

        results = self._run_schedule(forward_step, micro, fixed, mbs, forward_only=True)
        local = torch.zeros((per_rank, s), dtype=torch.float32, device=self.device)
        if parallel_state.is_pipeline_last_stage():
            row = 0
            for r in results:
                lp = r["logprobs"]
                width = min(lp.shape[1], s)
                local[row : row + lp.shape[0], :width] = lp[:, :width]
                row += lp.shape[0]
        if dp > 1:
            parts = [torch.empty_like(local) for _ in range(dp)]
            dist.all_gather(parts, local, group=parallel_state.get_data_parallel_group())
            local = torch.cat(parts)
        if parallel_state.get_pipeline_model_parallel_world_size() > 1:
            dist.broadcast(
                local,
                src=parallel_state.get_pipeline_model_parallel_last_rank(),
                group=parallel_state.get_pipeline_model_parallel_group(),
            )
        return local[:b].cpu()

    def _shared_logprobs(self, input_ids: torch.Tensor, lengths: torch.Tensor, group_size: int) -> torch.Tensor:
        """``logprobs`` with one packed row per group (see shared_prefix.py)."""
        from megatron.core import parallel_state

        b, s = input_ids.shape
        batch = {"input_ids": input_ids, "lengths": lengths}
        micro, fixed = self._packed_micro_batches(batch, group_size, max(1, self.cfg.logprob_batch_size))

        def forward_step(data_iterator: Iterator, model: torch.nn.Module):
            mb = next(data_iterator)
            output = self._forward(model, mb)

            def loss_func(logits: torch.Tensor):
                logp = self._token_logprobs(logits, mb)
                return logp.sum() * 0.0, torch.ones((), dtype=torch.int), {"logprobs": logp}

            return output, loss_func

        results = self._run_schedule(forward_step, micro, fixed, 1, forward_only=True)
        out = torch.zeros((b, s), dtype=torch.float32, device=self.device)
        if parallel_state.is_pipeline_last_stage():
            for mb, r in zip(micro, results, strict=True):
                lp = r["logprobs"]
                out[mb["_pack"].rows, : lp.shape[1]] = lp
        if parallel_state.get_data_parallel_world_size() > 1:  # each row is filled on one DP rank
            dist.all_reduce(out, group=parallel_state.get_data_parallel_group())
        if parallel_state.get_pipeline_model_parallel_world_size() > 1:
            dist.broadcast(
                out,
                src=parallel_state.get_pipeline_model_parallel_last_rank(),
                group=parallel_state.get_pipeline_model_parallel_group(),
            )
        return out.cpu()

    # ------------------------------------------------------------------ training

    def train_step(self, batch: dict[str, torch.Tensor], loss_fn: LossFn, group_size: int = 1) -> dict[str, float]:
        """One optimizer step on the global batch.

        batch: ``input_ids`` [B, S] int64 (right-padded), ``lengths`` [B], plus any per-sample [B] or
        per-token [B, S] tensors ``loss_fn`` needs (B first; per-token tensors are trimmed to each
        micro-batch's length along dim 1). B must be divisible by DP size * train_micro_batch_size.
        ``loss_fn(logprobs [b, s_mb], micro_batch) -> (loss, metrics)``: the micro-batch's contribution
        to the global loss (see the module docstring). Returns ``loss`` (summed), ``grad_norm`` (before
        clipping), ``lr`` (used by this step), and the loss_fn metrics summed over micro-batches and DP.
        With ``policy.shared_prefix``, each run of ``group_size`` consecutive rows is one packed row
        (micro-batches are whole groups; B need only be >= the DP size).
        """
        from megatron.core import parallel_state

        if self._optimizer_offloaded:
            self.onload_optimizer()
        if "input_ids" not in batch or "lengths" not in batch:
            raise PolicyInputError(f"train_step: batch needs 'input_ids' and 'lengths', got {sorted(batch)}")
        batch = {k: v.cpu() if torch.is_tensor(v) else v for k, v in batch.items()}
        input_ids, lengths = batch["input_ids"], batch["lengths"]
        self._check_sequences(input_ids, lengths, "train_step")
        b = input_ids.shape[0]
        for key, value in batch.items():
            if not torch.is_tensor(value) or value.dim() == 0 or value.shape[0] != b:
                raise PolicyInputError(
                    f"train_step: batch['{key}'] must be a tensor with first dim B={b}, got "
                    f"{tuple(value.shape) if torch.is_tensor(value) else type(value).__name__}"
                )
        dp = parallel_state.get_data_parallel_world_size()
        mbs = self.cfg.train_micro_batch_size
        if self.shared_prefix and b < dp:
            raise PolicyInputError(f"train_step: batch size {b} is smaller than the data-parallel size {dp}")
        if not self.shared_prefix and b % (dp * mbs):
            raise PolicyInputError(
                f"train_step: batch size {b} is not divisible by data-parallel size {dp} x "
                f"policy.train_micro_batch_size {mbs}; make the samples per step (num_prompts_per_step x "
                f"num_generations_per_prompt) a multiple of {dp * mbs} or change "
                f"policy.train_micro_batch_size"
            )
        if self.shared_prefix:
            micro, fixed = self._packed_micro_batches(batch, group_size, mbs)
            mbs = 1  # one packed row per micro-batch
        else:
            per_rank = b // dp
            lo = parallel_state.get_data_parallel_rank() * per_rank
            micro, fixed = self._micro_batches(batch, lengths, lo, lo + per_rank, mbs)

        def forward_step(data_iterator: Iterator, model: torch.nn.Module):
            mb = next(data_iterator)
            output = self._forward(model, mb)

            def loss_func(logits: torch.Tensor):
                logp = self._token_logprobs(logits, mb)
                loss, metrics = loss_fn(logp, {k: v for k, v in mb.items() if k != "_pack"})
                if not torch.is_tensor(loss) or loss.dim() != 0:
                    raise PolicyInputError("train_step: loss_fn must return a scalar tensor as its loss")
                reduced = {"loss": float(loss.detach())}
                reduced.update({k: float(v) for k, v in metrics.items()})
                return loss, torch.ones((), dtype=torch.int), reduced

            return output, loss_func

        self.ddp.zero_grad_buffer()
        self.optimizer.zero_grad()
        results = self._run_schedule(forward_step, micro, fixed, mbs, forward_only=False)
        lr = float(self.optimizer.param_groups[0]["lr"])
        update_ok, grad_norm, _ = self.optimizer.step()
        if update_ok:
            self.scheduler.step(increment=1)
        metrics = reduce_loss_metrics(results, self.device)
        metrics["grad_norm"] = float(grad_norm) if grad_norm is not None else float("nan")
        metrics["lr"] = lr
        return metrics

    # ------------------------------------------------------------------ weights and state

    def _run_schedule(self, forward_step: Callable, micro: list[dict], fixed: int | None, mbs: int,
                      *, forward_only: bool) -> list:
        """megatron's forward(-backward) schedule (PP-aware) over the micro-batches; ``fixed``: the
        common sequence length when PP needs one, else each micro-batch's own length."""
        from megatron.core.pipeline_parallel import get_forward_backward_func

        return get_forward_backward_func()(
            forward_step_func=forward_step,
            data_iterator=iter(micro),
            model=[self.ddp],
            num_microbatches=len(micro),
            seq_length=fixed or max(m["input_ids"].shape[1] for m in micro),
            micro_batch_size=mbs,
            forward_only=forward_only,
        )

    def weight_stream(self, bucket_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
        """The full model as HF-named tensors in buckets of about ``bucket_bytes`` (collective: every
        rank must iterate it to the end). See ``models.hf_mapping.iter_hf_weights``."""
        from megatron_grpo.models.hf_mapping import iter_hf_weights

        return iter_hf_weights(self.model, bucket_bytes)

    def sharded_state_dict(self, *, is_loading: bool = False) -> dict[str, Any]:
        """Megatron dist-checkpointing state: model, optimizer (DistOpt as ``dp_reshardable``: resumable
        at the same TP/PP with any DP) and the LR scheduler. Model weights alone reshard to any TP/PP."""
        if is_loading:
            optim.ensure_optimizer_state(self.optimizer)
        model_sd = self.model.sharded_state_dict()
        metadata = {"distrib_optim_sharding_type": "dp_reshardable"}
        return {
            "model": model_sd,
            "optimizer": self.optimizer.sharded_state_dict(
                model_sd, is_loading=is_loading, metadata=metadata
            ),
            "opt_param_scheduler": self.scheduler.state_dict(),
        }

    def load_sharded_state_dict(self, state: dict[str, Any]) -> None:
        """Apply what ``dist_checkpointing.load`` returned for ``sharded_state_dict(is_loading=True)``."""
        self.model.load_state_dict(state["model"], strict=True)
        with torch.no_grad():  # fp32 + DistOpt: main params are views of leaf params
            self.optimizer.load_state_dict(state["optimizer"])
        optim.restore_torch_adam_steps(self.optimizer)
        self.scheduler.load_state_dict(state["opt_param_scheduler"])

    # ------------------------------------------------------------------ reference policy (KL)

    def keep_reference(self) -> None:
        """Keep a CPU copy of this rank's current weights as the reference policy of the KL penalty
        (call before any training or resume: the reference is the initial model)."""
        self._reference = [p.detach().to("cpu", copy=True) for p in self.model.parameters()]

    @torch.no_grad()
    def reference_logprobs(self, input_ids: torch.Tensor, lengths: torch.Tensor, group_size: int = 1) -> torch.Tensor:
        """:meth:`logprobs` under the weights kept by :meth:`keep_reference` (same temperature and
        shapes). The reference weights are copied in for the pass and the trained ones copied back
        exactly (no second model on the device; one extra host copy of the shard while it runs)."""
        reference = self._reference
        if reference is None:
            raise RuntimeError("reference_logprobs needs keep_reference() first (loss_fn.reference_policy_kl_penalty)")
        params = list(self.model.parameters())
        trained = [p.detach().to("cpu", copy=True) for p in params]
        try:
            for p, r in zip(params, reference, strict=True):
                p.copy_(r)
            return self.logprobs(input_ids, lengths, group_size=group_size)
        finally:
            for p, t in zip(params, trained, strict=True):
                p.copy_(t)

    def offload_optimizer(self) -> None:
        """Move optimizer state (Adam moments; bf16 runs: fp32 main weights) to CPU to free GPU memory
        during generation. No-op without CUDA."""
        if self.device is None or self._optimizer_offloaded:
            return
        optim.move_optimizer_state(self.optimizer, torch.device("cpu"), move_main_params=self.bf16)
        self._optimizer_offloaded = True
        torch.cuda.empty_cache()

    def onload_optimizer(self) -> None:
        """Undo ``offload_optimizer`` (called automatically by ``train_step``)."""
        if self.device is None or not self._optimizer_offloaded:
            return
        optim.move_optimizer_state(self.optimizer, self.device, move_main_params=self.bf16)
        self._optimizer_offloaded = False


# ---------------------------------------------------------------------- helpers


def _recompute_overrides(enabled: bool) -> dict[str, Any]:
    """policy.activation_checkpointing: recompute every transformer layer in the backward pass
    (megatron's full/uniform recompute): activation memory of one layer input per layer."""
    if not enabled:
        return {}
    return {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}


def _finalize_grads_summed(model_chunks: list, num_tokens: Any = None, **kwargs: Any) -> None:
    """megatron's finalize_model_grads (DP all-reduce, TP/SP norm grads, tied embeddings over PP)
    without the 1/num_tokens rescale that ``calculate_per_token_loss`` would apply: the caller's
    loss contributions are already globally normalized."""
    from megatron.core.distributed import finalize_model_grads

    finalize_model_grads(model_chunks, None, **kwargs)



