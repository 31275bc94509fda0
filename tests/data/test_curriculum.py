"""The self-paced curriculum: its posterior by hand, what it stops drawing, sample sizes, resume, ranks."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from lit_align.data.curriculum import CurriculumBatchSampler, SelfPaced, allocate_samples, signal_probability


def test_the_posterior_is_the_pooled_prior_plus_each_problems_counts_by_hand():
    c = SelfPaced(prior_strength=2.0, success_threshold=1.0)
    c.reset(3)
    # draw 0: problem 0 solved 2 of 4 (a partial 0.5 counts as a failure), problem 1 never
    assert c.book(0, [0, 1], [4, 4], [1.0, 0.5, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]) == {"groups": 2, "signal_groups": 1}
    assert c.book(1, [0, 2], [2, 2], [1.0, 1.0, 0.0, 0.0]) == {"groups": 2, "signal_groups": 0}
    c.draw(2, 1, 2)  # draw 2 applies draw 0's outcomes only (draw 1's may not have arrived in a prefetching run)
    assert c.successes.tolist() == [2, 0, 0] and c.failures.tolist() == [2, 4, 0]
    c.draw(3, 1, 2)
    assert c.successes.tolist() == [4, 0, 0] and c.failures.tolist() == [2, 4, 2] and not c.pending
    # pooled: 4 successes of 12 samples, plus one of each: mean 5/14, weight 2
    a0, b0 = c.prior()
    assert a0 == pytest.approx(2 * 5 / 14) and b0 == pytest.approx(2 * 9 / 14)
    a, b = c.posterior()
    assert a.tolist() == pytest.approx([a0 + 4, a0, a0]) and b.tolist() == pytest.approx([b0 + 2, b0 + 4, b0 + 2])
    # a group of 2 is mixed unless both pass or both fail: E[p^2] = a(a+1) / ((a+b)(a+b+1))
    x, y = a[0], b[0]
    by_hand = 1 - x * (x + 1) / ((x + y) * (x + y + 1)) - y * (y + 1) / ((x + y) * (x + y + 1))
    assert signal_probability(a, b, 2)[0] == pytest.approx(by_hand, rel=1e-12)
    assert c.last_seen.tolist() == [1, 0, 1]


def test_signal_probability_matches_integration_over_the_beta_density():
    grid = np.linspace(0, 1, 200_001)[1:-1]
    for a, b, k in [(0.3, 2.7, 8), (3.0, 1.5, 5), (1.0, 1.0, 16)]:
        density = grid ** (a - 1) * (1 - grid) ** (b - 1) / math.exp(math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b))
        numeric = np.trapezoid(density * (1 - grid**k - (1 - grid) ** k), grid)
        assert signal_probability(np.array([a]), np.array([b]), k)[0] == pytest.approx(numeric, abs=2e-3)


def _run(curriculum: SelfPaced, rates: list[float], draws: int, prompts: int, k: int, seed: int = 0):
    """Draw and book ``draws`` times, outcomes from each problem's true pass rate; returns the draws."""
    rng = np.random.default_rng(seed)
    curriculum.reset(len(rates))
    chosen = []
    for j in range(draws):
        problems, sizes = curriculum.draw(j, prompts, k)
        rewards = [float(rng.random() < rates[p]) for p, s in zip(problems, sizes) for _ in range(s)]
        curriculum.book(j, problems, sizes, rewards)
        chosen.append(problems)
    return chosen


def test_problems_always_solved_or_never_solved_stop_being_drawn_beyond_exploration():
    rates = [1.0] * 4 + [0.0] * 4 + [0.5] * 8  # 0-3 always solved, 4-7 never, 8-15 half the time
    chosen = _run(SelfPaced(explore=0.25, stale_after=50, seed=1), rates, draws=40, prompts=4, k=8)
    assert {p for d in chosen for p in d} == set(range(16)), "exploration should try every problem"
    late_exploit = [p for d in chosen[15:] for p in d[1:]]  # the first of each draw is its exploration slot
    assert late_exploit and all(p >= 8 for p in late_exploit), late_exploit
    # uniform sampling keeps drawing the hopeless and the solved ones
    uniform = SelfPaced(strategy="uniform")
    uniform.reset(12)
    order = list(range(12))
    assert uniform.draw(5, 4, 8, order)[0] == [0, 1, 2, 3]


def test_without_exploration_a_failed_problem_is_rarely_retried_and_the_mixed_ones_fill_the_draws():
    rates = [0.5] * 6 + [0.0] * 30
    chosen = _run(SelfPaced(explore=0.0, seed=3), rates, draws=60, prompts=3, k=8)
    counts = np.bincount([p for d in chosen for p in d], minlength=36)
    assert counts[6:].mean() <= 2, counts  # tried about once (Thompson's draw from the prior), seldom again
    late = [p for d in chosen[20:] for p in d]
    assert sum(p < 6 for p in late) >= 0.9 * len(late), late


