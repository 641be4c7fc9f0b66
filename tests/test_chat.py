"""Chat rendering (Qwen3 form with tools), tool turns and token-in/token-out trajectories."""

import json

import pytest
from data_paths import EXAMPLE  # noqa: E402
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megatron_grpo.models.tiny_tokenizer import sample_texts, train_tiny_tokenizer
from megatron_grpo.rollout.chat import (
    ChatRenderer,
    Trajectory,
    responses_input_to_messages,
    responses_tool_to_chat,
)

EXAMPLES = EXAMPLE


@pytest.fixture(scope="module")
def samples():
    return [json.loads(line) for line in EXAMPLES.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tokenizer(samples):
    return train_tiny_tokenizer(sample_texts(samples), vocab_size=1024)


@pytest.fixture(scope="module")
def renderer(tokenizer):
    return ChatRenderer(tokenizer)


def test_special_tokens_are_atomic(tokenizer):
    for token in ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<tool_call>", "</tool_call>",
                  "<tool_response>", "</tool_response>", "<think>", "</think>"]:
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids) == [token]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=60))
def test_byte_level_round_trip(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_tool_conversion_drops_strict():
    tool = {"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"},
            "strict": False}
    assert responses_tool_to_chat(tool) == {
        "type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}
    }
    with pytest.raises(ValueError, match="unsupported tool"):
        responses_tool_to_chat({"type": "web_search"})


def test_input_items_to_messages():
    items = [
        {"role": "developer", "content": "sys"},
        {"role": "user", "content": [{"type": "input_text", "text": "do "},
                                     {"type": "input_text", "text": "it"}]},
        {"type": "function_call", "name": "a", "arguments": "{}", "call_id": "1"},
        {"type": "function_call", "name": "b", "arguments": '{"x": 1}', "call_id": "2"},
        {"type": "function_call_output", "call_id": "1", "output": "r1"},
        {"type": "function_call_output", "call_id": "2", "output": "r2"},
    ]
    assert responses_input_to_messages(items) == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "do it"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "a", "arguments": "{}"}},
            {"type": "function", "function": {"name": "b", "arguments": '{"x": 1}'}},
        ]},
        {"role": "tool", "content": "r1"},
        {"role": "tool", "content": "r2"},
    ]
    with pytest.raises(ValueError, match=r"input\[0\]"):
        responses_input_to_messages([{"role": "critic", "content": "x"}])


