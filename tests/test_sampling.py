"""Batch orders: the hard-negative grouping by caption similarity and its split over ranks."""

from prost.data.sampling import HardNegativeSampler, caption_neighbours


def test_hard_negative_batches_group_similar_captions_and_split_over_ranks():
    captions = [["a red circle moves left"], ["a blue star appears"], ["a red circle moves right"],
                ["a green square grows"], ["a blue star disappears"], ["a green square shrinks"]]
    neighbours = caption_neighbours(captions, 2)
    assert neighbours[0][0] == 2 and neighbours[1][0] == 4 and neighbours[3][0] == 5
    single = HardNegativeSampler(captions, group=2, batch_size=6, seed=1)
    order = single.global_order()
    assert sorted(order) == list(range(6))
    pairs = {frozenset(order[i:i + 2]) for i in range(0, 6, 2)}
    assert pairs == {frozenset({0, 2}), frozenset({1, 4}), frozenset({3, 5})}
    assert list(single) == order  # one rank: the whole global batch
    ranks = [HardNegativeSampler(captions, group=2, batch_size=6, world=2, rank=r, seed=1) for r in (0, 1)]
    assert list(ranks[0]) + list(ranks[1]) == order  # each rank takes its slice of the same global batch
    single.set_epoch(1)
    assert sorted(single.global_order()) == list(range(6))
