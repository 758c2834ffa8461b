"""The PRCL network: DeepLabv3+ on a ResNet, MobileNetV3 or any timm encoder with class, mean and
variance heads."""

from prcl.models.deeplab import DeepLabV3Plus, SegmentationOutput, build_model, model_from_config
from prcl.models.encoders import ENCODERS, ResNetEncoder, build_encoder, load_encoder_weights
from prcl.models.mobilenet import MobileNetV3Encoder
from prcl.models.official import convert_official_state_dict, load_official
from prcl.models.probability_head import ProbabilityHead
from prcl.models.timm_encoder import TimmEncoder, build_timm_encoder

__all__ = [
    "ENCODERS",
    "DeepLabV3Plus",
    "MobileNetV3Encoder",
    "ProbabilityHead",
    "ResNetEncoder",
    "SegmentationOutput",
    "TimmEncoder",
    "build_encoder",
    "build_model",
    "build_timm_encoder",
    "convert_official_state_dict",
    "load_encoder_weights",
    "load_official",
    "model_from_config",
]
