"""`tinyllm chat` and ``ChatSession``: each reply is what greedy ``generate`` gives the
rendered conversation, the end-of-turn token ends it unseen, the history is trimmed to the
context with the system message kept, /reset, and leaving by /quit, end of input or Ctrl-C
(exit 0, no traceback); Ctrl-C during a reply cancels only that reply."""

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tinyllm.cli import main
from tinyllm.data import CharVocab
from tinyllm.infer import generate
from tinyllm.infer.chat import ChatSession, chat_loop, message
from tinyllm.infer.engine import Engine, SamplingParams
from tinyllm.models import Transformer, get_preset
from tinyllm.tokenizer import Tokenizer, format_chat

ROOT = Path(__file__).resolve().parents[1]
TEXT = "You are a helpful assistant. What is the capital of France? Paris, of course. " * 20
SYSTEM = "Be brief."


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(TEXT, vocab_size=300)


def model_of(tokenizer, context_length=96, seed=0):
    config = get_preset(
        "tiny-llama", vocab_size=tokenizer.vocab_size, context_length=context_length,
        d_model=32, n_layer=2, n_head=4, d_ff=64, init_std=0.3,
    )  # fmt: skip
    return Transformer(config, seed=seed)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tokenizer):
    """A model folder as ``tinyllm pretrain`` leaves one: config, weights, tokenizer."""
    path = tmp_path_factory.mktemp("chat-model")
    model_of(tokenizer).save_pretrained(path)
    tokenizer.save(path)
    return path


def session_of(model, tokenizer, max_tokens=12, system=SYSTEM, temperature=0, seed=None):
    engine = Engine(model, tokenizer, max_batch=1, block_size=16)
    sampling = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed)
    return ChatSession(engine, sampling, system=system)


def greedy_reply(model, tokenizer, messages, max_tokens):
    """The reply greedy ``generate`` gives the rendered ``messages``: its text (without the
    special token that ends it) and whether one did."""
    ids = format_chat(tokenizer, messages, add_generation_prompt=True).ids
    stops = list(tokenizer.special_tokens.values())  # <|end|>, or a marker past it
    new = generate(model, [ids], max_tokens, temperature=0, stop_token_ids=stops)[0, len(ids) :]
    new = new[new >= 0].tolist()  # (no padding after a stop with one row; kept for clarity)
    stopped = bool(new) and new[-1] in stops
    return tokenizer.decode(new[:-1] if stopped else new), stopped


def test_each_reply_is_greedy_generate_on_the_rendered_conversation(folder, tokenizer):
    model = Transformer.from_pretrained(folder)
    session = session_of(model, tokenizer)
    conversation = [message("system", SYSTEM)]
    for text in ("What is the capital of France?", "And of course?"):
        conversation.append(message("user", text))
        expected, stopped = greedy_reply(model, tokenizer, conversation, 12)
        pieces = list(session.reply(text))
        assert "".join(pieces) == expected and len(pieces) > 1  # streamed, piece by piece
        assert session.finish_reason == ("stop" if stopped else "length")
        conversation.append(message("assistant", expected))
        assert session.messages == conversation
    # the second prompt began with the first one's full blocks: found in the cache, not rerun
    assert session.engine.counts["reused_tokens"] >= 16
    assert session.engine.cache.blocks_in_use == 0 and not session.engine.has_work()


def test_the_end_of_turn_token_ends_a_reply_unseen(tokenizer):
    model = model_of(tokenizer)
    end = tokenizer.special_tokens["<|end|>"]
    question = [message("user", "What is the capital?")]
    plain, _ = greedy_reply(model, tokenizer, question, 20)
    ids = format_chat(tokenizer, question, add_generation_prompt=True).ids
    fourth = generate(model, [ids], 4, temperature=0)[0, -1]
    weight = model.lm_head.weight.data  # (d_model, vocab): <|end|> scores as the 4th token, more
    weight[:, end] = 1.5 * weight[:, fourth]
    expected, stopped = greedy_reply(model, tokenizer, question, 20)
    assert stopped and len(expected) < len(plain)  # the model now ends its turn early
    session = session_of(model, tokenizer, max_tokens=20, system=None)
    text = "".join(session.reply("What is the capital?"))
    assert text == expected and "<|end|>" not in text and session.finish_reason == "stop"
    assert session.messages[-1] == message("assistant", expected)


