"""ARC-style multiple choice: items, and two scorings reported side by side.

- likelihood: each choice's mean log-probability per token as the assistant's reply to the
  question (length-normalised, so long choices are not penalised for their length);
- letter: the model reads the labelled choices, generates, and the label it names is parsed.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

LETTER_INSTRUCTION = "Answer with the letter of the correct choice only."


@dataclass
class ChoiceItem:
    id: str
    question: str
    labels: list[str]
    texts: list[str]
    answer: str  # the correct label


def _item(rec: dict, where: str) -> ChoiceItem:
    q = rec.get("question")
    if isinstance(q, dict):  # the AI2 release: question.stem + question.choices[{text,label}]
        stem, choices = q.get("stem"), q.get("choices")
        pairs = [(c["label"], c["text"]) for c in (choices or [])]
    else:  # the datasets layout: question + choices{text: [...], label: [...]}
        stem, choices = q, rec.get("choices") or {}
        pairs = list(zip(choices.get("label", []), choices.get("text", [])))
    answer = rec.get("answerKey")
    if not isinstance(stem, str) or not stem.strip() or len(pairs) < 2 or answer is None:
        raise ValueError(f"{where}: expected an ARC record (question, >= 2 labelled choices, answerKey)")
    labels = [str(lab).strip() for lab, _ in pairs]
    answer = str(answer).strip()
    if answer not in labels:
        raise ValueError(f"{where}: answerKey {answer!r} is not one of the labels {labels}")
    return ChoiceItem(str(rec.get("id", where)), stem.strip(), labels, [str(t).strip() for _, t in pairs], answer)


def load_arc(path) -> list[ChoiceItem]:
    items = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rec = json.loads(line)
                except ValueError as exc:
                    raise ValueError(f"{Path(path).name}:{n}: invalid JSON ({exc})") from None
                items.append(_item(rec, f"{Path(path).name}:{n}"))
    return items


def letter_prompt(item: ChoiceItem) -> str:
    lines = [item.question, ""] + [f"{lab}. {text}" for lab, text in zip(item.labels, item.texts)]
    return "\n".join(lines + ["", LETTER_INSTRUCTION])


def extract_label(text: str, item: ChoiceItem) -> str | None:
    """The label the generated text names, else the one choice whose text it quotes, else None."""
    alts = "|".join(re.escape(lab) for lab in sorted(item.labels, key=len, reverse=True))
    patterns = [rf"(?i:answer)\s*(?i:is|:)?\s*\(?\**({alts})\b",  # "the answer is (B)"
                rf"^\W*\(?({alts})\s*(?:[).:]|$)",  # "B." / "(B)" / "B" at the start
                rf"\(({alts})\)",
                rf"\b(?i:option|choice|letter)\s*\(?({alts})\b",
                # a standalone label, unless it reads as a word ("A plant needs ...")
                rf"(?<![\w'])({alts})(?![\w'])(?!\s+[a-z])"]
    for pat in patterns:
        m = re.search(pat, text.strip())
        if m:
            return m.group(1)
    quoted = [lab for lab, t in zip(item.labels, item.texts) if t and t.lower() in text.lower()]
    return quoted[0] if len(quoted) == 1 else None


def choice_logliks(model, prompt_ids: list[int], choices: list[list[int]]) -> list[tuple[float, int]]:
    """(sum of log-probabilities, token count) of each continuation after prompt_ids.

    The prompt is prefilled once; each choice is fed after it and rolled back, over any backend
    that implements models.KVSession.
    """
    import numpy as np

    if not prompt_ids:
        raise ValueError("empty prompt")
    session = model.new_session()
    try:
        if len(prompt_ids) > 1:
            session.forward(prompt_ids[:-1], last_only=True)
        base = session.length
        out = []
        for toks in choices:
            if not toks:
                raise ValueError("a choice encodes to no tokens")
            rows = session.forward([prompt_ids[-1]] + toks[:-1])
            x = np.asarray(rows, np.float64)
            peak = x.max(-1, keepdims=True)
            logp = x - peak - np.log(np.exp(x - peak).sum(-1, keepdims=True))
            out.append((float(logp[np.arange(len(toks)), toks].sum()), len(toks)))
            session.rollback(base)
        return out
    finally:
        session.close()


def score_by_likelihood(model, item: ChoiceItem) -> dict:
    """Predicted label by length-normalised log-likelihood, with every choice's score."""
    prompt = model.chat_ids([{"role": "user", "content": item.question}])
    scores = choice_logliks(model, prompt, [model.encode(t) for t in item.texts])
    per_token = [s / n for s, n in scores]
    best = max(range(len(per_token)), key=lambda i: (per_token[i], -i))
    return {"pred": item.labels[best], "correct": item.labels[best] == item.answer,
            "scores": {lab: round(v, 5) if math.isfinite(v) else None for lab, v in zip(item.labels, per_token)}}
