"""Scaling laws: how loss falls with parameters N and training tokens D, at fixed compute.

Training costs about C = 6 N D FLOPs (``tinyllm.analysis.training_flops_per_token``). For a
budget C one can train a big model on few tokens or a small one on many. Hoffmann et al.
2022 ("Chinchilla") fit

    L(N, D) = E + A / N^alpha + B / D^beta

to hundreds of runs: E is the loss no model removes (the text's own entropy), the other
terms the penalties of too few parameters and too little data. Minimising L along
C = 6 N D gives the compute-optimal split; for their fit it is about 20 tokens per
parameter (``chinchilla_optimal``).

``scaling_sweep`` trains a family of tiny models, each budget split several ways,
``fit_scaling_law`` fits the law to the results and ``compute_optimal`` reads off the best
split. The models here are 100x smaller than the smallest Chinchilla run and the budgets
a laptop affords are tiny, so the fitted exponents are rough: at 1e10-1e11 FLOPs the
smallest model usually wins outright, and the U-shaped loss along each fixed-compute curve,
with its bottom moving to larger models as the budget grows, only appears at budgets a GPU
run reaches.

>>> law = ScalingLaw(E=1.69, A=406.4, alpha=0.34, B=410.7, beta=0.28)  # Chinchilla's fit
>>> n, d = compute_optimal(law, 5.76e23)  # Chinchilla's own budget
>>> f"{n / 1e9:.0f}B parameters, {d / 1e12:.1f}T tokens"
'32B parameters, 3.0T tokens'
>>> n, d = chinchilla_optimal(5.76e23)
>>> f"{n / 1e9:.0f}B parameters, {d / 1e12:.1f}T tokens"
'69B parameters, 1.4T tokens'

(The paper's Approach 3 fit and its 20-tokens-per-parameter rule disagree by about this
much; Chinchilla itself, 70B on 1.4T tokens, followed the rule.)
"""

import dataclasses
import math

import numpy as np

from ..analysis import parameter_count
from ..data import RandomBatches, corpus_tokens, train_val_split
from ..models import Transformer, get_preset
from ..train import TrainConfig, Trainer

TOKENS_PER_PARAMETER = 20  # Chinchilla's rule of thumb


@dataclasses.dataclass(frozen=True)
class ScalingLaw:
    E: float
    A: float
    alpha: float
    B: float
    beta: float

    def loss(self, n_params, n_tokens):
        """The predicted loss of N parameters trained on D tokens."""
        n, d = np.asarray(n_params, float), np.asarray(n_tokens, float)
        return self.E + self.A / n**self.alpha + self.B / d**self.beta


@dataclasses.dataclass(frozen=True)
class ScalingPoint:
    budget: float  # the FLOPs budget this run was given
    n_params: int  # non-embedding parameters
    n_tokens: int  # training tokens seen
    d_model: int
    n_layer: int
    val_loss: float


def chinchilla_optimal(flops):
    """(N, D) with D = 20 N and 6 N D = ``flops``."""
    n = math.sqrt(flops / (6 * TOKENS_PER_PARAMETER))
    return n, TOKENS_PER_PARAMETER * n


def compute_optimal(law, flops):
    """(N, D) minimising ``law.loss`` along 6 N D = ``flops`` (a fine grid over log N)."""
    n = np.logspace(0, math.log10(flops / 6), 4000)  # (grid,) every split with D >= 1
    best = int(np.argmin(law.loss(n, flops / (6 * n))))
    return float(n[best]), float(flops / (6 * n[best]))


