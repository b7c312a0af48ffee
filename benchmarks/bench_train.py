"""Time to quality: nanoGPT's CPU recipe for Shakespeare characters, in tinyllm and in PyTorch.

nanoGPT's README trains its baby GPT on a laptop CPU with

    python train.py config/train_shakespeare_char.py --device=cpu --compile=False
      --eval_iters=20 --log_interval=1 --block_size=64 --batch_size=12 --n_layer=4
      --n_head=4 --n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0

and reports a validation loss of 1.88 after about 3 minutes. This script runs that recipe
twice in one process on the shipped character-level corpus (90/10 split): (a) tinyllm on the
NumPy backend through its own training loop, ``tinyllm.train.Trainer``, on the ``tiny``
preset, and (b) a plain PyTorch eager loop over a GPT of the same shape written here. Both
see the same training batches (two ``RandomBatches`` streams with the same seed) and are
scored on the same 20 validation batches every 500 iterations and at the end. Reported per
side: the final validation loss and the wall time of the training loop, evaluation included
(as nanoGPT's) and apart; then the loss difference and the time ratio tinyllm/torch.

    python benchmarks/bench_train.py               # 2000 iterations: several minutes
    python benchmarks/bench_train.py --quick       # 30 iterations: seconds
    python benchmarks/bench_train.py --iters 500 --same-init
"""

import argparse
import dataclasses
import time

import numpy as np
from common import machine, torch_gpt

from tinyllm.data import RandomBatches, corpus_tokens, train_val_split
from tinyllm.models import Transformer, get_preset
from tinyllm.optim import warmup_cosine
from tinyllm.train import TrainConfig, Trainer

EVAL_INTERVAL = 500
LOSS_TARGET = 0.03  # |tinyllm - torch| final validation loss
TIME_TARGET = 1.25  # tinyllm / torch wall time


