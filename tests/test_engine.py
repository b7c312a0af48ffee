"""The serving engine: every request gets what ``generate`` gives it alone (greedy, or with
its seed) - with requests of mixed lengths arriving at different steps, parallel samples
and shared prefixes sharing blocks, preemption when blocks run out, cancellation - and every
block is back in the free list afterwards."""

import numpy as np
import pytest

from tinyllm.data import CharVocab
from tinyllm.infer import generate
from tinyllm.infer.engine import Engine, SamplingParams
from tinyllm.models import ModelConfig, Transformer

LLAMA = dict(
    position="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False, n_kv_head=2
)
CASES = {"gpt2": {}, "llama": LLAMA, "mistral-sliding-window": {**LLAMA, "sliding_window": 6}}


def model_of(options=LLAMA, seed=0):
    config = ModelConfig(
        vocab_size=61, context_length=64, d_model=32, n_layer=2, n_head=4, init_std=0.3, **options
    )
    return Transformer(config, seed=seed)


def prompts_of(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 61, n).tolist() for n in lengths]


def alone(model, prompt, params, index=0):
    """What ``generate`` gives ``prompt`` by itself, as new tokens."""
    seed = None if params.seed is None else params.seed + index
    out = generate(
        model, [prompt], params.max_tokens, **params.rules(), stop_token_ids=params.stop_token_ids,
        seed=seed,
    )  # fmt: skip
    return out[0, len(prompt) :].tolist()


def run(engine, arrivals):
    """Step ``engine``, adding ``arrivals[i]`` (a list of (prompt, params)) before step i."""
    requests, step = [], 0
    while step < len(arrivals) or engine.has_work():
        for prompt, params in arrivals[step] if step < len(arrivals) else []:
            requests.append(engine.add_request(prompt, params))
        engine.step()
        step += 1
    return requests


@pytest.mark.parametrize("case", CASES)
def test_requests_arriving_over_time_get_what_they_get_alone(case):
    model = model_of(CASES[case])
    engine = Engine(model, num_blocks=40, block_size=4, max_batch=4)
    prompts = prompts_of([3, 9, 5, 14, 1, 7])
    greedy = [SamplingParams(max_tokens=n, temperature=0) for n in (12, 5, 20, 9, 15, 11)]
    sampled = SamplingParams(max_tokens=10, temperature=0.9, top_k=20, seed=7)
    params = [*greedy[:3], sampled, *greedy[4:]]
    # two at once, one a step later, three more four steps later: more than max_batch
    arrivals = [list(zip(prompts[:2], params[:2])), [(prompts[2], params[2])], [], [],
                list(zip(prompts[3:], params[3:]))]  # fmt: skip
    requests = run(engine, arrivals)
    for request, prompt, p in zip(requests, prompts, params):
        assert request.finished and request.sequences[0].finish_reason == "length"
        assert request.sequences[0].new_tokens == alone(model, prompt, p)
    assert engine.cache.allocator.free_count == engine.cache.allocator.num_blocks
    assert not engine.running and not engine.waiting and not engine.requests


def test_parallel_samples_share_the_prompt_blocks_and_copy_on_write():
    model = model_of()
    engine = Engine(model, num_blocks=30, block_size=4)
    prompt = prompts_of([10])[0]  # blocks: 4 + 4 + 2 (the last one half full)
    params = SamplingParams(max_tokens=6, temperature=1.0, seed=3, n=3)
    request = engine.add_request(prompt, params)
    engine.step()  # admitted: one prefill, three samples on the same three blocks
    assert engine.counts["prefilled_tokens"] == 10
    assert engine.memory()["shared_blocks"] == 2  # after the first decode: full blocks shared
    while engine.has_work():
        engine.step()
    for index, seq in enumerate(request.sequences):
        assert seq.new_tokens == alone(model, prompt, params, index)  # seed 3, 4, 5
    assert len({tuple(s.new_tokens) for s in request.sequences}) == 3
    assert engine.cache.allocator.free_count == 30


def test_a_prompt_seen_before_reuses_its_blocks():
    model = model_of()
    engine = Engine(model, num_blocks=30, block_size=4)
    system = prompts_of([12], seed=5)[0]
    first, second = system + [1, 2], system + [3]
    params = SamplingParams(max_tokens=4, temperature=0)
    engine.generate([first], params)
    prefilled = engine.counts["prefilled_tokens"]
    (out,) = engine.generate([second], params)
    assert engine.counts["reused_tokens"] == 12  # three full blocks found by their hash
    assert engine.counts["prefilled_tokens"] - prefilled == 1  # only the new token ran
    assert out[0] == alone(model, second, params)


