"""U-Net construction from the resolved config: shapes, layer geometry, options, errors."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from backend.config.architectures import ARCHITECTURES
from backend.trainer.blocks import LayerOptions, NonLocalBlock, SqueezeExcitation
from backend.trainer.models import build_model, count_parameters

ARCH_3D = ("unet_3d", "unet_plus_3d")
ARCH_2D = ("unet_2d", "unet_plus_2d")
UNETS = ARCH_3D + ARCH_2D  # the other architectures: test_models_parity.py, test_models_train.py


def make_cfg(dataset: dict[str, Any] | None = None, **model: Any) -> dict[str, Any]:
    """A resolved config with PyTC's MODEL defaults, shrunk to a tiny 3-level network."""
    values: dict[str, Any] = {
        "ARCHITECTURE": "unet_3d",
        "BLOCK_TYPE": "residual",
        "FILTERS": [4, 8, 16],
        "ISOTROPY": [False, False, True],
        "IN_PLANES": 1,
        "OUT_PLANES": 1,
        "NORM_MODE": "bn",
        "ACT_MODE": "elu",
        "PAD_MODE": "replicate",
        "POOLING_LAYER": False,
    }
    values.update(model)
    return {"MODEL": values, "DATASET": {"IS_ISOTROPIC": False, "DO_2D": False, **(dataset or {})}}


def build(cfg: dict[str, Any]) -> Any:
    """The built model, typed loosely so tests can index into PyTC's nested layers."""
    return build_model(cfg)


def run(model: nn.Module, shape: tuple[int, ...]) -> torch.Tensor:
    torch.manual_seed(0)
    out: torch.Tensor = model(torch.randn(*shape))
    return out


@pytest.fixture(autouse=True)
def _seeded_single_thread() -> Iterator[None]:
    # Tiny tensors gain nothing from threads, and on a busy shared machine the intra-op
    # thread pool can stall for seconds (the non-local block's batched matmul did).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("arch", ARCH_3D)
@pytest.mark.parametrize(
    ("isotropy", "shape"),
    [
        ([False, False, False], (2, 1, 4, 16, 16)),
        ([False, False, True], (2, 1, 4, 16, 16)),
        ([False, True, True], (1, 1, 8, 16, 16)),
        ([True, True, True], (1, 1, 8, 16, 16)),
    ],
)
@pytest.mark.parametrize("pooling", [False, True])
def test_3d_output_matches_input(
    arch: str, isotropy: list[bool], shape: tuple[int, ...], pooling: bool
) -> None:
    model = build_model(
        make_cfg(ARCHITECTURE=arch, ISOTROPY=isotropy, OUT_PLANES=3, POOLING_LAYER=pooling)
    )
    assert run(model, shape).shape == (shape[0], 3, *shape[2:])


@pytest.mark.parametrize("arch", ARCH_2D)
@pytest.mark.parametrize("pooling", [False, True])
def test_2d_output_matches_input(arch: str, pooling: bool) -> None:
    model = build_model(
        make_cfg(ARCHITECTURE=arch, OUT_PLANES=2, IN_PLANES=3, POOLING_LAYER=pooling)
    )
    assert run(model, (2, 3, 16, 24)).shape == (2, 2, 16, 24)


def test_2d_ignores_isotropy_length() -> None:
    # 2D has no z axis; PyTC does not read ISOTROPY there, so a stale list is harmless.
    model = build_model(make_cfg(ARCHITECTURE="unet_2d", ISOTROPY=[False] * 5))
    assert run(model, (1, 1, 16, 16)).shape == (1, 1, 16, 16)


@pytest.mark.parametrize("arch", UNETS)
@pytest.mark.parametrize("block", ["residual", "residual_se"])
def test_block_types(arch: str, block: str) -> None:
    model = build_model(make_cfg(ARCHITECTURE=arch, BLOCK_TYPE=block))
    has_se = any(isinstance(m, SqueezeExcitation) for m in model.modules())
    assert has_se == (block == "residual_se")
    shape = (1, 1, 4, 16, 16) if arch.endswith("3d") else (1, 1, 16, 16)
    assert run(model, shape).shape == shape


