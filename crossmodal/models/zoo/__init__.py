"""The CIFAR-style model zoo of the CRD paper; importing it registers every architecture."""
from crossmodal.models.zoo import (  # noqa: F401  (imported for their @register_model side effect)
    mobilenetv2,
    resnet_cifar,
    resnet_imagenet,
    shufflenetv1,
    shufflenetv2,
    vgg,
    wrn,
)
