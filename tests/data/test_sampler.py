from lit_align.data.sampler import WindowBatchSampler


def test_windows_carry_their_total_token_count():
    counts = [1, 2, 3, 4, 5, 6, 7]
    batches = list(WindowBatchSampler(counts, batch_size=2, accumulate=2, shuffle=False))
    assert [[i for i, _ in b] for b in batches] == [[0, 1], [2, 3], [4, 5], [6]]
    # Window 1 = examples 0-3 (1+2+3+4), window 2 = examples 4-6 (5+6+7), a ragged last window.
    assert [{t for _, t in b} for b in batches] == [{10}, {10}, {18}, {18}]


def test_ranks_get_disjoint_shards_and_the_global_window_total():
    counts = list(range(1, 17))
    shards = [list(WindowBatchSampler(counts, 2, accumulate=2, world_size=2, rank=r, seed=3)) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 4
    seen = [i for shard in shards for b in shard for i, _ in b]
    assert sorted(seen) == list(range(16))
    for step in range(4):  # both ranks agree on the token total of each window
        assert {t for _, t in shards[0][step]} == {t for _, t in shards[1][step]}
    window = [i for shard in shards for b in shard[:2] for i, _ in b]
    assert shards[0][0][0][1] == sum(counts[i] for i in window)


def test_shuffle_changes_with_epoch_and_is_reproducible():
    s = WindowBatchSampler(list(range(20)), 4, seed=1)
    first = [i for b in s for i, _ in b]
    assert first == [i for b in s for i, _ in b]
    s.set_epoch(1)
    assert first != [i for b in s for i, _ in b] and sorted(first) == list(range(20))


def test_resume_skips_the_consumed_batches_of_that_epoch_only_once():
    s = WindowBatchSampler(list(range(1, 21)), 4, accumulate=2, seed=1)
    s.set_epoch(1)
    whole = list(s)
    s.resume(epoch=1, consumed=3)
    assert list(s) == whole[3:]  # the same order and the same window totals, minus the first three
    assert list(s) == whole  # a later pass over the epoch is whole again
    s.resume(epoch=0, consumed=2)  # a position in another epoch does not apply to this one
    assert list(s) == whole
