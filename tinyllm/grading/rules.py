"""The rules table: for each exercise set, what its file must write and what it may not use.

An entry in ``RULES`` is keyed by the exercise file's name without ``.py``. Its ``writes`` are
the names the set's tests grade, so the file must define them itself; its ``off_limits`` are
the library modules (or names) that already implement them, so the file may not reach them;
its ``given`` are the few names inside those that the stub hands the student. The guard
(``guard.py``) enforces an entry; a file without one still may not use the reference answers
or the grader.

>>> RULES["ex03_moe"].off_limits
('tinyllm.nn.moe',)
>>> "top_k_routing" in RULES["ex03_moe"].writes
True
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Rules:
    """What one exercise file asks for.

    ``writes``: the names its tests grade, which the file must define itself.
    ``off_limits``: the library modules (or names) that implement them.
    ``given``: names inside ``off_limits`` the file may still use (the stub imports them).
    """

    writes: tuple = ()
    off_limits: tuple = ()
    given: tuple = ()


RULES = {
    "ex00_autograd": Rules(
        writes=("Mul", "unbroadcast", "Tanh", "Sum", "Matmul", "Softmax"),
        off_limits=("tinyllm.functional",),  # every op, forward and backward
        given=("tinyllm.functional.reduce.normalize_axes",),
    ),
    "ex01_tokenization": Rules(
        writes=("get_stats", "merge", "encode_with_merges", "train_bpe"),
        off_limits=("tinyllm.tokenizer",),
    ),
    "ex02_attention": Rules(
        writes=(
            "apply_rotary",
            "causal_attention",
            "repeat_kv",
            "grouped_query_attention",
            "rope_score",
        ),
        off_limits=(
            "tinyllm.functional.attention",
            "tinyllm.functional.rope",
            "tinyllm.nn.attention",
            "tinyllm.nn.rope",
        ),
    ),
    "ex03_moe": Rules(
        writes=("top_k_routing", "load_balancing_loss", "load_balancing_grad", "moe_combine"),
        off_limits=("tinyllm.nn.moe",),
    ),
    "ex04_pretraining": Rules(
        writes=(
            "cross_entropy_batch",
            "cross_entropy_grad",
            "adamw_update",
            "cosine_lr",
            "clip_by_global_norm",
        ),
        off_limits=("tinyllm.functional.softmax", "tinyllm.optim"),  # cross-entropy; AdamW etc.
    ),
    "ex05_kv_cache_and_sampling": Rules(
        writes=(
            "kv_cache_update",
            "cached_attention",
            "top_p_filter",
            "min_p_filter",
            "apply_repetition_penalty",
        ),
        off_limits=(
            "tinyllm.nn.kv_cache",
            "tinyllm.functional.attention",  # the offset causal mask
            "tinyllm.nn.attention",
            "tinyllm.infer.sampling",
            "tinyllm.infer.generate",
        ),
    ),
    "ex06_speculative_decoding": Rules(
        writes=(
            "residual_distribution",
            "accept_or_resample",
            "lookup_proposals",
            "expected_tokens_per_round",
            "speedup",
            "best_draft_tokens",
        ),
        off_limits=("tinyllm.infer.speculative",),
    ),
    "ex07_serving": Rules(
        writes=("BlockAllocator", "block_slot", "paged_update", "schedule_step"),
        off_limits=("tinyllm.nn.paged_kv_cache", "tinyllm.infer.engine"),
    ),
    "ex08_supervised_fine_tuning": Rules(
        writes=("assistant_targets", "pack_examples", "document_causal_mask", "format_chat"),
        off_limits=(
            "tinyllm.tokenizer.chat",
            "tinyllm.tokenizer.tokenizer.Tokenizer.format_chat",  # the same, as a method
            "tinyllm.data.sft",
            "tinyllm.train.sft",
        ),
    ),
    "ex09_preference_tuning": Rules(
        writes=(
            "log_sigmoid",
            "bradley_terry_loss",
            "bradley_terry_grad",
            "sequence_logprob",
            "dpo_loss",
            "dpo_grad",
            "last_token_scores",
            "preference_metrics",
        ),
        off_limits=(
            "tinyllm.train.preference",
            "tinyllm.models.reward",
            "tinyllm.recipes.dpo",  # the losses, imported there
            "tinyllm.functional.activations.log_sigmoid",
            "tinyllm.functional.activations.LogSigmoid",
            "tinyllm.functional.softmax",  # log-softmax and cross-entropy
        ),
    ),
    "ex10_lora": Rules(
        writes=(
            "lora_forward",
            "lora_merge",
            "lora_unmerge",
            "lora_parameter_count",
            "trainable_fraction",
        ),
        off_limits=(
            "tinyllm.nn.lora",
            "tinyllm.nn.lora_layer",  # the layer the whole-model functions wrap in
            "tinyllm.models.adapters",  # PEFT's format, built on it
            "tinyllm.recipes.lora",
        ),
    ),
    "ex11_distillation": Rules(
        writes=(
            "soften",
            "log_soften",
            "soft_target_loss",
            "distillation_loss",
            "distillation_grad",
        ),
        off_limits=(
            "tinyllm.train.distill",
            "tinyllm.recipes.distill",  # the losses, imported there
            "tinyllm.functional.softmax",  # softmax, log-softmax and cross-entropy
        ),
    ),
    "ex12_quantization": Rules(
        writes=(
            "absmax_quantize",
            "absmax_dequantize",
            "q4_0_pack",
            "q4_0_unpack",
            "q4_0_matmul",
            "awq_search",
        ),
        off_limits=("tinyllm.quant",),  # the formats, QuantizedLinear, AWQ's search, GPTQ
    ),
    "ex13_gpus_and_scale": Rules(
        writes=(
            "matmul_cost",
            "decode_cost",
            "attainable_flops",
            "roofline",
            "zero_bytes",
            "device_bytes",
            "to_bfloat16_bits",
            "from_bfloat16_bits",
            "query_blocks",
            "blocked_causal_attention",
            "checkpoint",
        ),
        off_limits=(
            "tinyllm.analysis",  # the FLOP and byte counts
            "tinyllm.train.sharding",  # how each layout cuts an array
            "tinyllm.quant.formats",  # bf16 among the formats
            "tinyllm.models.weights",  # and its rounding, used for safetensors' BF16
            "tinyllm.functional.attention",  # the blocks of long causal attention
            "tinyllm.nn.recompute",  # activation checkpointing
            "tinyllm.nn.attention",
        ),
        given=("tinyllm.analysis.parameter_count", "tinyllm.analysis.ParameterCount"),
    ),
}
