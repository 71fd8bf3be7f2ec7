"""/states: KV states (create, read, list, delete, fork, rollback, checkpoints, history, diff,
merge, export, import) and /generate/token: continue a state."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import APIRouter, Query, Request, Response

from glassbox.api.deps import PrincipalDep, RegistryDep, StatesDep, SteeringDep
from glassbox.api.features.readout import ReadoutLabels
from glassbox.api.openai.schemas import template_messages
from glassbox.api.states.schemas import (
    CheckpointRequest,
    ExportFile,
    ExportList,
    ExportRequest,
    ExportResult,
    ForkRequest,
    GenerateTokenRequest,
    GenerationResult,
    GenerationUsage,
    ImportRequest,
    MergeRequest,
    RollbackRequest,
    StateCreateRequest,
    StateDeleted,
    StateDiff,
    StateList,
    StateObject,
    StateSummary,
    TokenInfo,
)
from glassbox.api.streaming import sse_response, until_disconnected
from glassbox.engine.llm_engine import StepOutput
from glassbox.engine.sequence import SamplingParams
from glassbox.errors import InvalidRequest, TooLarge
from glassbox.features.steering import SteeringService
from glassbox.principal import Principal
from glassbox.requests.registry import STATES
from glassbox.states.records import State
from glassbox.states.service import StateService

router = APIRouter(tags=["states"])


def state_object(states: StateService, s: State, model: str) -> StateObject:
    return StateObject(
        id=s.state_id,
        model=model,
        parent_id=s.parent_id,
        text=states.text(s.token_ids),
        token_ids=s.token_ids,
        num_tokens=s.num_tokens,
        config=s.config,
        checkpoints=s.checkpoints,
        metadata=s.meta,
        created=int(s.created_at.timestamp()),
        modified=int(s.modified_at.timestamp()),
        location=states.location(s.state_id),
        bytes=states.kv_bytes(s),
        file_bytes=states.file_bytes(s.state_id),
    )


def state_summary(states: StateService, s: State) -> StateSummary:
    return StateSummary(
        id=s.state_id,
        parent_id=s.parent_id,
        num_tokens=s.num_tokens,
        created=int(s.created_at.timestamp()),
        modified=int(s.modified_at.timestamp()),
        location=states.location(s.state_id),
        bytes=states.kv_bytes(s),
    )


@router.post("/states", response_model=StateObject, status_code=201)
async def create_state(
    req: StateCreateRequest, states: StatesDep, principal: PrincipalDep, models: RegistryDep
) -> StateObject:
    models.require(req.model_id, STATES, param="model_id")
    model = models.resolve(req.model_id)
    state = await states.create_from(
        principal,
        text=req.text,
        messages=template_messages(req.messages) if req.messages is not None else None,
        add_generation_prompt=req.add_generation_prompt,
        config=req.config.model_dump(),
    )
    return state_object(states, state, model)


@router.get("/states", response_model=StateList)
async def list_states(
    states: StatesDep,
    principal: PrincipalDep,
    limit: int = Query(20, ge=1, le=100),
    after: str | None = None,
    parent_id: str | None = None,
) -> StateList:
    page, more = states.list(principal, limit, after, parent_id)
    data = [state_summary(states, s) for s in page]
    return StateList(data=data, has_more=more, last_id=data[-1].id if data else None)


# Before /states/{state_id}: "exports" is not a state id.
@router.get("/states/exports", response_model=ExportList)
async def list_exports(states: StatesDep, principal: PrincipalDep) -> ExportList:
    """The state files in the export directory (what `POST /states/import` can name)."""
    return ExportList(data=[ExportFile(name=n, bytes=b) for n, b in states.exported(principal)])


@router.delete("/states/exports/{name}", status_code=204)
async def delete_export(name: str, states: StatesDep, principal: PrincipalDep) -> Response:
    states.delete_export(principal, name)
    return Response(status_code=204)


@router.get("/states/{state_id}", response_model=StateObject)
async def get_state(
    state_id: str, states: StatesDep, principal: PrincipalDep, models: RegistryDep
) -> StateObject:
    return state_object(states, states.get(principal, state_id), models.served_name)


@router.delete("/states/{state_id}", response_model=StateDeleted)
async def delete_state(state_id: str, states: StatesDep, principal: PrincipalDep) -> StateDeleted:
    await states.delete(principal, state_id)
    return StateDeleted(id=state_id)


@router.post("/states/merge", response_model=StateObject, status_code=201)
async def merge_states(
    req: MergeRequest, states: StatesDep, principal: PrincipalDep, models: RegistryDep
) -> StateObject:
    return state_object(states, await states.merge(principal, req.state_ids), models.served_name)


@router.post("/states/import", response_model=StateObject, status_code=201)
async def import_state(
    request: Request, states: StatesDep, principal: PrincipalDep, models: RegistryDep
) -> StateObject:
    """A state file as the body (application/octet-stream), or {"name": ...} of a file in
    the export directory."""
    if request.headers.get("content-type", "").startswith("application/json"):
        try:
            req = ImportRequest.model_validate_json(await request.body())
        except ValueError as exc:
            raise InvalidRequest(f"invalid import request: {exc}") from exc
        state = await states.import_file(principal, req.name)
    else:
        state = await states.import_bytes(principal, await _body(request, states.max_file_bytes))
    return state_object(states, state, models.served_name)


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it outgrows `limit`."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(
                f"the state file is larger than a state of this model can be ({limit} bytes)",
                param="file",
            )
        chunks.append(chunk)
    if not size:
        raise InvalidRequest("the request body is empty: send the state file", param="file")
    return b"".join(chunks)


@router.post("/states/{state_id}/fork", response_model=StateObject, status_code=201)
async def fork_state(
    state_id: str,
    states: StatesDep,
    principal: PrincipalDep,
    models: RegistryDep,
    req: ForkRequest | None = None,
) -> StateObject:
    token_index = req.token_index if req is not None else None
    return state_object(
        states, await states.fork(principal, state_id, token_index), models.served_name
    )


@router.post("/states/{state_id}/rollback", response_model=StateObject)
async def rollback_state(
    state_id: str,
    req: RollbackRequest,
    states: StatesDep,
    principal: PrincipalDep,
    models: RegistryDep,
) -> StateObject:
    state = await states.rollback(principal, state_id, req.token_index, req.checkpoint)
    return state_object(states, state, models.served_name)


@router.post("/states/{state_id}/checkpoints", response_model=StateObject)
async def add_checkpoint(
    state_id: str,
    req: CheckpointRequest,
    states: StatesDep,
    principal: PrincipalDep,
    models: RegistryDep,
) -> StateObject:
    state = await states.add_checkpoint(principal, state_id, req.name, req.token_index)
    return state_object(states, state, models.served_name)


@router.get("/states/{state_id}/history", response_model=StateList)
async def state_history(state_id: str, states: StatesDep, principal: PrincipalDep) -> StateList:
    """The state and its ancestors, nearest first."""
    data = [state_summary(states, s) for s in states.lineage(principal, state_id)]
    return StateList(data=data, has_more=False, last_id=data[-1].id)


@router.get("/states/{state_id}/diff/{other_id}", response_model=StateDiff)
async def diff_states(
    state_id: str, other_id: str, states: StatesDep, principal: PrincipalDep
) -> StateDiff:
    return StateDiff(**states.diff(principal, state_id, other_id))


@router.post("/states/{state_id}/export", response_model=ExportResult)
async def export_state(
    state_id: str, states: StatesDep, principal: PrincipalDep, req: ExportRequest | None = None
) -> ExportResult:
    path = await states.export(principal, state_id, req.name if req is not None else None)
    return ExportResult(id=state_id, name=path.stem, bytes=path.stat().st_size)


@router.get("/states/{state_id}/export")
async def download_state(state_id: str, states: StatesDep, principal: PrincipalDep) -> Response:
    data = await states.export_bytes(principal, state_id)
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{state_id}.gbstate"'},
    )


# --- generation from a state ---------------------------------------------------------


def _token_info(
    states: StateService, out: StepOutput, logprobs: int | None, labels: ReadoutLabels | None
) -> list[TokenInfo]:
    text = states.token_text
    infos = {i.token_id: i for i in out.logprobs} if logprobs is not None else {}
    read = out.features if labels is not None else []
    tokens = []
    for k, token_id in enumerate(out.token_ids):
        info = infos.get(token_id)
        top = None
        if info is not None:
            top = [{"token_id": t, "token": text(t), "logprob": lp} for t, lp in info.top]
        tokens.append(
            TokenInfo(
                token_id=token_id,
                token=text(token_id),
                logprob=info.logprob if info else None,
                top_logprobs=top,
                features=labels.features(read[k]) if k < len(read) else None,
            )
        )
    return tokens


async def _params(
    req: GenerateTokenRequest,
    states: StateService,
    principal: Principal,
    steering: SteeringService,
) -> tuple[SamplingParams, ReadoutLabels | None]:
    """The sampling parameters, and what names the readout's features (None: no readout)."""
    readout = labels = None
    if req.readout is not None:
        options = req.readout
        readout, dictionary = await steering.readout(None, options.features, options.dictionary)
        labels = ReadoutLabels(dictionary)
    params = states.generation_params(
        principal,
        req.state_id,
        max_tokens=req.max_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        seed=req.seed,
        stop=list(req.stop_sequences),
        logprobs=req.logprobs,
        steering=await steering.plan(principal, req.variant, req.session_id, req.variant_id),
        commit=req.commit,
        readout=readout,
    )
    return params, labels