@pytest.mark.parametrize("arch", UNETS)
@pytest.mark.parametrize("norm", ["bn", "sync_bn", "in", "gn", "none"])
def test_norm_modes(arch: str, norm: str) -> None:
    model = build_model(make_cfg(ARCHITECTURE=arch, NORM_MODE=norm))
    expected = {
        "bn": nn.modules.batchnorm._BatchNorm,
        "sync_bn": nn.modules.batchnorm._BatchNorm,
        "in": nn.modules.instancenorm._InstanceNorm,
        "gn": nn.GroupNorm,
    }
    norms = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase | nn.GroupNorm)
    ]
    if norm == "none":
        assert norms == []
    else:
        assert norms and all(isinstance(m, expected[norm]) for m in norms)
    shape = (2, 1, 4, 16, 16) if arch.endswith("3d") else (2, 1, 16, 16)
    assert run(model, shape).shape == shape


@pytest.mark.parametrize("act", ["relu", "elu", "leaky_relu"])
def test_act_modes(act: str) -> None:
    model = build_model(make_cfg(ACT_MODE=act))
    kind = {"relu": nn.ReLU, "elu": nn.ELU, "leaky_relu": nn.LeakyReLU}[act]
    assert any(isinstance(m, kind) for m in model.modules())
    others = {nn.ReLU, nn.ELU, nn.LeakyReLU} - {kind}
    assert not any(type(m) in others for m in model.modules())
    assert run(model, (1, 1, 4, 16, 16)).shape == (1, 1, 4, 16, 16)


@pytest.mark.parametrize("arch", ["unet_3d", "unet_plus_2d"])
@pytest.mark.parametrize("pad", ["zeros", "circular", "reflect", "replicate"])
def test_pad_modes(arch: str, pad: str) -> None:
    model = build_model(make_cfg(ARCHITECTURE=arch, PAD_MODE=pad))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Conv3d)]
    assert all(c.padding_mode == pad for c in convs if any(c.padding))
    shape = (1, 1, 4, 16, 16) if arch.endswith("3d") else (1, 1, 16, 16)
    assert run(model, shape).shape == shape


def test_isotropy_sets_kernels_and_downsampling() -> None:
    model = build(make_cfg(ISOTROPY=[False, False, True]))
    down = [layer[1][0] for layer in model.down_layers]
    assert [c.kernel_size for c in down] == [(1, 3, 3), (1, 3, 3), (3, 3, 3)]
    assert [c.stride for c in down] == [(1, 1, 1), (1, 2, 2), (2, 2, 2)]
    up = [pair[0][0] for pair in model.up_layers]  # up_layers[j] serves level j+1
    assert [c.kernel_size for c in up] == [(1, 3, 3), (3, 3, 3)]
    assert model.conv_in[0].kernel_size == (1, 5, 5)
    # PyTC's residual blocks are (1, 3, 3) at every level (checkpoint compatibility).
    assert model.down_layers[2][2].conv[0][0].kernel_size == (1, 3, 3)


def test_pooling_layer_replaces_strided_conv() -> None:
    model = build(make_cfg(POOLING_LAYER=True))
    pools = [layer[0] for layer in model.down_layers]
    assert isinstance(pools[0], nn.Identity)
    assert [p.kernel_size for p in pools[1:]] == [(1, 2, 2), 2]
    assert all(layer[1][0].stride == (1, 1, 1) for layer in model.down_layers)


def test_dataset_is_isotropic_makes_everything_isotropic() -> None:
    cfg = make_cfg(dataset={"IS_ISOTROPIC": True}, ISOTROPY=[False])  # ISOTROPY then unused
    model = build(cfg)
    assert model.conv_in[0].kernel_size == (5, 5, 5)
    assert all(layer[1][0].kernel_size == (3, 3, 3) for layer in model.down_layers)
    assert run(model, (1, 1, 8, 8, 8)).shape == (1, 1, 8, 8, 8)


def test_single_level() -> None:
    for arch in UNETS:
        model = build_model(make_cfg(ARCHITECTURE=arch, FILTERS=[4], ISOTROPY=[False]))
        shape = (1, 1, 2, 8, 8) if arch.endswith("3d") else (1, 1, 8, 8)
        assert run(model, shape).shape == shape


def test_pytc_layer_names() -> None:
    keys = set(
        build_model(make_cfg(ARCHITECTURE="unet_plus_3d", BLOCK_TYPE="residual_se")).state_dict()
    )
    for key in [
        "conv_in.0.weight",
        "conv_in.1.running_mean",
        "conv_out.0.bias",
        "down_layers.0.1.0.weight",
        "down_layers.1.2.conv.0.0.0.weight",  # SE wraps the residual branch
        "down_layers.1.2.conv.1.fc.0.weight",
        "up_layers.0.0.0.weight",
        "up_layers.1.1.conv.0.1.0.weight",
        "feat_layers.1.0.weight",
        "non_local.g.weight",
        "non_local.W.1.weight",
    ]:
        assert key in keys, key


