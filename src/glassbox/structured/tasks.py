"""Tasks built on the request path and grammars: classify, extract, answer, summarize.

Each task turns its input into a chat prompt (an instruction as the system message, the
text as the user message) and runs it on the model greedily, so the same input gives the
same result:

- classify: no generation. Each label's score is the model's probability of answering
  exactly that label (its tokens, then the end of the turn) after the prompt, teacher
  forced on the engine thread: what decoding constrained to the labels (a choice grammar)
  samples from, so the best-scoring label is the constrained choice's most likely answer.
  The scores are calibrated against a content-free input ("Calibrate Before Use", Zhao et
  al. 2021): each label's log-probability for the text minus its log-probability for
  CONTENT_FREE, which removes the model's preference for some labels whatever the text
  (on benchmarks/data/classify.jsonl with the bundled model: 35 of 48 right uncalibrated,
  38 calibrated). Single-label: a softmax of the calibrated scores over the labels (they
  sum to 1). Multi-label: the prompt offers NONE beside the labels, and a label's score
  is sigmoid(calibrated label - calibrated NONE), i.e. P(label) / (P(label) + P(none))
  after calibration: 0.5 means "as likely as for a content-free text"; `threshold`
  selects the labels. (A yes/no question per label was tried: the bundled model answers
  yes to nearly every label.)
- extract: JSON `{"entities":[{"type":..,"text":..}]}` generated under a Lark grammar whose
  types are the entity type names and whose texts are word-aligned substrings of the text
  (llguidance's `substring_words`) without quotes, backslashes or control characters (so
  the JSON needs no escapes). Each entity text is then looked up in the text (whole words,
  every occurrence) and only those found are kept, with offsets where
  `text[start:end] == entity.text`.
- answer: JSON `{"answer":"..","citations":[..]}` under a schema where citations are the
  numbers of the passages (an enum of the valid ones; the prompt numbers them from 1, the
  result gives indices from 0) and either there is an answer and at least one citation,
  or the answer is NOT_IN_CONTEXT and there are none. An answer that says NOT_IN_CONTEXT
  anyway loses its citations, and a citation of a passage that shares no content word with
  the question or the answer is dropped (`grounded`): with none left, the answer is
  NOT_IN_CONTEXT.
- summarize: `extractive` takes whole sentences of the text (see `rank_sentences`) in
  their original order; `abstractive` generates under a regex grammar that allows at most
  `max_words` words and `max_sentences` sentences (a sentence: words ending with . ! or ?).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F

from glassbox.engine.llm_engine import LLMEngine
from glassbox.errors import ContextLengthExceeded, InvalidRequest
from glassbox.requests.generation import Generation, GenerationService
from glassbox.structured.grammar import CompiledGrammar, GrammarCompiler

NOT_IN_CONTEXT = "not in the context"
NONE = "none"  # the multi-label prompt's answer when no label applies
CONTENT_FREE = "N/A"  # the calibration input

MAX_LABELS = 100
MAX_ENTITY_TYPES = 50
MAX_ENTITIES = 20  # entities generated per request (before looking them up)
MAX_ENTITY_CHARS = 80
MAX_PASSAGES = 50
MAX_ANSWER_CHARS = 300
MAX_SENTENCE_WORDS = 40  # in an abstractive summary
DEFAULT_MAX_SENTENCES = 3  # a summary given neither max_words nor max_sentences
TOKENS_PER_WORD = 4  # an abstractive summary's token budget per allowed word
MIN_SUMMARY_TOKENS = 32  # the context an abstractive summary needs at least
ENTITY_TOKENS = 100  # an entity object's tokens: type and at most MAX_ENTITY_CHARS of text
SCORE_CHUNK_TOKENS = 2048  # tokens of label continuations scored in one engine call

SummaryMode = Literal["extractive", "abstractive"]


@dataclass
class LabelScore:
    label: str
    score: float


@dataclass
class Classification:
    label: str  # the best-scoring label
    labels: list[str]  # single-label: [label]; multi-label: the labels scoring >= threshold
    scores: list[LabelScore]  # every label, best first


@dataclass
class Entity:
    type: str
    text: str
    start: int  # text[start:end] == entity text
    end: int


@dataclass
class Extraction:
    entities: list[Entity]  # by position in the text


@dataclass
class Answer:
    answer: str  # NOT_IN_CONTEXT when no passage supports an answer
    citations: list[int]  # indices into the passages, ascending; empty with NOT_IN_CONTEXT


@dataclass
class Sentence:
    text: str
    start: int  # offsets into the summarized text
    end: int


@dataclass
class Summary:
    text: str
    mode: SummaryMode
    sentences: list[Sentence] = field(default_factory=list)  # extractive: those chosen
    finish_reason: str | None = None  # abstractive: "length" if cut by its token budget


class TaskService:
    def __init__(self, generation: GenerationService, grammars: GrammarCompiler):
        self.generation = generation
        self.grammars = grammars
        self.requests = generation.requests
        self.eos = generation.tokenizer.hf.eos_token_id

    # --- classify -----------------------------------------------------------------------

    async def classify(
        self,
        text: str,
        labels: Sequence[str],
        multi_label: bool = False,
        threshold: float = 0.5,
    ) -> Classification:
        _check_text(text, "text")
        labels = list(labels)
        names = _check_labels(labels, multi_label)  # as the model reads and answers them
        if not 0.0 <= threshold <= 1.0:
            raise InvalidRequest("'threshold' must be between 0 and 1", param="threshold")
        answers = [*names, NONE] if multi_label else names
        continuations = [self.answer_tokens(a) for a in answers]
        prompt = self.classify_prompt(text, names, multi_label)
        self._fit(len(prompt) + max(map(len, continuations)), "text")
        null = self.classify_prompt(CONTENT_FREE, names, multi_label)
        rows = [(prompt, c) for c in continuations] + [(null, c) for c in continuations]
        logprobs = await self.score(rows)
        n = len(answers)
        scores = label_scores(logprobs[:n], logprobs[n:], multi_label)
        ranked = sorted(zip(labels, scores, strict=True), key=lambda ls: -ls[1])
        chosen = [lab for lab, s in ranked if s >= threshold] if multi_label else [ranked[0][0]]
        return Classification(ranked[0][0], chosen, [LabelScore(lab, s) for lab, s in ranked])

    def classify_prompt(self, text: str, labels: list[str], multi_label: bool) -> list[int]:
        listed = ", ".join(labels)
        if multi_label:
            instruction = (
                f"Classify the text with these labels: {listed}. Answer with a label that "
                f"applies, or {NONE} if no label applies."
            )
        else:
            instruction = (
                f"Classify the text into exactly one of these labels: {listed}. "
                "Answer with the label only."
            )
        return self._chat(instruction, text, "text")

    def answer_tokens(self, answer: str) -> list[int]:
        """The tokens of `answer` as the whole assistant turn (then the end of the turn)."""
        ids = self.requests.text(answer, add_special_tokens=False)
        return ids if self.eos is None else [*ids, self.eos]

    async def score(self, rows: list[tuple[list[int], list[int]]]) -> list[float]:
        """log P(continuation | prompt) of each row, in engine calls of at most about
        SCORE_CHUNK_TOKENS tokens (running requests step between them)."""
        out: list[float] = []
        chunk: list[tuple[list[int], list[int]]] = []
        size = 0
        for row in rows:
            n = len(row[0]) + len(row[1])
            if chunk and size + n > SCORE_CHUNK_TOKENS:
                out += await self._score_chunk(chunk)
                chunk, size = [], 0
            chunk.append(row)
            size += n
        return out + await self._score_chunk(chunk)

    async def _score_chunk(self, rows: list[tuple[list[int], list[int]]]) -> list[float]:
        return await self.generation.engine.call(lambda e: continuation_logprobs(e, rows))

    # --- extract ------------------------------------------------------------------------

    async def extract(self, text: str, entity_types: Sequence[tuple[str, str]]) -> Extraction:
        _check_text(text, "text")
        types = _check_entity_types(entity_types)
        described = "\n".join(f"- {name}: {desc}" if desc else f"- {name}" for name, desc in types)
        instruction = (
            f"Extract the named entities of these types from the text:\n{described}\n"
            'Answer in JSON: {"entities": [{"type": ..., "text": ...}]}, each text copied '
            "exactly from the text."
        )
        prompt = self._chat(instruction, text, "text")
        grammar = self.grammars.lark(entity_grammar([n for n, _ in types], text))
        generation = await self._generate(
            prompt, grammar, "text", budget=MAX_ENTITIES * ENTITY_TOKENS, needs=ENTITY_TOKENS
        )
        return Extraction(locate_entities(text, parse_entities(generation.text)))

    # --- answer -------------------------------------------------------------------------

    async def answer(self, question: str, passages: Sequence[str]) -> Answer:
        _check_text(question, "question")
        passages = list(passages)
        if not passages:
            raise InvalidRequest(
                "'passages' is empty; send at least one passage to answer from", param="passages"
            )
        if len(passages) > MAX_PASSAGES:
            raise InvalidRequest(
                f"'passages' has {len(passages)} passages; send at most {MAX_PASSAGES}",
                param="passages",
            )
        for i, p in enumerate(passages):
            _check_text(p, f"passages[{i}]")
        context = "\n".join(f"[{i}] {p}" for i, p in enumerate(passages, 1))
        instruction = (
            "Answer the question using only the numbered passages. Reply in JSON with "
            '"answer" and "citations" (the numbers of the passages that support the answer). '
            f'If no passage answers the question, reply {{"answer": "{NOT_IN_CONTEXT}", '
            '"citations": []}.'
        )
        prompt = self._chat(
            instruction, f"Passages:\n{context}\n\nQuestion: {question}", "passages"
        )
        schema = answer_schema(len(passages))
        grammar = self.grammars.json_schema(schema)
        longest = MAX_ANSWER_CHARS + 8 * len(passages) + 32  # tokens of the longest answer
        generation = await self._generate(
            prompt, grammar, "passages", budget=longest, needs=longest
        )
        return grounded(parse_answer(generation.text), question, passages)

    # --- summarize ----------------------------------------------------------------------

    async def summarize(
        self,
        text: str,
        max_words: int | None = None,
        max_sentences: int | None = None,
        focus: Sequence[str] = (),
        mode: SummaryMode = "extractive",
    ) -> Summary:
        _check_text(text, "text")
        for name, value in (("max_words", max_words), ("max_sentences", max_sentences)):
            if value is not None and value < 1:
                raise InvalidRequest(f"'{name}' must be at least 1", param=name)
        keywords = [k.strip() for k in focus]
        if any(not k for k in keywords):
            raise InvalidRequest("'focus' holds an empty keyword; remove it", param="focus")
        if max_words is None and max_sentences is None:
            max_sentences = DEFAULT_MAX_SENTENCES
        if mode == "extractive":
            return extractive_summary(text, max_words, max_sentences, keywords)
        if mode != "abstractive":
            raise InvalidRequest(
                f"'mode' must be 'extractive' or 'abstractive', not {mode!r}", param="mode"
            )
        limits = [f"at most {max_words} words"] if max_words else []
        limits += [f"at most {max_sentences} sentences"] if max_sentences else []
        instruction = f"Summarize the text in {' and '.join(limits)}."
        if keywords:
            instruction += f" Focus on: {', '.join(keywords)}."
        prompt = self._chat(instruction, text, "text")
        words = max_words or max_sentences * MAX_SENTENCE_WORDS
        grammar = self.grammars.lark(summary_grammar(max_words, max_sentences))
        generation = await self._generate(
            prompt, grammar, "text", budget=TOKENS_PER_WORD * words + 16, needs=MIN_SUMMARY_TOKENS
        )
        return Summary(generation.text, "abstractive", finish_reason=generation.finish_reason)

    # --- the request path ---------------------------------------------------------------

    def _chat(self, instruction: str, content: str, param: str) -> list[int]:
        messages = [
            {"role": "system", "content": instruction},
            {"role": "user", "content": content},
        ]
        return self.requests.chat(messages, param=param)

    def _fit(self, tokens: int, param: str) -> None:
        """Refuse a prompt that, with the tokens its answer needs, does not fit the context
        (`tokens`: both together)."""
        limit = self.generation.max_model_len
        if tokens > limit:
            raise ContextLengthExceeded(
                f"'{param}' is too long: with the task's instructions and the room its answer "
                f"needs it takes {tokens} tokens, and this model's context is {limit} tokens. "
                f"Shorten '{param}' by at least {tokens - limit} tokens.",
                param=param,
            )

    async def _generate(
        self, prompt: list[int], grammar: CompiledGrammar, param: str, *, budget: int, needs: int
    ) -> Generation:
        """Greedy generation under `grammar` of at most `budget` tokens, or what the context
        has left after the prompt if less; a prompt that leaves fewer than `needs` is
        refused."""
        self._fit(len(prompt) + needs, param)
        budget = min(budget, self.generation.max_model_len - len(prompt))
        request = self.requests.request(
            prompt, prompt_param=param, max_tokens=budget, temperature=0.0, grammar=grammar
        )
        [generation] = await self.generation.generate_many([request])
        return generation


# --- the engine thread ----------------------------------------------------------------------


@torch.inference_mode()
def continuation_logprobs(
    engine: LLMEngine, rows: list[tuple[list[int], list[int]]]
) -> list[float]:
    """log P(continuation | prompt) for each (prompt, continuation): the sum of the
    continuation's token logprobs, each given the tokens before it (one forward pass of all
    rows, without the continuation's last token, which predicts nothing needed; logits only
    at the continuations' positions). Engine thread only."""
    last = engine.model.config.num_layers - 1
    captured, _ = engine.capture([p + c[:-1] for p, c in rows], {last})
    out = []
    for (prompt, continuation), layers in zip(rows, captured, strict=True):
        h = layers[last][len(prompt) - 1 :]
        logprobs = F.log_softmax(engine.model.logits_from_residual(h), dim=-1)
        picked = logprobs.gather(1, torch.tensor(continuation)[:, None])
        out.append(float(picked.sum()))
    return out


