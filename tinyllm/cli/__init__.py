"""The ``tinyllm`` command. Each subcommand is a ``configure`` / ``run`` pair in one of this
package's modules (``tools``, ``training``, ``generation``; shared flags in ``flags``), listed
with its one-line help in ``COMMANDS`` below.

tinyllm info                     version, and which backends work here (and why not)
tinyllm grade [DIR]              grade the exercises (--solutions, --json results.json)
tinyllm tokenizer train|encode   train a byte-level BPE (writes tokenizer.json), encode text
tinyllm pretrain                 train a model on a corpus (flags map onto TrainConfig etc.)
tinyllm sft | reward | dpo       post-training: fine-tune on chats, a reward model, DPO
tinyllm lora                     fine-tune LoRA adapters on a frozen model (PEFT's format)
tinyllm distill                  a smaller student learns from a chat model (distillation)
tinyllm eval                     measure a chat model on held-out tasks, any model on a corpus
tinyllm quantize DIR             a quantized model folder: int8, Q8_0, Q4_0, Q4_1, f16, bf16, AWQ, GPTQ
tinyllm export-gguf DIR          a GGUF file for llama.cpp (f32, f16, q8_0, q4_0, q4_1)
tinyllm generate DIR             stream text from a trained model folder (alias: sample)
tinyllm chat DIR                 chat with a model folder in the terminal
tinyllm speedrun                 the main job: tokenizer, pretraining, SFT, DPO and a report
tinyllm serve DIR                an OpenAI-compatible server and chat page (the serve extra)

Ctrl-C (or SIGTERM) during training saves a checkpoint and stops; a second Ctrl-C leaves
at once with exit code 130 and a one-line message.
"""

import argparse
import os
import signal
import sys
import threading

import tinyllm

from . import generation, tools, training

COMMANDS = {  # name: (one-line help, configure, run)
    "info": ("show the version and which backends (NumPy, CuPy, JAX) work here", tools.configure_info, tools.run_info),
    "grade": ("grade the exercises and print a score table", tools.configure_grade, tools.run_grade),
    "tokenizer": ("train a byte-level BPE tokenizer, or encode text with one", tools.configure_tokenizer, tools.run_tokenizer),
    "pretrain": ("train a language model on a corpus", training.configure_pretrain, training.run_pretrain),
    "sft": ("fine-tune a pretrained model to answer in chats (SFT)", *training.post_training_command("sft")),
    "lora": ("fine-tune low-rank adapters on a frozen model (LoRA)", *training.post_training_command("lora")),
    "reward": ("train a reward model on preference pairs", *training.post_training_command("reward")),
    "dpo": ("tune a chat model on preference pairs (DPO)", *training.post_training_command("dpo")),
    "distill": ("train a smaller student on a chat model's outputs", *training.post_training_command("distill")),
    "eval": ("measure a chat model on held-out tasks, or any model on a corpus", training.configure_eval, training.run_eval),
    "quantize": ("store a model folder's weights in 8 or 4 bits (llama.cpp's formats)", training.configure_quantize, training.run_quantize),
    "export-gguf": ("write a model folder as a GGUF file for llama.cpp", tools.configure_export_gguf, tools.run_export_gguf),
    "generate": ("stream text from a trained model folder (alias: sample)", generation.configure_sample, generation.run_sample),
    "chat": ("chat with a model folder in the terminal, replies streamed", generation.configure_chat, generation.run_chat),
    "speedrun": ("the whole pipeline in one go: tokenizer, training, samples, report", training.configure_speedrun, training.run_speedrun),
    "serve": ("serve a model folder: an OpenAI-compatible API and a chat page", generation.configure_serve, generation.run_serve),
}  # fmt: skip

ALIASES = {"generate": ["sample"]}  # the name the first version of the command had
INTERRUPTED = 130  # the exit status after a second Ctrl-C: 128 + SIGINT, as a shell reports it

DESCRIPTION = (
    "tinyllm builds a small language model from scratch - tokenizer, training, sampling - "
    "in code made to be read. Train one on Shakespeare in minutes on a laptop CPU "
    "(tinyllm speedrun), or a bigger one on a GPU; the models load in Hugging Face "
    "transformers."
)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="tinyllm",
        description=DESCRIPTION,
        epilog="Run 'tinyllm COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"tinyllm {tinyllm.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    sub.required = True
    for name, (summary, configure, run) in COMMANDS.items():
        aliases = ALIASES.get(name, [])
        configure(sub.add_parser(name, aliases=aliases, help=summary, description=summary))
        sub.choices[name].set_defaults(run=run)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError, tinyllm.BackendUnavailable) as err:
        print(f"tinyllm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C (the first stops training and saves)
        return _interrupted(args)
    except Exception as err:
        # The same Ctrl-C landing inside a module's first import (matplotlib's, for the loss
        # plot the first Ctrl-C's save draws) comes out as another error: a RuntimeError
        # while a class is built, an ImportError from a compiled module's initialisation
        if _raised_by_interrupt(err):
            return _interrupted(args)
        raise


def command():
    """The ``tinyllm`` command (and ``python -m tinyllm.cli``): ``main``'s status as the
    exit status. After an interrupt the process leaves at once, without Python's shutdown:
    a Ctrl-C that landed inside a compiled module's initialisation can leave the
    interpreter unable to shut down cleanly (seen under load, after the one line: an abort,
    "Fatal Python error: PyThreadState_Get ... finalizing"). Files are closed by then."""
    code = main()
    if code == INTERRUPTED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _raised_by_interrupt(err):
    """Whether a KeyboardInterrupt is among the causes of ``err``."""
    while err is not None:
        if isinstance(err, KeyboardInterrupt):
            return True
        err = err.__cause__ or err.__context__
    return False


def _interrupted(args):
    """Say so in one line, with the last checkpoint, and return 130."""
    if threading.current_thread() is threading.main_thread():
        # Leaving now: one more Ctrl-C while the line is printed and the interpreter
        # shuts down would end the process by the signal itself (-2), not with 130
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    fresh_line = "\n" if sys.stderr.isatty() else ""  # past a progress bar or "^C"
    message = f"tinyllm {args.command}: interrupted{_last_checkpoint(args)}"
    print(fresh_line + message, file=sys.stderr)
    return INTERRUPTED


def _last_checkpoint(args):
    """ "; the last checkpoint is ..." for a command with a run folder, else nothing."""
    if getattr(args, "out", None) is None:
        return ""
    from tinyllm.train import latest_checkpoint

    latest = latest_checkpoint(args.out)
    if latest is None:
        return f"; no checkpoint was saved in {args.out}"
    return f"; the last checkpoint is {latest} (continue with --resume)"
