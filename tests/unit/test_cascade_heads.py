"""Cascade / HTC RoI heads (``model.roi_heads.type``): stage targets, mask information flow, test-time
score averaging, layouts; plus the choice tables and EQL's classifier prior."""

import math

import pytest
import torch

from lvisctl.errors import LvisctlError
from lvisctl.modeling.build import CHOICE_TABLES, build_model
from lvisctl.modeling.roi_heads import CascadeRoIHeads, StandardRoIHeads, state_dict_layout
from tests.helpers.model import IMAGES, TINY, K, make_stats, target, tiny_model

HTC = ["model.roi_heads.type=htc"]
CASCADE = ["model.roi_heads.type=cascade"]
TARGETS = [target(64, 70), target(70, 64)]


def test_each_stage_samples_at_its_own_iou_threshold():
    heads = tiny_model(*HTC).roi_heads
    assert isinstance(heads, CascadeRoIHeads) and len(heads.stages) == 3
    gt = {"boxes": torch.tensor([[0.0, 0.0, 10.0, 10.0]]), "labels": torch.tensor([2]), "masks": None}
    # IoU with the GT box = h / 10 for a [0, 0, 10, h] box: 0.4, 0.55, 0.65, 0.75
    proposals = torch.tensor([[0.0, 0.0, 10.0, h] for h in (4.0, 5.5, 6.5, 7.5)])
    labels = [stage.sampler.match(proposals, gt)[1].tolist() for stage in heads.stages]
    assert labels == [[0, 2, 2, 2], [0, 0, 2, 2], [0, 0, 0, 2]]


def test_each_stage_encodes_regression_targets_with_its_own_weights():
    heads = tiny_model(*HTC).roi_heads
    proposal, gt = torch.tensor([[0.0, 0.0, 10.0, 5.0]]), torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    # dy = (5 - 2.5) / 5 * w_y, dh = log(10 / 5) * w_h; weights (10,10,5,5), (20,20,10,10), (30,30,15,15)
    for stage, scale in zip(heads.stages, (1, 2, 3), strict=True):
        deltas = stage.box.box_coder.encode_single(gt, proposal)[0]
        expected = [0.0, 0.5 * 10 * scale, 0.0, math.log(2) * 5 * scale]
        assert deltas.tolist() == pytest.approx(expected, rel=1e-5)
        # mmdet's HTC: class-agnostic regression, one box per RoI
        assert stage.box_head.predictor.bbox_pred.out_features == 4