def recipe(iters):
    """nanoGPT's ``train_shakespeare_char`` CPU settings as a ``TrainConfig`` (both sides
    read their hyperparameters from it)."""
    return TrainConfig(
        steps=iters,
        batch_size=12,
        lr=1e-3,
        min_lr=1e-4,
        schedule="cosine",
        warmup_steps=min(100, iters // 10),  # 100 for the full run, as nanoGPT's
        weight_decay=0.1,
        beta1=0.9,
        beta2=0.99,
        eps=1e-8,
        grad_clip=1.0,
        eval_interval=EVAL_INTERVAL,
        eval_batches=20,
        seed=1337,
        progress=False,
    )


@dataclasses.dataclass
class Run:
    val_loss: float
    seconds: float  # the whole loop, evaluation included
    eval_seconds: float
    history: list  # (step, val loss) at each evaluation


def run_tinyllm(config, train, train_tokens, val_batches, init):
    model = Transformer(config, seed=train.seed)
    init.update({name: p.data.copy() for name, p in model.named_parameters()})
    batches = RandomBatches(train_tokens, train.batch_size, config.context_length, seed=train.seed)
    trainer = Trainer(model, train, batches, val_batches=val_batches)  # no out_dir: no files
    history, evaluate, eval_seconds = [], trainer.evaluate, [0.0]

    def timed_evaluate():  # the Trainer calls this at every evaluation
        start = time.perf_counter()
        loss = evaluate()
        eval_seconds[0] += time.perf_counter() - start
        history.append((trainer.step, loss))
        return loss

    trainer.evaluate = timed_evaluate
    start = time.perf_counter()
    result = trainer.fit()
    return Run(result.val_loss, time.perf_counter() - start, eval_seconds[0], history)


def run_torch(config, train, train_tokens, val_batches, init=None):
    """nanoGPT's loop, plainly: schedule, forward, backward, clip, AdamW; evaluations inline."""
    import torch

    model = torch_gpt(config, seed=train.seed)
    if init is not None:
        load_tinyllm_weights(model, init, config.n_layer)
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": train.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=train.lr, betas=(train.beta1, train.beta2), eps=train.eps)
    batches = RandomBatches(train_tokens, train.batch_size, config.context_length, seed=train.seed)
    val = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in val_batches]
    history, eval_seconds = [], 0.0

    start = time.perf_counter()
    for step in range(train.steps):
        lr = warmup_cosine(step, train.lr, train.warmup_steps, train.steps, train.min_lr)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = next(batches)
        loss = model(torch.from_numpy(x), torch.from_numpy(y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, train.grad_clip)
        opt.step()
        loss.item()  # as nanoGPT's log line reads the loss every step (--log_interval=1)
        if (step + 1) % train.eval_interval == 0 or step + 1 == train.steps:
            eval_start = time.perf_counter()
            model.eval()
            with torch.no_grad():
                val_loss = sum(model(vx, vy).item() for vx, vy in val) / len(val)
            model.train()
            history.append((step + 1, val_loss))
            eval_seconds += time.perf_counter() - eval_start
    return Run(val_loss, time.perf_counter() - start, eval_seconds, history)


def load_tinyllm_weights(model, init, n_layer):
    """Copy tinyllm's initial weights into the torch GPT (``--same-init``)."""
    import torch

    def linear(module, prefix, *parts):  # tinyllm's Linear weights are (in, out)
        weight = np.concatenate([init[f"{prefix}{p}.weight"].T for p in parts])
        bias = np.concatenate([init[f"{prefix}{p}.bias"] for p in parts])
        module.weight.data, module.bias.data = torch.from_numpy(weight), torch.from_numpy(bias)

    def norm(module, prefix):
        module.weight.data = torch.from_numpy(init[f"{prefix}.weight"])
        module.bias.data = torch.from_numpy(init[f"{prefix}.bias"])

    model.tok.weight.data = torch.from_numpy(init["token_embedding.weight"])
    model.pos.weight.data = torch.from_numpy(init["position_embedding.weight"])
    for i, block in enumerate(model.blocks):
        b = f"blocks.{i}."
        norm(block.ln1, b + "attention_norm")
        norm(block.ln2, b + "mlp_norm")
        linear(block.qkv, b + "attention.", "q_proj", "k_proj", "v_proj")
        linear(block.proj, b + "attention.", "o_proj")
        linear(block.up, b + "mlp.", "up")
        linear(block.down, b + "mlp.", "down")
    norm(model.ln_f, "final_norm")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="30 iterations: a run of seconds")
    parser.add_argument("--iters", type=int, default=None, help="training iterations (2000)")
    parser.add_argument(
        "--same-init", action="store_true", help="start torch from tinyllm's initial weights"
    )
    args = parser.parse_args()
    iters = args.iters or (30 if args.quick else 2000)
    train = recipe(iters)

    view = corpus_tokens("tinyshakespeare", view="char")
    config = get_preset("tiny", vocab_size=view.tokenizer.vocab_size)  # 4 x 4 x 128, T=64
    train_tokens, val_tokens = train_val_split(view.tokens.astype(np.int64), 0.1)
    val_source = RandomBatches(
        val_tokens, train.batch_size, config.context_length, seed=train.seed + 1
    )
    val_batches = [next(val_source) for _ in range(train.eval_batches)]

    print(machine())
    print(
        f"recipe: nanoGPT train_shakespeare_char on CPU - {config.n_layer} layers, "
        f"{config.n_head} heads, d_model {config.d_model}, context {config.context_length}, "
        f"batch {train.batch_size}, {iters} iterations, dropout {config.dropout}, AdamW "
        f"lr {train.lr:g} -> {train.min_lr:g} (warmup {train.warmup_steps}, cosine), "
        f"betas ({train.beta1}, {train.beta2}), weight decay {train.weight_decay}, "
        f"clip {train.grad_clip}"
    )
    print(
        f"data: tinyshakespeare characters, vocab {config.vocab_size}, {len(train_tokens):,} "
        f"train / {len(val_tokens):,} val tokens; val loss = mean over {len(val_batches)} "
        f"fixed batches, every {EVAL_INTERVAL} iterations and at the end"
    )
    print("(nanoGPT's published CPU figure: val loss 1.88 in about 3 minutes on a laptop)\n")

    init = {}
    ours = run_tinyllm(config, train, train_tokens, val_batches, init)
    print(f"tinyllm: {iters} iterations in {ours.seconds:.1f} s", flush=True)
    theirs = run_torch(config, train, train_tokens, val_batches, init if args.same_init else None)
    print(f"torch: {iters} iterations in {theirs.seconds:.1f} s", flush=True)
    import torch

    print(f"\n{'step':>6} {'tinyllm val':>12} {'torch val':>10}")
    for (step, a), (_, b) in zip(ours.history, theirs.history):
        print(f"{step:>6} {a:>12.4f} {b:>10.4f}")
    tokens = iters * train.batch_size * config.context_length
    print(f"\n{'side':<8} {'val loss':>9} {'total s':>8} {'train s':>8} {'eval s':>7} {'tok/s':>7}")
    for name, run in (("tinyllm", ours), ("torch", theirs)):
        train_seconds = run.seconds - run.eval_seconds
        print(f"{name:<8} {run.val_loss:>9.4f} {run.seconds:>8.1f} {train_seconds:>8.1f} "
              f"{run.eval_seconds:>7.1f} {tokens / train_seconds:>7,.0f}")  # fmt: skip
    diff = ours.val_loss - theirs.val_loss
    ratio = ours.seconds / theirs.seconds
    train_ratio = (ours.seconds - ours.eval_seconds) / (theirs.seconds - theirs.eval_seconds)
    met = {True: "met", False: "not met"}
    print(
        f"\nval loss tinyllm - torch: {diff:+.4f} "
        f"(target within {LOSS_TARGET}: {met[abs(diff) <= LOSS_TARGET]})"
    )
    print(
        f"wall time tinyllm / torch: {ratio:.2f} with evaluation, {train_ratio:.2f} without "
        f"(target <= {TIME_TARGET}: {met[ratio <= TIME_TARGET]})"
    )
    init_note = "tinyllm's initial weights" if args.same_init else "its own init, seed 1337"
    print(f"(torch threads: {torch.get_num_threads()}; torch started from {init_note})")


if __name__ == "__main__":
    main()
