"""Tasks: the pure parts (calibration, sentences, ranking, entity offsets, grammars and their
parsing) and the TaskService on the tiny model (its answers' shape, its refusals)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers.engine import hf_logits

from glassbox.engine.async_engine import AsyncLLMEngine
from glassbox.errors import ContextLengthExceeded, InvalidRequest
from glassbox.metrics import Metrics
from glassbox.requests.generation import GenerationService
from glassbox.structured.grammar import GrammarCompiler
from glassbox.structured.tasks import (
    MAX_ENTITIES,
    NOT_IN_CONTEXT,
    Answer,
    Sentence,
    TaskService,
    answer_schema,
    continuation_logprobs,
    entity_grammar,
    extractive_summary,
    grounded,
    label_scores,
    locate_entities,
    parse_answer,
    parse_entities,
    rank_sentences,
    split_sentences,
    summary_grammar,
)


@pytest.fixture(scope="module")
def grammars(tiny_tokenizer, tiny_model) -> GrammarCompiler:
    return GrammarCompiler(tiny_tokenizer, tiny_model.config.vocab_size)


def accepts(grammar, tokenizer, text: str) -> bool:
    matcher = grammar.matcher()
    ok = all(matcher.consume(t) for t in tokenizer.encode(text, add_special_tokens=False))
    return ok and matcher.is_accepting()


# --- classify: calibration and scoring -----------------------------------------------------


def test_single_label_scores_sum_to_one_and_follow_the_calibrated_logprobs() -> None:
    scores = label_scores([-1.0, -2.0, -3.0], [-2.0, -2.0, -1.0], multi_label=False)
    assert math.isclose(sum(scores), 1.0)
    # calibrated: 1, 0, -2 -> softmax
    z = math.e + 1 + math.exp(-2)
    assert scores == pytest.approx([math.e / z, 1 / z, math.exp(-2) / z])


def test_calibration_removes_a_labels_prior() -> None:
    """A label the model prefers whatever the text (same margin for the content-free input)
    gets no advantage: all labels tie."""
    assert label_scores([-0.1, -3.0], [-0.1, -3.0], multi_label=False) == pytest.approx([0.5, 0.5])
    assert label_scores([-0.1, -3.0, -1.0], [-0.1, -3.0, -1.0], True) == pytest.approx([0.5, 0.5])


def test_multi_label_scores_are_each_label_against_none() -> None:
    # answers: a, b, none; calibrated: a +2, b -1, none +1
    scores = label_scores([-1.0, -4.0, -1.0], [-3.0, -3.0, -2.0], multi_label=True)
    assert scores == pytest.approx([1 / (1 + math.exp(-1)), 1 / (1 + math.exp(2))])
    assert sum(scores) != pytest.approx(1.0)  # independent, not a distribution


@pytest.fixture
async def tasks(make_engine):
    engine = AsyncLLMEngine(lambda: make_engine(num_blocks=1024, max_model_len=2048))
    generation = GenerationService(engine, Metrics())
    yield TaskService(generation, GrammarCompiler(engine.tokenizer, engine.vocab_size))
    engine.shutdown()


async def test_continuation_logprobs_match_transformers(tasks, tiny_tokenizer, hf_tiny) -> None:
    prompt = tiny_tokenizer.encode("The quick brown fox", add_special_tokens=False)
    conts = [tiny_tokenizer.encode(w, add_special_tokens=False) for w in [" jumps", " is"]]
    got = await tasks.generation.engine.call(
        lambda e: continuation_logprobs(e, [(prompt, c) for c in conts])
    )
    for c, value in zip(conts, got, strict=True):
        logprobs = torch.log_softmax(hf_logits(hf_tiny, prompt + c), dim=-1)
        want = sum(float(logprobs[len(prompt) - 1 + i, t]) for i, t in enumerate(c))
        assert value == pytest.approx(want, abs=1e-3)


async def test_classify_on_the_tiny_model(tasks) -> None:
    labels = ["fox", " dog", "world "]  # come back as sent
    single = await tasks.classify("The quick brown fox jumps.", labels)
    assert sorted(s.label for s in single.scores) == sorted(labels)
    assert math.isclose(sum(s.score for s in single.scores), 1.0, abs_tol=1e-9)
    assert [s.score for s in single.scores] == sorted(
        (s.score for s in single.scores), reverse=True
    )
    assert single.labels == [single.label] == [single.scores[0].label]

    multi = await tasks.classify("The quick brown fox jumps.", labels, True, threshold=0.4)
    assert all(0.0 <= s.score <= 1.0 for s in multi.scores)
    assert multi.labels == [s.label for s in multi.scores if s.score >= 0.4]
    assert multi.label == multi.scores[0].label


@pytest.mark.parametrize(
    ("labels", "multi_label", "words"),
    [
        ([], False, "empty"),
        (["a"], False, "at least two"),
        (["yes", "Yes "], False, "same label"),
        (["a", " "], False, "empty label"),
        (["a", "None"], True, "'none'"),
    ],
)
async def test_bad_labels_are_refused(tasks, labels, multi_label, words) -> None:
    with pytest.raises(InvalidRequest) as exc:
        await tasks.classify("some text", labels, multi_label)
    assert exc.value.param == "labels" and words in exc.value.message


async def test_empty_text_and_bad_threshold_are_refused(tasks) -> None:
    with pytest.raises(InvalidRequest) as exc:
        await tasks.classify("  \n", ["a", "b"])
    assert exc.value.param == "text"
    with pytest.raises(InvalidRequest) as exc:
        await tasks.classify("text", ["a", "b"], True, threshold=1.5)
    assert exc.value.param == "threshold"


async def test_a_text_too_long_for_the_context_is_refused_naming_the_field(tasks) -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 300  # > 2,048 tokens
    for call in (
        tasks.classify(text, ["a", "b"]),
        tasks.extract(text, [("animal", "")]),
        tasks.summarize(text, max_words=10, mode="abstractive"),
    ):
        with pytest.raises(ContextLengthExceeded) as exc:
            await call
        assert exc.value.param == "text" and "Shorten 'text' by at least" in exc.value.message
    with pytest.raises(ContextLengthExceeded) as exc:
        await tasks.answer("Who?", [text])
    assert exc.value.param == "passages"


# --- extract --------------------------------------------------------------------------------


def test_entities_are_located_as_whole_words_at_every_occurrence() -> None:
    text = "Paris is not Parisian. Anne met Paris Hilton in Paris."
    found = locate_entities(text, [("city", "Paris"), ("person", "Anne"), ("city", "Rome")])
    assert [(e.type, e.start, e.end) for e in found] == [
        ("city", 0, 5),
        ("person", 23, 27),
        ("city", 32, 37),
        ("city", 48, 53),
    ]
    assert all(text[e.start : e.end] == e.text for e in found)


def test_parse_entities_keeps_complete_items_without_repeats() -> None:
    out = (
        '{"entities":[{"type":"city","text":"Paris"},{"type":"a \\"q\\"","text":"x"},'
        '{"type":"city","text":"Paris"},{"type":"city","text":"Lon'
    )
    assert parse_entities(out) == [("city", "Paris"), ('a "q"', "x")]


def test_the_entity_grammar_allows_only_the_types_and_substrings_of_the_text(
    grammars, tiny_tokenizer
) -> None:
    text = 'The fox met "Anne Marie" in Paris.'
    g = grammars.lark(entity_grammar(["animal", "person"], text))
    item = '{{"type":"{}","text":"{}"}}'
    valid = (
        '{"entities":[' + item.format("animal", "fox") + "," + item.format("person", "Anne Marie")
    )
    assert accepts(g, tiny_tokenizer, valid + "]}")
    assert accepts(g, tiny_tokenizer, '{"entities":[]}')
    assert json.loads(valid + "]}")["entities"][1]["text"] == "Anne Marie"
    for bad in [
        item.format("place", "Paris"),  # not a type
        item.format("animal", "dog"),  # not in the text
        item.format("animal", "fox met Paris"),  # not a substring
        item.format("person", '\\"Anne Marie\\"'),  # quotes would need escapes
    ]:
        assert not accepts(g, tiny_tokenizer, '{"entities":[' + bad + "]}"), bad
    many = ",".join([item.format("animal", "fox")] * (MAX_ENTITIES + 1))
    assert not accepts(g, tiny_tokenizer, '{"entities":[' + many + "]}")


async def test_extract_on_the_tiny_model_returns_checked_offsets(tasks) -> None:
    text = "The quick brown fox jumps over the lazy dog in Paris."
    result = await tasks.extract(text, [("animal", "an animal"), ("city", "")])
    for e in result.entities:
        assert e.type in {"animal", "city"} and text[e.start : e.end] == e.text


async def test_bad_entity_types_are_refused(tasks) -> None:
    for types, words in [([], "empty"), ([("a", ""), ("a", "x")], "twice"), ([(" ", "")], "name")]:
        with pytest.raises(InvalidRequest) as exc:
            await tasks.extract("text", types)
        assert exc.value.param == "entity_types" and words in exc.value.message


# --- answer ---------------------------------------------------------------------------------


def test_the_answer_schema_limits_citations_to_passage_numbers(grammars, tiny_tokenizer) -> None:
    g = grammars.json_schema(answer_schema(3))
    assert accepts(g, tiny_tokenizer, '{"answer":"Paris","citations":[3,1]}')
    assert accepts(g, tiny_tokenizer, '{"answer":"' + NOT_IN_CONTEXT + '","citations":[]}')
    for bad in ["[0]", "[4]", "[]"]:
        assert not accepts(g, tiny_tokenizer, '{"answer":"Paris","citations":' + bad + "}"), bad
    assert not accepts(g, tiny_tokenizer, '{"answer":"a \\"b\\"","citations":[1]}')


def test_parse_answer_gives_indices_from_zero() -> None:
    assert parse_answer('{"answer":" Paris ","citations":[3,1,3]}') == Answer("Paris", [0, 2])
    assert parse_answer('{"answer":"Not in the context","citations":[1]}') == Answer(
        NOT_IN_CONTEXT, []
    )


def test_citations_of_unrelated_passages_are_dropped() -> None:
    passages = ["The Eiffel Tower is in Paris.", "Everest is 8,849 metres high."]
    answer = grounded(Answer("It is in Paris", [0, 1]), "Where is the Eiffel Tower?", passages)
    assert answer == Answer("It is in Paris", [0])
    assert grounded(Answer("Shakespeare", [0, 1]), "Who wrote Hamlet?", passages) == Answer(
        NOT_IN_CONTEXT, []
    )


async def test_answer_on_the_tiny_model(tasks) -> None:
    passages = ["The quick brown fox.", "Paris is the capital of France."]
    result = await tasks.answer("What is the capital of France?", passages)
    assert set(result.citations) <= {0, 1}
    assert (result.answer == NOT_IN_CONTEXT) == (result.citations == [])


async def test_bad_answer_input_is_refused(tasks) -> None:
    for question, passages, param in [
        ("Who?", [], "passages"),
        ("", ["a"], "question"),
        ("Who?", ["a", " "], "passages[1]"),
    ]:
        with pytest.raises(InvalidRequest) as exc:
            await tasks.answer(question, passages)
        assert exc.value.param == param


# --- summarize ------------------------------------------------------------------------------


def test_split_sentences_gives_offsets_and_respects_abbreviations() -> None:
    text = (
        "Dr. Smith met J. R. R. Tolkien at 5 p.m. in Oxford! Did they talk?  "
        'He said "yes." Then they left\n\nA new paragraph without a period'
    )
    sentences = split_sentences(text)
    assert [s.text for s in sentences] == [
        "Dr. Smith met J. R. R. Tolkien at 5 p.m. in Oxford!",
        "Did they talk?",
        'He said "yes."',
        "Then they left",
        "A new paragraph without a period",
    ]
    assert all(text[s.start : s.end] == s.text for s in sentences)


def test_focus_keywords_rank_first_then_centrality() -> None:
    sentences = [
        Sentence(t, 0, 0)
        for t in [
            "The park opens in spring.",  # park 5, opens 1, spring 1: mean 2.33
            "Residents want the park and more park trees.",  # 1, 1, 5, 1: 2
            "The budget is tight.",  # budget 2, tight 1: 1.5
            "The park budget covers the park.",  # 5, 2, 1: 2.67
        ]
    ]
    assert rank_sentences(sentences, []) == [3, 0, 1, 2]
    assert rank_sentences(sentences, ["BUDGET"]) == [3, 2, 0, 1]
    assert rank_sentences(sentences, ["budget", "spring"]) == [3, 0, 2, 1]
    assert rank_sentences(sentences, ["bud"]) == [3, 0, 1, 2]  # whole words only


def test_extractive_summary_takes_whole_sentences_in_order_within_the_limits() -> None:
    text = (
        "The park opens in spring. Residents asked for trees. The park has a new playground "
        "near the park gate. Parking is free."
    )
    summary = extractive_summary(text, None, 2, ["trees"])
    assert summary.mode == "extractive" and len(summary.sentences) == 2
    # "trees" first; then the most central: park (3 times), opens, spring
    assert [s.text for s in summary.sentences] == [
        "The park opens in spring.",
        "Residents asked for trees.",
    ]
    assert summary.text == " ".join(s.text for s in summary.sentences)
    assert all(text[s.start : s.end] == s.text for s in summary.sentences)
    # the central sentence (5 words), then the next that fits: the 10- and 4-word ones do not
    short = extractive_summary(text, 8, None, [])
    assert short.text == "The park opens in spring. Parking is free."
    with pytest.raises(InvalidRequest) as exc:
        extractive_summary(text, 2, None, [])
    assert exc.value.param == "max_words" and "3 words" in exc.value.message


def test_the_summary_grammar_bounds_words_and_sentences(grammars, tiny_tokenizer) -> None:
    words = grammars.lark(summary_grammar(5, None))
    assert accepts(words, tiny_tokenizer, "One two three. Four five!")
    assert not accepts(words, tiny_tokenizer, "One two three. Four five six.")
    assert not accepts(words, tiny_tokenizer, "One two three")  # sentences end with . ! ?
    assert not accepts(words, tiny_tokenizer, "one-two-three.")
    assert not accepts(words, tiny_tokenizer, "one,two,three.")
    sentences = grammars.lark(summary_grammar(None, 2))
    assert accepts(sentences, tiny_tokenizer, "The fox, quick and brown, jumps. The dog sleeps.")
    assert not accepts(sentences, tiny_tokenizer, "One. Two. Three.")


async def test_abstractive_summary_on_the_tiny_model_respects_the_limits(tasks) -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 3
    summary = await tasks.summarize(text, max_words=6, mode="abstractive")
    assert summary.mode == "abstractive" and summary.finish_reason in {"stop", "length"}
    assert 1 <= len(summary.text.split()) <= 6


async def test_bad_summary_input_is_refused(tasks) -> None:
    for kwargs, param in [
        ({"text": ""}, "text"),
        ({"text": "a.", "max_words": 0}, "max_words"),
        ({"text": "a.", "max_sentences": 0}, "max_sentences"),
        ({"text": "a.", "focus": ["ok", " "]}, "focus"),
        ({"text": "a.", "mode": "poetic"}, "mode"),
    ]:
        with pytest.raises(InvalidRequest) as exc:
            await tasks.summarize(**kwargs)
        assert exc.value.param == param
