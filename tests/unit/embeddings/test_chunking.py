"""Chunking with the bundled embedding model's tokenizer: properties over generated texts and
options (hypothesis), and the options' validation.

The properties, exactly (`count` = the model's tokens without its special ones):
- budget: every chunk has at most `max_tokens` tokens, and `chunk.text == text[start:end]`;
- cover: every character outside all chunks is whitespace; chunks are in order (starts and
  ends strictly increasing) and none is empty or whitespace only;
- overlap, as semchunk guarantees it (see chunking.py): with `overlap_tokens` > 0 every two
  consecutive chunks share a non-empty span (`next.start < prev.end`); when
  2 * overlap_tokens <= max_tokens that span is one of semchunk's pieces, so it has at most
  `overlap_tokens` tokens; with `overlap_tokens` = 0 consecutive chunks do not overlap.
"""

from __future__ import annotations

import pytest
import transformers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from glassbox.embeddings.chunking import Chunker, ChunkingOptions
from glassbox.embeddings.embedder import default_model_path
from glassbox.errors import InvalidRequest

MODEL_MAX_TOKENS = 256  # all-MiniLM-L6-v2's max_seq_length

WORDS = [
    "the", "embedding", "of", "a", "chunk", "retrieval", "augmented", "generation", "café",
    "naïve", "Straße", "東京", "データ", "한국어", "😀", "x", "antidisestablishmentarianism",
    "supercalifragilisticexpialidocious" * 3, "[SEP]", "e-mail", "3.14", "U.S.A.",
]  # fmt: skip
SEPARATORS = [" ", " ", " ", "\n", "\n\n", "\t", ", ", ". ", "; ", " — ", "", "  "]


@pytest.fixture(scope="module")
def chunker() -> Chunker:
    tokenizer = transformers.AutoTokenizer.from_pretrained(default_model_path())
    return Chunker(tokenizer, MODEL_MAX_TOKENS)


@st.composite
def texts(draw: st.DrawFn) -> str:
    pieces = draw(
        st.lists(
            st.one_of(st.sampled_from(WORDS), st.text(max_size=12)),
            max_size=400,
        )
    )
    seps = draw(st.lists(st.sampled_from(SEPARATORS), min_size=len(pieces), max_size=len(pieces)))
    return "".join(p + s for p, s in zip(pieces, seps, strict=True))


@st.composite
def options(draw: st.DrawFn) -> ChunkingOptions:
    max_tokens = draw(st.integers(16, 254))
    overlap = draw(st.one_of(st.just(0), st.integers(1, max_tokens - 1)))
    return ChunkingOptions(max_tokens, overlap)


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_within_budget(chunker: Chunker, text: str, opts: ChunkingOptions, chunks) -> None:
    for c in chunks:
        assert c.text == text[c.start : c.end]
        assert chunker.count_tokens(c.text) <= opts.max_tokens


def assert_cover_in_order(text: str, chunks) -> None:
    covered = [False] * len(text)
    for c in chunks:
        assert c.text.strip(), c
        covered[c.start : c.end] = [True] * (c.end - c.start)
    assert all(ch.isspace() for ch, inside in zip(text, covered, strict=True) if not inside)
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        assert prev.start < nxt.start and prev.end < nxt.end


def widest_character(chunker: Chunker, text: str) -> int:
    return max((chunker.count_tokens(c) for c in set(text)), default=1)


def assert_overlap(chunker: Chunker, text: str, opts: ChunkingOptions, chunks) -> None:
    # two chunks cannot share less than one whole character (chunking.py's docstring)
    shared = max(opts.overlap_tokens, widest_character(chunker, text))
    for prev, nxt in zip(chunks, chunks[1:], strict=False):
        if opts.overlap_tokens == 0:
            assert nxt.start >= prev.end
            continue
        assert nxt.start < prev.end
        if 2 * opts.overlap_tokens <= opts.max_tokens:
            assert chunker.count_tokens(text[nxt.start : prev.end]) <= shared


