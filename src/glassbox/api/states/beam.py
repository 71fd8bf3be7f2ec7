"""/generate/beam: beam search from a state."""

from __future__ import annotations

from fastapi import APIRouter, Request

from glassbox.api.deps import PrincipalDep, StatesDep, SteeringDep
from glassbox.api.states.beam_schemas import (
    Beam,
    BeamSearchRequest,
    BeamSearchResult,
    BeamSearchUsage,
)
from glassbox.api.streaming import until_disconnected
from glassbox.engine.beam_search import BeamSearchParams
from glassbox.principal import Principal
from glassbox.states.beam import beam_search
from glassbox.states.service import StateService

router = APIRouter(tags=["states"])


async def _search(
    states: StateService, principal: Principal, state_id: str, params: BeamSearchParams
) -> BeamSearchResult:
    prompt_tokens = states.get(principal, state_id).num_tokens
    hypotheses, child = await beam_search(states, principal, state_id, params)
    beams = [
        Beam(
            index=i,
            text=h.text,
            token_ids=h.token_ids,
            score=h.score,
            finish_reason=h.finish_reason,
            group=h.group,
        )
        for i, h in enumerate(hypotheses)
    ]
    return BeamSearchResult(
        state_id=state_id,
        beams=beams,
        child_state_id=child.state_id if child else None,
        usage=BeamSearchUsage(
            prompt_tokens=prompt_tokens,
            completion_tokens=sum(len(b.token_ids) for b in beams),
        ),
    )


@router.post("/generate/beam", response_model=BeamSearchResult)
async def generate_beam(
    req: BeamSearchRequest,
    request: Request,
    states: StatesDep,
    principal: PrincipalDep,
    steering: SteeringDep,
):
    """Beam search from a state (Hugging Face `generate(num_beams=...)` semantics);
    `max_length` counts new tokens only. Other requests keep running while it searches.
    With `commit`, the best beam is stored as a child state."""
    states.get(principal, req.state_id)  # 404 before resolving the variant
    plan = await steering.plan(principal, req.variant, req.session_id, req.variant_id)
    work = _search(states, principal, req.state_id, req.search_params(plan))
    return await until_disconnected(request, work)
