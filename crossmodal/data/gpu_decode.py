"""Decoding a batch's JPEG rows on the GPU (`data.decode: cuda`), for encoded files.

With `decode: cuda` the DataLoader workers do no pixel work: a sample carries its encoded bytes
(`<modality>_encoded`, a uint8 tensor) and the geometry its (seed, epoch, index) stream drew
(`<modality>_geometry`: top, left, height, width, out_height, out_width, flip), exactly the
geometry the CPU path would apply. The batch is collated with the bytes kept as a list
(`collate`), moved to the device, and `decode_batch` decodes every JPEG of the batch in one
`torchvision.io.decode_jpeg(list, device=...)` call (nvJPEG on CUDA), crops, resizes
(bilinear, antialiased when shrinking), flips and normalises there. The result is the sample
dict of the CPU path, up to the resampling filter (OpenCV's area/bilinear on the CPU,
torch's antialiased bilinear here) and the JPEG decoder's rounding.

CPU decoding stays the default: nothing here runs unless a config asks for it, and the same
functions run on the CPU (device "cpu") for the tests.
"""
from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

ENCODED_SUFFIX, GEOMETRY_SUFFIX = "_encoded", "_geometry"


def missing_decoder() -> str | None:
    """Why this torchvision cannot run decode_batch, or None when it can. torchvision deprecated its image
    codecs in 0.29 (in favour of torchcodec) and says it will remove them; a torchvision without
    `torchvision.io.decode_jpeg` fails at config time with this reason rather than at the first batch."""
    try:
        from torchvision.io import decode_jpeg  # noqa: F401
    except ImportError as error:
        version = getattr(sys.modules.get("torchvision"), "__version__", "?")
        return f"needs torchvision.io.decode_jpeg, which torchvision {version} does not provide ({error})"
    return None


def collate(samples: list[dict]) -> dict:
    """Stack the samples' tensors; keep each `*_encoded` entry as a list of 1-D uint8 tensors (lengths differ)."""
    batch = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        batch[key] = values if key.endswith(ENCODED_SUFFIX) else torch.stack(values)
    return batch


def to_device(batch: dict, device: torch.device) -> dict:
    """Move a collated batch's tensors to `device`; the encoded bytes stay on the CPU, where decode_jpeg reads them
    (it hands them to nvJPEG itself)."""
    return {key: value if isinstance(value, list) else value.to(device, non_blocking=True)
            for key, value in batch.items()}


def decode_batch(batch: dict, modality: str, mean: torch.Tensor, std: torch.Tensor) -> dict:
    """Replace `<modality>_encoded` and `<modality>_geometry` by `<modality>`: (B, 3, h, w) float32 normalised,
    on the device of `mean` and `std` ((3,) in [0, 1] units).

    Stored JPEGs carry no EXIF rotation (prepare re-encodes rotated ones upright), which nvJPEG would ignore."""
    from torchvision.io import ImageReadMode, decode_jpeg

    data = batch.pop(modality + ENCODED_SUFFIX)
    geometry = batch.pop(modality + GEOMETRY_SUFFIX).tolist()  # one host read per batch
    images = decode_jpeg(data, mode=ImageReadMode.RGB, device=mean.device)
    crops = []
    for image, (top, left, h, w, out_h, out_w, flip) in zip(images, geometry):
        box = image[:, top:top + h, left:left + w].float()
        if (h, w) != (out_h, out_w):
            box = F.interpolate(box[None], size=(out_h, out_w), mode="bilinear", align_corners=False,
                                antialias=out_h < h or out_w < w)[0]
        crops.append(box.flip(-1) if flip else box)
    x = torch.stack(crops).div_(255.0)
    batch[modality] = x.sub_(mean.view(1, 3, 1, 1)).div_(std.view(1, 3, 1, 1))
    return batch
