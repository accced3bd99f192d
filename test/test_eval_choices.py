"""ARC loading (both layouts), label parsing, and likelihood scoring on a tiny random model."""
import json

import pytest
import torch

from helpers_tiny import tiny_model
from hola_ros.core.evaluation.choices import (ChoiceItem, choice_logliks, extract_label, letter_prompt, load_arc,
                                              score_by_likelihood)

# original questions in the two ARC layouts (AI2 release, datasets)
ARC_ROWS = [
    {"id": "q1", "question": {"stem": "Which part of a plant takes in water from the soil?",
                              "choices": [{"text": "roots", "label": "A"}, {"text": "flowers", "label": "B"},
                                          {"text": "seeds", "label": "C"}, {"text": "fruit", "label": "D"}]},
     "answerKey": "A"},
    {"id": "q2", "question": "What does a magnet attract?",
     "choices": {"text": ["wood", "iron nails", "glass", "paper"], "label": ["1", "2", "3", "4"]}, "answerKey": "2"},
]


def write_arc(path):
    path.write_text("".join(json.dumps(r) + "\n" for r in ARC_ROWS))
    return path


def test_load_both_layouts(tmp_path):
    items = load_arc(write_arc(tmp_path / "arc.jsonl"))
    assert [i.labels for i in items] == [["A", "B", "C", "D"], ["1", "2", "3", "4"]]
    assert items[1].texts[1] == "iron nails" and items[1].answer == "2"
    assert "2. iron nails" in letter_prompt(items[1])


def test_load_rejects_answer_outside_labels(tmp_path):
    bad = dict(ARC_ROWS[0], answerKey="E")
    (tmp_path / "bad.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match="bad.jsonl:1"):
        load_arc(tmp_path / "bad.jsonl")


@pytest.mark.parametrize("text, expected", [
    ("B", "B"), ("(C)", "C"), ("The answer is D.", "D"), ("Answer: (A) roots", "A"),
    ("Option C is right", "C"), ("I think it is the sun", "B"),
    ("A plant needs water", None),  # an article, and two quoted choices
    ("no idea", None),
])
def test_extract_label(text, expected):
    item = ChoiceItem("x", "q", ["A", "B", "C", "D"], ["a rock", "the sun", "water", "a plant"], "B")
    assert extract_label(text, item) == expected


def test_loglik_matches_a_full_forward():
    model = tiny_model(seed=3)
    prompt = model.encode("Question: which? Answer:")
    choices = [model.encode(t) for t in (" yes", " no thanks", " x")]
    got = choice_logliks(model, prompt, choices)
    for (total, n), toks in zip(got, choices):
        with torch.inference_mode():
            logits = model.model(input_ids=torch.tensor([prompt + toks])).logits[0].float()
        logp = torch.log_softmax(logits, -1)
        ref = sum(float(logp[len(prompt) - 1 + i, t]) for i, t in enumerate(toks))
        assert n == len(toks)
        assert total == pytest.approx(ref, abs=1e-3)


def test_likelihood_prefers_the_models_own_continuation():
    model = tiny_model(seed=5, sharpen=8.0)
    item = ChoiceItem("t", "Pick one", ["A", "B", "C"], ["", "", ""], "B")
    prompt = model.chat_ids([{"role": "user", "content": item.question}])
    session, ids = model.new_session(), []
    logits = session.forward(prompt, last_only=True)
    for _ in range(6):  # the greedy continuation, restricted to printable bytes so it round-trips as text
        tok = int(logits[-1][32:127].argmax()) + 32
        ids.append(tok)
        logits = session.forward([tok], last_only=True)
    greedy = bytes(ids).decode()
    item.texts = ["~~~~~~", greedy, "qzqzqz"]
    res = score_by_likelihood(model, item)
    assert res["pred"] == "B" and res["correct"]
    assert res["scores"]["B"] > max(res["scores"]["A"], res["scores"]["C"])