def test_prompt_renders_like_qwen3_with_tools(tokenizer, renderer):
    params = {
        "input": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Delete Casey"}],
        "tools": [{"type": "function", "name": "f", "description": "Deletes.", "strict": False,
                   "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}}],
    }
    expected = (
        "<|im_start|>system\nBe brief.\n\n# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
        '{"type": "function", "function": {"name": "f", "description": "Deletes.", "parameters": '
        '{"type": "object", "properties": {"id": {"type": "string"}}}}}\n</tools>\n\n'
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
        "<|im_start|>user\nDelete Casey<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = renderer.prompt_ids(params)
    assert tokenizer.decode(ids) == expected
    assert ids == tokenizer.encode(expected, add_special_tokens=False)


def test_example_prompts_render_all_tools(tokenizer, renderer, samples):
    for sample in samples:
        params = sample["responses_create_params"]
        text = tokenizer.decode(renderer.prompt_ids(params))
        system, user = params["input"][0]["content"], params["input"][1]["content"]
        assert text.startswith(f"<|im_start|>system\n{system}\n\n# Tools\n")
        assert text.endswith(f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
        for tool in params["tools"]:
            line = json.dumps({"type": "function", "function": {
                "name": tool["name"], "description": tool["description"], "parameters": tool["parameters"]}})
            assert f"\n{line}\n" in text


def test_tool_turn_groups_consecutive_results(renderer):
    assert renderer.tool_turn_text(['{"output": 1}', "B"]) == (
        "\n<|im_start|>user\n<tool_response>\n{\"output\": 1}\n</tool_response>\n"
        "<tool_response>\nB\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    )
    with pytest.raises(ValueError):
        renderer.tool_turn_ids([])


def _assistant_text(content, calls):
    blocks = [f'<tool_call>\n{{"name": "{n}", "arguments": {a}}}\n</tool_call>' for n, a in calls]
    return "\n".join(([content] if content else []) + blocks)


def test_token_in_token_out_equals_full_render(tokenizer, renderer, samples):
    """Appending sampled ids and tool turns gives the ids of the whole conversation rendered at once
    (when the sampled ids are the canonical tokenization): the template's turn boundaries are kept."""
    params = samples[2]["responses_create_params"]
    crm = "customer_relationship_manager_"
    calls1 = [(crm + "search_customers", '{"assigned_to_email": "akira.sato@atlas.com"}')]
    outputs1 = ['{"output": {"customers": []}}']
    calls2 = [(crm + "update_customer", '{"customer_id": "00000095"}'),
              (crm + "update_customer", '{"customer_id": "00000080"}')]
    outputs2 = ['{"output": "Customer updated successfully."}'] * 2
    final = "Done."

    traj = Trajectory(renderer.prompt_ids(params))
    for content, calls, outputs in [("Searching.", calls1, outputs1), ("", calls2, outputs2)]:
        gen = tokenizer.encode(_assistant_text(content, calls) + "<|im_end|>", add_special_tokens=False)
        traj.append_generated(gen, [-0.5] * len(gen))
        traj.append_context(renderer.tool_turn_ids(outputs))
    gen = tokenizer.encode(final + "<|im_end|>", add_special_tokens=False)
    traj.append_generated(gen, [-0.25] * len(gen))

    messages = responses_input_to_messages(params["input"])
    for content, calls, outputs in [("Searching.", calls1, outputs1), ("", calls2, outputs2)]:
        messages.append({"role": "assistant", "content": content,
                         "tool_calls": [{"type": "function", "function": {"name": n, "arguments": a}}
                                        for n, a in calls]})
        messages += [{"role": "tool", "content": o} for o in outputs]
    messages.append({"role": "assistant", "content": final})
    tools = [responses_tool_to_chat(t) for t in params["tools"]]
    full = tokenizer.apply_chat_template(messages, tools=tools, tokenize=False)
    assert full.endswith("<|im_end|>\n")
    assert traj.token_ids == tokenizer.encode(full[: -len("\n")], add_special_tokens=False)


def test_sampled_ids_are_kept_not_retokenized(tokenizer, renderer, samples):
    prompt = renderer.prompt_ids(samples[0]["responses_create_params"])
    text = "Done here."
    canonical = tokenizer.encode(text, add_special_tokens=False)
    # the same text as single-byte tokens: a valid but non-canonical sampling
    pieces = tokenizer.backend_tokenizer.pre_tokenizer.pre_tokenize_str(text)  # byte-level characters
    byte_ids = [tokenizer.convert_tokens_to_ids(ch) for ch in "".join(piece for piece, _ in pieces)]
    assert byte_ids != canonical and tokenizer.decode(byte_ids) == text
    sampled = byte_ids + [renderer.im_end_id]
    traj = Trajectory(list(prompt))
    traj.append_generated(sampled, [-1.0] * len(sampled))
    traj.append_context(renderer.tool_turn_ids(["x"]))
    assert traj.token_ids[len(prompt): len(prompt) + len(sampled)] == sampled


def test_loss_mask_and_logprobs_exact(renderer):
    traj = Trajectory([5, 6, 7])
    traj.append_generated([10, 11], [-0.1, -0.2])
    tool = renderer.tool_turn_ids(["r"])
    traj.append_context(tool)
    traj.append_generated([12, renderer.im_end_id], [-0.3, -0.4])
    n_tool = len(tool)
    assert traj.loss_mask == [0, 0, 0, 1, 1] + [0] * n_tool + [1, 1]
    assert traj.logprobs == [0.0] * 3 + [-0.1, -0.2] + [0.0] * n_tool + [-0.3, -0.4]
    assert len(traj.token_ids) == len(traj.loss_mask) == len(traj.logprobs) == 7 + n_tool
    with pytest.raises(ValueError):
        traj.append_generated([1], [])
