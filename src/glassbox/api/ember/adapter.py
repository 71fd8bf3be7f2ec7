"""Goodfire Ember's REST semantics over glassbox's features and generation, so that the public
`goodfire` 0.3.5 SDK works against glassbox by changing only `base_url`.

docs/ember_api.md is the spec (what the SDK sends and parses, and its traps). The points that
shape this module:

- `index_in_sae` is model-wide: each dictionary gets an offset (the sum of the sizes of the
  dictionaries before it), since the SDK names features by that index (neighbors, lookup,
  inspect's `include_feature_indexes`) and indexes arrays of 65536 (131072) with it.
- ids go out dashed (`str(UUID)`, what the SDK compares) and come in dashed or as 32 hex.
- a Variant arrives as its `controller`: `controller_to_spec` -> `FeatureService.resolve` ->
  `SamplingParams(steering=plan)`. When an abort scope fires, the engine finishes the row
  with STEERING_ABORT and says which scope it was; the response names that scope's event
  in `gf_event_names`, on which the SDK raises InferenceAbortedException.
- chat streams are `data: <json>\\n\\n` events only, every chunk with one choice and its own
  `gf_token_index`, `data: ` escaped inside payloads, no `[DONE]`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from dataclasses import dataclass

import torch

from glassbox import __version__
from glassbox.api.ember.schemas import (
    EmberAttribution,
    EmberChatChoice,
    EmberChatChunk,
    EmberChatCompletion,
    EmberChatMessageOut,
    EmberChatRequest,
    EmberChatUsage,
    EmberChunkChoice,
    EmberChunkDelta,
    EmberFeature,
    EmberInspectToken,
    EmberMessage,
)
from glassbox.api.errors import domain_error_body
from glassbox.engine.llm_engine import StepOutput
from glassbox.engine.sequence import STEERING_ABORT
from glassbox.errors import (
    GlassboxError,
    InvalidRequest,
    NotFound,
    Unavailable,
)
from glassbox.features.catalog import FeatureCatalog
from glassbox.features.dictionary import Feature
from glassbox.features.ember_json import (
    EmberJSONError,
    controller_event_names,
    controller_to_spec,
    feature_hex,
    feature_id,
)
from glassbox.features.service import FeatureService
from glassbox.features.variant import VariantSpec
from glassbox.logs import get_logger
from glassbox.requests.builder import EngineRequest
from glassbox.requests.generation import Generation, GenerationService
from glassbox.requests.registry import FEATURES, ModelRegistry

log = get_logger(__name__)

# Per token, inspect reports at most this many features (those with activation > 0).
INSPECT_TOP_PER_TOKEN = 32
# The SDK's arrays (Token.vector, activations()) have this many slots; indices must fit.
SDK_SAE_SIZE = 65536


def _out(catalog: FeatureCatalog, f: Feature, relevance: float = 1.0) -> EmberFeature:
    dashed = feature_id(f.uuid)
    return EmberFeature(
        id=dashed, uuid=dashed, label=f.label, index_in_sae=catalog.index(f), relevance=relevance
    )


def _messages(messages: list[EmberMessage]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def _chat_messages(messages: list[EmberMessage]) -> list[dict[str, str]]:
    """The async SDK inserts its default system prompt even before the user's own system
    message: join leading system messages into one (templates expect at most one)."""
    out = _messages(messages)
    n = 0
    while n < len(out) and out[n]["role"] == "system":
        n += 1
    if n > 1:
        joined = "\n\n".join(m["content"] for m in out[:n] if m["content"])
        out = [{"role": "system", "content": joined}, *out[n:]]
    return out


def sse_event(payload: dict) -> bytes:
    """One SSE event as the SDK splits them: `data: <json>\\n\\n`. ASCII-only JSON (no
    multi-byte character to split across reads) with `data: ` inside strings escaped (the SDK
    splits on it); the compact separators never put a space after a structural colon."""
    text = json.dumps(payload, ensure_ascii=True, separators=(",", ":"))
    return b"data: " + text.replace("data: ", "data\\u003a ").encode("ascii") + b"\n\n"


@dataclass(frozen=True)
class EmberChat:
    """A checked Ember chat request: the engine request, the event names of the
    variant's abort scopes (the plan's index of an abort scope -> its event name), and the
    model name to report back."""

    request: EngineRequest
    abort_events: dict[int, str]
    model: str


class EmberService:
    def __init__(
        self, features: FeatureService, generation: GenerationService, registry: ModelRegistry
    ):
        self.features = features
        self.gen = generation
        self.registry = registry
        # The SDK requires a string here (null fails its validation).
        self.system_fingerprint = "-".join(
            part for part in ("glassbox", __version__, (features.fingerprint or "")[:12]) if part
        )
        self._vocab: dict[str, int] | None = None

    # --- models, ids --------------------------------------------------------------------

    def model(self, name: str | None) -> str:
        """404 for a model this server does not serve; else the name to report back."""
        self.registry.require(name, FEATURES)
        return self.registry.resolve(name)

    async def catalog(self) -> FeatureCatalog:
        catalog = await self.features.catalog()
        if catalog.total > SDK_SAE_SIZE:
            log.warning(
                "feature indices exceed the goodfire SDK's array size",
                features=catalog.total,
                sdk_size=SDK_SAE_SIZE,
            )
        return catalog

    @staticmethod
    def _hex(value: str, param: str) -> str:
        try:
            return feature_hex(value, param)
        except EmberJSONError as exc:
            raise InvalidRequest(str(exc), param=param) from exc

    async def _by_index(self, catalog: FeatureCatalog, index: int, param: str) -> Feature:
        f = catalog.by_index(index)
        if f is None:
            total = catalog.total
            raise NotFound(
                "feature",
                str(index),
                f"no feature with index_in_sae {index}; this model's features are 0 to {total - 1}",
                param=param,
            )
        return f

    def _spec(self, controller: Mapping | None, model: str) -> tuple[VariantSpec, dict[int, str]]:
        """The VariantSpec of a controller and the event names of its abort scopes."""
        try:
            spec = controller_to_spec(controller, model)
            names = controller_event_names(controller)
        except EmberJSONError as exc:
            raise InvalidRequest(f"'controller': {exc}", param="controller") from exc
        scopes = zip(spec.scopes, names, strict=True)
        events = {k: e for k, (s, e) in enumerate(scopes) if s.abort and e}
        return spec, events

    # --- features -----------------------------------------------------------------------

    async def search(self, query: str, top_k: int) -> list[EmberFeature]:
        if not 1 <= top_k <= 1000:
            raise InvalidRequest("perPage must be between 1 and 1000", param="perPage")
        hits = await self.features.search(query, top_k)
        catalog = await self.catalog()
        return [_out(catalog, f, score) for f, score in hits]

    async def rerank(self, feature_ids: list[str], query: str, top_k: int) -> list[EmberFeature]:
        uuids = [self._hex(u, f"feature_ids[{i}]") for i, u in enumerate(feature_ids)]
        hits = await self.features.rerank(uuids, query, top_k)
        catalog = await self.catalog()
        return [_out(catalog, f, score) for f, score in hits]

    async def list(self, ids: list[str]) -> list[EmberFeature]:
        """The features list (inspect fetches every id it saw): every id, in request order."""
        catalog = await self.catalog()
        out = []
        for i, raw in enumerate(ids):
            _, f = await self.features.feature(self._hex(raw, f"feature_id[{i}]"))
            out.append(_out(catalog, f))
        return out

    async def neighbors(self, indices: list[int], top_k: int) -> list[EmberFeature]:
        """The features nearest (cosine of write directions) to any of the given ones,
        best first, without the given ones."""
        catalog = await self.catalog()
        given = [await self._by_index(catalog, i, "feature_indices") for i in indices]
        exclude = {f.uuid for f in given}
        best: dict[str, tuple[Feature, float]] = {}
        for f in given:
            k = min(top_k + len(exclude), 1000)
            for g, sim in await self.features.neighbors(f.uuid, k):
                if g.uuid not in exclude and (g.uuid not in best or best[g.uuid][1] < sim):
                    best[g.uuid] = (g, sim)
        ranked = sorted(best.values(), key=lambda item: item[1], reverse=True)[:top_k]
        return [_out(catalog, g, sim) for g, sim in ranked]

    async def lookup(self, indices: list[int]) -> list[EmberFeature]:
        catalog = await self.catalog()
        return [_out(catalog, await self._by_index(catalog, i, "indices")) for i in indices]

    async def auto_edits(self, specification: str) -> list[tuple[EmberFeature, float]]:
        edits = await self.features.autosteer(specification)
        catalog = await self.catalog()
        out = []
        for edit in edits:
            _, f = await self.features.feature(edit.feature.uuid)
            out.append((_out(catalog, f), edit.value))
        return out

    async def contrast(
        self,
        dataset_1: list[list[EmberMessage]],
        dataset_2: list[list[EmberMessage]],
        k_to_add: int,
        k_to_remove: int,
    ) -> tuple[list[EmberFeature], list[EmberFeature]]:
        """Features more active in dataset_1 (at most k_to_remove) and in dataset_2 (at most
        k_to_add), strongest first."""
        toward_1, toward_2 = await self.features.contrast(
            [_messages(c) for c in dataset_1],
            [_messages(c) for c in dataset_2],
            max(k_to_add, k_to_remove),
        )
        catalog = await self.catalog()
        return (
            [_out(catalog, f, v) for f, v in toward_1[:k_to_remove]],
            [_out(catalog, f, v) for f, v in toward_2[:k_to_add]],
        )

    async def inspect(
        self,
        messages: list[EmberMessage],
        controller: Mapping | None,
        model: str,
        include_indexes: list[int] | None,
    ) -> list[EmberInspectToken]:
        """Per token (the chat-formatted conversation, template tokens included, the first
        position left out like everywhere in glassbox), its features sorted by activation:
        the requested ones, or the strongest INSPECT_TOP_PER_TOKEN that are above 0."""
        spec, _ = self._spec(controller, model)
        catalog = await self.catalog()
        wanted: dict[str, list[int]] | None = None
        if include_indexes:
            wanted = {}
            for i in dict.fromkeys(include_indexes):
                f = await self._by_index(catalog, i, "include_feature_indexes")
                wanted.setdefault(f.dictionary, []).append(f.index)
        names = [d.name for d in catalog.dictionaries if wanted is None or d.name in wanted]
        tokens: list[str] = []
        rows: list[list[EmberAttribution]] = []
        for name in names:
            ins = await self.features.inspect(_messages(messages), spec, dictionary=name)
            offset = catalog.offsets[name]
            features = ins.dictionary.features
            acts = ins.acts
            if wanted is not None:
                cols = torch.tensor(wanted[name], dtype=torch.long)
                values, idx = acts[:, cols], cols.expand(acts.shape[0], -1)
            else:
                k = min(INSPECT_TOP_PER_TOKEN, acts.shape[1])
                values, idx = torch.topk(acts, k, dim=1)
            if not tokens:
                tokens = ins.tokens
                rows = [[] for _ in tokens]
            for t, (vals, cols_t) in enumerate(zip(values.tolist(), idx.tolist(), strict=True)):
                for v, c in zip(vals, cols_t, strict=True):
                    if wanted is None and v <= 0:
                        continue
                    rows[t].append(
                        EmberAttribution(
                            id=feature_id(features[c].uuid),
                            index_in_sae=offset + c,
                            activation_strength=round(v, 5),
                        )
                    )
        for row in rows:
            row.sort(key=lambda a: a.activation_strength, reverse=True)
            del row[INSPECT_TOP_PER_TOKEN if wanted is None else len(row) :]
        return [
            EmberInspectToken(token=t, attributions=r) for t, r in zip(tokens, rows, strict=True)
        ]

    # --- logits -------------------------------------------------------------------------

    async def _vocabulary(self) -> dict[str, int]:
        """Token text -> id (the first id with that text), built once."""
        if self._vocab is None:
            tok = self.gen.tokenizer

            def build() -> dict[str, int]:
                vocab: dict[str, int] = {}
                for i in range(tok.vocab_size):
                    vocab.setdefault(tok.token_str(i), i)
                return vocab

            # The tokenizer alone (no tensor work, so no OpenMP team on the worker thread):
            # 0.15 s for 49k tokens that would otherwise hold up the engine thread's steps.
            self._vocab = await asyncio.to_thread(build)
        return self._vocab

    def _token_id(self, vocab: dict[str, int], text: str, param: str) -> int:
        if text in vocab:
            return vocab[text]
        ids = self.gen.requests.text(text, add_special_tokens=False)
        if len(ids) != 1:
            raise InvalidRequest(
                f"{param}: {text!r} is not a single token of this model's vocabulary "
                f"(it encodes to {len(ids)} tokens)",
                param=param,
            )
        return ids[0]

    async def logits(
        self,
        messages: list[EmberMessage],
        controller: Mapping | None,
        model: str,
        top_k: int | None,
        filter_vocabulary: list[str] | None,
    ) -> dict[str, float]:
        """Next-token logits after the chat-formatted messages: after the assistant's
        generation prompt, or continuing the assistant's text when it has the last word."""
        build = self.gen.requests
        plain = _messages(messages)
        if plain[-1]["role"] == "assistant":
            ids = build.chat(plain[:-1], add_generation_prompt=True)
            ids += build.text(plain[-1]["content"], add_special_tokens=False)
        else:
            ids = build.chat(plain, add_generation_prompt=True)
        build.max_tokens(len(ids), None, prompt_param="messages")  # the context check
        chosen = None
        if filter_vocabulary is not None:
            vocab = await self._vocabulary()
            chosen = [
                self._token_id(vocab, s, f"filter_vocabulary[{i}]")
                for i, s in enumerate(filter_vocabulary)
            ]
        spec, _ = self._spec(controller, model)
        ranked, values = await self.features.next_token_ranking(ids, spec, chosen)
        # Walk down the ranking until k distinct texts: ids can share a text (e.g. the
        # partial bytes of a multi-byte character all print as U+FFFD).
        k = len(ranked) if top_k is None else min(top_k, len(ranked))
        out: dict[str, float] = {}
        tok = self.gen.tokenizer
        for i, v in zip(ranked, values, strict=True):
            if len(out) == k:
                break
            out.setdefault(tok.token_str(i), round(v, 5))
        return out

    def tokenize(self, messages: list[EmberMessage]) -> list[str]:
        ids = self.gen.requests.chat(_messages(messages), add_generation_prompt=False)
        return [self.gen.tokenizer.token_str(i) for i in ids]

    # --- chat ---------------------------------------------------------------------------

    async def check_chat(self, req: EmberChatRequest, model: str) -> EmberChat:
        """Validate everything that can be wrong with a chat request (before any byte of a
        stream is sent, so errors keep their status codes)."""
        build = self.gen.requests
        prompt = build.chat(_chat_messages(req.messages), add_generation_prompt=True)
        # The SDK asks for 2048 by default: cap at the room left instead of refusing.
        max_tokens = build.max_tokens(
            len(prompt), req.max_completion_tokens, prompt_param="messages", cap=True
        )
        stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        spec, events = self._spec(req.controller, model)
        params = build.params(
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            stop=stop,
            seed=req.seed,
            steering=await self.features.resolve(spec),
        )
        return EmberChat(EngineRequest(prompt, params), events, model)

    @staticmethod
    def _finish(
        reason: str | None, abort_scope: int | None, chat: EmberChat
    ) -> tuple[str | None, list[str] | None]:
        if reason == "abort":
            raise Unavailable("the engine aborted the generation; retry the request")
        if reason == STEERING_ABORT and abort_scope in chat.abort_events:
            return reason, [chat.abort_events[abort_scope]]  # the scope that fired
        return reason, None

    async def chat(self, chat: EmberChat) -> EmberChatCompletion:
        g = Generation()
        async with aclosing(
            self.gen.stream(chat.request.prompt_ids, chat.request.params)
        ) as outputs:
            async for out in outputs:
                g.add(out)
        reason, events = self._finish(g.finish_reason, g.abort_scope, chat)
        return EmberChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=chat.model,
            system_fingerprint=self.system_fingerprint,
            gf_event_names=events,
            choices=[
                EmberChatChoice(message=EmberChatMessageOut(content=g.text), finish_reason=reason)
            ],
            usage=EmberChatUsage(
                prompt_tokens=len(chat.request.prompt_ids),
                completion_tokens=g.num_output_tokens,
                total_tokens=len(chat.request.prompt_ids) + g.num_output_tokens,
            ),
        )

    async def chat_stream(self, chat: EmberChat) -> AsyncIterator[bytes]:
        """Starts generating and waits for the first output, so a request the engine refuses
        still gets a status code; then returns the stream of SSE events."""
        outputs = self.gen.stream(chat.request.prompt_ids, chat.request.params)
        try:
            first = await anext(outputs)  # the engine ends every row with an output
        except BaseException:
            await outputs.aclose()
            raise
        return self._events(chat, first, outputs)

    async def _events(
        self, chat: EmberChat, first: StepOutput, outputs: AsyncIterator[StepOutput]
    ) -> AsyncIterator[bytes]:
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        index = 0

        def chunk(text: str, reason: str | None = None, events: list[str] | None = None):
            nonlocal index
            body = EmberChatChunk(
                id=cid,
                created=created,
                model=chat.model,
                system_fingerprint=self.system_fingerprint,
                gf_event_names=events,
                choices=[
                    EmberChunkChoice(
                        delta=EmberChunkDelta(content=text),
                        gf_token_index=index,
                        finish_reason=reason,
                    )
                ],
            )
            index += 1
            return sse_event(body.model_dump(mode="json"))

        def events_of(out: StepOutput) -> list[bytes]:
            events = [chunk(out.text)] if out.text else []
            if out.finish_reason is not None:
                reason, names = self._finish(out.finish_reason, out.abort_scope, chat)
                events.append(chunk("", reason, names))  # its own gf_token_index
            return events

        async with aclosing(outputs):
            try:
                for event in events_of(first):
                    yield event
                async for out in outputs:
                    for event in events_of(out):
                        yield event
            except GlassboxError as exc:
                # Headers are sent: an event that is not a chunk makes the SDK raise
                # ServerErrorException; other clients can read the error.
                log.warning("chat stream failed", error=exc.message)
                yield sse_event(domain_error_body(exc))