def test_trimming_drops_the_oldest_turns_keeps_the_system_message_and_fits(tokenizer):
    model = model_of(tokenizer, context_length=96)
    session = session_of(model, tokenizer, max_tokens=16)
    turns = [
        (message("user", f"Question {i}: the capital?"), message("assistant", f"Paris, {i}."))
        for i in range(8)
    ]
    session.turns = list(turns)
    ids = session.fit("What is the capital of France?")
    assert len(ids) + 16 <= 96
    kept = len(session.turns)
    assert 0 < kept < 8 and session.turns == turns[-kept:] and session.dropped == 8 - kept
    system = format_chat(tokenizer, [message("system", SYSTEM)]).ids
    assert ids[: len(system)] == system  # the system message stays first
    rendered = [message("system", SYSTEM), *[m for t in turns[-kept:] for m in t]]
    new = message("user", "What is the capital of France?")
    assert ids == format_chat(tokenizer, [*rendered, new], add_generation_prompt=True).ids
    one_more = [message("system", SYSTEM), *[m for t in turns[-kept - 1 :] for m in t], new]
    longer = format_chat(tokenizer, one_more, add_generation_prompt=True).ids
    assert len(longer) + 16 > 96  # no turn was dropped that would have fitted

    session.turns = list(turns)
    with pytest.raises(ValueError, match=r"does not fit the context of 96 tokens"):
        session.fit("Paris " * 100)
    assert session.turns == turns and session.dropped == 8 - kept  # nothing dropped for it

    # replies through the engine: the prompt and reply always fit, the system message stays
    session = session_of(model, tokenizer, max_tokens=16)
    for i in range(6):
        "".join(session.reply(f"Tell me about the capital, {i}."))
        assert session.finish_reason == "length" and session.turns  # answered, remembered
        assert session.messages[0] == message("system", SYSTEM)
        assert session.messages[-2] == message("user", f"Tell me about the capital, {i}.")
    assert session.dropped > 0


def test_reset_forgets_the_turns_and_keeps_the_system_message(tokenizer):
    model = model_of(tokenizer)
    session = session_of(model, tokenizer, max_tokens=4)
    first = "".join(session.reply("Paris?"))
    "".join(session.reply("France?"))
    session.reset()
    assert session.messages == [message("system", SYSTEM)]
    assert "".join(session.reply("Paris?")) == first  # as if the chat had just begun


def test_a_scripted_session_through_standard_input(folder, tokenizer, monkeypatch, capsys):
    model = Transformer.from_pretrained(folder)
    lines = ["What is the capital?", "/reset", "What is the capital?", "", "Paris?", "/quit",
             "never read"]  # fmt: skip
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    flags = ["--temperature", "0", "--max-new-tokens", "8", "--system", SYSTEM]
    assert main(["chat", str(folder), *flags]) == 0
    out, err = capsys.readouterr()
    system = [message("system", SYSTEM)]
    first, _ = greedy_reply(model, tokenizer, [*system, message("user", lines[0])], 8)
    history = [*system, message("user", lines[0]), message("assistant", first)]
    second, _ = greedy_reply(model, tokenizer, [*history, message("user", "Paris?")], 8)
    # the prompt "> " is written for every line read; an empty line asks again
    assert out == f"> {first}\n> > {first}\n> > {second}\n> "
    assert "(the conversation is cleared)" in err and "Traceback" not in err


