"""Features within stored variants (each owner's namespaces of variants): what the
/features and /variants routes and steered generation share.

Variants arrive as Ember `Variant.json()` and are checked before they are stored or used: the
base model must be one this server serves and every feature must exist in its dictionaries
(resolving the variant into a steering plan checks both ids and scope layers). Stored
variants live in `VariantService` (synchronous SQL, run here in a worker thread).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from glassbox.engine.readout import Readout
from glassbox.errors import InvalidRequest, ModelNotFound
from glassbox.features.catalog import FeatureCatalog
from glassbox.features.dictionary import Feature, FeatureDictionary
from glassbox.features.ember_json import EmberJSONError, feature_hex, variant_from_ember
from glassbox.features.service import FeatureService, Inspection
from glassbox.features.variant import FeatureRef, VariantSpec
from glassbox.features.variants import DEFAULT_VARIANT, StoredVariant, VariantService
from glassbox.features.vectors import SteeringVectors
from glassbox.principal import Principal
from glassbox.requests.registry import FEATURES, STEERING, ModelRegistry
from glassbox.steering.plan import SteeringPlan


def feature_ref(feature: Feature, catalog: FeatureCatalog) -> FeatureRef:
    return FeatureRef(uuid=feature.uuid, label=feature.label, index_in_sae=catalog.index(feature))


class SteeringService:
    def __init__(self, features: FeatureService, variants: VariantService, registry: ModelRegistry):
        self.features = features
        self.variants = variants
        self.registry = registry
        self._vectors: SteeringVectors | None = None

    # --- variant JSON -----------------------------------------------------------------

    async def spec_from_json(self, data: Mapping[str, Any], param: str = "variant") -> VariantSpec:
        """A checked VariantSpec from Ember `Variant.json()`: 400 for malformed JSON, 404 for
        another model or an unknown feature."""
        try:
            spec = variant_from_ember(data)
        except EmberJSONError as exc:
            raise InvalidRequest(f"'{param}': {exc}", param=param) from exc
        self.variants.check_size(spec, f"{param}.edits")
        if spec.base_model not in self.registry.names():
            raise ModelNotFound(
                spec.base_model,
                f"'{param}.base_model' is {spec.base_model!r}, which this server does not "
                "serve; use one of " + ", ".join(repr(n) for n in self.registry.names()),
                param=f"{param}.base_model",
            )
        self.registry.require(spec.base_model, STEERING, param=f"{param}.base_model")
        await self.features.resolve(spec)
        return spec

    # --- stored variants --------------------------------------------------------------

    async def get(self, owner: Principal, namespace: str, variant_id: str | None) -> StoredVariant:
        variant_id = variant_id or DEFAULT_VARIANT
        return await asyncio.to_thread(self.variants.get, owner, namespace, variant_id)

    async def create(
        self,
        owner: Principal,
        namespace: str,
        variant_id: str,
        base_variant_id: str | None,
        variant: Mapping[str, Any] | None,
    ) -> StoredVariant:
        spec = await self.spec_from_json(variant) if variant is not None else None
        return await asyncio.to_thread(
            self.variants.create, owner, namespace, variant_id, base_variant_id, spec
        )

    async def replace(
        self, owner: Principal, namespace: str, variant_id: str, variant: Mapping[str, Any]
    ) -> StoredVariant:
        spec = await self.spec_from_json(variant)
        return await asyncio.to_thread(self.variants.replace, owner, namespace, variant_id, spec)

    async def plan(
        self,
        owner: Principal,
        variant: Mapping[str, Any] | None,
        namespace: str | None,
        variant_id: str | None,
    ) -> SteeringPlan | None:
        """The steering plan of a generation request: its inline variant, or the stored
        variant it names, or none."""
        if variant is not None:
            spec = await self.spec_from_json(variant)
        elif namespace is not None:
            spec = (await self.get(owner, namespace, variant_id)).spec
        else:
            return None
        return await self.features.resolve(spec)

    async def request_plan(
        self,
        owner: Principal,
        variant: Mapping[str, Any] | None,
        namespace: str | None,
        variant_id: str | None,
        coefficients: Mapping[str, float] | None,
    ) -> SteeringPlan | None:
        """A request's variant (`plan`) combined with its emotion's steering vectors."""
        plan = await self.plan(owner, variant, namespace, variant_id)
        if coefficients:  # {} blends nothing: no dictionaries to load for it
            emotion = await self.emotion_plan(coefficients)
            plan = emotion if plan is None else plan.combined(emotion)
        return plan

    async def emotion_plan(self, coefficients: Mapping[str, float]) -> SteeringPlan:
        """Elpis-style steering: named vectors (concept ids such as excited, calm,
        frustrated, depleted, or labels) blended by their coefficients."""
        if self._vectors is None:
            concepts = (await self.features.dictionaries())[0]
            self._vectors = SteeringVectors.from_concepts(concepts)
        try:
            return self._vectors.blend(dict(coefficients))
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="emotion_coefficients") from exc

    async def readout(
        self, model: str | None, features: int, dictionary: str | None
    ) -> tuple[Readout, FeatureDictionary]:
        """A generation's per-token feature readout (`FeatureService.readout`), refused
        for a model whose backend has no features."""
        self.registry.require(model, FEATURES, param="readout")
        return await self.features.readout(features, dictionary)

    # --- features under a variant -----------------------------------------------------

    async def catalog(self) -> FeatureCatalog:
        """Model-wide feature indices (what `index_in_sae` reports on every surface)."""
        return await self.features.catalog()

    async def search(
        self, owner: Principal, query: str, namespace: str, variant_id: str | None, top_k: int
    ) -> list[tuple[Feature, float, float]]:
        """(feature, relevance, the variant's current value for it: 0 when unset)."""
        stored = await self.get(owner, namespace, variant_id)
        values = {e.feature.uuid: e.value for e in stored.spec.edits}
        hits = await self.features.search(query, top_k)
        return [(f, score, values.get(f.uuid, 0.0)) for f, score in hits]

    async def inspect(
        self, owner: Principal, messages: list[dict], namespace: str, variant_id: str | None
    ) -> Inspection:
        stored = await self.get(owner, namespace, variant_id)
        return await self.features.inspect(messages, stored.spec)

    async def steer(
        self,
        owner: Principal,
        namespace: str,
        variant_id: str | None,
        label: str | None,
        feature_id: str | None,
        value: float | None,
        mode: str,
    ) -> StoredVariant:
        """Set one feature of a stored variant, found by id or by label (exact label first,
        else the best search hit)."""
        await self.get(owner, namespace, variant_id)  # 400/404 before any feature lookup
        if feature_id is not None:
            try:
                uuid = feature_hex(feature_id, "feature_id")
            except EmberJSONError as exc:
                raise InvalidRequest(str(exc), param="feature_id") from exc
            _, feature = await self.features.feature(uuid)
        else:
            _, feature = await self.features.feature_by_label(label or "")
        return await asyncio.to_thread(
            self.variants.set_edit,
            owner,
            namespace,
            variant_id or DEFAULT_VARIANT,
            feature_ref(feature, await self.features.catalog()),
            value,
            mode,
        )
