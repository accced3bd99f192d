"""Greedy HSD must reproduce plain greedy decoding of the target token for token."""
import random

import pytest

from helpers_tiny import ByteTokenizer, default_model, tiny_model
from hola_ros.core.drafters import LocalDrafter
from hola_ros.core.hsd import GenerationConfig, generate
from hola_ros.core.protocol import DraftProposal, DrafterUnavailable


class RandomDrafter:
    """Deliberately bad: random tokens."""

    def __init__(self, vocab, seed=0):
        self.vocab, self.rng = vocab, random.Random(seed)

    def open(self, request_id, prompt_ids, target=None):
        pass

    def propose(self, request_id, accepted_delta, max_tokens, target_row_s=None):
        n = self.rng.randint(0, max_tokens)
        return DraftProposal(tokens=[self.rng.randrange(self.vocab) for _ in range(n)], levels=[1] * n)

    def close(self, request_id):
        pass


class OracleDrafter:
    """Perfect: knows the target's greedy continuation (and checks the delta protocol on the way)."""

    def __init__(self, prompt, continuation):
        self.full = list(prompt) + list(continuation)
        self.seen = None

    def open(self, request_id, prompt_ids, target=None):
        self.seen = list(prompt_ids)

    def propose(self, request_id, accepted_delta, max_tokens, target_row_s=None):
        self.seen += accepted_delta
        assert self.seen == self.full[:len(self.seen)], "accepted delta does not match the output"
        n = len(self.seen)
        return DraftProposal(tokens=self.full[n:n + max_tokens], levels=[0] * len(self.full[n:n + max_tokens]))

    def close(self, request_id):
        self.seen = None


class FailingDrafter(LocalDrafter):
    def __init__(self, fail_after):
        super().__init__(ngram=True)
        self.calls, self.fail_after = 0, fail_after

    def propose(self, request_id, accepted_delta, max_tokens, target_row_s=None):
        self.calls += 1
        if self.calls > self.fail_after:
            raise DrafterUnavailable("deadline missed")
        return super().propose(request_id, accepted_delta, max_tokens)


def prompts(n, seed=0, vocab=256):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        base = [rng.randrange(vocab) for _ in range(rng.randint(1, 12))]
        out.append(base * rng.randint(1, 4) + [rng.randrange(vocab) for _ in range(rng.randint(0, 6))])
    return out


def ar(m, p, n=40, **kw):
    return generate(m, p, GenerationConfig(mode="ar", max_new_tokens=n, **kw))


@pytest.fixture(scope="module")
def models():
    # a flat random model and a peaked one that falls into loops (n-gram drafts then hit often)
    return [tiny_model(seed=0), tiny_model(seed=1, sharpen=6.0)]


def test_hsd_equals_ar_with_ngram_random_and_perfect_drafters(models):
    for m in models:
        drafter_model = tiny_model(seed=7, name="bad-l1")  # a different random model: a poor L1
        for i, p in enumerate(prompts(6, seed=len(m.name))):
            ref = ar(m, p)
            assert ref.stats["new_tokens"] == 40 and ref.stats["target_forwards"] == 40 + (len(p) > 1)
            cases = {
                "ngram": LocalDrafter(ngram=True, min_ngram=1),
                "random": RandomDrafter(m.vocab_size, seed=i),
                "oracle": OracleDrafter(p, ref.token_ids),
                "self-l1": LocalDrafter(ngram=False, model=m),
                "bad-l1+ngram": LocalDrafter(ngram=True, model=drafter_model, min_confidence=0.0),
                "ngram-then-l1": LocalDrafter(ngram=True, min_ngram=3, model=drafter_model),
            }
            for name, d in cases.items():
                res = generate(m, p, GenerationConfig(mode="hsd", max_new_tokens=40), drafter=d)
                assert res.token_ids == ref.token_ids, (name, p)
                assert res.text == ref.text and res.stop_reason == ref.stop_reason
            assert len(cases["ngram"].requests) == 0  # per-request state freed


