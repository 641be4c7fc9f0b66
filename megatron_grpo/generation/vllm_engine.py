"""In-process vLLM as the generation engine, co-located with the Megatron policy on the same GPUs.

Thin on purpose: vLLM cannot be installed on the CPU CI nor carried to our test GPU machine, so
everything here is a direct use of vLLM's documented offline API (vllm >= 0.24, the ``gpu`` extra):

* ``vllm.LLM(model, tensor_parallel_size=TP, distributed_executor_backend="external_launcher",
  enable_sleep_mode=True, enable_prefix_caching=True, logprobs_mode="raw_logprobs", ...)``: one
  engine per rank in the trainer's own process (SPMD, torchrun/srun). vLLM forms its TP groups from
  consecutive global ranks, which is Megatron's TP grouping, so the engine's TP group is the
  policy's; all ranks of a TP group must pass the same prompts (vLLM's external-launcher contract).
  ``VLLM_ENABLE_V1_MULTIPROCESSING=0`` keeps the engine core in this process (set if unset).
* ``generate``: ``LLM.generate`` on ``TokensPrompt(prompt_token_ids=...)`` with one
  ``vllm.SamplingParams`` per prompt (``max_tokens`` is the per-prompt budget, ``logprobs=0`` returns
  the sampled token's logprob, which with ``logprobs_mode="raw_logprobs"`` is the raw T=1 logprob the
  policy computes, ``detokenize=False``: ids in, ids out).
* ``sleep()``: ``LLM.sleep(level)``; refit wakes in two phases (NeMo-RL #191, vLLM #15254: waking
  everything before loading new weights runs out of memory): ``load_weights`` first calls
  ``LLM.wake_up(tags=["weights"])``, loads every bucket through the worker's
  ``model_runner.model.load_weights(weights=bucket)`` (``LLM.collective_rpc`` with a callable: it
  runs on this process's worker), and ``wake()`` then calls ``LLM.wake_up(tags=["kv_cache"])`` and
  resets the prefix cache (cached KV of the old weights must not be reused).

How it is verified (on a cluster with vLLM installed, ``pip install megatron-grpo[gpu]``): the
``-m gpu`` refit test generates with this engine, refits from a second checkpoint's stream and
requires ``gen_train_logprob_error`` ~ 0 against the policy's logprobs (tests/test_refit.py does
the same on CPU with the hf engine); ``bench/rollout.py --backend vllm --model <hf folder>`` runs
the agent loop on it and prints the time split.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from megatron_grpo.generation.base import Generation, SamplingParams, WeightStream, per_prompt_budgets

INSTALL_HINT = "generation.backend=vllm needs vLLM: pip install 'megatron-grpo[gpu]' (or pick backend hf/megatron)"


def _load_bucket(worker: Any, bucket: list) -> None:
    """Runs on the vLLM worker (this process): HF-named full tensors -> the engine's sharded model."""
    worker.model_runner.model.load_weights(weights=bucket)


class VLLMEngine:
    def __init__(
        self,
        model: str,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.6,
        max_model_len: int = 32768,
        dtype: str = "bfloat16",
        enable_prefix_caching: bool = True,
        sleep_level: int = 1,
        seed: int = 0,
        **llm_kwargs: Any,
    ):
        try:
            import vllm
        except ImportError as exc:
            raise ImportError(INSTALL_HINT) from exc
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        self._vllm = vllm
        self.sleep_level = sleep_level
        self.llm = vllm.LLM(
            model=model,
            tensor_parallel_size=tensor_parallel_size,
            distributed_executor_backend="external_launcher",
            enable_sleep_mode=True,
            enable_prefix_caching=enable_prefix_caching,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            dtype=dtype,
            seed=seed,
            logprobs_mode="raw_logprobs",
            **llm_kwargs,
        )
        self.sleeping = False
        self.weights_awake = True

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        max_new_tokens: Sequence[int] | None = None,
    ) -> list[Generation]:
        if self.sleeping:
            raise RuntimeError("VLLMEngine.generate called while asleep; call wake() (after the refit) first")
        budgets = per_prompt_budgets(len(prompts), params, max_new_tokens)
        stops = list(params.stop_token_ids)
        request_params = [
            self._vllm.SamplingParams(
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k if params.top_k and params.top_k > 0 else -1,
                max_tokens=budget,
                stop_token_ids=stops,
                # one seed per request: identical prompts of a GRPO group must not sample alike
                seed=None if params.seed is None else params.seed + i,
                logprobs=0,
                detokenize=False,
                skip_special_tokens=False,
            )
            for i, budget in enumerate(budgets)
        ]
        inputs = [self._vllm.inputs.TokensPrompt(prompt_token_ids=list(p)) for p in prompts]
        outputs = self.llm.generate(inputs, sampling_params=request_params, use_tqdm=False)
        stop_set = set(stops)
        result = []
        for out in outputs:
            completion = out.outputs[0]
            ids = list(completion.token_ids)
            logprobs = [entry[tok].logprob for tok, entry in zip(ids, completion.logprobs or [])]
            if len(logprobs) != len(ids):
                raise RuntimeError(f"vLLM returned {len(logprobs)} logprobs for {len(ids)} tokens")
            finished_by_stop = completion.finish_reason == "stop"
            stop_id = ids[-1] if finished_by_stop and ids and ids[-1] in stop_set else None
            result.append(Generation(ids, logprobs, "stop" if finished_by_stop else "length", stop_id))
        return result

    def load_weights(self, stream: WeightStream) -> None:
        """Phase 1 of the wake (weights only), then every bucket into the model; ``wake()`` finishes."""
        if self.sleeping and not self.weights_awake:
            self.llm.wake_up(tags=["weights"])
            self.weights_awake = True
        for bucket in stream:
            self.llm.collective_rpc(_load_bucket, args=(list(bucket),))

    def sleep(self) -> None:
        if not self.sleeping:
            self.llm.sleep(level=self.sleep_level)
            self.sleeping, self.weights_awake = True, False

    def wake(self) -> None:
        """Phase 2: the KV cache (or everything when no refit woke the weights), then a fresh prefix cache."""
        if self.sleeping:
            self.llm.wake_up(tags=["kv_cache"] if self.weights_awake else None)
            self.sleeping, self.weights_awake = False, True
        self.llm.reset_prefix_cache()
