"""Reference answers for exercises/ex06_speculative_decoding.py: tinyllm's speculative decoding.

The rule, its residual, prompt lookup and the tokens per round are the library's own
(tinyllm/infer/speculative.py); the speedup divides those tokens by a round's cost.
"""

from tinyllm.infer.speculative import (
    accept_or_resample,
    expected_tokens_per_round,
    lookup_proposals,
    residual_distribution,
)

__all__ = [
    "accept_or_resample",
    "best_draft_tokens",
    "expected_tokens_per_round",
    "lookup_proposals",
    "residual_distribution",
    "speedup",
]


def speedup(acceptance_rate, k, draft_cost):
    return expected_tokens_per_round(acceptance_rate, k) / (k * draft_cost + 1)


def best_draft_tokens(acceptance_rate, draft_cost, max_k=16):
    return max(range(1, max_k + 1), key=lambda k: (speedup(acceptance_rate, k, draft_cost), -k))
