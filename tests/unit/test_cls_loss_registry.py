"""Classification losses as plug-ins: the registry is the only list, each loss builds itself from the config
(``from_config``), ``model.roi_heads.cls_loss_args`` reaches the constructor and is checked at load, and
Seesaw / EQLv2 / federated train and predict on every RoI-head type with their state in the state dict."""

import pytest
import torch

from lvisctl.config import load_config
from lvisctl.config.choices import allowed_values
from lvisctl.errors import LvisctlError
from lvisctl.losses.classification import NormedLinear
from lvisctl.losses.eqlv2 import EQLv2Loss
from lvisctl.losses.federated import FederatedLoss
from lvisctl.losses.seesaw import SeesawLoss
from lvisctl.modeling.build import build_cls_loss
from lvisctl.registry import CLS_LOSSES, SAMPLERS
from tests.helpers.model import IMAGES, TINY, K, make_stats, target, tiny_model

NEW = ("seesaw", "eqlv2", "federated")
STATE = {
    "seesaw": ["cum_samples"],
    "eqlv2": ["pos_grad", "neg_grad", "pos_neg"],
    "federated": ["generator_state"],
}


def rcfg(*overrides: str):
    return load_config(None, list(overrides)).model.roi_heads


def test_the_registry_is_the_list_of_choices():
    names = set(CLS_LOSSES.names())
    assert {"softmax", "sigmoid", "eql", "bags", *NEW} <= names
    assert set(allowed_values("model.roi_heads.cls_loss")) == names
    assert set(allowed_values("sampler.type")) == set(SAMPLERS.names()) == {"rfs", "uniform"}
    for name in names:
        loss = build_cls_loss(rcfg(f"model.roi_heads.cls_loss={name}"), make_stats())
        assert isinstance(loss, CLS_LOSSES.get(name)) and loss.num_classes == K


def test_defaults_live_in_the_constructors_and_args_reach_them():
    stats = make_stats()
    seesaw = build_cls_loss(rcfg("model.roi_heads.cls_loss=seesaw"), stats)
    assert (seesaw.p, seesaw.q, seesaw.eps, seesaw.num_logits) == (0.8, 2.0, 1e-2, K + 2)
    eqlv2 = build_cls_loss(rcfg("model.roi_heads.cls_loss=eqlv2"), stats)
    assert (eqlv2.gamma, eqlv2.mu, eqlv2.alpha, eqlv2.num_logits) == (12.0, 0.8, 4.0, K + 1)
    fed = build_cls_loss(rcfg("model.roi_heads.cls_loss=federated"), stats)
    assert fed.num_fed_classes == 50 and fed.num_logits == K
    assert fed.fed_weights.tolist() == pytest.approx([c**0.5 for c in stats.image_count])

    custom = build_cls_loss(
        rcfg("model.roi_heads.cls_loss=seesaw", "model.roi_heads.cls_loss_args={p: 0.5, q: 1}"), stats
    )
    assert (custom.p, custom.q, custom.eps) == (0.5, 1.0, 1e-2)
    fed2 = build_cls_loss(
        rcfg("model.roi_heads.cls_loss=federated", "model.roi_heads.cls_loss_args.num_fed_classes=2"), stats
    )
    assert fed2.num_fed_classes == 2
    # the older keys keep working
    eql = build_cls_loss(rcfg("model.roi_heads.cls_loss=eql", "model.roi_heads.eql_lambda=0.5"), stats)
    assert eql.lambda_ == 0.5
    bags = build_cls_loss(
        rcfg(
            "model.roi_heads.cls_loss=bags",
            "model.roi_heads.bags_bin_edges=[50]",
            "model.roi_heads.bags_others_ratio=2",
        ),
        stats,
    )
    assert bags.group_classes == [[2, 4], [1, 3]] and bags.others_ratio == 2.0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["cls_loss=seesaw", "cls_loss_args.pp=1"],
            "cls_loss_args: unknown argument 'pp' for cls_loss seesaw",
        ),
        (["cls_loss=eqlv2", "cls_loss_args.gamma=high"], "gamma of cls_loss eqlv2 must be like its default"),
        (["cls_loss=eql", "cls_loss_args.lambda_=0.1"], "set by model.roi_heads.eql_lambda"),
        (["cls_loss=softmax", "cls_loss_args.num_classes=3"], "unknown argument 'num_classes'"),
        (["cls_loss=bags", "cls_loss_args.p=0.8"], "cls_loss bags (it takes: none)"),
    ],
)
def test_unknown_loss_args_are_one_line_errors_at_load(overrides, message):
    with pytest.raises(LvisctlError, match="model.roi_heads.cls_loss_args") as err:
        load_config(None, [f"model.roi_heads.{o}" for o in overrides])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_federated_draw_is_seeded_by_the_run_seed():
    torch.manual_seed(7)
    a = build_cls_loss(rcfg("model.roi_heads.cls_loss=federated"), make_stats())
    torch.manual_seed(7)
    b = build_cls_loss(rcfg("model.roi_heads.cls_loss=federated"), make_stats())
    torch.manual_seed(8)
    c = build_cls_loss(rcfg("model.roi_heads.cls_loss=federated"), make_stats())
    assert torch.equal(a.generator_state, b.generator_state)
    assert not torch.equal(a.generator_state, c.generator_state)


