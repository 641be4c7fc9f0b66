"""Stratified train/validation split by category (scikit-learn), as the reference recipe does it.

``train_test_split(samples, test_size=0.1, random_state=42, stratify=categories)`` on the rows in file
order: with the same input this reproduces the reference recipe's 1129/126 split of the 1255 Hugging Face rows.
Categories too small to stratify (fewer than 2 rows) would make scikit-learn fail; they go to train
whole, with a note, and the rest is split as usual.

Imports no torch.
"""

from __future__ import annotations

import math
import sys
from collections import Counter


def stratified_split(
    samples: list[dict], validation_fraction: float = 0.1, seed: int = 42, key: str = "category"
) -> tuple[list[dict], list[dict]]:
    """``(train, validation)``; each keeps scikit-learn's (shuffled) order. Raises ValueError on bad input."""
    from sklearn.model_selection import train_test_split

    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {validation_fraction}")
    counts = Counter(sample[key] for sample in samples)
    rare = {name for name, n in counts.items() if n < 2}
    if rare:
        print(f"note: categories with a single sample go to train only: {sorted(rare)}", file=sys.stderr)
    kept = [s for s in samples if s[key] not in rare]
    held = [s for s in samples if s[key] in rare]
    if len(kept) < 2:
        return samples[:], []
    n_val = _validation_count(len(kept), validation_fraction)
    n_classes = len(counts) - len(rare)
    if n_val < n_classes or len(kept) - n_val < n_classes:
        raise ValueError(
            f"cannot stratify {len(kept)} samples over {n_classes} categories with validation fraction "
            f"{validation_fraction}: each side needs at least one sample per category"
        )
    train, validation = train_test_split(
        kept, test_size=validation_fraction, random_state=seed, stratify=[s[key] for s in kept]
    )
    return list(train) + held, list(validation)


def _validation_count(n: int, fraction: float) -> int:
    """scikit-learn's test-set size for a float ``test_size`` (ceil)."""
    return math.ceil(fraction * n)
