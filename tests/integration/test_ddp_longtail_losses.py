"""The stateful long-tail losses under DistributedDataParallel (2 gloo processes, DDP's default
``broadcast_buffers=True``): Seesaw's ``cum_samples`` and EQLv2's gradient statistics are summed over the
ranks (every rank holds the global state, which the checkpoint saves), and the federated loss's generator
state is rank 0's on every rank at each forward (DDP's buffer broadcast)."""

import socket
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp
from torch import nn

K = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Head(nn.Module):
    """A classifier and the three losses, as the box head holds them (the losses are sub-modules)."""

    def __init__(self) -> None:
        super().__init__()
        from lvisctl.losses.eqlv2 import EQLv2Loss
        from lvisctl.losses.federated import FederatedLoss
        from lvisctl.losses.seesaw import SeesawLoss

        self.seesaw, self.eqlv2 = SeesawLoss(K), EQLv2Loss(K)
        self.fed = FederatedLoss(np.arange(1, K + 1), num_fed_classes=5, seed=5)
        self.fc = nn.Linear(4, (K + 2) + (K + 1) + K)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        z = self.fc(x)
        a, b = K + 2, 2 * K + 3
        return self.seesaw(z[:, :a], labels) + self.eqlv2(z[:, a:b], labels) + self.fed(z[:, b:], labels)


def _labels(rank: int, step: int) -> torch.Tensor:
    return torch.tensor([0, 1 + rank, 2 + step, 4 + rank, 0, 6][: 4 + rank])


def _worker(rank: int, port: int, out: str) -> None:
    from lvisctl.engine.distributed import cleanup_distributed, init_distributed
    from tests.helpers.engine_standins import join_gloo

    join_gloo(rank, 2, port)
    init_distributed("cpu")
    torch.manual_seed(0)
    model = nn.parallel.DistributedDataParallel(Head())
    inner = model.module
    before, after = [], []  # the federated generator state each forward drew from, and left
    inner.fed.register_forward_pre_hook(lambda m, args: before.append(m.generator_state.clone()))
    for step in range(2):
        labels = _labels(rank, step)
        model(torch.randn(len(labels), 4), labels).backward()
        after.append(inner.fed.generator_state.clone())
    torch.save(
        {
            "cum": inner.seesaw.cum_samples,
            "pos_grad": inner.eqlv2.pos_grad,
            "neg_grad": inner.eqlv2.neg_grad,
            "before": before,
            "after": after,
        },
        Path(out) / f"r{rank}.pt",
    )
    cleanup_distributed()


def test_stateful_losses_hold_the_same_state_on_every_rank(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"r{r}.pt", weights_only=True) for r in (0, 1))
    # every rank counted every rank's proposals (mmdet labels: class l -> l - 1, background -> K)
    expected = torch.zeros(K + 1)
    for rank in (0, 1):
        for step in range(2):
            labels = _labels(rank, step)
            expected += torch.bincount(torch.where(labels == 0, K, labels - 1), minlength=K + 1).float()
    assert torch.equal(r0["cum"], expected) and torch.equal(r1["cum"], expected)
    assert torch.equal(r0["pos_grad"], r1["pos_grad"]) and torch.equal(r0["neg_grad"], r1["neg_grad"])
    assert r0["pos_grad"].sum() > 0
    # each forward draws from rank 0's generator state on both ranks (DDP's buffer broadcast), so the
    # checkpoint's (rank 0's) state is the one every rank continues from
    assert all(torch.equal(a, b) for a, b in zip(r0["before"], r1["before"], strict=True))
    assert torch.equal(r1["before"][1], r0["after"][0])
    assert not torch.equal(r0["before"][0], r0["after"][0])  # the draw moved it
