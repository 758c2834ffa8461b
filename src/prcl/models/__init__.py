"""The PRCL network: DeepLabv3+ on a ResNet encoder with class, mean and variance heads."""

from prcl.models.deeplab import DeepLabV3Plus, SegmentationOutput, build_model
from prcl.models.encoders import ENCODERS, ResNetEncoder, build_encoder, load_encoder_weights
from prcl.models.official import convert_official_state_dict, load_official
from prcl.models.probability_head import ProbabilityHead

__all__ = [
    "ENCODERS",
    "DeepLabV3Plus",
    "ProbabilityHead",
    "ResNetEncoder",
    "SegmentationOutput",
    "build_encoder",
    "build_model",
    "convert_official_state_dict",
    "load_encoder_weights",
    "load_official",
]
