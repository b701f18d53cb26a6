"""The model zoo and the timm wrapper: CRD-zoo parameter counts, the output contract, error messages."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from crossmodal.errors import ConfigError
from crossmodal.losses.base import output_shapes
from crossmodal.models import build_model, list_models

torch.set_num_threads(1)

# Millions of parameters at in_chans=3, num_classes=100, as listed for the CRD paper's CIFAR-100 zoo.
PARAMS_M = {
    "resnet8": 0.08, "resnet14": 0.18, "resnet20": 0.28, "resnet32": 0.47, "resnet44": 0.67,
    "resnet56": 0.86, "resnet110": 1.74, "resnet8x4": 1.23, "resnet32x4": 7.43,
    "wrn_16_1": 0.18, "wrn_16_2": 0.70, "wrn_40_1": 0.57, "wrn_40_2": 2.26,
    "vgg8": 3.97, "vgg11": 9.28, "vgg13": 9.46, "vgg16": 14.77, "vgg19": 20.09,
    "MobileNetV2": 0.81, "ShuffleV1": 0.95, "ShuffleV2": 1.36, "ResNet50": 23.71,
}
ZOO = sorted(PARAMS_M)

# Channels of each feature tap (stem first) and the side of the last tap for a 32 px input.
RESNET = ([16, 16, 32, 64], 8)
RESNET_X4 = ([32, 64, 128, 256], 8)
VGG = ([64, 128, 256, 512, 512], 4)
TAPS_AT_32PX = {
    **{f"resnet{d}": RESNET for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": RESNET_X4, "resnet32x4": RESNET_X4,
    "wrn_16_1": ([16, 16, 32, 64], 8), "wrn_40_1": ([16, 16, 32, 64], 8),
    "wrn_16_2": ([16, 32, 64, 128], 8), "wrn_40_2": ([16, 32, 64, 128], 8),
    **{f"vgg{d}": VGG for d in (8, 11, 13, 16, 19)},
    "MobileNetV2": ([16, 12, 16, 48, 160], 2),
    "ShuffleV1": ([24, 240, 480, 960], 4),
    "ShuffleV2": ([24, 116, 232, 464], 4),
    "ResNet50": ([64, 256, 512, 1024, 2048], 4),
}
EMBEDDING_DIM = {"MobileNetV2": 1280, "ShuffleV2": 1024}  # nets with a 1x1 conv between the last tap and the pool
# Nets whose embedding is exactly the global average of the last tap (no layer in between).
POOLS_LAST_TAP = [n for n in ZOO if n not in EMBEDDING_DIM]
# MobileNetV2's stage outputs are linear bottlenecks: there is no ReLU, so preact == features there.
LINEAR_STAGE_OUTPUTS = {"MobileNetV2"}


def _forward(model: nn.Module, in_chans: int, size: int = 32, batch: int = 2, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    with torch.no_grad():
        return model(torch.randn(batch, in_chans, size, size))


def test_zoo_registers_the_crd_names():
    assert list_models() == sorted(ZOO)


@pytest.mark.parametrize("name", ZOO)
def test_parameter_count_matches_the_crd_zoo(name):
    model = build_model(name, in_chans=3, num_classes=100)
    count = sum(p.numel() for p in model.parameters())
    assert round(count / 1e6, 2) == PARAMS_M[name], f"{name}: {count} parameters"


def _assert_taps_are_relu_of_preacts(name: str, out: dict) -> None:
    pairs = list(zip(out["features"], out["preact_features"]))
    if name in LINEAR_STAGE_OUTPUTS:
        stem, pre_stem = pairs.pop(0)
        assert torch.equal(stem, F.relu(pre_stem))
        assert all(torch.equal(f, p) for f, p in pairs)
        return
    for i, (feature, preact) in enumerate(pairs):
        assert (preact < 0).any(), f"{name} tap {i}: a pre-activation with no negative value is not pre-ReLU"
        assert torch.equal(feature, F.relu(preact)), f"{name} tap {i}"


@pytest.mark.parametrize("name", ZOO)
def test_output_contract_for_1_2_3_channels(name):
    channels, last_side = TAPS_AT_32PX[name]
    for in_chans in (1, 2, 3):
        model = build_model(name, in_chans=in_chans, num_classes=10).eval()
        out = _forward(model, in_chans)
        assert model.num_classes == 10
        assert model.stage_channels == channels
        assert model.embedding_dim == EMBEDDING_DIM.get(name, channels[-1])
        assert out["logits"].shape == (2, 10)
        assert out["embedding"].shape == (2, model.embedding_dim)
        assert [f.shape[:2] for f in out["features"]] == [(2, c) for c in channels]
        assert all(f.dim() == 4 for f in out["features"])
        assert out["features"][-1].shape[-2:] == (last_side, last_side)
        assert [p.shape for p in out["preact_features"]] == [f.shape for f in out["features"]]
        with torch.no_grad():
            torch.testing.assert_close(out["logits"], model.classifier(out["embedding"]))
        _assert_taps_are_relu_of_preacts(name, out)
        if name in POOLS_LAST_TAP:
            torch.testing.assert_close(out["embedding"], out["features"][-1].mean(dim=(2, 3)))


@pytest.mark.parametrize("name", ZOO)
def test_every_parameter_gets_a_gradient(name):
    # DDP without find_unused_parameters fails on a parameter the loss does not reach.
    model = build_model(name, in_chans=2, num_classes=5).train()
    model(torch.randn(2, 2, 32, 32))["logits"].square().sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, f"{name}: no gradient for {missing[:3]}"


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2"])
@pytest.mark.parametrize("size", [40, 96])
def test_larger_inputs_are_pooled_adaptively(name, size):
    model = build_model(name, in_chans=1, num_classes=7).eval()
    out = _forward(model, 1, size=size)
    assert out["logits"].shape == (2, 7)
    assert out["embedding"].shape == (2, model.embedding_dim)
    assert [f.shape[1] for f in out["features"]] == model.stage_channels


def test_vgg_pools_before_its_last_stage_from_64px():
    model = build_model("vgg8", in_chans=3, num_classes=10).eval()
    # 32 px keeps the 4x4 map for the last two stages (CIFAR); 64 px halves it once more (Tiny-ImageNet).
    assert [f.shape[-1] for f in _forward(model, 3, size=32)["features"]] == [32, 16, 8, 4, 4]
    assert [f.shape[-1] for f in _forward(model, 3, size=64)["features"]] == [64, 32, 16, 8, 4]


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8", "MobileNetV2", "ShuffleV1", "ShuffleV2", "ResNet50"])
def test_channels_last_gives_the_same_outputs(name):
    model = build_model(name, in_chans=2, num_classes=10).eval()
    torch.manual_seed(0)
    x = torch.randn(2, 2, 32, 32)
    with torch.no_grad():
        reference = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out["logits"], reference["logits"], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["embedding"], reference["embedding"], rtol=1e-4, atol=1e-5)
    for f in out["features"][1:]:
        assert f.is_contiguous(memory_format=torch.channels_last), f"{name}: a tap fell back to NCHW"


def test_wrn_taps_do_not_change_the_network():
    # The WRN taps reuse the next block's BN+ReLU; compare with the plain pre-activation forward.
    model = build_model("wrn_16_2", in_chans=3, num_classes=10).eval()
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        h = model.conv1(x)
        for stage in model.stages:
            h = stage(h)
        pooled = F.relu(model.bn_final(h)).mean(dim=(2, 3))
        torch.testing.assert_close(out["logits"], model.classifier(pooled))
        # features[1] is block1's output as block2 sees it: relu(bn1 of block2's first unit).
        torch.testing.assert_close(out["features"][1], F.relu(model.stages[1][0].bn1(model.stages[0](model.conv1(x)))))


def test_init_follows_the_reference_nets():
    model = build_model("resnet32x4", in_chans=3, num_classes=100)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    conv = model.stages[2][1].conv2  # 256 -> 256, 3x3: He (fan_out) std = sqrt(2 / (256 * 9))
    assert conv.weight.std().item() == pytest.approx((2 / (256 * 9)) ** 0.5, rel=0.05)
    vgg = build_model("vgg8", in_chans=3, num_classes=100)
    assert vgg.classifier.weight.std().item() == pytest.approx(0.01, rel=0.1)
    assert torch.all(vgg.classifier.bias == 0)


def test_wrn_drop_rate_is_applied_only_in_training():
    torch.manual_seed(0)
    model = build_model("wrn_16_1", in_chans=3, num_classes=10, drop_rate=0.3)
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(1)
    first = model(x)["logits"]
    torch.manual_seed(2)
    assert not torch.allclose(first, model(x)["logits"])
    model.eval()
    torch.testing.assert_close(model(x)["logits"], model(x)["logits"])


def test_mobilenetv2_width_is_configurable():
    model = build_model("MobileNetV2", in_chans=3, num_classes=10, width_mult=1.0)
    assert model.stage_channels == [32, 24, 32, 96, 320]


def test_output_shapes_reads_the_zoo_contract():
    shapes = output_shapes(build_model("resnet8x4", in_chans=1, num_classes=10), in_chans=1, size=32)
    assert shapes.features == [(32, 32, 32), (64, 32, 32), (128, 16, 16), (256, 8, 8)]
    assert shapes.embedding == 256 and shapes.num_classes == 10


def test_unknown_model_suggests_the_nearest_name():
    with pytest.raises(ConfigError, match="did you mean 'resnet8x4'"):
        build_model("resnet8x5")


def test_unknown_model_parameter_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match="'dropout'") as err:
        build_model("resnet8", dropout=0.1)
    assert "\n" not in str(err.value)


# --- timm wrapper -------------------------------------------------------------------------------


@pytest.mark.parametrize("in_chans", [1, 2])
def test_timm_model_honours_the_contract(in_chans):
    model = build_model("timm:resnet18", in_chans=in_chans, num_classes=10).eval()
    torch.manual_seed(0)
    x = torch.randn(2, in_chans, 64, 64)
    with torch.no_grad():
        out = model(x)
        plain_logits = model.net(x)
    assert out["logits"].shape == (2, 10)
    torch.testing.assert_close(out["logits"], plain_logits)  # the taps do not change timm's forward
    torch.testing.assert_close(out["logits"], model.classifier(out["embedding"]))
    assert out["embedding"].shape == (2, model.embedding_dim) == (2, 512)
    # Stem (stride 2, before the max-pool) then the four stages.
    assert [tuple(f.shape[1:]) for f in out["features"]] == [(64, 32, 32), (64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]
    assert model.stage_channels == [64, 64, 128, 256, 512]
    assert all(p is f for p, f in zip(out["preact_features"], out["features"]))


def test_timm_hook_taps_match_forward_intermediates():
    torch.manual_seed(0)
    by_intermediates = build_model("timm:resnet18", in_chans=2, num_classes=10).eval()
    by_hooks = build_model("timm:resnet18", in_chans=2, num_classes=10, feature_taps="hooks").eval()
    by_hooks.load_state_dict(by_intermediates.state_dict())
    x = torch.randn(2, 2, 64, 64)
    with torch.no_grad():
        a, b = by_intermediates(x), by_hooks(x)
        by_hooks.net(x)  # a plain forward must not leave tapped maps behind
    assert by_hooks._tapped is None
    assert len(a["features"]) == len(b["features"]) == 5
    for fa, fb in zip(a["features"], b["features"]):
        torch.testing.assert_close(fa, fb)
    torch.testing.assert_close(a["logits"], b["logits"])


def test_timm_vit_tokens_become_feature_maps():
    model = build_model("timm:vit_tiny_patch16_224", in_chans=1, num_classes=10, img_size=64, depth=2).eval()
    out = _forward(model, 1, size=64)
    assert [tuple(f.shape[1:]) for f in out["features"]] == [(192, 4, 4), (192, 4, 4)]
    assert out["embedding"].shape == (2, 192)
    with torch.no_grad():
        torch.testing.assert_close(out["logits"], model.classifier(out["embedding"]))


def test_unknown_timm_model_suggests_the_nearest_name():
    with pytest.raises(ConfigError, match="did you mean 'timm:resnet18'"):
        build_model("timm:resnt18")


def test_timm_bad_feature_taps_is_a_config_error():
    with pytest.raises(ConfigError, match="feature_taps"):
        build_model("timm:resnet18", feature_taps="everything")
