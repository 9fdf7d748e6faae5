"""The RoI heads as modules: same seeds give the same model, losses and predictions as the flat layout
before them (``tests/fixtures/roi_heads_reference.json``, recorded from that code), old state-dict keys and
freeze prefixes keep working, and a mask head is one registered class plus one config value."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from lvisctl.config import load_config
from lvisctl.engine.trainer import freeze_modules
from lvisctl.modeling.build import build_model
from lvisctl.modeling.htc import HybridTaskCascadeRoIHeads
from lvisctl.modeling.mask_head import MaskHeadBase, MaskHeadOutput
from lvisctl.modeling.roi_heads import CascadeRoIHeads, state_dict_layout
from lvisctl.modeling.roi_keys import upgrade_key, upgrade_keys
from lvisctl.registry import MASK_HEADS
from tests.helpers.model import TINY, make_stats, target, tiny_model

REFERENCE = json.loads((Path(__file__).parents[1] / "fixtures" / "roi_heads_reference.json").read_text())
CASES = REFERENCE["cases"]
# bit-for-bit only where the reference was recorded (another CPU or torch may round convolutions otherwise)
SAME_PLATFORM = REFERENCE["platform"] == {
    "torch": torch.__version__,
    "cpu": torch.backends.cpu.get_cpu_capability(),
}
IMAGES = [
    torch.rand(3, 64, 70, generator=torch.Generator().manual_seed(1)),
    torch.rand(3, 70, 64, generator=torch.Generator().manual_seed(2)),
]


def _sha(t: Tensor) -> str:
    return hashlib.sha256(t.detach().contiguous().numpy().tobytes()).hexdigest()[:16]


def _run(overrides: list[str]) -> dict:
    """What the reference recorded: build (seed 0), two SGD steps (seed 5), one prediction, on one thread
    (the reference's; a reduction split over more threads rounds differently)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_one_thread(overrides)
    finally:
        torch.set_num_threads(threads)


def _run_one_thread(overrides: list[str]) -> dict:
    model = tiny_model(*overrides)
    out = {"state": model.state_dict(), "parameters": [n for n, _ in model.named_parameters()]}
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    torch.manual_seed(5)
    out["losses"] = []
    for _ in range(2):
        losses = model(IMAGES, [target(64, 70), target(70, 64)])
        out["losses"].append({k: v.detach().clone() for k, v in losses.items()})
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        out["pred"] = model(IMAGES, paste_masks=False)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_same_seed_same_model_losses_and_predictions_as_the_flat_layout(case):
    ref = CASES[case]
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        got = _run(ref["overrides"])
    finally:
        torch.use_deterministic_algorithms(deterministic)
    # the same tensors in the same order (the optimizer's state follows the parameter order)
    old_keys = [k for k, _ in ref["state_dict"]]
    assert list(upgrade_keys(dict.fromkeys(old_keys))) == list(got["state"])
    assert [upgrade_key(n) for n in ref["parameters"]] == got["parameters"]
    assert [list(v.shape) for v in got["state"].values()] == [s for _, s in ref["state_dict"]]
    for step, losses in enumerate(got["losses"]):
        assert list(losses) == list(ref["losses"][step])  # the order losses are summed in
        if SAME_PLATFORM:
            assert {k: _sha(v) for k, v in losses.items()} == ref["loss_sha"][step]
        else:
            assert {k: float(v) for k, v in losses.items()} == pytest.approx(ref["losses"][step], rel=1e-4)
    for image, pred in enumerate(got["pred"]):
        if SAME_PLATFORM:
            assert {k: _sha(v) for k, v in pred.items()} == ref["pred_sha"][image]
        else:
            sums = {k: float(v.double().sum()) for k, v in pred.items()}
            assert sums == pytest.approx(ref["pred_sum"][image], rel=1e-3)


@pytest.mark.parametrize("case", ["standard_boundary_ms", "htc_boundary_ms_deform_bags"])
def test_a_state_dict_of_the_flat_layout_loads(case):
    ref = CASES[case]
    model = tiny_model(*ref["overrides"])
    new = model.state_dict()
    old_keys = [k for k, _ in ref["state_dict"]]
    old = dict(zip(old_keys, new.values(), strict=True))  # today's tensors under the flat names
    assert any(k.startswith(("roi_heads.box_head.", "roi_heads.stages.0.box_head.")) for k in old)
    assert state_dict_layout(old) == state_dict_layout(new) == ("standard" if "standard" in case else "htc")
    torch.manual_seed(1)
    other = build_model(load_config(None, [*TINY, *ref["overrides"]]), make_stats())
    assert not all(torch.equal(a, b) for a, b in zip(other.state_dict().values(), new.values(), strict=True))
    other.load_state_dict(old)  # strict: every key renamed onto the modules
    assert all(torch.equal(other.state_dict()[k], v) for k, v in new.items())


def test_freeze_prefixes_of_the_flat_layout_name_the_same_modules():
    model = tiny_model("model.mask_head.mask_iou=true")
    freeze_modules(model, ["roi_heads.mask_head", "roi_heads.box_head.mlp"])
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith(("roi_heads.mask.head.", "roi_heads.box.head.mlp.")) for n in frozen)
    assert not any(n.startswith("roi_heads.mask.scorer.") for n in frozen)
    assert upgrade_key("roi_heads.stages.2.mask_iou_head.fc_iou.weight") == (
        "roi_heads.stages.2.mask.scorer.head.fc_iou.weight"
    )
    assert upgrade_key("roi_heads.stages.1") == "roi_heads.stages.1"
    assert upgrade_key("backbone.body.stem.0.weight") == "backbone.body.stem.0.weight"


