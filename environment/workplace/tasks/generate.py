"""Generate tasks from the templates, split them, and write them: `megatron-grpo generate-tasks`.

    megatron-grpo generate-tasks --n 10000 --seed 0 --out data/generated [--holdout-templates 6]
        [--validation-fraction 0.1] [--max-empty-share 0.177] [--data-dir PATH]

writes OUT/train.jsonl, OUT/validation.jsonl (stratified by category; held-out templates only in
validation) and OUT/generation_report.json. The same seed and data give byte-identical jsonl files.

How a run draws: a master ``random.Random(seed)`` picks a template uniformly from the pool and a
per-task seed; the task is ``template.draw(random.Random(task_seed), sandbox)`` rendered with one of
its phrasings, so ``(template, seed)`` in a sample reproduces it. A draw is dropped when the template
rejects it, when its query text was already generated (dedup), or when it has an empty ground truth
and the empty-share cap is reached. A template that fails ``EXHAUSTED_AFTER`` draws in a row has no
new queries left and leaves the pool; generation ends early (and says so) if the pool empties.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from environment.workplace.prompt import SYSTEM_PROMPT
from environment.workplace.tasks.base import (
    CATEGORIES,
    CATEGORY_PREFIX,
    ENVIRONMENT_NAME,
    MAX_WRITES,
    Template,
)
from environment.workplace.tasks.registry import templates_by_name
from environment.workplace.tasks.sandbox import Sandbox

WORKBENCH_EMPTY_SHARE = 0.177  # 122 of WorkBench's 690 tasks have an empty ground truth
EXHAUSTED_AFTER = 200


def _tool_schemas() -> list[dict]:
    from environment.workplace import load_tool_schemas

    return load_tool_schemas()


def render(template: Template, task_seed: int, sandbox: Sandbox) -> tuple[str, list[tuple[str, dict]]] | None:
    """(query, ground-truth calls) for one draw of ``template``, or None when the template rejects it."""
    rng = random.Random(task_seed)
    draft = template.draw(rng, sandbox)
    if draft is None or len(draft.calls) > MAX_WRITES:
        return None
    stray = [name for name, _ in draft.calls if name not in template.writes]
    if stray:
        raise RuntimeError(f"template {template.name} emitted {stray}, not declared in its writes {template.writes}")
    phrasing = template.phrasings[rng.randrange(len(template.phrasings))]
    try:
        query = phrasing.format(**draft.params)
    except KeyError as missing:
        raise RuntimeError(f"template {template.name}: phrasing {phrasing!r} needs parameter {missing}") from None
    return query, draft.calls


def make_sample(
    index: int, template: Template, task_seed: int, query: str, calls: list[tuple[str, dict]], tools: list[dict]
) -> dict:
    """One task in the NeMo-Gym sample format (arguments as JSON strings) plus template/seed/difficulty."""
    return {
        "id": index,
        "responses_create_params": {
            "input": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": query}],
            "tools": tools,
            "parallel_tool_calls": False,
            "temperature": 1.0,
        },
        "ground_truth": [{"name": name, "arguments": json.dumps(args)} for name, args in calls],
        "category": CATEGORY_PREFIX + template.category,
        "environment_name": ENVIRONMENT_NAME,
        "template": template.name,
        "seed": task_seed,
        "difficulty": {"num_calls": len(calls), "domains": list(template.domains)},
    }


def generate_with_report(
    n: int,
    seed: int,
    data_dir: str | None = None,
    templates: Sequence[str] | None = None,
    max_empty_share: float = WORKBENCH_EMPTY_SHARE,
    env: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[dict], dict]:
    """``generate_tasks`` plus a report dict (counts, rejections, exhausted templates, empty share)."""
    if n < 0:
        raise ValueError(f"generate_tasks: n must be >= 0, got {n}")
    if not 0.0 <= max_empty_share <= 1.0:
        raise ValueError(f"generate_tasks: max_empty_share must be in [0, 1], got {max_empty_share}")
    started = time.perf_counter()
    sandbox = Sandbox.from_env(env) if env is not None else Sandbox.from_data_dir(data_dir)
    tools = _tool_schemas()
    pool = list(templates_by_name(list(templates) if templates is not None else None))
    n_templates = len(pool)
    rng = random.Random(seed)
    max_empty = math.floor(max_empty_share * n + 1e-9)
    seen: set[str] = set()
    tasks: list[dict] = []
    failures: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    exhausted: list[str] = []
    n_empty = 0
    while len(tasks) < n and pool:
        template = pool[rng.randrange(len(pool))]
        task_seed = rng.getrandbits(48)
        drawn = render(template, task_seed, sandbox)
        if drawn is None:
            reason = "template_rejected"
        elif drawn[0] in seen:
            reason = "duplicate_query"
        elif not drawn[1] and n_empty >= max_empty:
            reason = "empty_cap"
        else:
            query, calls = drawn
            seen.add(query)
            n_empty += not calls
            tasks.append(make_sample(len(tasks), template, task_seed, query, calls, tools))
            failures[template.name] = 0
            if progress is not None:
                progress(len(tasks), n)
            continue
        rejected[reason] += 1
        failures[template.name] += 1
        if failures[template.name] >= EXHAUSTED_AFTER:
            pool.remove(template)
            exhausted.append(template.name)
    report = {
        "requested": n,
        "generated": len(tasks),
        "seed": seed,
        "max_empty_share": max_empty_share,
        "empty_ground_truth": n_empty,
        "empty_share": round(n_empty / len(tasks), 4) if tasks else 0.0,
        "templates": n_templates,
        "rejected": dict(sorted(rejected.items())),
        "exhausted_templates": exhausted,
        "per_template": dict(sorted(Counter(t["template"] for t in tasks).items())),
        "per_category": _count(tasks, "category"),
        "num_calls": _histogram(t["difficulty"]["num_calls"] for t in tasks),
        "num_domains": _histogram(len(t["difficulty"]["domains"]) for t in tasks),
        "elapsed_s": round(time.perf_counter() - started, 3),
    }
    return tasks, report


def generate_tasks(
    n: int,
    seed: int,
    data_dir: str | None = None,
    templates: Sequence[str] | None = None,
    max_empty_share: float = WORKBENCH_EMPTY_SHARE,
    env: Any = None,
) -> list[dict]:
    """``n`` deduplicated tasks (fewer if the templates run out of distinct queries), deterministic in ``seed``.

    ``data_dir``: the sandbox CSV folder (None: the environment's default); ``templates``: template names to
    use (None: all); ``env``: read through this environment's ``call`` (JSON text) instead of a fresh
    ``Episode`` on ``data_dir`` (the same tools; the episode skips the JSON round trip).
    Every sample's ``tools`` is the same list object (the 27 schemas); copy before mutating it.
    """
    return generate_with_report(n, seed, data_dir, templates, max_empty_share, env)[0]


def _histogram(values: Iterable[int]) -> dict[str, int]:
    return {str(k): v for k, v in sorted(Counter(values).items())}


def _count(tasks: list[dict], key: str) -> dict[str, int]:
    return dict(sorted(Counter(t[key] for t in tasks).items()))


def split_tasks(
    tasks: list[dict], validation_fraction: float = 0.1, holdout_templates: int = 0, seed: int = 0
) -> tuple[list[dict], list[dict], list[str]]:
    """(train, validation, held-out template names).

    Every task of the ``holdout_templates`` held-out templates (chosen round-robin across categories, so
    no category loses all its templates first) goes to validation; of the rest, each category contributes
    ``round(validation_fraction * count)`` tasks to validation. Both splits keep the input order.
    """
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"split_tasks: validation_fraction must be in [0, 1), got {validation_fraction}")
    rng = random.Random(seed)
    category_of = {t["template"]: t["category"] for t in tasks}
    by_category: dict[str, list[str]] = {}
    for name in sorted(category_of):
        by_category.setdefault(category_of[name], []).append(name)
    if holdout_templates < 0 or holdout_templates > len(category_of) - len(by_category):
        raise ValueError(
            f"split_tasks: --holdout-templates {holdout_templates} must leave every category at least one "
            f"training template ({len(category_of)} templates in {len(by_category)} categories)"
        )
    for names in by_category.values():
        rng.shuffle(names)
    held: list[str] = []
    order = sorted(by_category, key=_category_rank)
    while len(held) < holdout_templates:
        for category in order:
            candidates = [n for n in by_category[category] if n not in held]
            if len(held) < holdout_templates and len(candidates) > 1:
                held.append(candidates[0])
    held_set = set(held)
    in_validation = [t["template"] in held_set for t in tasks]
    rest: dict[str, list[int]] = {}
    for i, t in enumerate(tasks):
        if not in_validation[i]:
            rest.setdefault(t["category"], []).append(i)
    for category in sorted(rest):
        positions = rest[category]
        rng.shuffle(positions)
        for i in positions[: round(validation_fraction * len(positions))]:
            in_validation[i] = True
    train = [t for t, v in zip(tasks, in_validation) if not v]
    validation = [t for t, v in zip(tasks, in_validation) if v]
    return train, validation, sorted(held)


def _category_rank(category: str) -> int:
    short = category.removeprefix(CATEGORY_PREFIX)
    return CATEGORIES.index(short) if short in CATEGORIES else len(CATEGORIES)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="megatron-grpo generate-tasks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, help="number of tasks to generate (train + validation)")
    parser.add_argument("--seed", type=int, default=0, help="RNG seed; the same seed gives byte-identical files")
    parser.add_argument("--out", type=Path, help="output folder")
    parser.add_argument(
        "--holdout-templates",
        type=int,
        default=0,
        help="templates whose tasks only appear in validation (generalization check)",
    )
    parser.add_argument(
        "--validation-fraction",
        type=float,
        default=0.1,
        help="share of the other templates' tasks put in validation, per category",
    )
    parser.add_argument(
        "--max-empty-share",
        type=float,
        default=WORKBENCH_EMPTY_SHARE,
        help="cap on the share of tasks whose correct answer is to change nothing",
    )
    parser.add_argument("--data-dir", default=None, help="sandbox CSV folder (default: the environment's)")
    parser.add_argument("--templates", default=None, help="comma-separated template names to use (default: all)")
    parser.add_argument("--list-templates", action="store_true", help="print the template names and exit")
    args = parser.parse_args(argv)
    if args.list_templates:
        for t in templates_by_name():
            kind = "conditional" if t.conditional else "direct"
            print(f"{t.name:60s} {kind:12s} {','.join(t.writes)}")
        return 0
    if args.n is None or args.out is None:
        parser.error("--n and --out are required")
    if args.n <= 0:
        parser.error(f"--n must be positive, got {args.n}")
    names = [n.strip() for n in args.templates.split(",") if n.strip()] if args.templates else None

    tty = sys.stderr.isatty()
    step = 500 if tty else max(1, args.n // 10)

    def show(done: int, total: int) -> None:
        if done == total or done % step == 0:
            end = "" if tty and done < total else "\n"
            print(f"\rgenerate-tasks: {done}/{total} tasks", end=end, file=sys.stderr, flush=True)

    try:
        tasks, report = generate_with_report(
            args.n, args.seed, args.data_dir, names, args.max_empty_share, progress=show
        )
        train, validation, held = split_tasks(tasks, args.validation_fraction, args.holdout_templates, args.seed)
    except (ValueError, FileNotFoundError) as e:
        print(f"generate-tasks: {e}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(args.out / "train.jsonl", train)
    _write_jsonl(args.out / "validation.jsonl", validation)
    report.update(
        {
            "validation_fraction": args.validation_fraction,
            "holdout_templates": held,
            "train": {
                "tasks": len(train),
                "per_category": _count(train, "category"),
                "empty_ground_truth": sum(not t["ground_truth"] for t in train),
            },
            "validation": {
                "tasks": len(validation),
                "per_category": _count(validation, "category"),
                "empty_ground_truth": sum(not t["ground_truth"] for t in validation),
            },
            "data_dir": args.data_dir,
        }
    )
    (args.out / "generation_report.json").write_text(json.dumps(report, indent=1) + "\n")
    short = "" if len(tasks) == args.n else f" (asked for {args.n}; templates ran out of distinct queries)"
    print(
        f"generate-tasks: {len(tasks)} tasks{short}: {len(train)} train, {len(validation)} validation, "
        f"{report['empty_ground_truth']} with empty ground truth ({report['empty_share']:.1%}, cap "
        f"{args.max_empty_share:.1%}), held out: {held or 'none'} -> {args.out}",
        file=sys.stderr,
    )
    return 0
