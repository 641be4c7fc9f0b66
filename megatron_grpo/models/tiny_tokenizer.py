"""A small Qwen3-style tokenizer trained in-process, for CPU tests and the tiny demo model.

Why: the real Qwen3 tokenizer cannot be downloaded here, but every rollout test needs a tokenizer
that behaves like it where it matters: byte-level BPE (any text round-trips exactly), Qwen3's
special tokens as single atomic ids, and a chat template that renders tools, tool calls and tool
responses the way Qwen3-Instruct-2507's does.

The chat template (``QWEN3_CHAT_TEMPLATE``) was written for this project from the documented
Qwen3 rendering; it produces, for ``tools`` given and a system message:

    <|im_start|>system
    {system}

    # Tools

    You may call one or more functions to assist with the user query.

    You are provided with function signatures within <tools></tools> XML tags:
    <tools>
    {tool 1 as JSON}
    {tool 2 as JSON}
    </tools>

    For each function call, return a json object with function name and arguments within
    <tool_call></tool_call> XML tags:                      (one line in the real text)
    <tool_call>
    {"name": <function-name>, "arguments": <args-json-object>}
    </tool_call><|im_end|>
    <|im_start|>user
    {user}<|im_end|>
    <|im_start|>assistant
    {content}
    <tool_call>
    {"name": "f", "arguments": {...}}
    </tool_call><|im_end|>
    <|im_start|>user
    <tool_response>
    {result 1}
    </tool_response>
    <tool_response>
    {result 2}
    </tool_response><|im_end|>
    <|im_start|>assistant

Consecutive ``tool`` messages share one user turn; an assistant's tool calls follow its content
(separated by a newline when the content is not empty), each call on its own ``<tool_call>`` block.
Tool ``arguments`` given as a string are inserted verbatim, a mapping is rendered with ``tojson``.
Assistant ``reasoning_content`` is not rendered (Instruct-2507 is a non-thinking model).
"""

from __future__ import annotations

from collections.abc import Iterable

# Qwen3's special tokens. The first three are "special" (skipped by decode(skip_special_tokens=True));
# the tool/think markers are plain added tokens in Qwen3 (atomic, but kept when decoding).
CONTROL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
MARKER_TOKENS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>")

QWEN3_CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    "{{- '# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n"
    "You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}"
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    "{{- '\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\\n<tool_call>\\n"
    "{\"name\": <function-name>, \"arguments\": <args-json-object>}\\n</tool_call><|im_end|>\\n' }}"
    "{%- elif messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.content is string %}{%- set content = message.content %}"
    "{%- else %}{%- set content = '' %}{%- endif %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' + content }}"
    "{%- if message.tool_calls %}"
    "{%- for tool_call in message.tool_calls %}"
    "{%- if (loop.first and content) or (not loop.first) %}{{- '\\n' }}{%- endif %}"
    "{%- if tool_call.function %}{%- set tool_call = tool_call.function %}{%- endif %}"
    "{{- '<tool_call>\\n{\"name\": \"' + tool_call.name + '\", \"arguments\": ' }}"
    "{%- if tool_call.arguments is string %}{{- tool_call.arguments }}"
    "{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def sample_texts(samples: Iterable[dict]) -> list[str]:
    """The texts of Workplace-style samples (messages, tool schemas, ground-truth calls): a training
    corpus that makes the tiny tokenizer compress the text it will see."""
    import json

    texts = []
    for sample in samples:
        params = sample.get("responses_create_params", {})
        items = params.get("input", [])
        for item in [items] if isinstance(items, str) else items:
            content = item if isinstance(item, str) else item.get("content", "")
            texts.append(content if isinstance(content, str) else json.dumps(content))
        texts.extend(json.dumps(tool) for tool in params.get("tools", []))
        for call in sample.get("ground_truth", []):  # as the chat template renders a call
            args = call.get("arguments", "{}")
            try:
                args = json.loads(args) if isinstance(args, str) else args
            except json.JSONDecodeError:
                pass
            texts.append(json.dumps({"name": call.get("name"), "arguments": args}))
    return texts


def train_tiny_tokenizer(
    texts: Iterable[str], vocab_size: int = 1024, *, merge_across_words: bool = False, min_frequency: int = 2
):
    """Train a byte-level BPE on ``texts`` and wrap it as a Qwen3-like fast tokenizer.

    ``merge_across_words=True`` drops the word-splitting regex, so merges may span spaces and
    punctuation: text that repeats across samples (the tool schemas, boilerplate) becomes a few long
    tokens. The CPU demo uses it to cut its prompts several-fold; tests use the default.
    ``min_frequency``: a merge must occur this often (high values keep rare phrases, e.g. a name
    inside a sentence, from fusing into one-off tokens).

    Returns a ``transformers.PreTrainedTokenizerFast`` with eos ``<|im_end|>``, pad ``<|endoftext|>``,
    the nine Qwen3 special/marker tokens as atomic ids (after the BPE vocabulary, as in Qwen3) and
    ``QWEN3_CHAT_TEMPLATE``. Deterministic for the same texts; ``decode(encode(s)) == s`` for any s.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    n_special = len(CONTROL_TOKENS) + len(MARKER_TOKENS)
    if vocab_size < 256 + n_special:
        raise ValueError(f"vocab_size={vocab_size} is below 256 bytes + {n_special} special tokens")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=not merge_across_words)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - n_special,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in CONTROL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in MARKER_TOKENS])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    hf.chat_template = QWEN3_CHAT_TEMPLATE
    return hf
