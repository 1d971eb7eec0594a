"""PyTC's Swin UNETR (MODEL.ARCHITECTURE `swinunetr`), on MONAI's Swin transformer.

MONAI's `SwinTransformer` encodes the volume in five scales (patch embedding and four
stages of shifted-window attention, each ending in patch merging); UNETR blocks turn each
scale into a skip connection and decode. PyTC's anisotropic variant (DATASET.IS_ISOTROPIC
False) uses (1, 2, 2) patches, (3, 7, 7) windows and in-plane convs at full resolution,
and merges patches in (y, x) only after the stages that MODEL.ISOTROPY marks anisotropic;
the decoder upsamples by the same factors. The encoder is MONAI's, with those merging
layers swapped in, so the state_dict keys are MONAI's (and PyTC's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks.dynunet_block import UnetOutBlock
from monai.networks.blocks.unetr_block import UnetrBasicBlock, UnetrUpBlock
from monai.networks.nets.swin_unetr import MERGING_MODE, SwinTransformer
from torch import Tensor, nn

DOWNSAMPLES = tuple(MERGING_MODE)
Size3 = int | tuple[int, int, int]


Offset = tuple[int, int, int]
# (z, y, x) offsets of the 2x2x2 neighbours, in the order their features are concatenated.
# `mergingv2` takes them in lexicographic order; PyTC's `merging` (v1) takes all eight in
# the order of its own PatchMerging: the origin, then z, y, x, then zx, zy, yx, then zyx.
_V2_3D: list[Offset] = [(z, y, x) for z in (0, 1) for y in (0, 1) for x in (0, 1)]
_V1_3D: list[Offset] = [
    (0, 0, 0),
    (1, 0, 0),
    (0, 1, 0),
    (0, 0, 1),
    (1, 0, 1),
    (1, 1, 0),
    (0, 1, 1),
    (1, 1, 1),
]
_IN_PLANE: dict[str, list[Offset]] = {
    "mergingv2": [(0, y, x) for y in (0, 1) for x in (0, 1)],
    "merging": [(0, y, x) for y in (0, 1) for x in (0, 1)],
}


class PatchMerge(nn.Module):
    """Swin patch merging of (B, D, H, W, C) maps: neighbours concatenated, normalised and
    linearly reduced to 2C channels; odd sizes are zero-padded first. `in_plane` merges
    2x2 in (y, x) and keeps D."""

    def __init__(self, dim: int, mode: str, in_plane: bool) -> None:
        super().__init__()
        self.offsets = _IN_PLANE[mode] if in_plane else (_V2_3D if mode == "mergingv2" else _V1_3D)
        self.steps = (1, 2, 2) if in_plane else (2, 2, 2)
        n = len(self.offsets)
        self.reduction = nn.Linear(n * dim, 2 * dim, bias=False)
        self.norm = nn.LayerNorm(n * dim)

    def forward(self, x: Tensor) -> Tensor:
        d, h, w = x.shape[1:4]
        sz, sy, sx = self.steps
        pad = (0, 0, 0, w % sx, 0, h % sy, 0, d % sz)
        if any(pad):
            x = F.pad(x, pad)
        parts = [x[:, z::sz, y::sy, k::sx, :] for z, y, k in self.offsets]
        out: Tensor = self.reduction(self.norm(torch.cat(parts, -1)))
        return out


class SwinUNETR(nn.Module):
    """Swin UNETR (Hatamizadeh et al. 2022) with PyTC's per-stage isotropy."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        feature_size: int = 48,
        norm_name: str = "instance",
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        dropout_path_rate: float = 0.0,
        normalize: bool = True,
        use_checkpoint: bool = False,
        downsample: str = "merging",
        use_v2: bool = False,
        is_isotropic: bool = False,
        isotropy: Sequence[bool] = (False, True, True, True),
    ) -> None:
        super().__init__()
        if len(isotropy) != len(depths):
            raise ValueError("MODEL.ISOTROPY needs one entry per MODEL.DEPTHS stage")
        self.normalize = normalize
        io_up: Size3 = 2 if is_isotropic else (1, 2, 2)
        io_kernel: Size3 = (1, 3, 3)  # in-plane at full resolution, isotropic or not (PyTC)
        self.swinViT = SwinTransformer(
            in_chans=in_channels,
            embed_dim=feature_size,
            window_size=(7, 7, 7) if is_isotropic else (3, 7, 7),
            patch_size=(2, 2, 2) if is_isotropic else (1, 2, 2),
            depths=depths,
            num_heads=num_heads,
            mlp_ratio=4.0,
            qkv_bias=True,
            drop_rate=drop_rate,
            attn_drop_rate=attn_drop_rate,
            drop_path_rate=dropout_path_rate,
            norm_layer=nn.LayerNorm,
            use_checkpoint=use_checkpoint,
            spatial_dims=3,
            downsample=MERGING_MODE[downsample],
            use_v2=use_v2,
        )
        for i, iso in enumerate(isotropy):
            stage = getattr(self.swinViT, f"layers{i + 1}")[0]
            stage.downsample = PatchMerge(feature_size * 2**i, downsample, in_plane=not iso)
        f = feature_size
        shared: dict[str, Any] = {"spatial_dims": 3, "norm_name": norm_name, "res_block": True}
        self.encoder1 = UnetrBasicBlock(
            in_channels=in_channels, out_channels=f, kernel_size=io_kernel, stride=1, **shared
        )

        def basic(ch: int) -> UnetrBasicBlock:
            return UnetrBasicBlock(
                in_channels=ch, out_channels=ch, kernel_size=3, stride=1, **shared
            )

        def up(cin: int, cout: int, factor: Size3, kernel: Size3 = 3) -> UnetrUpBlock:
            return UnetrUpBlock(
                in_channels=cin,
                out_channels=cout,
                kernel_size=kernel,
                upsample_kernel_size=factor,
                **shared,
            )

        self.encoder2, self.encoder3, self.encoder4 = basic(f), basic(2 * f), basic(4 * f)
        self.encoder5, self.encoder6 = basic(8 * f), basic(16 * f)
        # decoderK upsamples by the factor stage K-1 downsampled (decoder1: the patch embed).
        ups: list[Size3] = [2 if iso else (1, 2, 2) for iso in isotropy]
        self.decoder5 = up(16 * f, 8 * f, ups[3])
        self.decoder4 = up(8 * f, 4 * f, ups[2])
        self.decoder3 = up(4 * f, 2 * f, ups[1])
        self.decoder2 = up(2 * f, f, ups[0])
        self.decoder1 = up(f, f, io_up, io_kernel)
        self.out = UnetOutBlock(spatial_dims=3, in_channels=f, out_channels=out_channels)

    def forward(self, x_in: Tensor) -> Tensor:
        hidden = self.swinViT(x_in, self.normalize)
        enc0 = self.encoder1(x_in)
        enc1 = self.encoder2(hidden[0])
        enc2 = self.encoder3(hidden[1])
        enc3 = self.encoder4(hidden[2])
        enc4 = self.encoder5(hidden[3])
        dec4 = self.encoder6(hidden[4])
        dec3 = self.decoder5(dec4, enc4)
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        dec0 = self.decoder2(dec1, enc1)
        out: Tensor = self.out(self.decoder1(dec0, enc0))
        return out
