"""Energy models. ``make_model(name, **kwargs)`` builds one by its registry name."""
from __future__ import annotations

from structpred.models.base import EnergyModel
from structpred.models.filter_mrf import FieldsOfExperts, FilterMRF, GaussianMRF
from structpred.models.pairwise import PairwiseMRF
from structpred.models.penalties import PENALTIES, Penalty, get_penalty
from structpred.registry import build

MODELS: dict[str, type[EnergyModel]] = {
    cls.name: cls for cls in (FieldsOfExperts, GaussianMRF, FilterMRF, PairwiseMRF)
}


def make_model(name: str, **kwargs) -> EnergyModel:
    """Build a registered model: ``make_model("foe", num_filters=24, filter_size=5)``."""
    return build(MODELS, "model", name, **kwargs)


__all__ = ["EnergyModel", "FieldsOfExperts", "FilterMRF", "GaussianMRF", "MODELS", "PairwiseMRF", "PENALTIES",
           "Penalty", "get_penalty", "make_model"]
