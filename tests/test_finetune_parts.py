"""Fine-tune building blocks: the P x K sampler and the three losses, against hand-computed values."""
import math

import pytest
import torch

from soliderkit.finetune.losses import CenterLoss, TripletLoss, id_loss, scale_center_gradients
from soliderkit.finetune.sampler import IdentityBatchSampler


def _pids():
    # 6 identities; identity 5 has only 2 images (< K=4: sampled with replacement).
    return [0] * 5 + [1] * 8 + [2] * 4 + [3] * 6 + [4] * 9 + [5] * 2


def test_sampler_gives_p_identities_times_k_images():
    pids = _pids()
    sampler = IdentityBatchSampler(pids, batch_size=8, num_instances=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) > 0
    for batch in batches:
        ids = [pids[i] for i in batch]
        assert len(batch) == 8
        assert sorted(ids.count(pid) for pid in set(ids)) == [4, 4]


def test_sampler_ranks_split_each_step_without_overlap():
    pids = _pids()
    ranks = [list(IdentityBatchSampler(pids, batch_size=4, num_instances=2, seed=3, rank=r, world_size=2))
             for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) > 0
    for batch0, batch1 in zip(*ranks):
        assert not {pids[i] for i in batch0} & {pids[i] for i in batch1}
    # Together the ranks see what one process with the doubled batch would see.
    single = list(IdentityBatchSampler(pids, batch_size=8, num_instances=2, seed=3))
    assert [sorted(a + b) for a, b in zip(*ranks)] == [sorted(s) for s in single]


def test_sampler_reseeds_every_epoch_and_replays_an_epoch():
    sampler = IdentityBatchSampler(_pids(), batch_size=8, num_instances=4, seed=0)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == first != second


def test_sampler_errors_are_clear():
    with pytest.raises(ValueError, match="not a multiple of num_instances=4"):
        IdentityBatchSampler(_pids(), batch_size=6, num_instances=4)
    with pytest.raises(ValueError, match="6 identities cannot fill a step of 8"):
        IdentityBatchSampler(_pids(), batch_size=8, num_instances=2, world_size=2, rank=0)


def test_id_loss_with_label_smoothing_matches_hand_computation():
    logits = torch.tensor([[2.0, 1.0, 0.0]])
    log_z = math.log(math.exp(2) + math.exp(1) + 1)
    logp = [2 - log_z, 1 - log_z, 0 - log_z]
    eps = 0.1
    expected = -((1 - eps + eps / 3) * logp[0] + eps / 3 * (logp[1] + logp[2]))
    assert id_loss(logits, torch.tensor([0]), label_smoothing=eps).item() == pytest.approx(expected, rel=1e-6)
    assert id_loss(logits, torch.tensor([0])).item() == pytest.approx(-logp[0], rel=1e-6)


def test_batch_hard_triplet_matches_hand_computation():
    # 1-D features 0, 1 (identity a) and 3, 5 (identity b): distances are |x - y|.
    features = torch.tensor([[0.0], [1.0], [3.0], [5.0]])
    labels = torch.tensor([0, 0, 1, 1])
    # hardest positive / nearest negative per anchor: (1, 3), (1, 2), (2, 2), (2, 4)
    margin = TripletLoss(margin=0.3)(features, labels).item()
    assert margin == pytest.approx((0 + 0 + 0.3 + 0) / 4, rel=1e-6)
    soft = TripletLoss(margin=None)(features, labels).item()
    softplus = lambda x: math.log1p(math.exp(x))  # noqa: E731
    assert soft == pytest.approx((softplus(-2) + softplus(-1) + softplus(0) + softplus(-2)) / 4, rel=1e-6)
    with pytest.raises(ValueError, match=">= 2 images per identity"):
        TripletLoss()(features, torch.tensor([0, 1, 2, 3]))


def test_center_loss_value_and_its_own_optimizer_step():
    loss_fn = CenterLoss(num_classes=2, feat_dim=2)
    with torch.no_grad():
        loss_fn.centers.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    features = torch.tensor([[1.0, 0.0], [1.0, 3.0]])
    labels = torch.tensor([0, 1])
    loss = loss_fn(features, labels)
    assert loss.item() == pytest.approx((1.0 + 4.0) / 2)  # ||(1,0)||^2 and ||(0,2)||^2, batch mean
    weight, lr = 0.0005, 0.5
    (weight * loss).backward()
    scale_center_gradients(loss_fn, weight)
    before = loss_fn.centers.detach().clone()
    torch.optim.SGD(loss_fn.parameters(), lr=lr).step()
    # d loss / d c_y = -(f - c_y) (mean over 2 samples: 2 (f - c) / 2), stepped with the unweighted gradient.
    expected = before + lr * (features - before[labels])
    torch.testing.assert_close(loss_fn.centers.detach(), expected)


def test_colour_jitter_is_off_by_default_and_checked():
    """dataset.color_jitter_prob (an extension; the references have no colour jitter): 0 leaves
    the reference pipeline, > 0 adds torchvision's ColorJitter with dataset.color_jitter, and bad
    values are config errors naming the key."""
    from torchvision import transforms as T

    from soliderkit.config import ConfigError, load_config
    from soliderkit.finetune.config import FinetuneConfig
    from soliderkit.reid.transforms import train_transform

    def jitters(transform):
        return [t for step in transform.transforms if isinstance(step, T.RandomApply)
                for t in step.transforms if isinstance(t, T.ColorJitter)]

    cfg = load_config(FinetuneConfig).dataset
    assert cfg.color_jitter_prob == 0.0
    assert not jitters(train_transform((128, 64), cfg.pixel_mean, cfg.pixel_std))
    (jitter,) = jitters(train_transform((128, 64), cfg.pixel_mean, cfg.pixel_std, color_jitter_prob=0.8,
                                        color_jitter=(0.3, 0.2, 0.1, 0.05)))
    assert (jitter.brightness, jitter.hue) == ((0.7, 1.3), (-0.05, 0.05))
    with pytest.raises(ConfigError, match=r"dataset\.color_jitter_prob"):
        load_config(FinetuneConfig, overrides=["dataset.color_jitter_prob=1.5"])
    with pytest.raises(ConfigError, match=r"dataset\.color_jitter"):
        load_config(FinetuneConfig, overrides=["dataset.color_jitter=[0.2, 0.2]"])
