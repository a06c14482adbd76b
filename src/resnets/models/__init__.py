"""Residual units, the generic network, the registry of named models and their summaries."""

from resnets.models.blocks import BasicUnit, BottleneckUnit, PreActBasicUnit, PreActBottleneckUnit
from resnets.models.resnet import ResNet
from resnets.models.summary import count_macs, count_parameters, format_info, model_info
from resnets.models.create import create_model
from resnets.models.zoo import (
    cifar_plain,
    cifar_resnet,
    imagenet_plain,
    imagenet_resnet,
    list_models,
)
from resnets.models.weights import imagenet_classes, imagenet_wnids

__all__ = [
    "BasicUnit",
    "BottleneckUnit",
    "PreActBasicUnit",
    "PreActBottleneckUnit",
    "ResNet",
    "cifar_plain",
    "cifar_resnet",
    "count_macs",
    "count_parameters",
    "create_model",
    "format_info",
    "imagenet_classes",
    "imagenet_wnids",
    "imagenet_plain",
    "imagenet_resnet",
    "list_models",
    "model_info",
]
