"""The training commands: ``pretrain``, the post-training ones built from ``POST_TRAINING``
(``sft``, ``lora``, ``reward``, ``dpo``, ``distill``), ``eval``, ``quantize`` and ``speedrun``."""

from .flags import add_dataclass_flags, add_dtype_flag, dataclass_from_flags, integer


# --- tinyllm pretrain -------------------------------------------------------------------------
def configure_pretrain(parser):
    from tinyllm.recipes import PretrainConfig
    from tinyllm.train import TrainConfig

    parser.description = (
        "Train a model on a corpus. Writes the run folder --out: config.json, "
        "model.safetensors and the tokenizer (read by tinyllm generate and "
        "Transformer.from_pretrained), metrics.jsonl, loss.png and checkpoints/."
    )
    add_dataclass_flags(parser, PretrainConfig, "data, model and run folder")
    add_dataclass_flags(parser, TrainConfig, "training")


def run_pretrain(args):
    from tinyllm.recipes import PretrainConfig, pretrain
    from tinyllm.recipes.pretrain import show
    from tinyllm.train import TrainConfig

    train = dataclass_from_flags(TrainConfig, args)
    _join_processes(train, args.backend)  # several hosts: before the model is built
    run = pretrain(dataclass_from_flags(PretrainConfig, args), train)
    val = "-" if run.val_step is None else f"{show(run.val_loss, '.4f')} (step {run.val_step})"
    print(
        f"step {run.result.step}: train loss {show(run.result.train_loss, '.4f')}, val loss {val}, "
        f"training throughput {show(run.result.tokens_per_second, ',.0f')} tokens/s; model in {run.out}"
    )
    print(run.outcome)
    return 0


# --- tinyllm sft / lora / reward / dpo / distill / eval ------------------------------------------
POST_TRAINING = {  # command (and its recipe's module and function): config class, description
    "sft": (
        "SFTConfig",
        "Supervised fine-tuning of a pretrained model folder on conversations (the checkable "
        "tasks by default), the loss on the assistant's tokens only. Writes the run folder "
        "--out like pretrain does, plus sft.json with the held-out measures before and after.",
    ),
    "lora": (
        "LoRAConfig",
        "Supervised fine-tuning as sft does, with the pretrained model frozen and low-rank "
        "adapters (LoRA) trained on some of its layers. Writes the adapter into --out in "
        "PEFT's format (adapter_config.json, adapter_model.safetensors), with --merge the "
        "model with the adapter merged in (--out/merged), and lora.json with the held-out "
        "measures before and after, the adapter's size and the memory a run keeps against "
        "full fine-tuning. --quantize q4_0 stores the frozen model in 4 bits (QLoRA).",
    ),
    "reward": (
        "RewardConfig",
        "Train a reward model - the SFT model's body with a scalar head - on preference pairs "
        "(right vs wrong answers to the checkable tasks by default) with the Bradley-Terry "
        "loss. Writes the run folder --out like pretrain does, plus reward.json with the "
        "share of held-out test pairs ranked right (pair_accuracy) before and after.",
    ),
    "dpo": (
        "DPOConfig",
        "Direct preference optimisation of an SFT model folder on preference pairs (the right "
        "answer to a checkable task against the model's own wrong one, by default), against "
        "the same model frozen as the reference. Writes the run folder --out like pretrain "
        "does, plus dpo.json with the held-out measures before and after.",
    ),
    "distill": (
        "DistillConfig",
        "Knowledge distillation: train a smaller student - a fresh model sharing the teacher's "
        "tokenizer - on conversations (the checkable tasks by default), from the teacher's "
        "next-token distributions (--mode logits: KL at --temperature mixed with the labels' "
        "cross-entropy by --alpha) or from its generated answers (--mode generations). Writes "
        "the run folder --out like pretrain does, plus distill.json with the held-out measures "
        "of teacher and student: validation loss and task measures.",
    ),
}


def _join_processes(train, backend):
    """Join the other processes of a run over several hosts (``--coordinator`` and its two
    companions) on ``backend`` (a name; None: the current one), before any device is used."""
    from tinyllm.backend import get_backend
    from tinyllm.train.sharding import join_processes

    join_processes(train, get_backend(backend))


def post_training_command(command):
    """The ``configure`` and ``run`` functions of a post-training command: flags from its
    config's fields, then TrainConfig's with the recipe's training defaults."""
    from importlib import import_module

    config_name, description = POST_TRAINING[command]

    def configure(parser):
        from tinyllm.train import TrainConfig

        module = import_module(f"tinyllm.recipes.{command}")
        parser.description = description
        add_dataclass_flags(parser, getattr(module, config_name), "model, data and run folder")
        add_dataclass_flags(parser, TrainConfig, "training", defaults=module.TRAIN_DEFAULTS)

    def run(args):
        from tinyllm.train import TrainConfig

        module = import_module(f"tinyllm.recipes.{command}")
        config = dataclass_from_flags(getattr(module, config_name), args)
        train = dataclass_from_flags(TrainConfig, args)
        _join_processes(train, args.backend)
        return _print_run(getattr(module, command)(config, train))

    return configure, run


def _print_run(run):
    """A post-training run's held-out measures before and after, and where it went."""
    from tinyllm.recipes.pretrain import show

    first, second = getattr(run, "compared", ("before", "after"))
    if run.before:
        print("on held-out test data:")
    for name in run.before:
        after = show(run.after.get(name), ".4g")  # nothing after a stop
        print(f"  {name}: {run.before[name]:.4g} {first}, {after} {second}")
    print(f"step {run.result.step}: train loss {run.result.train_loss:.4f}; model in {run.out}")
    return 0


