from zoneout.models.build import build_model
from zoneout.models.classifier import SequenceClassifier
from zoneout.models.language_model import LanguageModel

__all__ = ["build_model", "LanguageModel", "SequenceClassifier"]