def test_htc_trains_every_stage_with_its_loss_weight():
    model = tiny_model(*HTC).train()
    torch.manual_seed(0)
    losses = model(IMAGES, TARGETS)
    expected = {f"s{i}.{k}" for i in range(3) for k in ("loss_classifier", "loss_box_reg", "loss_mask")}
    assert set(losses) == expected | {"loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()
    for stage in model.roi_heads.stages:
        assert stage.box_head.predictor.cls_score.weight.grad is not None
        assert stage.mask_head.predictor.weight.grad is not None
    # stage weights 1 / 0.5 / 0.25: with an untrained classifier every stage's softmax CE is ~log(K + 1)
    cls = [losses[f"s{i}.loss_classifier"].item() for i in range(3)]
    assert cls[1] / cls[0] == pytest.approx(0.5, rel=0.05) and cls[2] / cls[0] == pytest.approx(
        0.25, rel=0.05
    )


def test_mask_information_flow_feeds_each_head_the_previous_heads_features():
    model = tiny_model(*HTC).train()
    stages = model.roi_heads.stages
    assert stages[0].mask_head.conv_res is None and stages[1].mask_head.conv_res is not None
    conv_out = {0: [], 1: []}
    flow_in = {1: [], 2: []}
    for i in (0, 1):
        stages[i].mask_head.convs.register_forward_hook(lambda m, a, out, i=i: conv_out[i].append(out))
    for i in (1, 2):
        stages[i].mask_head.conv_res.register_forward_hook(lambda m, a, out, i=i: flow_in[i].append(a[0]))
    losses = model(IMAGES, TARGETS)
    # stage 1's head gets head 0's conv features on its own RoIs; stage 2's gets head 1's (which had 0's)
    assert len(flow_in[1]) == 2 and len(flow_in[2]) == 1  # stage 1 and stage 2 training passes
    assert torch.equal(flow_in[1][0], conv_out[0][1])  # conv_out[0][0] is stage 0's own pass
    assert torch.equal(flow_in[2][0], conv_out[1][-1])
    # so stage 1's mask loss trains stage 0's mask head too
    losses["s1.loss_mask"].backward()
    assert stages[0].mask_head.convs[0].weight.grad.abs().sum() > 0


def test_cascade_without_flow_keeps_the_mask_heads_apart():
    model = tiny_model(*CASCADE).train()
    assert all(s.mask_head.conv_res is None for s in model.roi_heads.stages)
    model(IMAGES, TARGETS)["s1.loss_mask"].backward()
    assert model.roi_heads.stages[0].mask_head.convs[0].weight.grad is None
    assert model.roi_heads.stages[1].mask_head.convs[0].weight.grad.abs().sum() > 0


def test_test_time_scores_are_the_mean_of_the_stages_scores():
    model = tiny_model(*HTC, "model.roi_heads.cls_loss=eql").eval()
    heads = model.roi_heads
    logits = []
    for stage in heads.stages:
        stage.box_head.register_forward_hook(lambda m, a, out: logits.append(out[0]))
    seen = {}
    post = heads.post

    def spy(scores, boxes, counts, sizes):
        seen.update(scores=scores, boxes=boxes)
        return post(scores, boxes, counts, sizes)

    heads.post = spy
    with torch.no_grad():
        out = model(IMAGES)
    assert len(logits) == 3
    stage_scores = [torch.sigmoid(x) for x in logits]  # EQL: per-class sigmoid
    assert torch.allclose(seen["scores"], sum(stage_scores) / 3)
    assert not torch.allclose(seen["scores"], stage_scores[-1])
    # each detection's score is one averaged (proposal, class) score
    for res in out:
        for score, label in zip(res["scores"], res["labels"], strict=True):
            assert bool((seen["scores"][:, label - 1] == score).any())


def test_htc_predicts_masks_for_given_boxes_from_the_last_stage_with_the_flow():
    model = tiny_model(*HTC, "model.mask_head.mask_iou=true", "model.roi_heads.cascade.test_mask=last").eval()
    stages = model.roi_heads.stages
    calls = []
    for i, stage in enumerate(stages):
        stage.mask_head.register_forward_hook(lambda m, a, out, i=i: calls.append(i))
        stage.mask_head.convs.register_forward_hook(lambda m, a, out, i=i: calls.append(f"c{i}"))
    assert stages[-1].mask_iou_head is not None and stages[0].mask_iou_head is None
    with torch.no_grad():
        feats, image_list = model.extract_features(IMAGES)
        boxes = [torch.tensor([[5.0, 5, 30, 40], [0, 0, 60, 60]]), torch.zeros(0, 4)]
        labels = [torch.tensor([2, 1]), torch.zeros(0, dtype=torch.int64)]
        masks, mask_scores = model.predict_masks_and_scores(
            feats, boxes, labels, [torch.tensor([0.5, 1.0]), torch.zeros(0)]
        )
    # heads 0 and 1 only pass their features on (flow, not forward); the last head is called (forward)
    assert calls == ["c0", "c1", "c2", 2]
    assert masks[0].shape == (2, 1, 28, 28) and masks[1].shape == (0, 1, 28, 28)
    assert mask_scores is not None and bool((mask_scores[0] <= torch.tensor([0.5, 1.0])).all())


@pytest.mark.parametrize("kind", [HTC, CASCADE])
def test_test_time_masks_are_the_mean_of_every_stages_mask(kind):
    """mmdet's HTC / Cascade Mask R-CNN test (simple_test + merge_aug_masks): each stage's mask head on the
    final boxes (HTC: with the flow), probabilities averaged; ``last`` keeps the last stage's only."""
    from lvisctl.modeling.fpn import roi_feature_maps

    model = tiny_model(*kind, "model.mask_head.mask_iou=true").eval()
    heads = model.roi_heads
    assert heads.test_mask == "mean"
    boxes = [torch.tensor([[5.0, 5, 30, 40], [0, 0, 60, 60]]), torch.tensor([[10.0, 12, 50, 44]])]
    labels = [torch.tensor([2, 1]), torch.tensor([3])]
    with torch.no_grad():
        feats = roi_feature_maps(model.extract_features(IMAGES)[0])
        per_stage = [
            heads.stages[i].mask.predict(feats, boxes, labels, heads.previous_mask_heads(i)) for i in range(3)
        ]
        mean, ious = heads.predict_masks_and_iou(feats, boxes, labels)
        heads.test_mask = "last"
        last, last_ious = heads.predict_masks_and_iou(feats, boxes, labels)
    for img in range(2):
        by_hand = (per_stage[0][0][img] + per_stage[1][0][img] + per_stage[2][0][img]) / 3
        assert torch.allclose(mean[img], by_hand, atol=1e-6)
        assert torch.equal(last[img], per_stage[2][0][img])
        assert not torch.allclose(mean[img], last[img])
        assert torch.equal(ious[img], last_ious[img])  # Mask Scoring: the last stage's IoU either way


def test_smooth_l1_beta_and_roi_align_per_head_type():
    """torchvision's Mask R-CNN: beta 1/9, RoIAlign sampling 2, not aligned; mmdet v2 HTC: beta 1.0,
    sampling_ratio 0, aligned."""
    import torch.nn.functional as F

    standard = tiny_model().roi_heads
    assert standard.box.smooth_l1_beta == pytest.approx(1 / 9)
    assert (standard.box.extractor.sampling_ratio, standard.box.extractor.aligned) == (2, False)
    htc = tiny_model(*HTC).roi_heads
    for stage in htc.stages:
        assert stage.box.smooth_l1_beta == 1.0
        for extractor in (stage.box.extractor, stage.mask.extractor):
            assert (extractor.sampling_ratio, extractor.aligned) == (0, True)
    # the numbers: a 0.05 regression error costs 0.5 * 0.05^2 / beta (beta 1: 0.00125; 1/9: 0.01125)
    pred, tgt = torch.tensor([0.05]), torch.tensor([0.0])
    assert F.smooth_l1_loss(pred, tgt, beta=htc.stages[0].box.smooth_l1_beta).item() == pytest.approx(0.00125)
    assert F.smooth_l1_loss(pred, tgt, beta=standard.box.smooth_l1_beta).item() == pytest.approx(0.01125)
    # deformable pooling needs a fixed sample count: the adaptive 0 becomes 2
    deform = tiny_model(*HTC, "model.roi_heads.roi_pool=deform", "model.roi_heads.deform_hidden_channels=16")
    assert deform.roi_heads.stages[0].box.extractor.sampling_ratio == 2


def test_an_old_htc_checkpoint_config_keeps_the_behaviour_it_was_trained_with():
    from lvisctl.config import load_config, upgrade_saved_config

    saved = load_config(None, HTC).to_dict()
    for key in ("sampling_ratio", "aligned", "smooth_l1_beta", "test_mask"):
        del saved["model"]["roi_heads"]["cascade"][key]
    cascade = upgrade_saved_config(saved).model.roi_heads.cascade
    assert (cascade.sampling_ratio, cascade.aligned, cascade.test_mask) == (2, False, "last")
    assert cascade.smooth_l1_beta == pytest.approx(1 / 9)
    assert upgrade_saved_config(load_config(None, HTC).to_dict()).model.roi_heads.cascade.test_mask == "mean"


def test_state_dict_layouts_and_a_one_line_error_for_the_wrong_one():
    standard, htc = tiny_model(), tiny_model(*HTC)
    assert isinstance(standard.roi_heads, StandardRoIHeads)
    assert state_dict_layout(standard.state_dict()) == "standard"
    assert state_dict_layout(htc.state_dict()) == "htc"
    assert state_dict_layout(tiny_model(*CASCADE).state_dict()) == "cascade"
    assert any(k.startswith("roi_heads.stages.2.box.head.") for k in htc.state_dict())
    with pytest.raises(LvisctlError, match=r"model.roi_heads.type=standard .* builds htc") as err:
        htc.load_state_dict(standard.state_dict())
    assert "\n" not in str(err.value)
    tiny_model(*HTC).load_state_dict(htc.state_dict())  # same layout loads


def test_stage2_freeze_prefixes_cover_the_cascade_layout():
    model = tiny_model(*HTC)
    tops = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert tops == {"backbone", "rpn", "roi_heads"}
    frozen = [n for n, _ in model.named_parameters() if n.startswith(("backbone", "rpn"))]
    heads = [n for n, _ in model.named_parameters() if n.startswith("roi_heads.stages.")]
    assert frozen and heads and len(frozen) + len(heads) == len(list(model.parameters()))


def test_stage2_switches_reach_every_stage():
    model = tiny_model(
        *HTC,
        "model.roi_heads.cls_loss=bags",
        "model.roi_heads.roi_pool=deform",
        "model.roi_heads.deform_hidden_channels=32",
        "model.mask_head.loss=balanced",
        "model.mask_head.level_assign=eq1",
        "model.mask_head.boundary=true",
        "model.mask_head.num_convs=3",
    )
    for stage in model.roi_heads.stages:
        assert type(stage.cls_loss).__name__ == "BalancedGroupSoftmax"
        assert type(stage.box_extractor).__name__ == "DeformRoIPool"
        assert type(stage.mask_loss).__name__ == "BalancedMaskLoss"
        assert stage.mask.levels.mode == "eq1" and stage.boundary_extractor is not None
        assert len(stage.mask_head.convs) == 3 * 2
    weighted = [target(64, 70), target(70, 64, loss_weight=0.5)]
    losses = model.train()(IMAGES, weighted)
    assert {f"s{i}.loss_boundary" for i in range(3)} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())


