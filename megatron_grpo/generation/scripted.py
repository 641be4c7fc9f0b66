"""An engine that plays given token sequences: the agent-loop tests' model.

Why a real engine and not a mock: the agent loop must be tested against the same interface it uses
in training (batched ``generate`` over token-id prompts, per-prompt budgets, stop ids, finish
reasons), with episodes finishing at different turns. This engine honours all of it; only the
choice of tokens is scripted.

How episodes are recognised: the engine knows nothing of episodes, as a real one. A prompt that
extends a sequence this engine has already answered (its prompt + the tokens it produced) continues
that script with the next turn; any other prompt starts the next unused script. Turn tokens are
emitted up to the prompt's budget and cut after the first stop id, as a sampler would.
"""

from __future__ import annotations

from collections.abc import Sequence

from megatron_grpo.generation.base import Generation, SamplingParams, WeightStream, per_prompt_budgets


class ScriptedEngine:
    """``scripts[e][t]`` is the token list episode ``e`` emits on its turn ``t``.

    ``logprob`` is the value reported for every emitted token (a scripted engine has no model).
    """

    shares_policy_weights = False

    def __init__(self, scripts: Sequence[Sequence[Sequence[int]]], logprob: float = -1.0):
        self.scripts = [[list(turn) for turn in script] for script in scripts]
        self.logprob = float(logprob)
        self._known: list[tuple[list[int], int, int]] = []  # (sequence so far, script index, next turn)
        self._next_script = 0
        self.calls: list[int] = []  # batch size of each generate call
        self.awake = True
        self.weights_loaded = 0

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams,
        max_new_tokens: Sequence[int] | None = None,
    ) -> list[Generation]:
        if not self.awake:
            raise RuntimeError("ScriptedEngine.generate called while asleep; call wake() first")
        budgets = per_prompt_budgets(len(prompts), params, max_new_tokens)
        self.calls.append(len(prompts))
        stops = set(params.stop_token_ids)
        out = []
        for prompt, budget in zip(prompts, budgets):
            prompt = list(prompt)
            script, turn = self._locate(prompt)
            if turn >= len(self.scripts[script]):
                n = len(self.scripts[script])
                raise RuntimeError(f"script {script} has {n} turns; turn {turn} was asked for")
            tokens = self.scripts[script][turn][:budget]
            stop_at = next((i for i, tok in enumerate(tokens) if tok in stops), None)
            if stop_at is not None:
                tokens = tokens[: stop_at + 1]
            stop_id = tokens[-1] if stop_at is not None else None
            self._known.append((prompt + tokens, script, turn + 1))
            out.append(
                Generation(
                    token_ids=tokens,
                    logprobs=[self.logprob] * len(tokens),
                    finish_reason="stop" if stop_id is not None else "length",
                    stop_token_id=stop_id,
                )
            )
        return out

    def _locate(self, prompt: list[int]) -> tuple[int, int]:
        best = None
        for seq, script, turn in self._known:
            if len(seq) <= len(prompt) and prompt[: len(seq)] == seq and (best is None or len(seq) > best[0]):
                best = (len(seq), script, turn)
        if best is not None:
            return best[1], best[2]
        if self._next_script >= len(self.scripts):
            raise RuntimeError(f"a new prompt arrived but all {len(self.scripts)} scripts are in use")
        self._next_script += 1
        return self._next_script - 1, 0

    def load_weights(self, stream: WeightStream) -> None:
        for bucket in stream:
            self.weights_loaded += len(bucket)

    def sleep(self) -> None:
        self.awake = False

    def wake(self) -> None:
        self.awake = True
