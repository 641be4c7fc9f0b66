"""The agent loop with the scripted engine and the real Workplace environment: stop reasons, lock-step
batching, exact ids/masks/logprobs, invalid calls, and the reward of a correct trajectory."""

import json

import pytest
from data_paths import EXAMPLE, sandbox_dir

from environment.pool import LocalEnvPool
from environment.workplace import WorkplaceEnv
from megatron_grpo.generation.base import SamplingParams
from megatron_grpo.generation.scripted import ScriptedEngine
from megatron_grpo.models.tiny_tokenizer import sample_texts, train_tiny_tokenizer
from megatron_grpo.rollout.agent_loop import run_episodes
from megatron_grpo.rollout.chat import ChatRenderer

EXAMPLES = EXAMPLE
DATA_DIR = sandbox_dir()
LOGPROB = -0.75


@pytest.fixture(scope="module")
def samples():
    return [json.loads(line) for line in EXAMPLES.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def renderer(samples):
    return ChatRenderer(train_tiny_tokenizer(sample_texts(samples), vocab_size=1024))


@pytest.fixture
def env():
    return LocalEnvPool(DATA_DIR)


def call_text(calls, content=""):
    blocks = [f'<tool_call>\n{{"name": "{c["name"]}", "arguments": {c["arguments"]}}}\n</tool_call>'
              for c in calls]
    return "\n".join(([content] if content else []) + blocks)


def turn(renderer, text, end="<|im_end|>"):
    return renderer.tokenizer.encode(text + end, add_special_tokens=False)


def run(renderer, env, samples, scripts, **kwargs):
    sampling = SamplingParams(temperature=1.0, max_new_tokens=kwargs.pop("max_new_tokens", 512))
    engine = ScriptedEngine(scripts, logprob=LOGPROB)
    return engine, run_episodes(engine, env, renderer, samples, sampling, **kwargs)


def reference_outputs(calls):
    env = WorkplaceEnv(data_dir=DATA_DIR)
    return [env.call(c["name"], c["arguments"]) for c in calls]


def test_correct_trajectory_gets_reward_one_with_exact_ids_and_mask(renderer, env, samples):
    sample = samples[1]  # calendar_update_event; ground truth has one call
    gt = sample["ground_truth"]
    search = [{"name": "calendar_search_events", "arguments": '{"query": "December 1"}'}]
    turns = [turn(renderer, call_text(search, "Let me look.")), turn(renderer, call_text(gt)),
             turn(renderer, "Renamed.")]
    _, batch = run(renderer, env, [sample], [turns])
    (ep,) = batch.episodes
    assert ep.reward == 1.0 and ep.stop_reason == "no_tool_calls" and ep.num_turns == 3
    assert ep.calls == search + gt
    out1, out2 = reference_outputs(search), reference_outputs(search + gt)[1:]
    assert ep.tool_outputs == out1 + out2
    prompt = renderer.prompt_ids(sample["responses_create_params"])
    tool1, tool2 = renderer.tool_turn_ids(out1), renderer.tool_turn_ids(out2)
    assert ep.prompt_len == len(prompt)
    assert ep.token_ids == prompt + turns[0] + tool1 + turns[1] + tool2 + turns[2]
    assert ep.loss_mask == ([0] * len(prompt) + [1] * len(turns[0]) + [0] * len(tool1) + [1] * len(turns[1])
                            + [0] * len(tool2) + [1] * len(turns[2]))
    assert ep.logprobs == [LOGPROB * m for m in ep.loss_mask]
    assert set(batch.timing) >= {"generation", "env", "tokenization", "total"}


def test_wrong_and_multi_call_trajectories(renderer, env, samples):
    deletes = samples[3]["ground_truth"]  # four delete_customer calls, made in one turn
    scripts = [[turn(renderer, call_text(deletes)), turn(renderer, "Deleted.")],
               [turn(renderer, call_text(deletes[:2])), turn(renderer, "Deleted.")],
               [turn(renderer, "Nothing to do.")]]
    _, batch = run(renderer, env, [samples[3], samples[3], samples[1]], scripts)
    assert [ep.reward for ep in batch.episodes] == [1.0, 0.0, 0.0]
    assert [ep.num_turns for ep in batch.episodes] == [2, 2, 1]
    assert batch.episodes[0].calls == deletes


def test_lock_step_one_generate_call_per_turn(renderer, env, samples):
    call = [{"name": "company_directory_find_email_address", "arguments": '{"name": "raj"}'}]
    scripts = [[turn(renderer, call_text(call))] * k + [turn(renderer, "ok")] for k in (0, 1, 3, 2)]
    engine, batch = run(renderer, env, samples[:4], scripts)
    assert engine.calls == [4, 3, 2, 1]  # live episodes per turn
    assert [ep.num_turns for ep in batch.episodes] == [1, 2, 4, 3]
    assert all(ep.stop_reason == "no_tool_calls" for ep in batch.episodes)


def test_max_steps_executes_last_turns_calls(renderer, env, samples):
    call = [{"name": "company_directory_find_email_address", "arguments": '{"name": "lena"}'}]
    _, batch = run(renderer, env, [samples[0]], [[turn(renderer, call_text(call))] * 5], max_steps=3)
    (ep,) = batch.episodes
    assert ep.stop_reason == "max_steps" and ep.num_turns == 3 and ep.calls == call * 3
    assert len(ep.tool_outputs) == 3
    assert ep.token_ids[-1] == renderer.im_end_id  # no tool turn appended after the last call


def test_eos_stops_after_executing_calls(renderer, env, samples):
    gt = samples[1]["ground_truth"]
    _, batch = run(renderer, env, [samples[1]], [[turn(renderer, call_text(gt), end="<|endoftext|>")]])
    (ep,) = batch.episodes
    assert ep.stop_reason == "eos" and ep.calls == gt and ep.reward == 1.0
    assert ep.token_ids[-1] == renderer.tokenizer.convert_tokens_to_ids("<|endoftext|>")


def test_max_new_tokens_does_not_execute_calls(renderer, env, samples):
    gt = samples[1]["ground_truth"]
    script = turn(renderer, call_text(gt))
    _, batch = run(renderer, env, [samples[1]], [[script]], max_new_tokens=len(script) - 1)
    (ep,) = batch.episodes
    assert ep.stop_reason == "max_new_tokens" and ep.calls == [] and ep.reward == 0.0
    assert sum(ep.loss_mask) == len(script) - 1


def test_context_limit(renderer, env, samples):
    gt = samples[1]["ground_truth"]
    script = turn(renderer, call_text(gt))
    prompt_len = len(renderer.prompt_ids(samples[1]["responses_create_params"]))
    # cut mid-turn by the context
    _, batch = run(renderer, env, [samples[1]], [[script]], context_limit=prompt_len + 10)
    (ep,) = batch.episodes
    assert ep.stop_reason == "context_limit" and len(ep.token_ids) == prompt_len + 10 and ep.calls == []
    # the turn fits, the tool turn after it does not: calls run, nothing appended
    _, batch = run(renderer, env, [samples[1]], [[script, turn(renderer, "ok")]],
                   context_limit=prompt_len + len(script) + 3)
    (ep,) = batch.episodes
    assert ep.stop_reason == "context_limit" and ep.calls == gt and ep.reward == 1.0
    assert len(ep.token_ids) == prompt_len + len(script)
    # the prompt alone is too long: no model call
    engine, batch = run(renderer, env, [samples[1]], [[script]], context_limit=prompt_len)
    assert batch.episodes[0].stop_reason == "context_limit" and batch.episodes[0].num_turns == 0
    assert engine.calls == []


def test_malformed_call_ends_the_episode_as_plain_text_by_default(renderer, env, samples):
    """The reference: a block that is not valid JSON makes the whole turn text (the valid call next to
    it does not run either), simple_agent sees no function call and ends the episode."""
    valid = call_text([{"name": "company_directory_find_email_address", "arguments": '{"name": "lena"}'}])
    broken = '<tool_call>\n{"name": "calendar_update_event", "arguments": {"event_id": "1"\n</tool_call>'
    _, batch = run(renderer, env, [samples[1]], [[turn(renderer, valid + "\n" + broken), turn(renderer, "Sorry.")]])
    (ep,) = batch.episodes
    assert ep.num_turns == 1 and ep.stop_reason == "malformed_tool_call"
    assert ep.calls == [] and ep.tool_outputs == [] and ep.reward == 0.0
    assert ep.token_ids[-1] == renderer.im_end_id  # nothing appended after the turn


def test_invalid_call_is_reported_and_episode_continues_with_error_output(renderer, env, samples):
    broken = '<tool_call>\n{"name": "calendar_update_event", "arguments": {"event_id": "1"\n</tool_call>'
    _, batch = run(renderer, env, [samples[1]], [[turn(renderer, broken), turn(renderer, "Sorry.")]],
                   on_malformed_tool_call="error_output")
    (ep,) = batch.episodes
    assert ep.num_turns == 2 and ep.stop_reason == "no_tool_calls"
    (output,) = ep.tool_outputs
    block = broken[len("<tool_call>"): -len("</tool_call>")].strip()
    with pytest.raises(json.JSONDecodeError) as exc:
        json.loads(block)
    assert output == json.dumps({"error": f"Invalid tool call arguments: {exc.value!r}"})
    assert ep.calls == [{"name": "calendar_update_event", "arguments": block}]
    with pytest.raises(ValueError, match="env.on_malformed_tool_call must be one of plain_text, error_output"):
        run(renderer, env, [samples[1]], [[turn(renderer, broken)]], on_malformed_tool_call="retry")


def test_string_arguments_run_as_a_failing_call_in_both_modes(renderer, env, samples):
    """``"arguments": "hello"`` is valid for the reference's parser (JSON-encoded): a call whose
    execution fails (the body is not an object), after which the model gets another step."""
    text = '<tool_call>\n{"name": "company_directory_find_email_address", "arguments": "hello"}\n</tool_call>'
    for mode in ("plain_text", "error_output"):
        _, batch = run(renderer, env, [samples[1]], [[turn(renderer, text), turn(renderer, "Done.")]],
                       on_malformed_tool_call=mode)
        (ep,) = batch.episodes
        assert ep.num_turns == 2 and ep.stop_reason == "no_tool_calls", mode
        assert ep.calls == [{"name": "company_directory_find_email_address", "arguments": '"hello"'}]
        (output,) = ep.tool_outputs  # the reference server's answer to a body that is not an object
        assert output == reference_outputs(ep.calls)[0] and '"input":"hello"' in output


def test_hf_engine_episode_logprobs_align_with_a_rescore(renderer, env, samples):
    """With a real (tiny random) model: the per-token logprobs the loop keeps sit on the sampled ids,
    i.e. a fresh forward over the episode's ids reproduces them where the mask is 1."""
    import torch
    from transformers import Qwen3ForCausalLM

    from megatron_grpo.generation.hf import HFEngine
    from megatron_grpo.models.tiny import tiny_qwen3_config

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = Qwen3ForCausalLM(tiny_qwen3_config(len(renderer.tokenizer), max_position_embeddings=2048))
        engine = HFEngine(model.eval(), pad_token_id=renderer.tokenizer.pad_token_id)
        sampling = SamplingParams(temperature=1.0, max_new_tokens=6, seed=0)
        short = [{**s, "responses_create_params": {**s["responses_create_params"],
                                                   "tools": s["responses_create_params"]["tools"][:3]}}
                 for s in (samples[0], samples[0], samples[4])]  # short prompts: a fast CPU test
        batch = run_episodes(engine, env, renderer, short, sampling)
        for ep in batch.episodes:
            assert ep.stop_reason in ("max_new_tokens", "no_tool_calls", "eos")
            assert len(ep.token_ids) == len(ep.loss_mask) == len(ep.logprobs)
            assert ep.loss_mask == [0] * ep.prompt_len + [1] * (len(ep.token_ids) - ep.prompt_len)
            (scored,) = engine.score([ep.token_ids])
            generated = [(lp, s) for lp, s, m in zip(ep.logprobs, scored, ep.loss_mask) if m]
            assert [lp for lp, _ in generated] == pytest.approx([s for _, s in generated], abs=1e-4)
        assert batch.episodes[0].token_ids != batch.episodes[1].token_ids  # same prompt, own samples
    finally:
        torch.set_num_threads(before)
