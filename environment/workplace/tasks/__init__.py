"""Procedurally generated, verifiable Workplace Assistant tasks.

Templates (one module per category) draw parameters from the sandbox with a seeded RNG and compute the
ground truth by running their logic against the sandbox through the environment's own read tools.
``generate_tasks`` turns them into samples in the NeMo-Gym format (plus ``template``, ``seed`` and
``difficulty``); ``split_tasks`` makes a category-stratified train/validation split with optional
held-out templates. ``megatron-grpo generate-tasks`` (generate.py) writes them to disk.
"""

from __future__ import annotations

from environment.workplace.tasks.base import CATEGORIES, WRITE_TOOLS, Draft, Template
from environment.workplace.tasks.generate import generate_tasks, split_tasks
from environment.workplace.tasks.registry import all_templates, templates_by_name
from environment.workplace.tasks.sandbox import Sandbox

__all__ = [
    "CATEGORIES",
    "WRITE_TOOLS",
    "Draft",
    "Sandbox",
    "Template",
    "all_templates",
    "generate_tasks",
    "split_tasks",
    "templates_by_name",
]
