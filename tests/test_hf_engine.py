"""The hf generation engine on a tiny random Qwen3: batching, sampling logprobs, stops, budgets, seeds."""

import pytest
import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

from megatron_grpo.generation import make_engine
from megatron_grpo.generation.base import SamplingParams
from megatron_grpo.generation.hf import HFEngine, filter_logits, sampling_logprobs

VOCAB = 300


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models on a loaded 2-core machine: intra-op threads only contend (100x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_qwen3(seed: int) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    config = Qwen3Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                         max_position_embeddings=512, tie_word_embeddings=False)
    return Qwen3ForCausalLM(config).eval()


@pytest.fixture(scope="module")
def engine():
    return HFEngine(tiny_qwen3(0))


PROMPTS = [[5, 9, 17, 33, 2, 8, 100], [7, 7], [250, 1, 2, 3]]


def test_left_padded_batch_matches_single_prompts(engine):
    greedy = SamplingParams(temperature=0.0, max_new_tokens=8)
    batch = engine.generate(PROMPTS, greedy)
    for prompt, gen in zip(PROMPTS, batch):
        (alone,) = engine.generate([prompt], greedy)
        assert gen.token_ids == alone.token_ids
        assert gen.logprobs == pytest.approx(alone.logprobs, abs=1e-5)
        assert gen.finish_reason == "length" and len(gen.token_ids) == 8


def test_repeated_prompts_are_prefilled_once_and_forked(engine):
    """A GRPO batch (each prompt G times): one prefill row per distinct prompt, the KV cache forked;
    greedy ids and logprobs equal generating each row alone; forked rows sample independently."""
    grouped = [PROMPTS[0]] * 3 + [PROMPTS[2]] * 2 + [PROMPTS[1]]
    shapes = []
    hook = engine.model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        greedy = SamplingParams(temperature=0.0, max_new_tokens=6)
        forked = engine.generate(grouped, greedy)
    finally:
        hook.remove()
    assert shapes[0] == (3, len(PROMPTS[0])) and shapes[1] == (len(grouped), 1)  # prefill, then decode
    for prompt, gen in zip(grouped, forked):
        (alone,) = engine.generate([prompt], greedy)
        assert gen.token_ids == alone.token_ids
        assert gen.logprobs == pytest.approx(alone.logprobs, abs=1e-5)
    sampled = engine.generate(grouped, SamplingParams(temperature=1.0, max_new_tokens=6, seed=1))
    assert len({tuple(g.token_ids) for g in sampled[:3]}) > 1


def test_logprobs_are_those_of_the_sampling_distribution(engine):
    """T=0.5: logprobs of softmax(logits / 0.5) (what the policy computes at the same temperature);
    with a top-k/top-p cut: of the cut, renormalized distribution, which puts more mass on each kept id."""
    tempered = SamplingParams(temperature=0.5, max_new_tokens=6, seed=3)
    for prompt, gen in zip(PROMPTS, engine.generate(PROMPTS, tempered)):
        assert gen.logprobs == pytest.approx(engine.score([prompt + gen.token_ids], 0.5)[0][len(prompt):], abs=1e-5)
        raw = engine.score([prompt + gen.token_ids])[0][len(prompt):]
        assert max(abs(a - b) for a, b in zip(gen.logprobs, raw)) > 0.05
    cut = SamplingParams(temperature=0.7, top_k=50, top_p=0.9, max_new_tokens=6, seed=3)
    for prompt, gen in zip(PROMPTS, engine.generate(PROMPTS, cut)):
        seq = torch.tensor([prompt + gen.token_ids])
        with torch.no_grad():
            logits = engine.model(input_ids=seq).logits[0, len(prompt) - 1 : -1].float()
        ref = sampling_logprobs(logits, cut).gather(-1, seq[0, len(prompt):, None])[:, 0]
        assert gen.logprobs == pytest.approx(ref.tolist(), abs=1e-5)
        at_t = engine.score([prompt + gen.token_ids], 0.7)[0][len(prompt):]
        assert all(a >= b - 1e-6 for a, b in zip(gen.logprobs, at_t))


