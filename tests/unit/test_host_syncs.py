"""Host syncs in the hot paths, counted on the CPU (``benchmarks/sync_count.py``'s ``SyncCounter``): the
code paths a GPU takes read no count back per class, per group or per GT, and give the same results as
the host-side paths the CPU keeps."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torchvision.models.detection.roi_heads import project_masks_on_boxes as tv_project

from lvisctl.losses.group_softmax import BalancedGroupSoftmax
from lvisctl.modeling import mask_assign
from lvisctl.modeling.mask_assign import mask_areas_in_boxes
from lvisctl.modeling.mask_targets import project_masks_on_boxes
from lvisctl.modeling.roi_heads import DetectionPostprocess

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "sync_count.py"


@pytest.fixture(scope="module")
def SyncCounter():  # noqa: N802
    spec = importlib.util.spec_from_file_location("sync_count_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module.SyncCounter
    sys.modules.pop(spec.name, None)


def test_counter_counts_what_waits_for_the_device(SyncCounter):  # noqa: N803
    x = torch.rand(50)
    with SyncCounter() as c:
        bool(x.sum() > 0), float(x[0]), x.tolist(), (x > 0.5).nonzero(), x[x > 0.5], x.unique()
        y = x * 2 + 1  # plain device work: no sync
    assert c.total == 6 and y.shape == x.shape


def _detections(n=400, k=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand((n, k, 2), generator=g) * 300
    boxes = torch.cat([xy, xy + 5 + torch.rand((n, k, 2), generator=g) * 80], dim=2)
    return torch.rand((n, k), generator=g) ** 4, boxes  # sigmoid-like: most scores small, all > 1e-4


def test_postprocess_device_path_matches_and_costs_two_syncs_per_image(SyncCounter):  # noqa: N803
    scores, boxes = _detections(n=60, k=60)  # 3,600 candidates: below the pre-NMS top-k
    host = DetectionPostprocess(sync_free=False)
    device = DetectionPostprocess(sync_free=True)
    with SyncCounter() as host_count:
        ref = host(scores, boxes, [60], [(400, 400)])[0]
    with SyncCounter() as device_count:
        got = device(scores, boxes, [60], [(400, 400)])[0]
    assert got["scores"].shape[0] == 300 and torch.equal(got["scores"], ref["scores"])
    assert torch.equal(got["labels"], ref["labels"]) and torch.equal(got["boxes"], ref["boxes"])
    assert device_count.total == 2
    assert host_count.total > 100  # torchvision's per-class loop (CPU above 1,000 boxes, GPU above 5,000)


def test_postprocess_device_path_with_few_valid_candidates(SyncCounter):  # noqa: N803
    scores, boxes = _detections(n=20, k=5, seed=1)
    scores[5:] = 0.0  # below the threshold
    got = DetectionPostprocess(sync_free=True)(scores, boxes, [20], [(400, 400)])[0]
    ref = DetectionPostprocess(sync_free=False)(scores, boxes, [20], [(400, 400)])[0]
    assert torch.equal(got["scores"], ref["scores"]) and (got["scores"] > 1e-4).all()
    empty = DetectionPostprocess(sync_free=True)(scores[:0], boxes[:0], [0], [(400, 400)])[0]
    assert empty["boxes"].shape == (0, 4)


def test_bags_device_sampling_rule_without_syncs(SyncCounter):  # noqa: N803
    loss = BalancedGroupSoftmax([500, 400, 300, 50, 40, 30, 5, 4, 3, 0], others_ratio=8.0)
    loss.sync_free = True
    torch.manual_seed(0)
    labels = torch.zeros(512, dtype=torch.long)
    labels[:3] = 1  # 3 RoIs of the first group's classes, 509 others
    valid = torch.ones(512, dtype=torch.bool)
    valid[100:110] = False  # ignored RoIs are never drawn
    group = loss.group_labels(labels)
    with SyncCounter() as c:
        picks = [loss._sample_others(group[g], valid) for g in range(1, loss.num_groups)]
        value = loss.loss(torch.randn(512, loss.num_logits), labels, valid.float())
    assert c.total == 0 and torch.isfinite(value)
    mine = [g - 1 for g in range(1, loss.num_groups) if group[g][0] > 0]  # class 1's group
    assert len(mine) == 1
    first = picks[mine[0]].bool()
    assert int(first.sum()) == 3 + 24 and first[:3].all() and not first[100:110].any()
    assert all(int(p.sum()) == 0 for i, p in enumerate(picks) if i != mine[0])  # no RoI of their own


def test_bags_host_path_keeps_the_cpu_stream():
    loss = BalancedGroupSoftmax([500, 40, 3], others_ratio=8.0)
    labels = torch.tensor([1, 0, 0, 2, 0, 0, 0, 0, 3, 0])
    torch.manual_seed(3)
    a = loss.loss(torch.randn(10, loss.num_logits), labels)
    loss.sync_free = False
    torch.manual_seed(3)
    assert torch.equal(loss.loss(torch.randn(10, loss.num_logits), labels), a)  # CPU default = host path


def _masks(g=12, h=90, w=120, seed=0):
    gen = torch.Generator().manual_seed(seed)
    masks = (torch.rand((g, h, w), generator=gen) > 0.6).to(torch.uint8)
    xy = torch.rand((40, 2), generator=gen) * 60
    boxes = torch.cat([xy, xy + 4 + torch.rand((40, 2), generator=gen) * 50], dim=1)
    return masks, boxes, torch.randint(0, g, (40,), generator=gen)


def test_mask_targets_in_slices_equal_torchvisions(SyncCounter):  # noqa: N803
    masks, boxes, gt_index = _masks()
    ref = tv_project(masks, boxes, gt_index, 28)
    one_mask_at_a_time = 90 * 120 * 4
    with SyncCounter() as c:
        got = project_masks_on_boxes(masks, boxes, gt_index, 28, budget_bytes=one_mask_at_a_time)
    assert torch.equal(got, ref) and c.total == 0
    assert torch.equal(project_masks_on_boxes(masks, boxes, gt_index, 28), ref)  # one slice
    assert project_masks_on_boxes(masks, boxes[:0], gt_index[:0], 28).shape == (0, 28, 28)


def test_mask_areas_in_boxes_without_syncs(SyncCounter, monkeypatch):  # noqa: N803
    masks, boxes, gt_index = _masks(seed=2)
    expected = []
    for box, g in zip(boxes.round().long().tolist(), gt_index.tolist(), strict=True):
        x1, y1, x2, y2 = (max(0, v) for v in box)
        expected.append(float(masks[g, y1 : min(y2, 90), x1 : min(x2, 120)].sum()))
    with SyncCounter() as c:
        got = mask_areas_in_boxes(masks, boxes, gt_index)
    assert got.tolist() == expected and c.total == 0  # was 1 + (matched GTs) syncs
    monkeypatch.setattr(mask_assign, "TABLE_BYTES", 1)  # one table at a time
    assert mask_areas_in_boxes(masks, boxes, gt_index).tolist() == expected