# --- pure parts -----------------------------------------------------------------------------


def softmax(xs: Sequence[float]) -> list[float]:
    top = max(xs)
    exps = [math.exp(x - top) for x in xs]
    total = sum(exps)
    return [e / total for e in exps]


def label_scores(
    logprobs: Sequence[float], content_free: Sequence[float], multi_label: bool
) -> list[float]:
    """Calibrated label scores from each answer's log-probability for the text and for the
    content-free input (multi-label: the answers end with NONE, which gets no score)."""
    calibrated = [lp - base for lp, base in zip(logprobs, content_free, strict=True)]
    if multi_label:
        return [_sigmoid(c - calibrated[-1]) for c in calibrated[:-1]]
    return softmax(calibrated)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _check_text(text: str, param: str) -> None:
    if not text or not text.strip():
        raise InvalidRequest(f"'{param}' is empty; send the text to work on", param=param)


def _check_labels(labels: list[str], multi_label: bool) -> list[str]:
    """The labels without surrounding whitespace, checked."""
    if not labels:
        raise InvalidRequest("'labels' is empty; send the labels to choose from", param="labels")
    if len(labels) > MAX_LABELS:
        raise InvalidRequest(
            f"'labels' has {len(labels)} labels; send at most {MAX_LABELS}", param="labels"
        )
    if len(labels) < 2 and not multi_label:
        raise InvalidRequest(
            "single-label classification needs at least two labels to choose from (or set "
            "'multi_label' to score one label)",
            param="labels",
        )
    seen: dict[str, str] = {}
    for label in labels:
        if not label.strip():
            raise InvalidRequest("'labels' holds an empty label; remove it", param="labels")
        key = label.strip().casefold()
        if key in seen:
            raise InvalidRequest(
                f"'labels' holds {seen[key]!r} and {label!r}, the same label; send each once",
                param="labels",
            )
        seen[key] = label
        if multi_label and key == NONE:
            raise InvalidRequest(
                f"{label!r} cannot be a label with 'multi_label': the model answers "
                f"'{NONE}' when no label applies; rename it",
                param="labels",
            )
    return [label.strip() for label in labels]