async def _generate(
    req: GenerateTokenRequest,
    states: StateService,
    principal: Principal,
    params: SamplingParams,
    labels: ReadoutLabels | None,
) -> GenerationResult:
    text, tokens, last = "", [], None
    child = None
    async for out, committed in states.generate(principal, req.state_id, params):
        text += out.text
        tokens += _token_info(states, out, req.logprobs, labels)
        last, child = out, committed or child
    return GenerationResult(
        state_id=req.state_id,
        text=text,
        tokens=tokens,
        finish_reason=last.finish_reason,
        child_state_id=child.state_id if child else None,
        usage=GenerationUsage(
            prompt_tokens=last.num_prompt_tokens,
            completion_tokens=last.num_output_tokens,
            cached_tokens=last.num_cached_tokens,
        ),
    )


async def _stream(
    req: GenerateTokenRequest,
    states: StateService,
    principal: Principal,
    params: SamplingParams,
    labels: ReadoutLabels | None,
) -> AsyncIterator[str]:
    index = 0
    async for out, child in states.generate(principal, req.state_id, params):
        infos = _token_info(states, out, req.logprobs, labels)
        for k, info in enumerate(infos):
            text = out.text if k == len(infos) - 1 else ""
            event = info.model_dump(mode="json", exclude_none=True)
            yield json.dumps({"index": index, **event, "text": text})
            index += 1
        if not infos and out.text:  # text held back by a stop-string check, released now
            yield json.dumps({"index": index, "text": out.text})
        if out.finish_reason is not None:
            yield json.dumps(
                {
                    "finish_reason": out.finish_reason,
                    "child_state_id": child.state_id if child else None,
                    "usage": {
                        "prompt_tokens": out.num_prompt_tokens,
                        "completion_tokens": out.num_output_tokens,
                        "cached_tokens": out.num_cached_tokens,
                    },
                }
            )


@router.post("/generate/token", response_model=GenerationResult)
async def generate_token(
    req: GenerateTokenRequest,
    request: Request,
    states: StatesDep,
    principal: PrincipalDep,
    steering: SteeringDep,
):
    """Continue a state: only the new tokens are computed. `stream` sends SSE events: one
    per token ({index, token_id, token, text}: `text` is the output text it settles, which
    a stop string can hold back; with `readout`, its top `features`), then one with
    finish_reason, child_state_id and usage."""
    params, labels = await _params(req, states, principal, steering)
    if req.stream:
        return sse_response(_stream(req, states, principal, params, labels))
    return await until_disconnected(request, _generate(req, states, principal, params, labels))
