"""`tinyllm tokenizer train|encode`: the command writes a tokenizer that the library reads back."""

from tinyllm.cli import main
from tinyllm.tokenizer import Tokenizer


def test_train_then_encode(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat; the dog sat on the log.\n" * 50, encoding="utf-8")
    out = tmp_path / "tok"
    assert (
        main(
            [
                "tokenizer",
                "train",
                "--corpus",
                str(corpus),
                "--vocab-size",
                "270",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    tokenizer = Tokenizer.load(out)
    assert tokenizer.vocab_size == 270

    assert main(["tokenizer", "encode", "--tokenizer", str(out), "the cat<|endoftext|>"]) == 0
    printed = capsys.readouterr().out.split()
    assert [int(i) for i in printed] == tokenizer.encode("the cat<|endoftext|>")

    assert (
        main(
            [
                "tokenizer",
                "encode",
                "--tokenizer",
                str(out / "tokenizer.json"),
                "--show-tokens",
                "the dog",
            ]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [str(i) for i in tokenizer.encode("the dog")]


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert (
        main(
            [
                "tokenizer",
                "train",
                "--corpus",
                "no-such-corpus",
                "--vocab-size",
                "300",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "unknown corpus 'no-such-corpus'" in capsys.readouterr().err
    assert main(["tokenizer", "train", "--vocab-size", "10", "--out", str(tmp_path)]) == 2
    assert "vocab_size=10 is too small" in capsys.readouterr().err
