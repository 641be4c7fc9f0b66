"""`megatron-grpo` entry point: one subcommand per job, each implemented by a module's ``main(argv)``.

Subcommand modules are imported only when chosen, so `megatron-grpo download` never imports torch.
A ``UserError`` (a bad setting, a missing file or folder) ends the command with its one-line message
and exit code 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("megatron_grpo.trainer", "run GRPO training from a YAML config plus dotted overrides"),
    "evaluate": ("megatron_grpo.evaluate", "validation accuracy of a checkpoint or HF model"),
    "collect-rollouts": ("megatron_grpo.collect_rollouts", "a model's trajectories and accuracy on a task file"),
    "show-rollouts": ("megatron_grpo.show_rollouts", "print a run's rollout traces (what the agent did)"),
    "download": ("megatron_grpo.data.download", "fetch tasks + sandbox, split train/validation"),
    "prepare-data": ("megatron_grpo.data.prepare", "validate samples, write metrics"),
    "generate-tasks": ("environment.workplace.tasks.generate", "procedurally generated verifiable tasks"),
    "convert-to-hf": ("megatron_grpo.convert", "Megatron checkpoint -> Hugging Face folder"),
    "plot": ("megatron_grpo.plot", "reward/accuracy curves of a run to PNG"),
    "preflight": ("megatron_grpo.preflight", "check a config against a cluster shape before launch"),
    "demo": ("megatron_grpo.demo", "the embedded CPU demo: tiny Qwen3, real pipeline, minutes"),
}


def usage() -> str:
    lines = ["usage: megatron-grpo <command> [args]", "", "commands:"]
    lines += [f"  {name:<16}{help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"megatron-grpo: unknown command '{name}'\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    from megatron_grpo.config import UserError

    try:
        return int(module.main(rest) or 0)
    except UserError as exc:  # a setting, file or folder the user fixes: one line, no traceback
        print(f"megatron-grpo {name}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