def test_self_training_weights_scale_every_cascade_loss():
    model = tiny_model(*HTC).train()
    torch.manual_seed(3)
    full = model(IMAGES, [target(64, 70, 1.0), target(70, 64, 1.0)])
    torch.manual_seed(3)
    half = model(IMAGES, [target(64, 70, 0.5), target(70, 64, 0.5)])
    for key in full:
        assert half[key].item() == pytest.approx(0.5 * full[key].item(), rel=1e-4), key


def test_ignore_boxes_hold_on_every_stage():
    heads = tiny_model(*HTC).roi_heads
    tgt = target(64, 70)
    ignore = torch.tensor([[0.0, 40, 12, 62]])
    tgt["ignore_boxes"] = ignore
    for stage in heads.stages:
        _, labels = stage.sampler.match(torch.cat([ignore, tgt["boxes"]]), tgt)
        assert labels.tolist() == [-1, 1, 3]


def test_unknown_head_type_names_the_key():
    with pytest.raises(LvisctlError, match="model.roi_heads.type: unknown value 'htcc'"):
        tiny_model("model.roi_heads.type=htcc")


def test_choice_tables_match_the_config_choices():
    from lvisctl.config.choices import allowed_values  # the registries where a key has one

    for key, table in CHOICE_TABLES.items():
        assert set(table) == set(allowed_values(key)), key