def configure_eval(parser):
    from tinyllm.recipes.evaluation import EvalConfig

    parser.description = (
        "Measure a chat model folder on held-out data: on the checkable tasks, the exact-match "
        "accuracy of greedy answers (overall and per task), the share of right sampled "
        "answers and the answers' perplexity; on a JSONL file of messages, the perplexity of "
        "its assistant turns; on corpus:<name>, any model folder's (quantized ones too) "
        "perplexity on the corpus's validation text. Prints them and writes eval.json."
    )
    add_dataclass_flags(parser, EvalConfig, "model, data and output")


def run_eval(args):
    from tinyllm.recipes.evaluation import EvalConfig, evaluate

    config = dataclass_from_flags(EvalConfig, args)
    for name, value in evaluate(config).items():
        print(f"{name}: {value:.4g}")
    print(f"wrote {config.out or config.model}/eval.json")
    return 0


# --- tinyllm quantize ---------------------------------------------------------------------------
def configure_quantize(parser):
    from tinyllm.quant import SCHEMES
    from tinyllm.quant.calibration import N_SEQUENCES
    from tinyllm.quant.folder import CALIBRATION_CORPUS

    parser.description = (
        "Store a model folder's linear layers in fewer bits (llama.cpp's Q8_0, Q4_0, Q4_1, "
        "per-channel int8, or float16 / bfloat16; awq and gptq choose Q4_0 values from "
        "calibration text) and write a quantized model folder, with the tokenizer, that "
        "tinyllm eval reads (--data corpus:tinyshakespeare for its validation perplexity)."
    )
    parser.add_argument("directory", metavar="MODEL_DIR", help="the model folder to quantize")
    parser.add_argument(
        "--scheme",
        required=True,
        choices=list(SCHEMES),
        help="the format; awq and gptq: 4-bit Q4_0 fitted on calibration text",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="the quantized model folder")
    parser.add_argument(
        "--include-output",
        action="store_true",
        help="quantize the output layer (lm_head) too; by default it stays float32",
    )
    parser.add_argument(
        "--calibration",
        default=CALIBRATION_CORPUS,
        metavar="CORPUS",
        help="awq/gptq: a shipped corpus or a text file; its training split (the first 90%%), "
        "never the validation text, is read (default: %(default)s)",
    )
    parser.add_argument(
        "--calibration-sequences",
        type=integer(1),
        default=N_SEQUENCES,
        metavar="N",
        help="awq/gptq: calibration windows (default: %(default)s)",
    )
    parser.add_argument(
        "--calibration-length",
        type=integer(1),
        default=None,
        metavar="T",
        help="awq/gptq: tokens per window (default: the model's context length)",
    )


def run_quantize(args):
    from tinyllm.quant import quantize_folder

    include = ("lm_head",) if args.include_output else ()
    sizes = quantize_folder(
        args.directory,
        args.scheme,
        args.out,
        include=include,
        calibration=args.calibration,
        n_sequences=args.calibration_sequences,
        length=args.calibration_length,
    )
    before, after = sizes["before"], sizes["after"]
    print(
        f"{args.scheme}: linear weights {before['linear']:,} -> {after['linear']:,} bytes; "
        f"the whole model {before['total']:,} -> {after['total']:,} bytes; wrote {args.out}"
    )
    return 0


# --- tinyllm speedrun -------------------------------------------------------------------------
def configure_speedrun(parser):
    from tinyllm.backend import NAMES
    from tinyllm.recipes.speedrun import PRESETS

    parser.description = (
        "The whole pipeline: train a BPE tokenizer on the shipped corpus, pretrain a model, "
        "sample from it, fine-tune it on checkable tasks (SFT, into OUT/sft), tune it on "
        "right-vs-wrong answer pairs (DPO, into OUT/dpo), and write OUT/report.md with the "
        "losses, throughput, samples, held-out measures before and after each stage, and "
        "plots. Ctrl-C stops at the next step, saves, and still writes the report."
    )
    parser.add_argument(
        "--out", default="runs/speedrun", help="the run folder (default: %(default)s)"
    )
    parser.add_argument(
        "--backend",
        choices=NAMES,
        default=None,
        help="the array library (default: the current one, numpy unless TINYLLM_BACKEND says)",
    )
    parser.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="the model and training length (default: gpu when the backend computes on a GPU, "
        "else cpu)",
    )
    parser.add_argument(
        "--steps", type=integer(1), help="pretraining's optimizer steps, instead of the preset's"
    )
    parser.add_argument(
        "--sft-steps",
        type=integer(0),
        help="fine-tuning's steps, instead of the preset's (0: skip)",
    )
    parser.add_argument(
        "--dpo-steps", type=integer(0), help="DPO's steps, instead of the preset's (0: skip)"
    )
    parser.add_argument(
        "--eval-examples", type=integer(1),
        help="held-out prompts for each post-training measure, instead of the preset's",
    )  # fmt: skip
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out (on a finished run: only rewrite the report)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_dtype_flag(parser)


def run_speedrun(args):
    from tinyllm.recipes.speedrun import speedrun

    report = speedrun(
        args.out, backend=args.backend, preset=args.preset, resume=args.resume,
        steps=args.steps, sft_steps=args.sft_steps, dpo_steps=args.dpo_steps,
        eval_examples=args.eval_examples, progress=not args.no_progress, dtype=args.dtype,
    )  # fmt: skip
    print(f"wrote {report}")
    return 0