def _check_entity_types(entity_types: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    types = [(name.strip(), desc.strip()) for name, desc in entity_types]
    if not types:
        raise InvalidRequest(
            "'entity_types' is empty; send at least one type to extract", param="entity_types"
        )
    if len(types) > MAX_ENTITY_TYPES:
        raise InvalidRequest(
            f"'entity_types' has {len(types)} types; send at most {MAX_ENTITY_TYPES}",
            param="entity_types",
        )
    names = [name for name, _ in types]
    if any(not name for name in names):
        raise InvalidRequest("an entity type has an empty name", param="entity_types")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InvalidRequest(
            f"entity type {duplicates[0]!r} is given twice; send each type once",
            param="entity_types",
        )
    return types


# --- extract: grammar, parsing, offsets -----------------------------------------------------


def entity_grammar(type_names: Sequence[str], text: str) -> str:
    """Lark: `{"entities":[..]}` with at most MAX_ENTITIES items, each type one of
    `type_names` and each text a substring of `text` made of whole words, without quotes,
    backslashes or control characters, at most MAX_ENTITY_CHARS long."""
    types = " | ".join(
        json.dumps(json.dumps(n, ensure_ascii=False), ensure_ascii=False) for n in type_names
    )
    words = json.dumps({"substring_words": text}, ensure_ascii=False)
    return (
        f'start: "{{\\"entities\\":[" (entity ("," entity){{0,{MAX_ENTITIES - 1}}})? "]}}"\n'
        'entity: "{\\"type\\":" TYPE ",\\"text\\":\\"" TEXT "\\"}"\n'
        f"TYPE: {types}\n"
        f'TEXT: %regex {words} & /[^"\\\\\\x00-\\x1f]{{1,{MAX_ENTITY_CHARS}}}/\n'
    )


_ENTITY = re.compile(r'\{"type":("(?:[^"\\]|\\.)*"),"text":"([^"\\]*)"\}')


def parse_entities(output: str) -> list[tuple[str, str]]:
    """(type, text) of each complete entity object in the generated JSON, in order and
    without repeats. Reads the items one by one, so an output cut by the context still
    gives the entities it completed."""
    found = [(json.loads(t), s) for t, s in _ENTITY.findall(output)]
    return list(dict.fromkeys(found))


def locate_entities(text: str, entities: Sequence[tuple[str, str]]) -> list[Entity]:
    """Every occurrence in `text` of each entity's text, as whole words (not inside a longer
    word); an entity found nowhere is dropped. Sorted by position."""
    out = []
    for type_, value in entities:
        value = value.strip()
        if not value:
            continue
        pattern = re.compile(rf"(?<!\w){re.escape(value)}(?!\w)")
        for m in pattern.finditer(text):
            if text[m.start() : m.end()] == value:
                out.append(Entity(type_, value, m.start(), m.end()))
    out.sort(key=lambda e: (e.start, e.end, e.type))
    return out


# --- answer ---------------------------------------------------------------------------------


def answer_schema(num_passages: int) -> dict[str, Any]:
    """Either an answer and at least one citation (a passage's number, 1 to `num_passages`:
    the prompt numbers them from 1, which the bundled model cites better than from 0), or
    NOT_IN_CONTEXT and no citation. The answer comes first (the bundled model cited
    better after answering); its characters need no JSON escape, so its tokens are at most
    its MAX_ANSWER_CHARS characters."""
    return {
        "anyOf": [
            {
                "type": "object",
                "properties": {
                    "answer": {
                        "type": "string",
                        "minLength": 1,
                        "maxLength": MAX_ANSWER_CHARS,
                        "pattern": '^[^"\\\\\\x00-\\x1f]*$',
                    },
                    "citations": {
                        "type": "array",
                        "items": {"enum": list(range(1, num_passages + 1))},
                        "minItems": 1,
                        "maxItems": num_passages,
                    },
                },
                "required": ["answer", "citations"],
                "additionalProperties": False,
            },
            {
                "type": "object",
                "properties": {
                    "answer": {"const": NOT_IN_CONTEXT},
                    "citations": {"type": "array", "maxItems": 0},
                },
                "required": ["answer", "citations"],
                "additionalProperties": False,
            },
        ]
    }


def parse_answer(output: str) -> Answer:
    """The generated JSON as an Answer: the cited passages' indices (from 0) without
    repeats, ascending; an answer that says NOT_IN_CONTEXT (whatever its case or its
    spaces) has none."""
    data = json.loads(output)
    answer = data["answer"].strip()
    citations = sorted({number - 1 for number in data["citations"]})
    if not citations or answer.casefold() == NOT_IN_CONTEXT:
        return Answer(NOT_IN_CONTEXT, [])
    return Answer(answer, citations)


def grounded(answer: Answer, question: str, passages: Sequence[str]) -> Answer:
    """The answer with only the citations of passages that share a content word with the
    question or the answer (the bundled model cites passages unrelated to either); with none
    left it is NOT_IN_CONTEXT."""
    asked = set(content_words(question)) | set(content_words(answer.answer))
    kept = [i for i in answer.citations if asked & set(content_words(passages[i]))]
    return Answer(answer.answer, kept) if kept else Answer(NOT_IN_CONTEXT, [])


# --- summarize ------------------------------------------------------------------------------

_BOUNDARY = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s|$)|\n[ \t]*\n")
ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e a.m p.m inc ltd co no fig approx".split()
)
STOPWORDS = frozenset(
    """the and for are but not you all any can had her was one our out has his how its may
    new now old see two who did get him let say she too use that with have this will your
    from they them then than been were what when where which while would there their these
    those about into over also some such only very just more most other after before being
    because could should each does doing both through during here""".split()
)


