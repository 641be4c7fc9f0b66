"""Which prompts each GRPO step trains on, with a resumable position.

Why: resume must continue at the exact step with the exact next prompts. The order of an epoch is a
seeded permutation (``seed + epoch``), so the state is two integers: ``epoch`` and ``position``.
"""

from __future__ import annotations

import random
from typing import Any


class PromptSampler:
    """Yields ``prompts_per_step`` samples per call; reshuffles at each epoch boundary.

    Every step has a full batch: the last step of an epoch takes the epoch's remaining samples and
    tops up from the start of the next epoch's order, so an epoch is ceil(N / prompts_per_step)
    steps as the reference recipe counts it (ceil(1129 / 32) = 36) and no sample is skipped.
    ``len(samples) < prompts_per_step`` is an error naming both numbers.
    """

    def __init__(self, samples: list[dict], prompts_per_step: int, *, seed: int, shuffle: bool = True):
        if prompts_per_step < 1:
            raise ValueError(f"grpo.num_prompts_per_step must be >= 1, got {prompts_per_step}")
        if len(samples) < prompts_per_step:
            raise ValueError(
                f"the training set has {len(samples)} samples but grpo.num_prompts_per_step is "
                f"{prompts_per_step}: lower grpo.num_prompts_per_step or add data"
            )
        self.samples = samples
        self.prompts_per_step = prompts_per_step
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> list[int]:
        order = list(range(len(self.samples)))
        if self.shuffle:
            random.Random(self.seed + epoch).shuffle(order)
        return order

    def next_batch(self) -> list[dict]:
        idx = self._order[self.position : self.position + self.prompts_per_step]
        self.position += len(idx)
        if self.position >= len(self._order):
            self.epoch += 1
            self._order = self._epoch_order(self.epoch)
            self.position = self.prompts_per_step - len(idx)
            idx = idx + self._order[: self.position]
        return [self.samples[i] for i in idx]

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed,
                "num_samples": len(self.samples)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("num_samples") not in (None, len(self.samples)):
            raise ValueError(
                f"checkpoint data position is for {state['num_samples']} training samples but the "
                f"training set now has {len(self.samples)}; resume with the same data.train_path"
            )
        self.epoch = int(state.get("epoch", 0))
        self.position = int(state.get("position", 0))
        self._order = self._epoch_order(self.epoch)
