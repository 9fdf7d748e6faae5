"""lvisctl's SeesawLoss against mmdet 3.3's own ``SeesawLoss`` (``make test-integrations`` installs mmdet).

Called as mmdet's ``BBoxHead.loss`` calls it: ``label_weights`` and ``avg_factor`` = max(#(weights > 0), 1).
Several batches in a row, so ``cum_samples`` and the mitigation factor it drives are compared too.
"""

import pytest
import torch

pytest.importorskip("mmdet.models.losses", reason="mmdet not installed (make test-integrations)")

from mmdet.models.losses import SeesawLoss as MMDetSeesawLoss  # noqa: E402

from lvisctl.losses.seesaw import SeesawLoss  # noqa: E402

K = 7


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_values_gradients_and_cum_samples_match_mmdet(seed):
    g = torch.Generator().manual_seed(seed)
    ref = MMDetSeesawLoss(p=0.8, q=2.0, num_classes=K, eps=1e-2, return_dict=False)
    ours = SeesawLoss(K)
    for _ in range(4):
        n = int(torch.randint(8, 40, (1,), generator=g))
        mm_labels = torch.randint(0, K + 1, (n,), generator=g)
        mm_labels[: n // 3] = K  # plenty of background, as sampled RoIs
        weights = (torch.rand(n, generator=g) > 0.1).float()
        logits = torch.randn(n, K + 2, generator=g) * 3
        a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        avg_factor = max(torch.sum(weights > 0).float().item(), 1.0)
        expected = ref(a, mm_labels, weights, avg_factor=avg_factor)
        got = ours(b, torch.where(mm_labels == K, 0, mm_labels + 1), weights)
        expected.backward()
        got.backward()
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-8)
        assert torch.equal(ours.cum_samples, ref.cum_samples)


def test_activation_matches_mmdet():
    ref, ours = MMDetSeesawLoss(num_classes=K), SeesawLoss(K)
    logits = torch.randn(12, K + 2, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours.scores(logits), ref.get_activation(logits)[:, :K])
    assert ours.num_logits == ref.get_cls_channels(K)


def test_normed_classifier_and_test_activation_match_mmdet():
    """The classifier of mmdet's Seesaw LVIS configs (``NormedLinear``, tempearture 20; lvisctl's
    ``cls_loss_args.normed_temperature``) and ``get_activation`` (lvisctl's ``scores``) on the same input."""
    from mmdet.models.layers import NormedLinear as MMDetNormedLinear

    from lvisctl.losses.classification import NormedLinear

    torch.manual_seed(0)
    ref = MMDetNormedLinear(16, K + 2, tempearture=20)
    ours = NormedLinear(16, K + 2, 20)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(11, 16) * 3
    assert torch.equal(ours(x), ref(x))
    logits = ref(x)
    expected = MMDetSeesawLoss(num_classes=K, return_dict=False).get_activation(logits)[:, :K]
    assert torch.equal(SeesawLoss(K).scores(logits), expected)
