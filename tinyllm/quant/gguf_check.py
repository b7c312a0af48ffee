"""A GGUF file run in llama.cpp beside tinyllm on the same weights.

Both sides give the same two things: the greedy continuation of a prompt (temperature 0), and
the negative log-likelihood of every token of some text windows (each window ``T + 1`` token
ids: the inputs, and the same shifted by one, the targets). A wrong tensor name, RoPE order
or tokenizer entry in the file changes the tokens; llama.cpp's own arithmetic (activations
rounded to f16 or to Q8_0 blocks before a product) moves the log-likelihoods in their last
digits only. ``benchmarks/bench_gguf.py`` compares the two on a trained model and
``tests/test_gguf_llamacpp.py`` on random ones.

llama.cpp comes from llama-cpp-python (``pip install 'tinyllm[gguf-check]'``, a build of
minutes), imported only when ``llama_cpp_outputs`` is called.
"""

import numpy as np

from ..autograd import no_grad


def token_nlls(logits, targets):
    """The negative log-likelihood of each of ``targets`` (T,) under ``logits`` (T, vocab),
    computed in float64."""
    logits = np.asarray(logits, np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -log_probs[np.arange(len(targets)), targets]


def tinyllm_outputs(model, prompt, new_tokens, windows):
    """``(greedy tokens after the ids prompt, [token NLLs of each window])`` of a tinyllm
    model, recomputing the whole sequence at each token (no cache: the plainest reference)."""
    with no_grad():
        ids = list(prompt)
        for _ in range(new_tokens):
            logits, _ = model([ids])
            ids.append(int(np.argmax(logits.numpy()[0, -1])))
        nlls = [token_nlls(model([list(w[:-1])])[0].numpy()[0], w[1:]) for w in windows]
    return ids[len(prompt) :], nlls


def llama_cpp_outputs(path, prompt_text, new_tokens, windows, context, threads=2):
    """``(llama.cpp's ids of prompt_text, its greedy tokens, [token NLLs of each window])``
    for the GGUF file ``path``, loaded with a context of ``context`` tokens."""
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(path), n_ctx=context, n_batch=context, n_ubatch=context,
        logits_all=True, n_threads=threads, seed=0, verbose=False,
    )  # fmt: skip
    try:
        prompt = llm.tokenize(prompt_text.encode(), add_bos=False, special=False)
        greedy = []
        sampling = dict(top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0)
        for token in llm.generate(prompt, **sampling):
            greedy.append(token)
            if len(greedy) == new_tokens:
                break
        nlls = []
        for window in windows:
            llm.reset()
            llm.eval(list(window[:-1]))
            nlls.append(token_nlls(llm.scores[: len(window) - 1], window[1:]))
    finally:
        llm.close()
    return prompt, greedy, nlls