@pytest.mark.parametrize("head", ["standard", "cascade", "htc"])
@pytest.mark.parametrize("name", NEW)
def test_new_losses_train_and_predict_on_every_head_type(name, head):
    model = tiny_model(f"model.roi_heads.cls_loss={name}", f"model.roi_heads.type={head}").train()
    losses = model(IMAGES, [target(64, 70), target(70, 64)])
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    heads = model.roi_heads
    stages = [heads] if head == "standard" else list(heads.stages)
    for stage in stages:
        assert type(stage.cls_loss) is CLS_LOSSES.get(name)
        assert stage.box_head.predictor.cls_score.out_features == stage.cls_loss.num_logits
        assert stage.box_head.predictor.cls_score.weight.grad is not None
    # the loss's state is in the state dict (checkpoints, resume) and moved by this step
    state = model.state_dict()
    keys = [k for k in state if k.rsplit(".", 1)[-1] in STATE[name]]
    assert len(keys) == len(STATE[name]) * len(stages)
    if name == "seesaw":
        assert all(state[k].sum() > 0 for k in keys)
    model.eval()
    with torch.no_grad():
        out = model(IMAGES)
    assert len(out) == 2 and all(o["scores"].numel() == 0 or o["scores"].max() <= 1 for o in out)
    # the state round-trips: a model built afresh and loaded has the same buffers
    fresh = tiny_model(f"model.roi_heads.cls_loss={name}", f"model.roi_heads.type={head}")
    fresh.load_state_dict(state)
    assert all(torch.equal(fresh.state_dict()[k], state[k]) for k in keys)


def test_detections_use_the_losses_test_time_activation():
    model = tiny_model("model.roi_heads.cls_loss=seesaw").eval()
    loss = model.roi_heads.cls_loss
    logits = torch.randn(5, K + 2)
    expected = torch.softmax(logits[:, :K], 1) * torch.softmax(logits[:, K:], 1)[:, :1]
    assert torch.allclose(model.roi_heads.box.scores(logits), expected)
    assert isinstance(loss, SeesawLoss)
    eqlv2 = tiny_model("model.roi_heads.cls_loss=eqlv2").roi_heads
    assert isinstance(eqlv2.cls_loss, EQLv2Loss)
    p = torch.sigmoid(logits[:, : K + 1])
    assert torch.allclose(eqlv2.box.scores(logits[:, : K + 1]), p[:, :K] * (1 - p[:, K:]))
    fed = tiny_model("model.roi_heads.cls_loss=federated").roi_heads
    assert isinstance(fed.cls_loss, FederatedLoss)
    assert torch.allclose(fed.box.scores(logits[:, :K]), torch.sigmoid(logits[:, :K]))


def test_seesaw_normed_classifier_is_mmdets_normed_linear():
    model = tiny_model(
        "model.roi_heads.cls_loss=seesaw", "model.roi_heads.cls_loss_args.normed_temperature=20"
    )
    layer = model.roi_heads.box_head.predictor.cls_score
    assert isinstance(layer, NormedLinear) and layer.temperature == 20.0
    x = torch.randn(3, layer.in_features)
    w = layer.weight / (layer.weight.norm(dim=1, keepdim=True) + 1e-6)
    expected = (x / (x.norm(dim=1, keepdim=True) + 1e-6) * 20) @ w.T + layer.bias
    assert torch.allclose(layer(x), expected, atol=1e-5)
    assert set(dict(layer.named_parameters())) == {"weight", "bias"}  # same state-dict keys as nn.Linear
    assert type(tiny_model("model.roi_heads.cls_loss=seesaw").roi_heads.box_head.predictor.cls_score) is (
        torch.nn.Linear
    )


def test_samplers_build_from_their_registry():
    from lvisctl.data.samplers import PlainSampler, RepeatFactorSampler, build_train_sampler

    cfg = load_config(None, ["sampler.type=rfs"])
    assert isinstance(build_train_sampler(cfg, torch.ones(3).numpy() * 2), RepeatFactorSampler)
    cfg = load_config(None, ["sampler.type=uniform"])
    sampler = build_train_sampler(cfg, torch.ones(3).numpy(), rank=1, world_size=2)
    assert isinstance(sampler, PlainSampler) and sampler.rank == 1 and sampler.num_images == 3


def test_tiny_config_is_valid():
    assert load_config(None, TINY).model.roi_heads.cls_loss_args == {}


def test_box_predictor_draws_its_initial_weights_in_the_old_order():
    """Classifier layer, box layer, then the classifier's init: old checkpoints' and the demo's numbers."""
    from torch import nn

    from lvisctl.losses.eql import EqualizationLoss
    from lvisctl.modeling.box_head import BoxPredictor

    loss = EqualizationLoss(make_stats().image_frequency)
    torch.manual_seed(3)
    got = BoxPredictor(8, K, loss)
    torch.manual_seed(3)
    cls, box = nn.Linear(8, K), nn.Linear(8, (K + 1) * 4)
    loss.init_classifier(cls)
    nn.init.normal_(box.weight, std=0.001)
    nn.init.zeros_(box.bias)
    assert torch.equal(got.cls_score.weight, cls.weight) and torch.equal(got.cls_score.bias, cls.bias)
    assert torch.equal(got.bbox_pred.weight, box.weight)
