"""Full-resolution evaluation: confusion matrix and mIoU, whole-image and sliding-window
inference."""

from prcl.evaluation.evaluate import evaluate, predict
from prcl.evaluation.inference import (
    Prediction,
    Segment,
    Segmenter,
    predict_sliding,
    predict_whole,
)
from prcl.evaluation.metrics import ConfusionMatrix, Scores

__all__ = [
    "ConfusionMatrix",
    "Prediction",
    "Scores",
    "Segment",
    "Segmenter",
    "evaluate",
    "predict",
    "predict_sliding",
    "predict_whole",
]