def test_sampling_logprobs_by_hand():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    # T=0.5: log_softmax([4, 2, 0]); log(e^4 + e^2 + 1) = 4.142931
    half = sampling_logprobs(logits, SamplingParams(temperature=0.5))
    assert half[0].tolist() == pytest.approx([-0.142931, -2.142931, -4.142931], abs=1e-5)
    # top_k=2: log_softmax([2, 1]) over the kept ids, log(e^2 + e) = 2.313262; the cut id is impossible
    top2 = sampling_logprobs(logits, SamplingParams(temperature=1.0, top_k=2))
    assert top2[0, :2].tolist() == pytest.approx([-0.313262, -1.313262], abs=1e-5)
    assert top2[0, 2] == float("-inf")
    # greedy: the unscaled log_softmax([2, 1, 0]); log(e^2 + e + 1) = 2.407606
    greedy = sampling_logprobs(logits, SamplingParams(temperature=0.0))
    assert greedy[0].tolist() == pytest.approx([-0.407606, -1.407606, -2.407606], abs=1e-5)


def test_stop_ids_and_per_prompt_budgets(engine):
    greedy = SamplingParams(temperature=0.0, max_new_tokens=10)
    free = engine.generate(PROMPTS, greedy)
    stop_id = free[0].token_ids[3]
    first = free[0].token_ids.index(stop_id)
    with_stop = SamplingParams(temperature=0.0, max_new_tokens=10, stop_token_ids=(stop_id,))
    stopped = engine.generate(PROMPTS, with_stop, max_new_tokens=[10, 2, 5])
    assert stopped[0].token_ids == free[0].token_ids[: first + 1]
    assert stopped[0].finish_reason == "stop" and stopped[0].stop_token_id == stop_id
    for gen, ref, budget in zip(stopped[1:], free[1:], [2, 5]):
        expected = ref.token_ids[:budget]
        if stop_id in expected:
            expected = expected[: expected.index(stop_id) + 1]
        assert gen.token_ids == expected
        assert gen.finish_reason == ("stop" if expected[-1] == stop_id else "length")
    with pytest.raises(ValueError, match="entries"):
        engine.generate(PROMPTS, greedy, max_new_tokens=[1])


def test_seeded_sampling_is_reproducible(engine):
    params = SamplingParams(temperature=1.0, max_new_tokens=12, seed=7)
    a = engine.generate(PROMPTS, params)
    b = engine.generate(PROMPTS, params)
    assert [g.token_ids for g in a] == [g.token_ids for g in b]
    c = engine.generate(PROMPTS, SamplingParams(temperature=1.0, max_new_tokens=12, seed=8))
    assert [g.token_ids for g in a] != [g.token_ids for g in c]


def test_filter_logits_top_k_and_top_p():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    kept = torch.isfinite(filter_logits(logits, SamplingParams(top_k=1))).tolist()
    assert kept == [[False, True, False, False]]
    kept = torch.isfinite(filter_logits(logits, SamplingParams(top_k=2))).tolist()
    assert kept == [[False, True, True, False]]
    probs = torch.softmax(logits, -1)[0]  # p(1)=0.64, p(2)=0.24, ...
    just_first = SamplingParams(top_p=float(probs[1]) - 0.01)
    assert torch.isfinite(filter_logits(logits, just_first)).tolist() == [[False, True, False, False]]
    two = SamplingParams(top_p=float(probs[1] + probs[2]) - 0.01)
    assert torch.isfinite(filter_logits(logits, two)).tolist() == [[False, True, True, False]]


def test_make_engine_from_saved_folder(tmp_path):
    tiny_qwen3(1).save_pretrained(tmp_path)
    engine = make_engine("hf", model=str(tmp_path))
    (gen,) = engine.generate([[1, 2, 3]], SamplingParams(temperature=0.0, max_new_tokens=3))
    assert len(gen.token_ids) == 3
    with pytest.raises(ValueError, match="unknown generation backend"):
        make_engine("tgi")


def test_vllm_backend_names_the_install_when_missing():
    """Without vLLM (CPU CI), asking for it must say how to get it; the module imports either way."""
    import importlib.util

    from megatron_grpo.generation import vllm_engine  # never imports vllm at module level

    if importlib.util.find_spec("vllm") is None:
        with pytest.raises(ImportError, match=r"pip install 'megatron-grpo\[gpu\]'"):
            make_engine("vllm", model="unused")
    else:
        assert callable(vllm_engine.VLLMEngine)
