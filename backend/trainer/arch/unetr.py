"""PyTC's UNETR (MODEL.ARCHITECTURE `unetr`), built from MONAI's ViT and UNETR blocks.

A ViT of 12 layers encodes the patch tokens; the hidden states after layers 3, 6 and 9 and
the last one are reshaped to feature maps and decoded with MONAI's UNETR up-blocks, while
a conv block encodes the full-resolution input. Anisotropic volumes (DATASET.IS_ISOTROPIC
False) take patches of (4, 16, 16) and upsample by (1, 2, 2) where PyTC does.

PyTC v1.0.0 passes `pos_embed=` to MONAI's ViT, which MONAI >= 1.4 renamed `proj_type=`;
the same layers are built here with the new name. MONAI >= 1.4 also gives every
transformer block an unused `norm_cross_attn` LayerNorm (read only with cross-attention);
it is removed so that the state_dict is exactly PyTC's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monai.networks.blocks.dynunet_block import UnetOutBlock
from monai.networks.blocks.unetr_block import UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from monai.networks.nets.vit import ViT
from torch import Tensor, nn

NUM_LAYERS = 12
POS_EMBEDS = ("conv", "perceptron")


def patch_size(is_isotropic: bool) -> tuple[int, int, int]:
    """The ViT patch: 16^3, or (4, 16, 16) for anisotropic volumes (PyTC's rule)."""
    return (16, 16, 16) if is_isotropic else (4, 16, 16)


class UNETR(nn.Module):
    """UNETR (Hatamizadeh et al. 2021) with PyTC's anisotropic variant."""

    def __init__(
        self,
        *,
        in_channels: int,
        out_channels: int,
        img_size: Sequence[int],
        feature_size: int = 16,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_heads: int = 12,
        pos_embed: str = "perceptron",
        norm_name: str = "instance",
        is_isotropic: bool = False,
        conv_block: bool = True,
        res_block: bool = True,
        dropout_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.patch_size = patch_size(is_isotropic)
        self.feat_size = tuple(s // p for s, p in zip(img_size, self.patch_size, strict=True))
        self.hidden_size = hidden_size
        up: int | tuple[int, int, int] = 2 if is_isotropic else (1, 2, 2)
        self.vit = ViT(
            in_channels=in_channels,
            img_size=tuple(img_size),
            patch_size=self.patch_size,
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_layers=NUM_LAYERS,
            num_heads=num_heads,
            proj_type=pos_embed,
            classification=False,
            dropout_rate=dropout_rate,
            spatial_dims=3,
        )
        for block in self.vit.blocks:
            del block.norm_cross_attn
        f = feature_size
        shared: dict[str, Any] = {"spatial_dims": 3, "norm_name": norm_name, "res_block": res_block}
        # The finest scale uses in-plane (1, 3, 3) convs only, as PyTC.
        self.encoder1 = UnetrBasicBlock(
            in_channels=in_channels, out_channels=f, kernel_size=(1, 3, 3), stride=1, **shared
        )
        pr_up: dict[str, Any] = {"kernel_size": 3, "stride": 1, "conv_block": conv_block, **shared}
        self.encoder2 = nn.Sequential(
            UnetrPrUpBlock(
                in_channels=hidden_size,
                out_channels=2 * f,
                num_layer=1,
                upsample_kernel_size=up,
                **pr_up,
            ),
            UnetrPrUpBlock(
                in_channels=2 * f, out_channels=2 * f, num_layer=0, upsample_kernel_size=2, **pr_up
            ),
        )
        self.encoder3 = UnetrPrUpBlock(
            in_channels=hidden_size,
            out_channels=4 * f,
            num_layer=1,
            upsample_kernel_size=up,
            **pr_up,
        )
        self.encoder4 = UnetrPrUpBlock(
            in_channels=hidden_size,
            out_channels=8 * f,
            num_layer=0,
            upsample_kernel_size=up,
            **pr_up,
        )
        self.decoder5 = UnetrUpBlock(
            in_channels=hidden_size,
            out_channels=8 * f,
            kernel_size=3,
            upsample_kernel_size=up,
            **shared,
        )
        self.decoder4 = UnetrUpBlock(
            in_channels=8 * f, out_channels=4 * f, kernel_size=3, upsample_kernel_size=up, **shared
        )
        self.decoder3 = UnetrUpBlock(
            in_channels=4 * f, out_channels=2 * f, kernel_size=3, upsample_kernel_size=2, **shared
        )
        self.decoder2 = UnetrUpBlock(
            in_channels=2 * f,
            out_channels=f,
            kernel_size=(1, 3, 3),
            upsample_kernel_size=2,
            **shared,
        )
        self.out = UnetOutBlock(spatial_dims=3, in_channels=f, out_channels=out_channels)

    def _to_map(self, tokens: Tensor) -> Tensor:
        """(B, N, hidden) tokens to a (B, hidden, *feat_size) feature map."""
        x = tokens.view(tokens.shape[0], *self.feat_size, self.hidden_size)
        return x.permute(0, 4, 1, 2, 3).contiguous()

    def forward(self, x_in: Tensor) -> Tensor:
        x, hidden = self.vit(x_in)
        enc1 = self.encoder1(x_in)
        enc2 = self.encoder2(self._to_map(hidden[3]))
        enc3 = self.encoder3(self._to_map(hidden[6]))
        enc4 = self.encoder4(self._to_map(hidden[9]))
        dec3 = self.decoder5(self._to_map(x), enc4)
        dec2 = self.decoder4(dec3, enc3)
        dec1 = self.decoder3(dec2, enc2)
        out: Tensor = self.out(self.decoder2(dec1, enc1))
        return out
