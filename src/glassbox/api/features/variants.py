"""/variants: a namespace's stored variants (the wire calls the namespace `session_id`), in
and out as Ember's `Variant.json()`."""

from __future__ import annotations

from fastapi import APIRouter

from glassbox.api.deps import PrincipalDep, SteeringDep, VariantsDep
from glassbox.api.features.schemas import (
    VariantCreateRequest,
    VariantDeleted,
    VariantList,
    VariantObject,
    VariantReplaceRequest,
)
from glassbox.features.ember_json import variant_to_ember
from glassbox.features.variants import StoredVariant

router = APIRouter(prefix="/variants", tags=["variants"])


def variant_object(v: StoredVariant) -> VariantObject:
    return VariantObject(
        session_id=v.namespace,
        variant_id=v.variant_id,
        parent_variant_id=v.parent_variant_id,
        created_at=int(v.created_at.timestamp()),
        updated_at=int(v.updated_at.timestamp()),
        variant=variant_to_ember(v.spec),
    )


@router.post("", response_model=VariantObject, status_code=201)
async def create_variant(
    req: VariantCreateRequest, steering: SteeringDep, principal: PrincipalDep
) -> VariantObject:
    stored = await steering.create(
        principal, req.session_id, req.variant_id, req.base_variant_id, req.variant
    )
    return variant_object(stored)


# Plain `def` routes: FastAPI runs them in a worker thread, off the event loop.
@router.get("", response_model=VariantList)
def list_variants(session_id: str, variants: VariantsDep, principal: PrincipalDep) -> VariantList:
    return VariantList(data=[variant_object(v) for v in variants.list(principal, session_id)])


@router.get("/{session_id}/{variant_id}", response_model=VariantObject)
def get_variant(
    session_id: str, variant_id: str, variants: VariantsDep, principal: PrincipalDep
) -> VariantObject:
    return variant_object(variants.get(principal, session_id, variant_id))


@router.put("/{session_id}/{variant_id}", response_model=VariantObject)
async def replace_variant(
    session_id: str,
    variant_id: str,
    req: VariantReplaceRequest,
    steering: SteeringDep,
    principal: PrincipalDep,
) -> VariantObject:
    return variant_object(await steering.replace(principal, session_id, variant_id, req.variant))


@router.delete("/{session_id}/{variant_id}", response_model=VariantDeleted)
def delete_variant(
    session_id: str, variant_id: str, variants: VariantsDep, principal: PrincipalDep
) -> VariantDeleted:
    variants.delete(principal, session_id, variant_id)
    return VariantDeleted(session_id=session_id, variant_id=variant_id)
