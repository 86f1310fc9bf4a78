from __future__ import annotations

import pytest
from torch.utils.data import DistributedSampler

from spap.data.sampler import EpochSampler, item_generator
from spap.seeds import derive_seed


def test_yields_epoch_index_pairs_and_shuffles_per_epoch() -> None:
    s = EpochSampler(10, seed=3)
    e0 = list(s)
    assert all(e == 0 for e, _ in e0) and sorted(i for _, i in e0) == list(range(10))
    assert len(s) == 10
    s.set_epoch(1)
    e1 = list(s)
    assert all(e == 1 for e, _ in e1) and [i for _, i in e1] != [i for _, i in e0]
    again = EpochSampler(10, seed=3)
    again.set_epoch(1)
    assert list(again) == e1  # a pure function of (seed, epoch)
    assert [i for _, i in EpochSampler(10, seed=4)] != [i for _, i in e0]
    assert [i for _, i in EpochSampler(5, shuffle=False)] == [0, 1, 2, 3, 4]


def test_set_start_skips_for_current_epoch_only() -> None:
    s = EpochSampler(9, seed=1)
    s.set_epoch(2)
    full = list(s)
    s.set_start(4)
    assert list(s) == full[4:]
    assert len(s) == 9  # items per rank, independent of the skip
    s.set_epoch(3)
    assert len(list(s)) == 9
    s.set_start(9)
    assert list(s) == []
    with pytest.raises(ValueError):
        s.set_start(10)


@pytest.mark.parametrize("length", [1, 7, 8, 13])
@pytest.mark.parametrize("drop_last", [False, True])
def test_sharding_two_replicas(length: int, drop_last: bool) -> None:
    shards = [
        EpochSampler(length, seed=5, num_replicas=2, rank=r, drop_last=drop_last) for r in range(2)
    ]
    for s in shards:
        s.set_epoch(1)
    idx = [[i for _, i in s] for s in shards]
    assert len(idx[0]) == len(idx[1]) == len(shards[0])
    union = set(idx[0]) | set(idx[1])
    if drop_last:
        assert len(idx[0]) == length // 2 and not set(idx[0]) & set(idx[1])
        assert len(union) == 2 * (length // 2)
    else:
        assert union == set(range(length))  # everything covered (padded by repeats)
        assert len(idx[0]) == -(-length // 2)


@pytest.mark.parametrize("length", [5, 8])
def test_matches_distributed_sampler_without_shuffle(length: int) -> None:
    for rank in range(3):
        ref = list(DistributedSampler(range(length), num_replicas=3, rank=rank, shuffle=False))
        ours = [i for _, i in EpochSampler(length, shuffle=False, num_replicas=3, rank=rank)]
        assert ours == ref


def test_resume_on_a_shard_continues_exactly() -> None:
    a = EpochSampler(11, seed=2, num_replicas=2, rank=1)
    a.set_epoch(4)
    full = list(a)
    b = EpochSampler(11, seed=2, num_replicas=2, rank=1)
    b.set_epoch(4)
    b.set_start(3)
    assert full[:3] + list(b) == full


def test_seeds_are_pure_functions() -> None:
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3) != derive_seed(1, 3, 2)
    assert 0 <= derive_seed(-1, 0) < 2**63
    g1, g2 = item_generator(0, 1, 2), item_generator(0, 1, 2)
    assert g1.initial_seed() == g2.initial_seed() != item_generator(0, 2, 1).initial_seed()


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError):
        EpochSampler(4, num_replicas=2, rank=2)
    with pytest.raises(ValueError):
        EpochSampler(-1)
    assert list(EpochSampler(0)) == []
