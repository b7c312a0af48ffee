"""The ``tinyllm`` command's help: every subcommand listed, every flag explained, the valid
choices named; and ``tinyllm sample`` refusing bad flags before it loads anything."""

import dataclasses

import numpy as np
import pytest

from tinyllm.backend import NAMES as BACKENDS
from tinyllm.cli import ALIASES, COMMANDS, build_parser, main
from tinyllm.infer import generate
from tinyllm.models import PRESETS, Transformer, get_preset
from tinyllm.optim import SCHEDULES
from tinyllm.recipes import PretrainConfig
from tinyllm.train import TrainConfig


def help_of(capsys, *args):
    with pytest.raises(SystemExit) as exit:
        main([*args, "--help"])
    assert exit.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: join them


def test_top_level_help_lists_every_command_with_its_summary(capsys):
    text = help_of(capsys)
    for name, (summary, _, _) in COMMANDS.items():
        aliases = "".join(f" ({alias})" for alias in ALIASES.get(name, []))
        assert f"{name}{aliases} {' '.join(summary.split())}" in text
    assert "language model" in text and "configure" not in text  # for users, not internals


def test_every_pretrain_flag_says_what_it_means(capsys):
    parser = build_parser()
    (pretrain,) = [a.choices["pretrain"] for a in parser._subparsers._group_actions]
    flags = {a.dest: a for a in pretrain._actions if a.dest != "help"}
    fields = dataclasses.fields(PretrainConfig) + dataclasses.fields(TrainConfig)
    assert sorted(flags) == sorted(f.name for f in fields)
    for name, action in flags.items():
        meaning = action.help.split("(default:")[0].strip()
        assert len(meaning) > 10, f"--{name} has no help beyond its default"
    listed = {"preset": PRESETS, "schedule": SCHEDULES, "tokenizer": ("char", "bpe")}
    for name, choices in {**listed, "backend": BACKENDS}.items():
        assert f"one of: {', '.join(choices)}" in flags[name].help
    assert "one of: char, bpe" in help_of(capsys, "pretrain")  # and argparse prints it


def test_every_flag_of_every_command_has_help():
    (commands,) = build_parser()._subparsers._group_actions
    for name, parser in commands.choices.items():
        for action in parser._actions:
            assert action.help, f"tinyllm {name} {action.option_strings or action.dest}: no help"


def test_a_value_outside_the_choices_is_refused_naming_them(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["pretrain", "--schedule", "cosin"])
    assert exit.value.code == 2
    assert "invalid choice 'cosin'; expected one of cosine, linear, constant" in (
        capsys.readouterr().err
    )


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--tokens", "-3", "'-3' is not an integer >= 1"),
        ("--tokens", "many", "'many' is not an integer >= 1"),
        ("--num-samples", "0", "'0' is not an integer >= 1"),
        ("--temperature", "-0.5", "'-0.5' is not a number >= 0"),
        ("--top-k", "0", "'0' is not an integer >= 1"),
        ("--top-p", "1.5", "'1.5' is not a probability in (0, 1]"),
        ("--seed", "-1", "'-1' is not an integer >= 0"),
        ("--min-p", "0", "'0' is not a probability in (0, 1]"),
        ("--repetition-penalty", "-1", "'-1' is not a number >= 0"),
    ],
)
def test_bad_sample_flags_are_refused(tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as exit:
        main(["sample", str(tmp_path), flag, value])
    assert exit.value.code == 2
    err = capsys.readouterr().err  # (a flag with two names is shown as --a/--b)
    assert f"argument {flag}: {message}" in err or f"/{flag}: {message}" in err


def test_generate_refuses_a_negative_token_count():
    model = Transformer(get_preset("tiny", n_layer=1, d_model=16, n_head=2), seed=0)
    with pytest.raises(ValueError, match=r"max_new_tokens=-3: expected an integer >= 0"):
        generate(model, np.array([[1]]), -3)
    assert generate(model, np.array([[1]]), 0).tolist() == [[1]]
