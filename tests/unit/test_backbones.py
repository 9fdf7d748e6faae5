"""ResNeSt with DCN (paper Table 1, S101 row: "DCN when using ResNeSt101")."""

import pytest
import torch

from lvisctl.config import load_config
from lvisctl.errors import LvisctlError
from lvisctl.modeling.backbones import DeformConv3x3, build_trunk


def _resnest_cfg(*overrides: str):
    base = ["model.backbone.name=resnest50", "model.backbone.norm=frozen_bn", "model.backbone.freeze_at=0"]
    return load_config(None, [*base, *overrides]).model.backbone


def test_resnest_dcn_replaces_the_split_attention_conv_and_starts_as_plain():
    torch.manual_seed(0)
    plain = build_trunk(_resnest_cfg()).eval()
    dcn = build_trunk(_resnest_cfg("model.backbone.dcn_stages=[4,5]")).eval()
    convs = [m for m in dcn.modules() if isinstance(m, DeformConv3x3)]
    assert len(convs) == 6 + 3  # every block of res4 (6) and res5 (3) in ResNeSt-50
    assert convs[0].groups == 2  # radix-2 grouped conv kept
    dcn.load_state_dict(plain.state_dict(), strict=False)  # same names: only the offset convs are extra
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(plain(x), dcn(x), strict=True):
            assert torch.allclose(a, b, atol=1e-4)  # zero-initialised offsets = the plain conv


def test_tiny_has_no_dcn():
    with pytest.raises(LvisctlError, match="model.backbone.dcn_stages"):
        build_trunk(
            load_config(None, ["model.backbone.name=tiny", "model.backbone.dcn_stages=[5]"]).model.backbone
        )