def test_htc_is_the_cascade_with_two_hooks_overridden():
    cascade, htc = tiny_model("model.roi_heads.type=cascade"), tiny_model("model.roi_heads.type=htc")
    assert type(cascade.roi_heads) is CascadeRoIHeads and isinstance(htc.roi_heads, HybridTaskCascadeRoIHeads)
    assert cascade.roi_heads.previous_mask_heads(2) == []
    assert htc.roi_heads.previous_mask_heads(2) == [s.mask.head for s in htc.roi_heads.stages[:2]]


def test_the_boundary_switch_and_the_boundary_type_build_the_same_head():
    by_switch = tiny_model("model.mask_head.boundary=true")
    by_type = tiny_model("model.mask_head.type=boundary")
    assert type(by_switch.roi_heads.mask.head).__name__ == "BoundaryPreservingMaskHead"
    assert all(
        torch.equal(a, b)
        for a, b in zip(by_switch.state_dict().values(), by_type.state_dict().values(), strict=True)
    )


# ------------------------------------------------------------------------ a new mask head: one class
class OneConvMaskHead(MaskHeadBase):
    """A throwaway head: one 3x3 conv, the 2x deconv and the predictor."""

    def __init__(self, channels: int, num_classes: int, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, dim, 3, padding=1)
        self.deconv = nn.ConvTranspose2d(dim, dim, 2, stride=2)
        self.predictor = nn.Conv2d(dim, num_classes + 1, 1)

    @classmethod
    def from_config(cls, mcfg, num_classes: int, channels: int, *, flow_in: bool) -> "OneConvMaskHead":
        return cls(channels, num_classes, int(mcfg.mask_head.conv_dim))

    def forward(self, x: Tensor, residual: Tensor | None = None) -> MaskHeadOutput:
        features = torch.relu(self.conv(x))
        return MaskHeadOutput(self.predictor(torch.relu(self.deconv(features))), features)


@pytest.fixture
def one_conv_head(monkeypatch):
    """Registered for this test only (a copy of the registry's table is restored afterwards)."""
    monkeypatch.setattr(MASK_HEADS, "_entries", dict(MASK_HEADS._entries))
    MASK_HEADS.register("one_conv", help="one conv, a deconv, the predictor (test)")(OneConvMaskHead)
    return OneConvMaskHead


@pytest.mark.parametrize("head_type", ["standard", "cascade"])
def test_a_registered_mask_head_is_picked_by_one_config_value(one_conv_head, head_type):
    model = tiny_model("model.mask_head.type=one_conv", f"model.roi_heads.type={head_type}").train()
    branches = [model.roi_heads.mask] if head_type == "standard" else [s.mask for s in model.roi_heads.stages]
    assert all(isinstance(b.head, one_conv_head) for b in branches)
    losses = model(IMAGES, [target(64, 70), target(70, 64)])
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert branches[-1].head.conv.weight.grad is not None
    with torch.no_grad():
        out = model.eval()(IMAGES, paste_masks=False)
    assert out[0]["mask_probs"].shape[1:] == (1, 28, 28)


def test_an_unknown_mask_head_is_a_one_line_config_error():
    from lvisctl.errors import LvisctlError

    with pytest.raises(
        LvisctlError, match=r"model.mask_head.type: unknown value 'bondary' \(did you mean boundary\?"
    ):
        load_config(None, ["model.mask_head.type=bondary"])