def test_running_out_of_blocks_preempts_and_recomputes():
    model = model_of()
    engine = Engine(model, num_blocks=16, block_size=4, max_batch=8)  # 64 positions in all
    prompts = prompts_of([8, 8, 8, 8], seed=2)
    params = SamplingParams(max_tokens=20, temperature=0)
    outs = engine.generate(prompts, params)  # 4 x 28 positions do not fit at once
    assert engine.counts["preemptions"] > 0
    for out, prompt in zip(outs, prompts):
        assert out[0] == alone(model, prompt, params)
    assert engine.cache.allocator.free_count == 16


def test_cancelling_frees_the_blocks_and_closes_the_stream():
    engine = Engine(model_of(), num_blocks=30, block_size=4)
    params = SamplingParams(max_tokens=30, temperature=0)
    running, waiting = (engine.add_request(p, params) for p in prompts_of([5, 5]))
    engine.step()
    engine.step()
    engine.cancel(running.id)
    engine.step()
    assert running.sequences[0].finish_reason == "cancelled"
    events = []
    while (event := running.events.get_nowait()) is not None:
        events.append(event)
    assert [e.finish_reason for e in events][-1] == "cancelled" and len(events) == 4
    assert engine.cache.blocks_in_use == 2  # only the other request's blocks
    engine.cancel(waiting.id)
    engine.step()
    assert not engine.has_work() and engine.cache.blocks_in_use == 0


def test_stops_and_text_pieces():
    vocab = CharVocab.from_text(
        "abcdefghijklmnopqrstuvwxyz .,!?\n" + "ABCDEFGHIJKLMNOPQRSTUVWXYZ01"
    )
    model = model_of()
    engine = Engine(model, vocab, num_blocks=30, block_size=4)
    prompt = vocab.encode("the cat")
    free = engine.generate([prompt], SamplingParams(max_tokens=12, temperature=0))[0][0]
    text = vocab.decode(free)
    stop = text[5:7]
    request = engine.add_request(
        prompt, SamplingParams(max_tokens=12, temperature=0, stop_strings=[stop])
    )
    while engine.has_work():
        engine.step()
    seq = request.sequences[0]
    assert seq.finish_reason == "stop" and vocab.decode(seq.new_tokens).endswith(stop)
    assert len(seq.new_tokens) <= text.index(stop) + len(stop)
    pieces = []
    while (event := request.events.get_nowait()) is not None:
        pieces.append(event.text)
    assert "".join(pieces) == vocab.decode(seq.new_tokens)


def test_bad_requests_are_named():
    engine = Engine(model_of(), num_blocks=30, block_size=4)
    with pytest.raises(ValueError, match="max_tokens=1000000 run past the context of 64"):
        engine.add_request([1, 2], SamplingParams(max_tokens=1_000_000))
    with pytest.raises(ValueError, match="non-empty list of token ids in 0..60"):
        engine.add_request([], SamplingParams())
    with pytest.raises(ValueError, match="non-empty list of token ids in 0..60"):
        engine.add_request([61], SamplingParams())
    with pytest.raises(ValueError, match="top_p=2: expected a probability"):
        SamplingParams(top_p=2)
    with pytest.raises(ValueError, match="n=0: expected an integer >= 1"):
        SamplingParams(n=0)
    with pytest.raises(ValueError, match="skip_special_tokens='no': expected True or False"):
        SamplingParams(skip_special_tokens="no")
    with pytest.raises(ValueError, match=r"logprobs=21: expected an integer in 0..20, or None"):
        SamplingParams(logprobs=21)
    with pytest.raises(ValueError, match="max_tokens=0: expected an integer >= 1"):
        SamplingParams(max_tokens=0)
    assert SamplingParams(max_tokens=0, prompt_logprobs=0).max_tokens == 0  # scoring only
    with pytest.raises(ValueError, match="stop_strings need a tokenizer"):
        engine.add_request([1], SamplingParams(stop_strings=["x"]))
    with pytest.raises(ValueError, match="num_blocks=3 of 4 positions cannot hold one sequence"):
        Engine(model_of(), num_blocks=3, block_size=4)
    engine.add_request([1], request_id="x")
    with pytest.raises(ValueError, match="request id 'x' is in use"):
        engine.add_request([1], request_id="x")


def test_paging_wastes_little_where_a_contiguous_cache_reserves_much():
    engine = Engine(model_of(), num_blocks=60, block_size=4, max_batch=16)
    for prompt in prompts_of([3, 17, 6, 30, 9, 12]):
        engine.add_request(prompt, SamplingParams(max_tokens=30, temperature=0))
    for _ in range(10):
        engine.step()
    memory = engine.memory()
    assert memory["waste"] < 0.25  # at most a part of each row's last block of 4
    assert memory["blocks"] < 0.6 * memory["contiguous"]  # max_tokens reserved, 10 written
