"""Streaming text: stop strings never emitted nor split, characters never split, finish reasons."""

from __future__ import annotations

import pytest

from glassbox.engine.detokenizer import IncrementalDetokenizer
from glassbox.engine.sequence import SamplingParams

TEXT = "Hello world! How are you today? STOP here. END of text. Once upon a time."


def _stream(tokenizer, ids: list[int], stop: list[str], prompt: list[int] | None = None):
    """Feed tokens one at a time the way the engine does; the deltas and the stop flag."""
    det = IncrementalDetokenizer(tokenizer, prompt or [], stop)
    deltas = []
    for tok in ids:
        det.add(tok)
        deltas.append(det.take())
        if det.stopped:
            break
    deltas.append(det.take(final=True))
    return deltas, det.stopped


def _check_prefix_stream(
    deltas: list[str], expected: str, stop: list[str], valid_utf8: bool = True
) -> None:
    emitted = ""
    for d in deltas:
        assert not valid_utf8 or "\ufffd" not in d
        assert not any(s in d for s in stop)
        emitted += d
        # Append-only: what was emitted is always a prefix of the final text, so nothing
        # shown to a client (e.g. the start of a stop string) is ever taken back.
        assert expected.startswith(emitted), (emitted, expected)
    assert emitted == expected


@pytest.mark.parametrize(
    "stop",
    [["STOP"], ["END"], ["ay? ST"], ["o w"], ["ZZZ", "here."], ["upon a time."], ["t"]],
)
def test_stop_strings_are_never_emitted_nor_split(tiny_tokenizer, stop):
    ids = tiny_tokenizer.encode(TEXT, add_special_tokens=False)
    deltas, stopped = _stream(tiny_tokenizer, ids, stop, prompt=tiny_tokenizer.encode("Hi"))
    cut = min(i for i in (TEXT.find(s) for s in stop) if i >= 0)
    assert stopped
    _check_prefix_stream(deltas, TEXT[:cut], stop)


def test_partial_stop_string_is_held_back_then_released(tiny_tokenizer):
    # "STOP here" starts like the stop string "STOP!" but is not it: held, then released.
    ids = tiny_tokenizer.encode(TEXT, add_special_tokens=False)
    deltas, stopped = _stream(tiny_tokenizer, ids, ["STOP!"])
    assert not stopped
    _check_prefix_stream(deltas, TEXT, ["STOP!"])
    # At some point "ST" (a prefix of the stop string) was the tail and was held back.
    emitted = ""
    held = False
    for d in deltas[:-1]:
        emitted += d
        held |= TEXT[: len(emitted) + 2].endswith("ST") and not emitted.endswith("ST")
    assert held


MULTIBYTE = "Café naïve — 😀 über 日本語 ok 🎉!"


def test_multibyte_characters_are_never_split(tiny_tokenizer):
    ids = tiny_tokenizer.encode(MULTIBYTE, add_special_tokens=False)
    # The tiny byte-level vocabulary splits these characters across tokens.
    assert any("\ufffd" in tiny_tokenizer.decode([t]) for t in ids)
    deltas, _ = _stream(tiny_tokenizer, ids, [])
    _check_prefix_stream(deltas, MULTIBYTE, [])


def test_stop_string_right_after_a_multibyte_character(tiny_tokenizer):
    ids = tiny_tokenizer.encode(MULTIBYTE, add_special_tokens=False)
    stop = ["über"]
    deltas, stopped = _stream(tiny_tokenizer, ids, stop)
    assert stopped
    _check_prefix_stream(deltas, MULTIBYTE[: MULTIBYTE.find("über")], stop)


# --- through the engine ----------------------------------------------------------------


def _greedy(n: int, **kw) -> SamplingParams:
    return SamplingParams(max_tokens=n, temperature=0.0, **kw)


def _stream_engine(engine, prompt, params):
    seq = engine.add_request(prompt, params)
    deltas, reason, tokens = [], None, []
    while engine.has_work():
        for out in engine.step():
            deltas.append(out.text)
            tokens += out.token_ids
            reason = out.finish_reason or reason
    return seq, deltas, tokens, reason


def test_engine_stops_at_a_stop_string_of_its_own_output(engine, tiny_tokenizer):
    prompt = tiny_tokenizer.encode("Once upon a time")
    full = engine.generate([prompt], _greedy(40, ignore_eos=True))[0]["text"]
    visible = [i for i, ch in enumerate(full) if ch.strip() and ch != "\ufffd"]
    assert len(visible) > 12, full
    i = visible[8]
    stop = [full[i : i + 2]]
    cut = full.find(stop[0])
    _, deltas, _, reason = _stream_engine(engine, prompt, _greedy(40, ignore_eos=True, stop=stop))
    assert reason == "stop"
    # The random tiny model emits invalid byte sequences: replacement characters are real.
    _check_prefix_stream(deltas, full[:cut], stop, valid_utf8=False)


def test_stop_token_ids_end_the_sequence(engine, tiny_tokenizer):
    prompt = tiny_tokenizer.encode("Hello world")
    ids = engine.generate([prompt], _greedy(30, ignore_eos=True))[0]["token_ids"]
    stop_id = ids[4]
    first = ids.index(stop_id)
    _, _, tokens, reason = _stream_engine(
        engine, prompt, _greedy(30, ignore_eos=True, stop_token_ids=[stop_id])
    )
    assert reason == "stop"
    assert tokens == ids[: first + 1]


def test_max_tokens_finishes_with_length(engine):
    seq, _, tokens, reason = _stream_engine(engine, [1, 2, 3], _greedy(7, ignore_eos=True))
    assert reason == "length" and len(tokens) == 7 and seq.num_output_tokens == 7


def test_eos_stops_unless_ignore_eos(engine, tiny_tokenizer):
    eos = tiny_tokenizer.hf.eos_token_id
    force_eos = {eos: 100.0}
    _, deltas, tokens, reason = _stream_engine(engine, [1, 2, 3], _greedy(9, logit_bias=force_eos))
    assert reason == "stop" and tokens == [eos]
    assert "".join(deltas) == ""  # the special token's text is not emitted
    _, _, tokens, reason = _stream_engine(
        engine, [1, 2, 3], _greedy(9, logit_bias=force_eos, ignore_eos=True)
    )
    assert reason == "length" and tokens == [eos] * 9


@pytest.mark.slow
def test_real_tokenizer_multibyte_and_stop_strings():
    from glassbox.config import Settings
    from glassbox.models.tokenizer import Tokenizer
    from glassbox.runtime import resolve

    tok = Tokenizer(resolve(Settings()).directory)
    text = "Voilà — crème brûlée 🍮 for 2 people, 日本語 too. ¡Olé! Done."
    ids = tok.encode(text, add_special_tokens=False)
    deltas, _ = _stream(tok, ids, [], prompt=tok.encode("Dessert:"))
    _check_prefix_stream(deltas, text, [])
    for stop in (["brûlée"], ["🍮"], ["語 t"], ["Olé!"]):
        deltas, stopped = _stream(tok, ids, stop)
        assert stopped
        _check_prefix_stream(deltas, text[: text.find(stop[0])], stop)


def test_nul_comes_out_as_the_replacement_character(tiny_tokenizer):
    # The byte-level vocabulary has a token for the byte 0x00; a sampled one must not put
    # NUL into the reply, which the server would refuse when a client sends it back.
    ids = tiny_tokenizer.encode("a\x00b", add_special_tokens=False)
    assert "\x00" in tiny_tokenizer.decode(ids)
    deltas, _ = _stream(tiny_tokenizer, ids, [])
    assert "".join(deltas) == "a\ufffdb"