def test_a_seed_makes_sampled_replies_repeat(tokenizer):
    model = model_of(tokenizer)
    replies = []
    for _ in range(2):
        session = session_of(model, tokenizer, max_tokens=10, temperature=1.0, seed=5)
        replies.append(["".join(session.reply("Paris?")), "".join(session.reply("Paris?"))])
    assert replies[0] == replies[1]  # the same seeds, reply by reply
    assert replies[0][0] != replies[0][1]  # the second reply has the next seed


def test_ctrl_c_during_a_reply_cancels_it_and_returns_to_the_prompt(tokenizer):
    model = model_of(tokenizer, context_length=128)
    session = session_of(model, tokenizer, max_tokens=100)

    class InterruptedOnce(io.StringIO):
        """Standard output where the first piece written comes with a Ctrl-C."""

        interrupted = False

        def write(self, text):
            if not self.interrupted:
                self.interrupted = True
                os.kill(os.getpid(), signal.SIGINT)
            return super().write(text)

    requests, add_request = [], session.engine.add_request

    def recorded(*args, **kwargs):
        requests.append(add_request(*args, **kwargs))
        return requests[-1]

    session.engine.add_request = recorded
    out, err = InterruptedOnce(), io.StringIO()
    handler = signal.getsignal(signal.SIGINT)
    read = reader(["What is the capital?", "Paris?"])
    assert chat_loop(session, read=read, out=out, err=err) == 0
    assert signal.getsignal(signal.SIGINT) is handler  # restored after each reply
    assert "(reply cancelled" in err.getvalue()
    first = requests[0].sequences[0]  # stopped at the next step, long before its 100 tokens
    assert first.finish_reason == "cancelled" and len(first.new_tokens) < 10
    question = [message("system", SYSTEM), message("user", "Paris?")]
    expected, _ = greedy_reply(model, tokenizer, question, 100)
    assert session.messages == [*question, message("assistant", expected)]  # the first forgotten
    assert out.getvalue().endswith(expected + "\n\n")  # (the last newline: end of input)
    assert session.engine.cache.blocks_in_use == 0

    def interrupted(prompt):
        raise KeyboardInterrupt

    assert chat_loop(session, read=interrupted, out=out, err=err) == 0  # Ctrl-C at the prompt


def reader(lines):
    """A ``read(prompt)`` giving ``lines`` one by one, then end of input."""
    lines = iter(lines)

    def read(prompt):
        for line in lines:
            return line
        raise EOFError

    return read


def start(folder, *flags):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "tinyllm.cli", "chat", str(folder), *flags], env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_end_of_input_and_ctrl_c_at_the_prompt_leave_with_exit_0(folder, tokenizer):
    process = start(folder, "--temperature", "0", "--max-new-tokens", "6")
    out, err = process.communicate(b"What is the capital?\n", timeout=120)
    model = Transformer.from_pretrained(folder)
    reply, _ = greedy_reply(model, tokenizer, [message("user", "What is the capital?")], 6)
    assert process.returncode == 0, err.decode()
    assert out.decode() == f"> {reply}\n> \n" and "Traceback" not in err.decode()

    process = start(folder)
    assert process.stdout.read(2) == b"> "  # waiting at the prompt
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0 and out == b"\n" and b"Traceback" not in err


def test_bad_folders_and_flags_are_clear_errors(tmp_path, folder, capsys):
    CharVocab("abc").save(tmp_path)
    model = Transformer(get_preset("tiny", n_layer=1, d_model=16, vocab_size=3), seed=0)
    model.save_pretrained(tmp_path)
    assert main(["chat", str(tmp_path)]) == 2
    assert "lacks the chat special tokens" in capsys.readouterr().err
    assert main(["chat", str(folder), "--max-new-tokens", "96"]) == 2
    assert "max_tokens=96 leaves no room for a prompt in the context of 96" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        main(["chat", str(folder), "--top-p", "2"])
    assert "'2' is not a probability in (0, 1]" in capsys.readouterr().err