def split_sentences(text: str) -> list[Sentence]:
    """Sentences of `text` with their offsets (`text[start:end] == sentence.text`, no
    surrounding whitespace). A sentence ends at . ! or ? (with closing quotes or brackets)
    before whitespace, or at a blank line; not at the period of a common abbreviation
    (ABBREVIATIONS) or of an initial ("J. R. R. Tolkien")."""
    out: list[Sentence] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        if m.group().startswith(".") and m.group().rstrip("\"'”’)]") == ".":
            before = text[start : m.start()].split()
            word = before[-1].lstrip("\"'“‘([").casefold() if before else ""
            if word in ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
                continue
        end = m.start() if m.group().startswith("\n") else m.end()
        _add_span(text, start, end, out)
        start = m.end()
    _add_span(text, start, len(text), out)
    return out


def _add_span(text: str, start: int, end: int, out: list[Sentence]) -> None:
    piece = text[start:end]
    stripped = piece.strip()
    if stripped:
        s = start + len(piece) - len(piece.lstrip())
        out.append(Sentence(stripped, s, s + len(stripped)))


def content_words(text: str) -> list[str]:
    """Lowercased words of three characters or more that are not STOPWORDS."""
    words = re.findall(r"[^\W_]+", text.casefold())
    return [w for w in words if len(w) >= 3 and w not in STOPWORDS]