def test_choice_tables_equal_lvisctl_config_choices():
    from lvisctl.config.choices import allowed_values

    for key, table in CHOICE_TABLES.items():
        assert set(table) == set(allowed_values(key)), key


def test_eql_classifier_starts_at_prior_0_001():
    model = tiny_model("model.roi_heads.cls_loss=eql")
    bias = model.roi_heads.box_head.predictor.cls_score.bias
    assert bias.tolist() == pytest.approx([-math.log(999.0)] * K, rel=1e-6)
    # eql.detectron2: with 1,203 classes a background proposal's first loss is 1203 * -log(0.999) = 1.2
    loss = model.roi_heads.cls_loss
    assert float(loss.loss(bias.detach()[None].expand(1, K), torch.tensor([0]))) == pytest.approx(
        -K * math.log(0.999), rel=1e-3
    )


def test_htc_configs_load_and_the_stage2_ones_build():
    from lvisctl.config import CONFIG_ROOT, load_config
    from lvisctl.engine.trainer import freeze_modules

    names = [p.relative_to(CONFIG_ROOT) for p in sorted(CONFIG_ROOT.glob("*/*htc*.yaml"))]
    assert len(names) >= 11
    for name in names:
        cfg = load_config(CONFIG_ROOT / name)
        assert cfg.model.roi_heads.type == "htc", name
    tiny = [*TINY, "model.roi_heads.deform_hidden_channels=16"]
    for name in ("htc_gs", "htc_gs_hm", "htc_ms", "htc_finetune_bags"):
        cfg = load_config(CONFIG_ROOT / "stage2" / f"{name}.yaml", tiny)
        model = build_model(cfg, make_stats())
        freeze_modules(model, list(cfg.train.freeze))
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable and all(n.startswith("roi_heads.stages.") for n in trainable), name
        if name == "htc_finetune_bags":  # only the three classifiers train
            assert {n.rsplit(".", 1)[0] for n in trainable} == {
                f"roi_heads.stages.{i}.box.head.predictor.cls_score" for i in range(3)
            }