def fit_scaling_law(points):
    """The ``ScalingLaw`` closest (least squares) to ``points`` (``ScalingPoint``s).

    For fixed exponents the law is linear in E, A and B, so a grid over (alpha, beta)
    with a least-squares solve at each is a complete, dependency-free fit; exponents
    come to 0.01, and fits with a negative E, A or B are not considered.
    """
    if len(points) < 4:
        raise ValueError(f"fit_scaling_law: {len(points)} points are too few; expected >= 4")
    n = np.array([p.n_params for p in points], float)
    d = np.array([p.n_tokens for p in points], float)
    loss = np.array([p.val_loss for p in points], float)
    best = None
    for alpha in np.arange(0.01, 1.5, 0.01):
        for beta in np.arange(0.01, 1.5, 0.01):
            columns = np.stack([np.ones_like(n), n**-alpha, d**-beta], axis=1)  # (P, 3)
            coef, *_ = np.linalg.lstsq(columns, loss, rcond=None)
            if (coef < 0).any():
                continue
            error = float(np.sum((columns @ coef - loss) ** 2))
            if best is None or error < best[0]:
                law = ScalingLaw(*map(float, (coef[0], coef[1], alpha, coef[2], beta)))
                best = (error, law)
    if best is None:
        raise ValueError("fit_scaling_law: no fit with non-negative E, A and B")
    return best[1]


def model_family(widths=(32, 48, 64, 96), n_layer=2, **changes):
    """Tiny GPT configs of growing width (head size 16)."""
    return [
        get_preset("tiny", d_model=w, n_head=w // 16, n_layer=n_layer, **changes) for w in widths
    ]


def scaling_sweep(budgets, configs, *, corpus="tinyshakespeare", batch_size=16, lr=2e-3, seed=0):
    """Train every config in ``configs`` at every FLOPs budget; returns ``ScalingPoint``s.

    A run gets D = budget / (6 N) tokens, as many steps as that makes (at least 10), on
    the character-level corpus; its loss is measured on held-out text.
    """
    view = corpus_tokens(corpus, view="char")
    train_tokens, val_tokens = train_val_split(view.tokens.astype(np.int64))
    points = []
    for budget in budgets:
        for config in configs:
            config = config.replace(vocab_size=view.tokenizer.vocab_size)
            n = parameter_count(config).non_embedding
            tokens_per_step = batch_size * config.context_length
            steps = max(10, round(budget / (6 * n) / tokens_per_step))
            train = TrainConfig(
                steps=steps, batch_size=batch_size, lr=lr, min_lr=lr / 10,
                warmup_steps=steps // 10, eval_interval=0, progress=False, seed=seed,
            )  # fmt: skip
            context = config.context_length
            val_stream = RandomBatches(val_tokens, batch_size, context, seed=seed + 1)
            trainer = Trainer(
                Transformer(config, seed=seed),
                train,
                RandomBatches(train_tokens, batch_size, context, seed=seed),
                val_batches=[next(val_stream) for _ in range(8)],
            )
            result = trainer.fit()
            points.append(
                ScalingPoint(
                    budget, n, steps * tokens_per_step, config.d_model, config.n_layer,
                    result.val_loss,
                )
            )  # fmt: skip
    return points


def plot_scaling(points, law, path):
    """Loss against parameters, one curve per budget (IsoFLOP curves), with the fit."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4))  # no pyplot: no global state, no window
    axis = figure.subplots()
    for index, budget in enumerate(sorted({p.budget for p in points})):
        run = sorted((p for p in points if p.budget == budget), key=lambda p: p.n_params)
        n = np.array([p.n_params for p in run], float)
        color = f"C{index}"
        axis.plot(n, [p.val_loss for p in run], "o", color=color, label=f"C = {budget:.1e}")
        grid = np.logspace(np.log10(n.min() / 1.5), np.log10(n.max() * 1.5), 100)
        axis.plot(grid, law.loss(grid, budget / (6 * grid)), "-", color=color, alpha=0.6)
        best_n, _ = compute_optimal(law, budget)
        axis.axvline(best_n, color=color, linestyle=":", alpha=0.6)
    axis.set_xscale("log")
    axis.set_xlabel("non-embedding parameters N")
    axis.set_ylabel("validation loss")
    axis.set_title(f"IsoFLOP curves; fit alpha={law.alpha:.2f}, beta={law.beta:.2f}")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return path