def test_the_last_draws_problems_wait_for_their_outcomes():
    c = SelfPaced(explore=0.0, seed=0)
    c.reset(6)
    previous = c.draw(0, 3, 4)[0]
    for j in range(1, 10):
        problems = c.draw(j, 3, 4)[0]
        assert not set(problems) & set(previous), (j, previous, problems)
        c.book(j - 1, previous, [4] * 3, [1.0, 0.0, 0.0, 0.0] * 3)
        previous = problems


def test_adaptive_sizes_maximise_the_expected_groups_with_signal_exactly():
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.uniform(0.2, 6, 3), rng.uniform(0.2, 6, 3)
        sizes = allocate_samples(a, b, budget=18, k_min=2, k_max=10, unit=2)
        assert sum(sizes) == 18 and all(2 <= s <= 10 and s % 2 == 0 for s in sizes)
        best = max(signal_probability(a, b, np.array(c)).sum()
                   for c in itertools.product(range(2, 11, 2), repeat=3) if sum(c) == 18)
        assert signal_probability(a, b, np.array(sizes)).sum() == pytest.approx(best, rel=1e-12)
    with pytest.raises(ValueError, match="cannot be split"):
        allocate_samples(np.ones(3), np.ones(3), budget=7, k_min=2, k_max=10, unit=2)


def test_adaptive_sizes_give_a_rarely_solved_problem_more_samples_than_an_even_one():
    c = SelfPaced(explore=0.0, adaptive_k=True, k_min=2, k_max=16, k_unit=2, seed=0)
    c.reset(2)
    c.book(0, [0, 1], [8, 8], [1.0, 0.0] * 4 + [1.0] + [0.0] * 7)  # problem 0: 4/8, problem 1: 1/8
    problems, sizes = c.draw(2, 2, 8)
    by_problem = dict(zip(problems, sizes))
    assert sum(sizes) == 16 and by_problem[1] > by_problem[0]


def test_a_draw_depends_on_its_index_and_the_outcomes_two_draws_back_not_on_when_they_arrived():
    rates = [0.3] * 10 + [0.0] * 10
    early, late = SelfPaced(seed=7), SelfPaced(seed=7)
    early.reset(20), late.reset(20)
    rng = np.random.default_rng(0)
    held = None
    for j in range(12):
        a, b = early.draw(j, 4, 4), late.draw(j, 4, 4)
        assert a == b, f"draw {j}"
        rewards = [float(rng.random() < rates[p]) for p in a[0] for _ in range(4)]
        early.book(j, a[0], a[1], rewards)  # booked at once
        if held is not None:
            late.book(*held)  # booked one draw late, as a prefetching loader sees it
        held = (j, a[0], a[1], rewards)


def test_state_dict_round_trip_continues_with_the_same_draws():
    rates = [0.4] * 6 + [0.0] * 6
    c = SelfPaced(seed=2, adaptive_k=True)
    _run(c, rates, draws=6, prompts=3, k=4)
    copy = SelfPaced(seed=2, adaptive_k=True)
    copy.load_state_dict(c.state_dict())
    for j in range(6, 10):
        assert c.draw(j, 3, 4) == copy.draw(j, 3, 4)
    assert copy.metrics() == c.metrics()


def test_ranks_draw_one_global_batch_and_agree_on_the_posterior():
    """Two ranks, each with its own curriculum, book both ranks' outcomes in rank order (what the
    online-RL step does): their posteriors stay equal and their shares of each draw are disjoint."""
    rates = [0.5] * 8 + [0.0] * 8
    ranks = [CurriculumBatchSampler(SelfPaced(seed=4), problems=16, batch_size=2, k=4, world_size=2, rank=r)
             for r in range(2)]
    streams = [iter(s) for s in ranks]
    rng = np.random.default_rng(0)
    for _ in range(len(ranks[0])):  # one epoch: 4 draws of 4 prompts
        shares = [next(s) for s in streams]
        assert not {p for p, _, _ in shares[0]} & {p for p, _, _ in shares[1]}
        outcomes = [([p for p, _, _ in share], share[0][1], [s for _, _, s in share],
                     [float(rng.random() < rates[p]) for p, _, s in share for _ in range(s)]) for share in shares]
        for sampler in ranks:
            for problems, draw, sizes, rewards in outcomes:
                sampler.curriculum.book(draw, problems, sizes, rewards)
    states = [s.curriculum.state_dict() for s in ranks]
    assert states[0] == states[1] and sum(states[0]["successes"]) + sum(states[0]["failures"]) > 0