@PROPERTY
@given(text=texts(), opts=options())
def test_chunks_stay_within_the_budget(chunker: Chunker, text: str, opts: ChunkingOptions):
    assert_within_budget(chunker, text, opts, chunker.chunk(text, opts))


@PROPERTY
@given(text=texts(), opts=options())
def test_chunks_cover_the_text_in_order(chunker: Chunker, text: str, opts: ChunkingOptions):
    assert_cover_in_order(text, chunker.chunk(text, opts))


@PROPERTY
@given(text=texts(), opts=options())
def test_consecutive_chunks_overlap_as_asked(chunker: Chunker, text: str, opts: ChunkingOptions):
    assert_overlap(chunker, text, opts, chunker.chunk(text, opts))


@pytest.mark.parametrize("overlap", [0, 4, 8, 12])
def test_run_together_words_whose_tokens_do_not_add_up(chunker: Chunker, overlap: int):
    """semchunk alone makes chunks of 17-19 tokens here for a budget of 16 ("jeffrey" and
    "printers" are a token each, "jeffreyprinters" three)."""
    text = "jeffreyprintersprofilefishermckenziebyrnethroughapt" * 2
    opts = ChunkingOptions(16, overlap)
    chunks = chunker.chunk(text, opts)
    assert_within_budget(chunker, text, opts, chunks)
    assert_cover_in_order(text, chunks)
    assert_overlap(chunker, text, opts, chunks)


@pytest.mark.parametrize(("max_tokens", "overlap"), [(180, 2), (16, 1), (16, 15), (64, 16)])
def test_characters_wider_than_the_overlap_are_kept_whole(
    chunker: Chunker, max_tokens: int, overlap: int
):
    """A Hangul syllable is 3 tokens (WordPiece spells it in jamo): semchunk asked for pieces
    of 1 or 2 tokens split "각" for ever (a RecursionError)."""
    assert chunker.count_tokens("각") == 3
    opts = ChunkingOptions(max_tokens, overlap)
    assert [(c.text, c.start, c.end) for c in chunker.chunk("각", opts)] == [("각", 0, 1)]
    text = "한국어 문서를 작은 조각으로 나눕니다. " * 40
    chunks = chunker.chunk(text, opts)
    assert_within_budget(chunker, text, opts, chunks)
    assert_cover_in_order(text, chunks)
    assert_overlap(chunker, text, opts, chunks)


def test_a_long_text_makes_overlapping_chunks_of_the_whole_budget(chunker: Chunker):
    text = " ".join(f"Sentence number {i} is about retrieval." for i in range(300))
    opts = ChunkingOptions(64, 16)
    chunks = chunker.chunk(text, opts)
    assert len(chunks) > 10
    sizes = [chunker.count_tokens(c.text) for c in chunks]
    assert max(sizes) <= 64 and min(sizes[:-1]) >= 32  # full chunks, not crumbs
    assert chunks[0].start == 0 and chunks[-1].end == len(text)
    assert chunker.count([text, text], opts) == 2 * len(chunks)


def test_whitespace_makes_no_chunk(chunker: Chunker):
    assert chunker.chunk(" \n\t ", ChunkingOptions(16, 4)) == []


def test_the_default_is_the_models_budget_with_a_quarter_shared(chunker: Chunker):
    assert chunker.budget == MODEL_MAX_TOKENS - 2  # [CLS] and [SEP]
    assert ChunkingOptions.default(chunker.budget) == ChunkingOptions(254, 63)


@pytest.mark.parametrize(
    ("max_tokens", "overlap", "param"),
    [(15, 0, "chunking.max_tokens"), (64, 64, "chunking.overlap_tokens"),
     (64, -1, "chunking.overlap_tokens")],
)  # fmt: skip
def test_options_are_validated(max_tokens: int, overlap: int, param: str):
    with pytest.raises(InvalidRequest) as err:
        ChunkingOptions(max_tokens, overlap)
    assert err.value.param == param


def test_chunks_longer_than_the_model_reads_are_refused(chunker: Chunker):
    with pytest.raises(InvalidRequest, match="at most 254") as err:
        chunker.chunk("text", ChunkingOptions(255, 0))
    assert err.value.param == "chunking.max_tokens"
