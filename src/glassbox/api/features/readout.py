"""Feature readout with a generation (`readout` on /v1/chat/completions and /generate/token):
the request field, and each generated token's top features as the responses carry them."""

from __future__ import annotations

from pydantic import BaseModel, Field

from glassbox.api.common import StrictRequest
from glassbox.engine.readout import TokenFeatures
from glassbox.features.dictionary import FeatureDictionary
from glassbox.features.ember_json import feature_id
from glassbox.features.service import READOUT_MAX_FEATURES


class ReadoutOptions(StrictRequest):
    """Report, for every generated token, its strongest features, read in the forward pass
    that chose the token (the residual stream at the position before it)."""

    features: int = Field(5, ge=1, le=READOUT_MAX_FEATURES, description="Features per token")
    dictionary: str | None = Field(
        None, description="The dictionary to read; default: the concept vectors"
    )


class ReadoutFeature(BaseModel):
    id: str = Field(description="The feature's id (as /features/search and /inspect give it)")
    label: str
    activation: float


class TokenReadout(BaseModel):
    token: str
    token_id: int
    features: list[ReadoutFeature] = Field(
        description="Strongest first; features that do not fire on the token are left out"
    )


class ReadoutLabels:
    """Turns a dictionary's feature indices into the features' ids and labels (made once
    per request)."""

    def __init__(self, dictionary: FeatureDictionary):
        self.dictionary = dictionary
        self._ids: dict[int, str] = {}

    def features(self, found: TokenFeatures) -> list[ReadoutFeature]:
        features = self.dictionary.features
        out = []
        for i, value in zip(found.indices, found.activations, strict=True):
            fid = self._ids.get(i)
            if fid is None:
                fid = self._ids[i] = feature_id(features[i].uuid)
            out.append(ReadoutFeature(id=fid, label=features[i].label, activation=value))
        return out