def test_perfect_drafters_need_few_target_passes(models):
    m = models[1]
    p = prompts(1, seed=3)[0]
    ref = ar(m, p, n=60)
    res = generate(m, p, GenerationConfig(max_new_tokens=60, draft_len=8, draft_len_max=8),
                   drafter=OracleDrafter(p, ref.token_ids))
    assert res.token_ids == ref.token_ids
    assert res.stats["acceptance_rate"] == 1.0
    # 60 tokens in blocks of 9 (8 drafts + 1) after a one-row first block
    assert res.stats["target_forwards"] <= 1 + 1 + -(-59 // 9)
    rnd = generate(m, p, GenerationConfig(max_new_tokens=60), drafter=RandomDrafter(m.vocab_size))
    assert rnd.stats["acceptance_rate"] < 0.2 and rnd.stats["mean_accepted_block"] < 1.3


def test_drafter_failure_mid_request_falls_back_to_plain_decoding(models):
    m = models[1]
    p = prompts(3, seed=5)[2]
    ref = ar(m, p, n=50)
    d = FailingDrafter(fail_after=3)
    res = generate(m, p, GenerationConfig(max_new_tokens=50), drafter=d)
    assert res.token_ids == ref.token_ids
    assert res.stats["degraded"] is True and "drafter_unavailable" in res.stats["flags"]
    assert d.calls == 4 and not d.requests  # closed even after failing

    class Broken(LocalDrafter):
        def open(self, request_id, prompt_ids, target=None):
            raise ConnectionError("no drafter node")

    res = generate(m, p, GenerationConfig(max_new_tokens=50), drafter=Broken())
    assert res.token_ids == ref.token_ids and res.stats["degraded"]


@pytest.mark.parametrize("mode", ["ar", "hsd"])
def test_eos_inside_a_block_ends_the_output_before_it(models, mode):
    m = models[0]
    p = prompts(1, seed=11)[0]
    ref = ar(m, p, n=30).token_ids
    eos = ref[12]
    first = ref.index(eos)
    m.eos_token_ids = {eos}
    try:
        res = generate(m, p, GenerationConfig(mode=mode, max_new_tokens=30, draft_len=10),
                       drafter=OracleDrafter(p, ref))
    finally:
        m.eos_token_ids = {256}
    assert res.stop_reason == "eos"
    assert res.token_ids == ref[:first]
    if mode == "hsd":
        assert res.stats["target_forwards"] < first  # the EOS really was inside a drafted block


def test_max_new_tokens_inside_a_block(models):
    m = models[1]
    p = prompts(1, seed=2)[0]
    ref = ar(m, p, n=30).token_ids
    for n in (0, 1, 2, 7, 9, 13):
        res = generate(m, p, GenerationConfig(max_new_tokens=n, draft_len=16, draft_len_max=16),
                       drafter=OracleDrafter(p, ref))
        assert res.token_ids == ref[:n] and res.stats["new_tokens"] == n
        assert res.stop_reason == "max_new_tokens"


def test_stop_string_and_streaming_deltas(models):
    m = models[0]
    p = list(b"the robot said: ")
    ref = ar(m, p, n=40)
    stop = ref.text[15:18]
    cut = ref.text.index(stop)
    for mode in ("ar", "hsd"):
        blocks, deltas = [], []
        res = generate(m, p, GenerationConfig(mode=mode, max_new_tokens=40, stop=(stop,)),
                       drafter=OracleDrafter(p, ref.token_ids) if mode == "hsd" else None,
                       on_block=lambda ids, text: (blocks.append(ids), deltas.append(text)))
        assert res.stop_reason == "stop"
        assert res.text == ref.text[:cut]
        assert "".join(deltas) == res.text and stop not in "".join(deltas)
        assert sum(blocks, []) == res.token_ids == ref.token_ids[:len(res.token_ids)]
        assert ByteTokenizer(300).decode(res.token_ids).find(stop) >= 0  # ids end with the stop string


def test_cancel_stops_between_blocks(models):
    m = models[0]
    calls = []
    res = generate(m, [5, 6, 7], GenerationConfig(max_new_tokens=40),
                   should_stop=lambda: len(calls) >= 3, on_block=lambda ids, text: calls.append(ids))
    assert res.stop_reason == "cancelled" and len(calls) == 3
    assert res.token_ids == ar(m, [5, 6, 7]).token_ids[:len(res.token_ids)]


def test_level_switch_drops_disabled_levels(models):
    m = models[1]
    p = prompts(1, seed=4)[0]
    d = LocalDrafter(ngram=True, model=m)
    res = generate(m, p, GenerationConfig(max_new_tokens=30, levels=(0,)), drafter=d)
    assert res.token_ids == ar(m, p, n=30).token_ids
    assert res.stats["proposed_per_level"]["L1"] == 0 and res.stats["proposed_per_level"]["L0"] > 0


PROMPTS = [
    ("Passage: The Jetson Orin Nano has 8 GB of memory and a 1024-core GPU. It draws 7 to 15 watts.\n"
     "Question: How much memory does the Jetson Orin Nano have, and how much power does it draw? "
     "Answer using the passage."),
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "Write a haiku about a robot vacuum.",
]


@pytest.mark.slow
@pytest.mark.parametrize("prompt", PROMPTS)
def test_real_model_hsd_equals_ar(prompt):
    m = default_model()
    assert m.info["row_invariant"]
    ids = m.chat_ids([{"role": "user", "content": prompt}])
    ref = generate(m, ids, GenerationConfig(mode="ar", max_new_tokens=48))
    res = generate(m, ids, GenerationConfig(mode="hsd", max_new_tokens=48))
    assert res.token_ids == ref.token_ids
    assert res.text == ref.text and ref.text.strip()


class SpyDrafter(RandomDrafter):
    def __init__(self, inner):
        self.inner, self.asked, self.costs, self.row_s = inner, [], [], []

    def open(self, request_id, prompt_ids, target=None):
        self.costs.append(target)
        self.inner.open(request_id, prompt_ids)

    def propose(self, request_id, accepted_delta, max_tokens, target_row_s=None):
        self.asked.append(max_tokens)
        self.row_s.append(target_row_s)
        return self.inner.propose(request_id, accepted_delta, max_tokens)

    def close(self, request_id):
        self.inner.close(request_id)


def test_the_verifier_hands_the_drafter_its_measured_costs(models):
    """Adaptive drafting: the drafter gets the target's step costs at open and its measured one-row
    time with every call, and may draft up to draft_len_max; fixed: draft_len, no costs."""
    m = models[1]
    p = prompts(1, seed=6)[0]
    ref = ar(m, p, n=40).token_ids
    m.info.update(verify_cost={1: 1.0, 2: 1.1, 4: 1.3, 8: 1.8, 16: 3.0}, step_s=0.004)
    try:
        adaptive = SpyDrafter(OracleDrafter(p, ref))
        generate(m, p, GenerationConfig(max_new_tokens=40, draft_len_max=12), drafter=adaptive)
        fixed = SpyDrafter(RandomDrafter(m.vocab_size, seed=1))
        generate(m, p, GenerationConfig(max_new_tokens=30, draft_len=5, adaptive_draft=False), drafter=fixed)
    finally:
        for key in ("verify_cost", "step_s"):
            del m.info[key]
    assert adaptive.costs[0].curve[16] == 3.0 and adaptive.costs[0].row_s == 0.004
    assert adaptive.asked[0] == 12 and all(r > 0 for r in adaptive.row_s)
    assert adaptive.row_s[-1] != 0.004  # followed from the measured steps
    assert fixed.costs == [None] and set(fixed.asked[:5]) == {5}  # (the last blocks shrink to the budget)


def test_l1_cache_rolls_back_to_the_accepted_prefix(models):
    m = models[0]
    p = prompts(1, seed=9)[0]
    d = LocalDrafter(ngram=False, model=m, min_confidence=0.0)
    d.open("a", p)
    first = d.propose("a", [], 6).tokens
    st = d.requests["a"].model
    # accept 2 of 6, then a correction the drafter did not propose
    delta = first[:2] + [(first[2] + 1) % m.vocab_size]
    second = d.propose("a", delta, 6).tokens
    assert st.session.length == len(st.cached)
    assert st.cached[:len(p) + 3] == p + delta  # stale draft positions were dropped
    fresh = LocalDrafter(ngram=False, model=m, min_confidence=0.0)
    fresh.open("b", p + delta)
    assert fresh.propose("b", [], 6).tokens == second
    d.close("a")
    fresh.close("b")
    assert not d.requests and st.session.cache is None


def test_the_cascade_lets_l1_cut_a_wrong_l0_draft_and_draft_on(models):
    from hola_ros.core.draft_policy import Plan
    from hola_ros.core.drafters import NgramIndex
    from hola_ros.core.protocol import TargetCost

    m = models[1]
    ctx = [10, 20, 30, 40, 50]
    truth = ar(m, ctx, n=6).token_ids
    wrong = (truth[2] + 1) % 256
    misleading = [ctx[-1]] + truth[:2] + [wrong]  # an earlier "copy" that goes wrong at its third token
    d = LocalDrafter(ngram=True, model=m, min_ngram=1)
    d.open("r", ctx, TargetCost(0.01, {1: 1.0, 16: 1.2}))
    req = d.requests["r"]
    req.ngram = NgramIndex(4, 1)
    req.ngram.extend(misleading + ctx)
    assert req.ngram.propose(3) == (truth[:2] + [wrong], [1, 1, 1])
    req.policy.plan = lambda orders, max_tokens, unread: Plan("cascade", len(orders))
    req.policy.keep_drafting = lambda rates, draft_s: True
    req.policy.l1_prefix = lambda rates, spent, exploring=False: len(rates)
    prop = d.propose("r", [], 3)
    assert prop.tokens == truth[:3]  # L1 kept the right prefix and replaced the wrong token
    assert prop.levels == [0, 0, 1] and len(prop.level_s) == 2
    assert req.policy.agree.value > 0.6  # two agreements, one disagreement on top of the prior
    d.close("r")


def test_entropy_gate_is_opt_in_lossy_and_flagged(models):
    m = models[0]
    p = prompts(1, seed=13)[0]
    ref = ar(m, p, n=30)
    bad_l1 = tiny_model(seed=21, name="other")
    lossless = generate(m, p, GenerationConfig(max_new_tokens=30, entropy_gate_tau=None),
                        drafter=LocalDrafter(ngram=False, model=bad_l1, min_confidence=0.0))
    assert lossless.token_ids == ref.token_ids and not lossless.stats["lossy"]
    gated = generate(m, p, GenerationConfig(max_new_tokens=30, entropy_gate_tau=100.0),
                     drafter=LocalDrafter(ngram=False, model=bad_l1, min_confidence=0.0))
    assert gated.stats["lossy"] and "entropy_gate" in gated.stats["flags"]
    assert gated.stats["acceptance_rate"] == 1.0 and gated.stats["gate_overrides"] > 0
    assert gated.token_ids != ref.token_ids  # unchecked tokens from a bad drafter change the output
    # tau = 0 keeps nothing unchecked, so it is lossless again
    zero = generate(m, p, GenerationConfig(max_new_tokens=30, entropy_gate_tau=0.0),
                    drafter=LocalDrafter(ngram=False, model=bad_l1, min_confidence=0.0))
    assert zero.token_ids == ref.token_ids and zero.stats["gate_overrides"] == 0


def test_ignore_eos_masks_eos_for_fixed_length_runs(models):
    m = models[0]
    p = prompts(1, seed=11)[0]
    ref = ar(m, p, n=30).token_ids
    m.eos_token_ids = {ref[3]}
    try:
        plain = ar(m, p, n=30)
        forced = {mode: generate(m, p, GenerationConfig(mode=mode, max_new_tokens=30, ignore_eos=True))
                  for mode in ("ar", "hsd")}
    finally:
        m.eos_token_ids = {256}
    assert plain.stop_reason == "eos" and len(plain.token_ids) == 3
    assert forced["ar"].stats["new_tokens"] == 30 and ref[3] not in forced["ar"].token_ids
    assert forced["ar"].token_ids[:3] == ref[:3] and forced["hsd"].token_ids == forced["ar"].token_ids


def test_level_0_drafts_from_earlier_answers_and_stays_exact(models):
    """The answer history: what one request committed is copied into a later request's draft (orders
    negative), runs stop at an answer's end, and greedy HSD still equals AR with it shared by all."""
    d = LocalDrafter(ngram=True, history_tokens=1000)
    d.open("a", [1, 2, 3])
    d.propose("a", [50, 60, 70, 80], 0)
    d.close("a")
    d.open("b", [9, 9, 50, 60])  # ends in a bigram the earlier answer wrote
    prop = d.propose("b", [], 5)
    assert prop.tokens == [70, 80] and d.requests["b"].sources == [("l0", -2), ("l0", -2)]
    d.close("b")
    off = LocalDrafter(ngram=True, history_tokens=0)
    off.open("b", [9, 9, 50, 60])
    assert off.propose("b", [], 5).tokens == [] and off.history is None
    for m in models:
        shared = LocalDrafter(ngram=True, min_ngram=1)
        for p in prompts(4, seed=11) + prompts(4, seed=11):  # the second round finds its own answers
            ref = ar(m, p)
            assert generate(m, p, GenerationConfig(mode="hsd", max_new_tokens=40), drafter=shared).token_ids == ref.token_ids
        assert shared.history.held > 0


def test_the_answer_history_forgets_its_older_half_when_full():
    from hola_ros.core.drafters import AnswerHistory

    h = AnswerHistory(max_tokens=10, max_n=2, min_n=2)
    h.add([1, 2, 3, 4])
    h.add([5, 6, 7, 8])
    assert h.index._match([1, 2])[1] == 2 and h.held == 8
    h.add([11, 12, 13, 14])  # 12 > 10: keep the newest answers within half the budget
    assert h.held <= 10 and h.index._match([1, 2]) == (None, 0)
    assert h.index.run(h.index._match([12, 13])[0], 5) == [14]  # stops at the answer's end
    h.add(list(range(100, 130)))  # one answer over the budget keeps its last max_tokens tokens
    assert list(h.answers) == [list(range(120, 130))] and h.held == 10


def test_this_requests_own_context_comes_before_earlier_answers():
    d = LocalDrafter(ngram=True, history_tokens=1000)
    d.open("a", [1])
    d.propose("a", [40, 50, 60, 71, 72], 0)
    d.close("a")
    d.open("b", [50, 60, 99, 7, 40, 50, 60])  # "50 60" continues with 99 here, with 71 in the earlier answer
    assert d.propose("b", [], 1).tokens == [99] and d.requests["b"].sources == [("l0", 2)]
