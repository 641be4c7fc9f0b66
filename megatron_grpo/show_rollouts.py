"""`megatron-grpo show-rollouts`: print a run's rollout traces readably in a terminal.

    megatron-grpo show-rollouts RUN_DIR [--step N] [--failed] [--phase train|validation] [--limit K] [--prompt]

``RUN_DIR`` is a run folder (``results/<exp>``, its ``logs`` or ``logs/rollouts``), or one trace
file (``step_N.jsonl``, the output of ``collect-rollouts``). Without ``--step`` the latest step is
shown. Per episode: task, reward, stop reason, turns and tokens, the request, then each assistant
turn with the calls as parsed and the tool outputs; ``--prompt`` adds the rendered prompt (written
once per group: members of a group show their group's).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from megatron_grpo.rollout.traces import ROLLOUTS_DIR, read_records

_STEP_FILE = re.compile(r"^step_(\d+)\.jsonl$")
MAX_OUTPUT_CHARS = 600


def trace_files(root: str | Path) -> dict[int, Path]:
    """step -> trace file under a run folder (``<run>/logs/rollouts``, ``<logs>/rollouts`` or the folder itself)."""
    root = Path(root)
    for folder in (root / "logs" / ROLLOUTS_DIR, root / ROLLOUTS_DIR, root):
        if folder.is_dir():
            found = {int(m.group(1)): p for p in folder.iterdir() if (m := _STEP_FILE.match(p.name))}
            if found:
                return dict(sorted(found.items()))
    return {}


def select(records: list[dict], *, failed: bool = False, phase: str | None = None) -> list[dict]:
    """The records to show, each with its group's prompt filled in (``prompt`` key)."""
    prompts: dict[tuple, str] = {}
    for r in records:
        for m in r.get("messages", []):
            if m.get("role") == "prompt":
                prompts[(r.get("step"), r.get("phase"), r.get("group"))] = m["content"]
    out = []
    for r in records:
        if phase is not None and r.get("phase") != phase:
            continue
        if failed and r.get("reward", 0.0) >= 1.0:
            continue
        out.append({**r, "prompt": prompts.get((r.get("step"), r.get("phase"), r.get("group")))})
    return out


def _short(text: str, limit: int = MAX_OUTPUT_CHARS) -> str:
    return text if len(text) <= limit else text[:limit] + f" ... [{len(text) - limit} more chars]"


def _arguments(args: Any) -> str:
    try:
        return json.dumps(json.loads(args), ensure_ascii=False) if isinstance(args, str) else json.dumps(args)
    except (json.JSONDecodeError, TypeError):
        return str(args)


def render_episode(r: dict, *, show_prompt: bool = False) -> Any:
    """A rich renderable for one record."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.text import Text

    reward = float(r.get("reward", 0.0))
    color = "green" if reward >= 1.0 else "red"
    title = Text.assemble(
        (f"reward {reward:g}", f"bold {color}"),
        f"  {r.get('phase', '?')} step {r.get('step', '?')} group {r.get('group', '?')} sample {r.get('sample', '?')}",
        f"  task {r.get('task_id')} ({r.get('template') or r.get('category') or '?'})",
    )
    lines: list[Any] = [
        Text.assemble(("stop ", "dim"), str(r.get("stop_reason")), ("  turns ", "dim"), str(r.get("num_turns")),
                      ("  tokens ", "dim"),
                      f"{r.get('prompt_tokens')} prompt + {r.get('generated_tokens')} generated = "
                      f"{r.get('total_tokens')}"),
        Text.assemble(("request: ", "bold"), r.get("request", "")),
    ]
    if show_prompt and r.get("prompt"):
        lines.append(Panel(Text(r["prompt"]), title="prompt", border_style="dim"))
    for m in r.get("messages", []):
        role = m.get("role")
        if role == "assistant":
            lines.append(Text.assemble(("assistant", "bold cyan"), (f" ({m.get('tokens')} tokens)", "dim")))
            calls = m.get("tool_calls") or []
            text = m.get("content", "")
            if calls:  # the text outside the <tool_call> blocks
                from megatron_grpo.rollout.hermes import parse_tool_calls

                text = parse_tool_calls(text).content
            if text.strip() or not calls:
                lines.append(Text("  " + _short(text) if text.strip() else "  (empty)", style="cyan"))
            for c in calls:
                if c.get("error"):
                    lines.append(Text(f"  malformed call: {_short(str(c.get('arguments')))}  ({c['error']})",
                                      style="yellow"))
                else:
                    lines.append(Text(f"  call {c.get('name')}({_arguments(c.get('arguments'))})", style="cyan"))
        elif role == "tool":
            lines.append(Text(f"  -> {m.get('name')}: {_short(str(m.get('content', '')))}", style="magenta"))
    gt = r.get("ground_truth") or []
    expected = "; ".join(f"{c.get('name')}({_arguments(c.get('arguments'))})" for c in gt) or "(no calls)"
    lines.append(Text.assemble(("expected: ", "dim"), Text(expected, style="dim")))
    return Panel(Group(*lines), title=title, title_align="left", border_style=color)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="megatron-grpo show-rollouts", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run folder, its logs folder, or one trace file (.jsonl)")
    parser.add_argument("--step", type=int, default=None, help="the step to show (default: the latest)")
    parser.add_argument("--failed", action="store_true", help="only episodes with reward < 1")
    parser.add_argument("--phase", choices=("train", "validation"), default=None, help="only this phase")
    parser.add_argument("--limit", type=int, default=None, help="show at most this many episodes")
    parser.add_argument("--prompt", action="store_true", help="also print the rendered prompt")
    args = parser.parse_args(argv)

    from rich.console import Console

    source = Path(args.run_dir)
    if source.is_file():
        path = source
    else:
        files = trace_files(source)
        if not files:
            print(f"megatron-grpo show-rollouts: no rollouts/step_N.jsonl under {source} (traces are written by "
                  f"training runs with logger.rollout_groups_per_step != 0)", file=sys.stderr)
            return 2
        step = max(files) if args.step is None else args.step
        if step not in files:
            print(f"megatron-grpo show-rollouts: no traces for step {step} under {source}; steps with traces: "
                  f"{', '.join(map(str, files))}", file=sys.stderr)
            return 2
        path = files[step]
    try:
        records = read_records(path)
    except ValueError as exc:
        print(f"megatron-grpo show-rollouts: {exc}", file=sys.stderr)
        return 2
    if args.step is not None and source.is_file():
        records = [r for r in records if r.get("step") == args.step]
    shown = select(records, failed=args.failed, phase=args.phase)
    console = Console(highlight=False)
    total = len(shown)
    for r in shown[: args.limit]:
        console.print(render_episode(r, show_prompt=args.prompt))
    solved = sum(r.get("reward", 0.0) >= 1.0 for r in records)
    console.print(f"{path}: {len(records)} episodes, {solved} with reward 1; shown {min(total, args.limit or total)}"
                  f"{' (failed only)' if args.failed else ''}", markup=False)
    return 0
