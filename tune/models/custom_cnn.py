"""The notebook's custom CNN: Conv3x3-ReLU-MaxPool blocks doubling the width, then the head. Random init."""

from __future__ import annotations

from torch import nn

from tune.models.detector import Detector, HParam, mlp_head
from tune.models.hparams import HParamKind
from tune.models.register import head_params, register_arch


@register_arch(
    hparams={"conv_blocks": HParam(HParamKind.INT, 3, 1, 8, help="Conv3x3-ReLU-MaxPool blocks"),
             "base_width": HParam(HParamKind.INT, 32, 1, 512, help="channels of the first block (doubled per block)"),
             **head_params(None)},
    about="The notebook's custom CNN: Conv3x3→ReLU→MaxPool blocks doubling the width (32/64/128), then the "
          "head. Random init; inputs in [0, 1].",
    color="tab:blue", min_size=lambda hp: 2 ** int(hp["conv_blocks"]),
    # Grad-CAM at the last block's output (its MaxPool): the finest map the head sees, before the 4x4 pooling.
    cam_layer=lambda m: [u for u in m.body if isinstance(u, nn.MaxPool2d)][-1])
def custom_cnn(*, conv_blocks: int, base_width: int, head_sizes: tuple[int, ...], dropout: float) -> Detector:
    layers: list[nn.Module] = []
    in_ch = 3
    for i in range(conv_blocks):
        out_ch = base_width * 2**i
        layers += [nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        in_ch = out_ch
    # Adaptive 4x4 pooling keeps some spatial layout while making the head independent of the image size.
    layers += [nn.AdaptiveAvgPool2d(4), nn.Flatten()]
    return Detector(nn.Sequential(), nn.Sequential(*layers), mlp_head(in_ch * 16, head_sizes, dropout),
                    weights_source="random init")