def test_unet_plus_adds_layers() -> None:
    plain = build(make_cfg(ARCHITECTURE="unet_3d"))
    plus = build(make_cfg(ARCHITECTURE="unet_plus_3d"))
    assert hasattr(plus, "non_local") and len(plus.feat_layers) == 2
    assert count_parameters(plus) > count_parameters(plain)


def test_count_parameters() -> None:
    small = build_model(make_cfg(FILTERS=[4, 8, 16]))
    wide = build_model(make_cfg(FILTERS=[8, 16, 32]))
    deep = build_model(make_cfg(FILTERS=[4, 8, 16, 16], ISOTROPY=[False] * 4))
    n = count_parameters(small)
    assert n == sum(p.numel() for p in small.parameters()) > 0
    assert count_parameters(wide) > n
    assert count_parameters(deep) > n


@pytest.mark.parametrize("arch", UNETS)
def test_backward(arch: str) -> None:
    model = build(make_cfg(ARCHITECTURE=arch, OUT_PLANES=2))
    shape = (2, 1, 4, 16, 16) if arch.endswith("3d") else (2, 1, 16, 16)
    out = run(model, shape)
    torch.autograd.backward(out.square().mean())
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.conv_in[0].weight.grad.abs().sum() > 0
    assert model.conv_out[0].bias.grad.abs().sum() > 0


@pytest.mark.parametrize("norm", ["bn", "in", "none"])
def test_non_local_block_starts_as_identity(norm: str) -> None:
    block = NonLocalBlock(8, LayerOptions(ndim=3, norm=norm))
    x = torch.randn(2, 8, 2, 3, 3)
    torch.testing.assert_close(block(x), x)


def test_outputs_are_raw_logits() -> None:
    model = build_model(make_cfg())
    out = run(model, (2, 1, 4, 16, 16))
    assert out.min() < 0 or out.max() > 1  # no sigmoid baked into the model


@pytest.mark.parametrize(
    ("key", "value", "supported"),
    [
        ("ARCHITECTURE", "fpn_2d", ", ".join(ARCHITECTURES)),
        ("BLOCK_TYPE", "bottleneck", "residual, residual_se, residual_pa, residual_se_pa"),
        ("NORM_MODE", "batch", "bn, sync_bn, in, gn, none"),
        ("ACT_MODE", "prelu", "relu, leaky_relu, elu, gelu, silu, swish, efficient_swish, none"),
        ("PAD_MODE", "edge", "zeros, circular, reflect, replicate"),
    ],
)
def test_unsupported_options_name_the_supported(key: str, value: str, supported: str) -> None:
    overrides: dict[str, Any] = {key: value}
    with pytest.raises(ValueError, match=rf"MODEL\.{key}") as err:
        build_model(make_cfg(**overrides))
    assert repr(value) in str(err.value) and supported in str(err.value)


def test_isotropy_length_must_match_filters() -> None:
    with pytest.raises(ValueError, match=r"MODEL.ISOTROPY has 2 entries but MODEL.FILTERS has 3"):
        build_model(make_cfg(ISOTROPY=[False, True]))


def test_empty_filters_rejected() -> None:
    with pytest.raises(ValueError, match=r"MODEL\.FILTERS"):
        build_model(make_cfg(FILTERS=[], ISOTROPY=[]))


@pytest.mark.parametrize("isotropic", [False, True])
def test_repvgg_fuse_gives_the_deploy_block(isotropic: bool) -> None:
    from backend.trainer.arch.backbones import RepVGGBlock

    opts = LayerOptions(ndim=3)
    block = RepVGGBlock(4, 4, opts, stride=1, isotropic=isotropic, deploy=False)
    for m in block.modules():
        if isinstance(m, nn.BatchNorm3d):  # non-trivial statistics to fold
            assert m.running_mean is not None and m.running_var is not None
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.5, 0.5)
    block.eval()
    deployed = RepVGGBlock(4, 4, opts, stride=1, isotropic=isotropic, deploy=True).eval()
    kernel, bias = block.fuse()
    deployed.rbr_reparam.load_state_dict({"weight": kernel, "bias": bias})
    x = torch.randn(1, 4, 3, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), block(x), atol=1e-5, rtol=1e-5)
