from zoneout.models.build import build_model
from zoneout.models.language_model import LanguageModel
from zoneout.models.classifier import SequenceClassifier

__all__ = ["build_model", "LanguageModel", "SequenceClassifier"]