def rank_sentences(sentences: Sequence[Sentence], focus: Sequence[str]) -> list[int]:
    """Indices of `sentences`, best first. First the number of focus keywords a sentence
    holds (case-insensitive, whole words), then its centrality: the mean, over its distinct
    content words, of how often each occurs in the whole text (a sentence made of the text's
    recurring words says what the text is about), then its position (earlier first)."""
    counts = Counter(w for s in sentences for w in content_words(s.text))
    patterns = [re.compile(rf"(?<!\w){re.escape(k)}(?!\w)", re.IGNORECASE) for k in focus]

    def key(i: int) -> tuple[int, float, int]:
        words = set(content_words(sentences[i].text))
        centrality = sum(counts[w] for w in words) / len(words) if words else 0.0
        hits = sum(1 for p in patterns if p.search(sentences[i].text))
        return -hits, -centrality, i

    return sorted(range(len(sentences)), key=key)


def extractive_summary(
    text: str, max_words: int | None, max_sentences: int | None, focus: Sequence[str]
) -> Summary:
    """The best-ranked sentences (`rank_sentences`) that fit `max_words` in total, at most
    `max_sentences` of them, in the text's order."""
    sentences = split_sentences(text)
    chosen: list[int] = []
    words = 0
    for i in rank_sentences(sentences, focus):
        if max_sentences is not None and len(chosen) == max_sentences:
            break
        n = len(sentences[i].text.split())
        if max_words is None or words + n <= max_words:
            chosen.append(i)
            words += n
    if not chosen:
        shortest = min(len(s.text.split()) for s in sentences)
        raise InvalidRequest(
            f"'max_words' is {max_words}, but the shortest sentence of the text has {shortest} "
            "words; raise max_words or use the abstractive mode",
            param="max_words",
        )
    picked = [sentences[i] for i in sorted(chosen)]
    return Summary(" ".join(s.text for s in picked), "extractive", picked)


_PART = r"[^\s.!?,;:\-]{1,20}"
_WORD = rf"{_PART}(-{_PART})?[,;:]?"


def summary_grammar(max_words: int | None, max_sentences: int | None) -> str:
    """Lark: sentences of words separated by single spaces, each sentence ending with . ! or
    ? and at most MAX_SENTENCE_WORDS words; at most `max_sentences` sentences and
    `max_words` words in all. A word is at most 20 characters, or two such parts joined by
    a hyphen, then maybe a comma, semicolon or colon (the bundled model otherwise packs
    phrases into one word: "can't-do-more-to-save-the-park", "mayor's,however,wasn")."""
    sentence = rf"{_WORD}( {_WORD}){{0,{MAX_SENTENCE_WORDS - 1}}}[.!?]"
    more = f"{{0,{max_sentences - 1}}}" if max_sentences is not None else "*"
    body = f"/{sentence}( {sentence}){more}/"
    if max_words is not None:
        body += rf" & /\S+( \S+){{0,{max_words - 1}}}/"
    return f"start: SUMMARY\nSUMMARY: {body}\n"
