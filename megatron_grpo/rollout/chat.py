"""Chat rendering for rollouts, token-in/token-out.

Why: other trainers lose on-policy correctness by decoding a multi-turn trajectory and re-tokenizing
it (TRL #5224, veRL #6921, NeMo-Gym #1416): the ids trained on differ from the ids sampled. Here a
trajectory is built only by appending ids:

    prompt ids      = apply_chat_template(system + user, tools, add_generation_prompt=True)   mask 0
    turn 1 ids      = exactly what the engine sampled, ending in <|im_end|>                     mask 1
    tool turn ids   = tokenize("\\n<|im_start|>user\\n<tool_response>\\n...<|im_end|>\\n"
                               "<|im_start|>assistant\\n")                                       mask 0
    turn 2 ids      = sampled ...                                                                mask 1

The tool-turn text is cut out of the tokenizer's own chat template (render user -> assistant ->
tool messages -> generation prompt and keep what follows the assistant's ``<|im_end|>``), so it is
what the template would produce and needs no hand-written copy of the template. Earlier text is
never re-tokenized. When the sampled ids are the canonical tokenization of the assistant text, the
concatenation equals the tokenization of the fully rendered conversation (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def responses_tool_to_chat(tool: dict[str, Any]) -> dict[str, Any]:
    """Responses-API function tool -> chat-completions form that Qwen3's template renders.

    ``{"type": "function", "name", "description", "parameters", "strict"}`` ->
    ``{"type": "function", "function": {"name", "description", "parameters"}}``. ``strict`` is a
    request option of the Responses API, not part of the signature, and is dropped.
    """
    if tool.get("type") != "function" or "name" not in tool:
        if tool.get("type") == "function" and isinstance(tool.get("function"), dict):
            return tool  # already in chat form
        raise ValueError(f"unsupported tool (need type=function with a name): {str(tool)[:200]}")
    function = {"name": tool["name"]}
    if tool.get("description") is not None:
        function["description"] = tool["description"]
    function["parameters"] = tool.get("parameters") or {"type": "object", "properties": {}}
    return {"type": "function", "function": function}


def _content_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "input_text"|"output_text"|"text", "text": ...}]
        parts = []
        for part in content:
            if not isinstance(part, dict) or "text" not in part:
                raise ValueError(f"{where}: content part without text: {str(part)[:200]}")
            parts.append(part["text"])
        return "".join(parts)
    kind = type(content).__name__
    raise ValueError(f"{where}: content must be a string or a list of text parts, not {kind}")


def responses_input_to_messages(items: str | Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses-API ``input`` -> chat messages.

    Messages keep their role (``developer`` becomes ``system``); ``function_call`` items become
    ``tool_calls`` of an assistant message (consecutive calls join the preceding assistant message);
    ``function_call_output`` items become ``tool`` messages.
    """
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = {"developer": "system"}.get(item.get("role"), item.get("role"))
            if role not in ("system", "user", "assistant"):
                raise ValueError(f"{where}: unsupported role {item.get('role')!r}")
            messages.append({"role": role, "content": _content_text(item.get("content", ""), where)})
        elif kind == "function_call":
            call = {"type": "function", "function": {"name": item["name"], "arguments": item["arguments"]}}
            if messages and messages[-1]["role"] == "assistant":
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "content": _content_text(item["output"], where)})
        else:
            raise ValueError(f"{where}: unsupported input item type {kind!r}")
    return messages


class ChatRenderer:
    """Renders prompts and tool turns to ids with one tokenizer's chat template.

    ``tokenizer`` is a ``transformers`` tokenizer with a Qwen3-style chat template.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.im_end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.eos_token_ids = sorted({self.im_end_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")})

    def prompt_text(self, responses_create_params: dict[str, Any]) -> str:
        """The rendered prompt as text (what ``prompt_ids`` tokenizes)."""
        messages = responses_input_to_messages(responses_create_params["input"])
        tools = [responses_tool_to_chat(t) for t in responses_create_params.get("tools") or []]
        return self.tokenizer.apply_chat_template(
            messages, tools=tools or None, add_generation_prompt=True, tokenize=False
        )

    def prompt_ids(self, responses_create_params: dict[str, Any]) -> list[int]:
        """A sample's ``responses_create_params`` (``input`` and ``tools``) -> prompt ids ending in the
        assistant generation prompt."""
        messages = responses_input_to_messages(responses_create_params["input"])
        tools = [responses_tool_to_chat(t) for t in responses_create_params.get("tools") or []]
        ids = self.tokenizer.apply_chat_template(
            messages, tools=tools or None, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        return list(ids)

    def tool_turn_text(self, outputs: Sequence[str]) -> str:
        """The text that follows an assistant's ``<|im_end|>`` when tool results come back, up to and
        including the next ``<|im_start|>assistant\\n``."""
        if not outputs:
            raise ValueError("a tool turn needs at least one tool output")
        return self._render_tool_turn(list(outputs))

    def tool_turn_ids(self, outputs: Sequence[str]) -> list[int]:
        return self.tokenizer.encode(self.tool_turn_text(outputs), add_special_tokens=False)

    # -- the frame of a tool turn, cut out of the template once
    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=False
        )

    def _render_tool_turn(self, outputs: list[str]) -> str:
        # Render user -> assistant(marker) -> tools -> generation prompt and cut after the marker's
        # <|im_end|>. Rendering the assistant as a non-final turn matters: templates that treat the
        # last assistant message specially (Qwen3's empty <think> block) must not leak into the frame.
        marker = "<<assistant turn 7f3a>>"
        messages = [{"role": "user", "content": "u"}, {"role": "assistant", "content": marker}]
        messages += [{"role": "tool", "content": o} for o in outputs]
        full = self._render(messages, add_generation_prompt=True)
        anchor = marker + "<|im_end|>"
        at = full.find(anchor)
        if at < 0:
            raise ValueError("the chat template does not end an assistant turn with <|im_end|>")
        return full[at + len(anchor) :]

@dataclass
class Trajectory:
    """One episode's ids as the engine saw and produced them.

    ``token_ids[S]``, ``loss_mask[S]`` (1 on sampled ids, 0 on prompt and tool turns) and
    ``logprobs[S]`` (the engine's logprob of each sampled id, 0.0 where the mask is 0) stay aligned.
    """

    token_ids: list[int]
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.loss_mask:
            self.loss_mask = [0] * len(self.token_ids)
            self.logprobs = [0.0] * len(self.token_ids)

    def __len__(self) -> int:
        return len(self.token_ids)

    def append_generated(self, ids: Sequence[int], logprobs: Sequence[float]) -> None:
        if len(ids) != len(logprobs):
            raise ValueError(f"{len(ids)} generated ids but {len(logprobs)} logprobs")
        self.token_ids.extend(ids)
        self.loss_mask.extend([1] * len(ids))
        self.logprobs.extend(float(x) for x in logprobs)

    def append_context(self, ids: Sequence[int]) -> None:
        self.token_ids.extend(ids)
        self.loss_mask.extend([0] * len(ids))
        self.logprobs.extend([0.0] * len(ids))
