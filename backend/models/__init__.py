"""Models lsal can train: the interface, the built-in models, the scikit-learn wrapper, the registry.

See backend/models/base.py for the contract and docs/plugins.md for writing your own.
"""

from backend.models.base import CAPABILITIES, OBJECT_TAGS, Model, ModelError, fit_checked
from backend.models.builtin import ImageModel, LearnerModel
from backend.models.registry import BUILTIN, ENTRY_POINT_GROUP, ModelRegistry
from backend.models.scorer import ModelScorer, scorer_for, scorer_for_strategy
from backend.models.sklearn import SklearnModel, sklearn_model

__all__ = [
    "BUILTIN",
    "CAPABILITIES",
    "ENTRY_POINT_GROUP",
    "OBJECT_TAGS",
    "ImageModel",
    "LearnerModel",
    "Model",
    "ModelError",
    "ModelRegistry",
    "ModelScorer",
    "SklearnModel",
    "fit_checked",
    "scorer_for",
    "scorer_for_strategy",
    "sklearn_model",
]