def test_the_batch_sampler_resumes_mid_epoch_with_the_same_draws():
    def stream(sampler, count):
        return [next(sampler) for _ in range(count)]

    whole = CurriculumBatchSampler(SelfPaced(seed=0), problems=12, batch_size=2, k=4)
    it = iter(whole)
    first = stream(it, 3)
    saved = whole.curriculum.state_dict()  # what a checkpoint after the third draw holds
    first += stream(it, 2)
    assert [b[0][1] for b in first] == [0, 1, 2, 3, 4]
    resumed = CurriculumBatchSampler(SelfPaced(seed=0), problems=12, batch_size=2, k=4)
    resumed.curriculum.load_state_dict(saved)
    resumed.resume(0, 3)
    assert stream(iter(resumed), 2) == first[3:]


@pytest.mark.parametrize("bad, match", [
    ({"strategy": "greedy"}, "strategy"), ({"explore": 1.5}, "explore"), ({"k_min": 1}, "k_min"),
    ({"k_min": 3, "k_unit": 2}, "multiples"), ({"strategy": "uniform", "adaptive_k": True}, "adaptive_k"),
])
def test_bad_settings_are_refused_by_name(bad, match):
    with pytest.raises(ValueError, match=match):
        SelfPaced(**bad)


def test_booking_outcomes_that_do_not_add_up_is_refused():
    c = SelfPaced()
    c.reset(4)
    with pytest.raises(ValueError, match="draw 3"):
        c.book(3, [0, 1], [2, 2], [1.0, 0.0, 1.0])


def _curriculum_data(tokenizer, curriculum, k=4, problems=12, batch_size=3):
    from lit_align.data.datamodule import AlignDataModule
    from lit_align.data.kinds import PromptKind
    from lit_align.tasks.countdown import CountdownSource

    dm = AlignDataModule(CountdownSource(num_problems=problems, with_traces=False), batch_size=batch_size,
                         curriculum=curriculum).connect(tokenizer, PromptKind(samples_per_prompt=k))
    dm.setup("fit")
    return dm


def test_the_data_module_hands_each_draws_problems_number_and_sizes_to_the_method(tokenizer):
    dm = _curriculum_data(tokenizer, SelfPaced(adaptive_k=True, k_min=2, k_max=8, k_unit=2))
    for j, batch in zip(range(3), dm.train_dataloader()):
        assert batch.draw_index == j and len(batch.problem_ids) == 3 == len(set(batch.problem_ids))
        assert [r for r in batch.records] == [dm.train_items[p].record for p in batch.problem_ids]
        assert sum(batch.group_sizes) == 3 * 4 and all(s % 2 == 0 for s in batch.group_sizes)
        dm.book_outcomes(j, batch.problem_ids, batch.group_sizes, [1.0, 0.0] * 6)
    fixed = _curriculum_data(tokenizer, SelfPaced())
    assert next(iter(fixed.train_dataloader())).group_sizes is None  # the method's k for every prompt


def test_the_data_module_resumes_a_curriculum_with_the_same_draws(tokenizer):
    """In Lightning's order (batch j + 1 fetched before step j runs, step j's outcomes booked at its end,
    then the checkpoint), checkpointed after step 3 and resumed in a fresh data module: the remaining
    draws are the uninterrupted run's."""
    def run(dm, steps, first=0):
        out, saved, loader = [], None, iter(dm.train_dataloader())
        upcoming = next(loader)
        for j in range(first, first + steps):
            batch, upcoming = upcoming, next(loader)  # the prefetch: draw j + 1 is made now
            out.append((batch.draw_index, batch.problem_ids, batch.group_sizes))
            rewards = [float((p * 7 + i) % 3 == 0) for p, s in zip(batch.problem_ids, batch.group_sizes) for i in range(s)]
            dm.book_outcomes(j, batch.problem_ids, batch.group_sizes, rewards)
            dm._position = (0, j + 1)  # what on_after_batch_transfer counts
            if j == 3:
                saved = dm.state_dict()
        return out, saved

    curriculum = lambda: SelfPaced(adaptive_k=True, k_min=2, k_max=8, k_unit=2, explore=0.3)
    whole, saved = run(_curriculum_data(tokenizer, curriculum(), problems=30), 8)
    fresh = _curriculum_data(tokenizer, curriculum(), problems=30)
    fresh.load_state_dict(saved)
    resumed, _ = run(fresh, 4, first=4)
    assert resumed == whole[4:]
    assert len({tuple(d[1]) for d in whole}) == 8  # the draws differ: the comparison says something


def test_a_curriculum_for_a_method_that_does_not_sample_is_refused(tokenizer):
    from lit_align.data.datamodule import AlignDataModule
    from lit_align.data.kinds import SFTKind
    from lit_align.tasks.countdown import CountdownSource

    dm = AlignDataModule(CountdownSource(num_problems=6), curriculum=SelfPaced()).connect(tokenizer, SFTKind())
    dm.setup("fit")
    with pytest.raises(ValueError, match="curriculum draws prompts for online RL"):
        dm.train_dataloader()
