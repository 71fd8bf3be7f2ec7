"""/features: search, inspect and steer features within a namespace's stored variants
(the wire calls the namespace `session_id`)."""

from __future__ import annotations

from fastapi import APIRouter

from glassbox.api.deps import PrincipalDep, SteeringDep, VariantsDep
from glassbox.api.features.schemas import (
    FeatureActivation,
    FeatureInspection,
    FeatureInspectRequest,
    FeatureSearchRequest,
    FeatureSteerRequest,
    InspectedFeature,
    ModifiedFeatures,
    VariantObject,
)
from glassbox.api.features.variants import variant_object
from glassbox.api.openai.schemas import template_messages
from glassbox.features.ember_json import feature_id, variant_to_ember
from glassbox.features.variant import VariantSpec
from glassbox.features.variants import DEFAULT_VARIANT

router = APIRouter(prefix="/features", tags=["features"])


@router.post("/search", response_model=list[FeatureActivation])
async def search_features(
    req: FeatureSearchRequest, steering: SteeringDep, principal: PrincipalDep
) -> list[FeatureActivation]:
    hits = await steering.search(principal, req.query, req.session_id, req.variant_id, req.top_k)
    catalog = await steering.catalog()
    return [
        FeatureActivation(
            uuid=feature_id(f.uuid),
            label=f.label,
            index_in_sae=catalog.index(f),
            score=score,
            activation=value,
        )
        for f, score, value in hits
    ]


@router.post("/inspect", response_model=FeatureInspection, response_model_exclude_none=True)
async def inspect_features(
    req: FeatureInspectRequest, steering: SteeringDep, principal: PrincipalDep
) -> FeatureInspection:
    inspection = await steering.inspect(
        principal, template_messages(req.messages), req.session_id, req.variant_id
    )
    catalog = await steering.catalog()
    top = inspection.top(req.top_k, req.aggregate_by)
    matrix = None
    if req.include_matrix:
        matrix = inspection.acts[:, [f.index for f, _ in top]].tolist()
    return FeatureInspection(
        tokens=inspection.tokens,
        token_ids=inspection.token_ids,
        features=[
            InspectedFeature(
                uuid=feature_id(f.uuid),
                label=f.label,
                index_in_sae=catalog.index(f),
                activation=value,
            )
            for f, value in top
        ],  # fmt: skip
        matrix=matrix,
    )


@router.post("/steer", response_model=VariantObject)
async def steer_feature(
    req: FeatureSteerRequest, steering: SteeringDep, principal: PrincipalDep
) -> VariantObject:
    stored = await steering.steer(
        principal, req.session_id, req.variant_id, req.label, req.feature_id, req.value, req.mode
    )
    return variant_object(stored)


@router.get("/modified", response_model=ModifiedFeatures)
def modified_features(
    session_id: str,
    variants: VariantsDep,
    principal: PrincipalDep,
    variant_id: str = DEFAULT_VARIANT,
) -> ModifiedFeatures:
    edits = variants.modified(principal, session_id, variant_id)
    as_json = variant_to_ember(VariantSpec(base_model=variants.base_model, edits=edits))
    return ModifiedFeatures(session_id=session_id, variant_id=variant_id, edits=as_json["edits"])
