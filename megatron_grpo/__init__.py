"""megatron-grpo: GRPO for tool-using agents on megatron-core, with the Workplace Assistant environment."""

__version__ = "0.1.0"
