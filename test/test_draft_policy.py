"""draft_policy: which levels draft a block, decided from measured costs and acceptance."""
import pytest

from hola_ros.core.draft_policy import EXPLORE_EVERY, DraftPolicy, Rate, StepCost

CHEAP_ROWS = {1: 1.0, 2: 1.05, 4: 1.15, 8: 1.4, 16: 2.0}  # a verify curve like this engine's


def policy(l1_row_s, l1_rate=0.9, target_row_s=0.1):
    p = DraftPolicy(StepCost(CHEAP_ROWS, target_row_s), StepCost(CHEAP_ROWS, l1_row_s), max_order=4)
    p.l1_rate = Rate(l1_rate, weight=50)
    return p


def test_step_cost_interpolates_extrapolates_and_follows_measured_steps():
    cost = StepCost({1: 1.0, 4: 1.3, 8: 2.0}, 0.05)
    assert cost.ratio(1) == 1.0 and cost.ratio(6) == pytest.approx(1.65) and cost.ratio(12) == pytest.approx(2.7)
    assert cost.seconds(4) == pytest.approx(0.065)
    for _ in range(30):
        cost.observe(4, 0.13)  # the machine got twice as slow
    assert cost.row_s == pytest.approx(0.1, rel=1e-3)


def test_level_1_that_costs_as_much_as_the_target_does_not_draft_until_it_explores():
    p = policy(l1_row_s=0.1)
    plans = [p.plan([], 8, unread=1).level for _ in range(EXPLORE_EVERY + 1)]
    assert plans[:EXPLORE_EVERY - 1] == ["none"] * (EXPLORE_EVERY - 1)
    assert "l1" in plans[EXPLORE_EVERY - 1:]  # its estimates stay fresh: one draft now and then


def test_level_1_does_not_explore_when_catching_up_costs_more_than_a_target_step():
    p = policy(l1_row_s=0.05)  # half a target step per row: reading 500 unread tokens costs many
    plans = [p.plan([], 8, unread=500).level for _ in range(3 * EXPLORE_EVERY)]
    assert set(plans) == {"none"}


def test_a_cheap_confident_level_1_drafts_when_level_0_has_nothing():
    assert policy(l1_row_s=0.01).plan([], 8, unread=1).level == "l1"


def test_a_long_high_order_copy_goes_to_the_target_as_it_is_when_level_1_is_dear():
    p = policy(l1_row_s=0.08)
    for _ in range(20):
        p.observe([("l0", 4)] * 6, 6)  # every order-4 copy accepted
    plan = p.plan([4] * 8, 8, unread=1)
    assert plan.level == "l0" and plan.l0_tokens == 8


def test_acceptance_is_learned_per_source_and_a_rejected_token_counts_once():
    p = policy(l1_row_s=0.01)
    before = p.ngram[2].value
    p.observe([("l0", 2)] * 4, 1)  # first accepted, second rejected, the rest never judged
    assert p.ngram[2].value < before and p.ngram[2].total == pytest.approx(2.0 * 0.97 ** 2 + 0.97 + 1)


def test_level_1_stops_drafting_when_one_more_token_no_longer_pays():
    p = policy(l1_row_s=0.02)
    assert p.keep_drafting([0.95, 0.95], draft_s=0.04)
    assert not p.keep_drafting([0.3, 0.1], draft_s=0.04)


def test_an_exploring_level_1_proposes_at_least_one_token_so_its_estimate_refreshes():
    p = policy(l1_row_s=0.1)
    assert p.l1_prefix([0.2, 0.1], [0.1, 0.2]) == 0  # not worth proposing...
    assert p.l1_prefix([0.2, 0.1], [0.1, 0.2], exploring=True) == 1  # ...but the verdict is what exploring buys
    plans = [p.plan([], 8, unread=1) for _ in range(EXPLORE_EVERY)]
    assert plans[-1].level == "l1" and plans[-1].exploring and not any(x.exploring for x in plans[:-1])


def test_on_an_engine_that_pads_to_even_rows_an_odd_row_costs_its_padded_call():
    from hola_ros.core.hsd import padded_curve

    curve = {1: 1.0, 2: 1.0, 4: 1.2, 8: 1.8}  # measured with the padding (B=1 ran as 2 rows)
    assert padded_curve(curve, 1) is curve
    dense = padded_curve(curve, 2)
    assert sorted(dense) == list(range(1, 17))  # past the measured 8 rows: a block of 8 drafts is 9 rows
    assert dense[1] == dense[2] == 1.0 and dense[3] == dense[4] == 1.2 and dense[5] == dense[6] == pytest.approx(1.5)
    assert dense[9] == dense[10] == pytest.approx(2.1) and dense[8] == 1.8  # the curve's last slope, padded


def test_the_row_padding_would_waste_carries_one_more_copied_token():
    from hola_ros.core.hsd import padded_curve

    curve = {1: 1.0, 2: 1.0, 4: 1.2, 8: 1.8}
    for multiple, wanted in ((1, 2), (2, 3)):
        p = DraftPolicy(StepCost(padded_curve(curve, multiple), 0.1), None, max_order=4)
        for _ in range(30):
            p.observe([("l0", 1)] * 2, 1)  # order-1 copies: about half kept
        plan = p.plan([1, 1, 1, 1], 8, unread=0)
        # unpadded, 3 rows look cheaper than 4; padded, 3 rows cost 4, so the fourth row carries a token
        assert (plan.level, plan.l0_tokens) == ("l0", wanted)
