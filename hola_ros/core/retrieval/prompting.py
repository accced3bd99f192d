"""Grounded prompts: the model answers from the retrieved documents and says plainly when the
documents do not hold the answer; the answer names its source.

A request that retrieval decided to ground (level 1 or 2) gets a system prompt with those rules
and the passages, each under its source name; a level-0 request (the gate found nothing in the
documents to ground it on: a greeting, arithmetic, general knowledge) goes to the model as the
plain question. `ANSWER_STOPS` end a grounded answer where small models start a new, invented
exchange instead of stopping (the loop seen with SmolLM2), so those tokens are never spent.

Asked to cite in the text, the 0.5B model answered with the bracketed name alone or lost the fact
(docs/retrieval.md), so the source is not the model's job: `source_note` names the passage the
answer draws on (the one sharing the most terms with it), and the pipeline appends it.

What the small models cannot judge (measured on the KB dev set's tune half, docs/retrieval.md):
whether the documents hold an answer. Asked yes/no, the 0.5B's odds did not separate answerable
from unanswerable questions, and it answers "the password is bw-fleet" from the network's name.
So the checks come from the index and the question's own words instead of the model (the
pipeline runs them): a question naming a code (E-999, CD-7) that no document holds gets
`unknown_codes_answer` without a generation; a bare refusal to a question whose every term the
index knows is asked once more without the refusal rule (`compose_messages(..., refusal=False)`);
an answer that `adds_nothing` to the question ("CD-5" to "Where is CD-5?", the password answer
above) is asked once more for a complete sentence (`in_full=True`), and is no answer when that
adds nothing either; an answer whose figure no passage states beside what the question asks is no
answer either (`support.py`), and a later part answered with an earlier part's figure
(`repeats_figure`) is asked alone.
"""
from __future__ import annotations

import re

NOT_IN_DOCUMENTS = "The documents do not say."
GROUNDING_RULES = (
    "You answer questions about the robots and the site they work in, using the documents given with the "
    "question. The answer is usually in one of the documents: find the row or sentence that matches the question "
    "and copy codes, figures and units exactly. If the question asks for two things, answer both.")
SHORT_RULE = "Give a short answer."
FULL_RULE = "Answer in one complete sentence that states what the question asks for."
REFUSAL_RULE = f"If the documents do not contain the answer, reply only: {NOT_IN_DOCUMENTS}"
SYSTEM_PROMPT = f"{GROUNDING_RULES} {SHORT_RULE} {REFUSAL_RULE}"
NO_DOCUMENTS = "(no document matched the question)"
# where a grounded answer is over: the model starts another question, document or turn
ANSWER_STOPS = ("\nQuestion:", "\nDocuments:", "\n\n\n")
# a bracketed name without spaces, as the passages are headed ("[02-charging-docks.md]"): a source, not an answer
_SOURCE_TAG = re.compile(r"\[[^\s\[\]]+\]")


def cite(p) -> str:
    """A passage's source as answers name it: the file, and the page of a PDF (`guide.pdf#page=3`,
    the fragment PDF viewers open at)."""
    page = getattr(p, "page", 0)
    return f"{p.source}#page={page}" if page else p.source


def format_passage(p) -> str:
    return f"[{cite(p)}]\n{p.text}\n\n"


def context_block(passages) -> str:
    return "".join(format_passage(p) for p in passages).rstrip()


def compose_messages(question: str, passages, grounded: bool = True, general_prompt: str = "",
                     refusal: bool = True, in_full: bool = False) -> list[dict]:
    """Chat messages for the target. grounded=False (retrieval level 0): the plain question, under
    `general_prompt` as system prompt when one is given (else the chat template's default).
    refusal=False: without the rule to reply NOT_IN_DOCUMENTS (the refusal re-check);
    in_full=True: a complete sentence instead of a short answer (the echo re-check)."""
    if not grounded:
        system = [{"role": "system", "content": general_prompt}] if general_prompt.strip() else []
        return system + [{"role": "user", "content": question}]
    documents = context_block(passages) if passages else NO_DOCUMENTS
    rules = " ".join([GROUNDING_RULES, FULL_RULE if in_full else SHORT_RULE] + ([REFUSAL_RULE] if refusal else []))
    return [{"role": "system", "content": rules},
            {"role": "user", "content": f"Documents:\n{documents}\n\nQuestion: {question}"}]


def _said(answer: str) -> str:
    """The answer without the source names it may cite."""
    return _SOURCE_TAG.sub(" ", answer)


def new_terms(answer: str, question: str) -> set[str]:
    """The answer's terms that the question does not already hold (source names aside)."""
    from .lexical import terms

    return set(terms(_said(answer))) - set(terms(question))


def adds_nothing(answer: str, question: str) -> bool:
    """No answer: only the question's own words ("CD-5" to "Where is CD-5?"), or only a source
    name ("[02-charging-docks.md]", as the 0.5B once answered). A word the term list leaves out
    ("Yes.") still counts as said."""
    from .lexical import terms

    said = _said(answer)
    if not said.strip(" \t\n.,;:!?"):
        return True
    found = set(terms(said))
    return bool(found) and found <= set(terms(question))


def echoes(answer: str, part: str) -> bool:
    """A clause of the answer restates `part`, a part of the question, and says nothing more: "The
    access point covers Zone B, and the speed limit ... is 1.2 m/s." echoes "Which access point
    covers Zone B?" (the 0.5B's answer), so that part went unanswered; so does "When a battery is
    replaced, it weighs 31 kg." echo "When is a battery replaced?". Restating means holding only the
    part's words and at least two thirds of them, so a short lead-in such as "In Zone B," is none."""
    from .lexical import terms

    asked = set(terms(part))
    clauses = _clauses(answer)
    return any(found and found <= asked and 3 * len(found) >= 2 * len(asked)
               for found in (set(terms(c)) for c in clauses))


def _clauses(answer: str) -> list[str]:
    """An answer's clauses: a clause ends at a sentence end, "and", ";" or ","."""
    return [c for c in re.split(r"(?<=[.!?])\s+|,?\s+\band\b\s+|[;,]\s*", _said(answer)) if c.strip()]


def repeats_figure(answer: str, part: str) -> bool:
    """The clause that answers `part` (the clause sharing the most of its terms; the later one on a
    tie) gives only figures that an earlier clause already gave: "The Create 3 adapter makes
    available 28.8W of power, and the total power draw of the TurtleBot 4 is 28.8W." (the 0.5B,
    one value read for both parts of a question)."""
    from .lexical import terms
    from .support import figures

    asked, clauses = set(terms(part)), _clauses(answer)
    if len(clauses) < 2:
        return False
    best = max(range(len(clauses)), key=lambda i: (len(asked & set(terms(clauses[i]))), i))
    given = set(figures(clauses[best])) - set(figures(part))
    earlier = {f for c in clauses[:best] for f in figures(c)}
    return best > 0 and bool(given) and given <= earlier


def _plain(text: str) -> str:
    return " ".join(text.split()).lower()


def is_bare_refusal(answer: str) -> bool:
    """The answer is the refusal sentence and nothing else."""
    return _plain(answer).rstrip(".") == _plain(NOT_IN_DOCUMENTS).rstrip(".")


def may_become_refusal(text: str) -> bool:
    """The text so far is the beginning of the bare refusal (streaming: it may still become one)."""
    return _plain(NOT_IN_DOCUMENTS).startswith(_plain(text))


def unknown_codes_answer(codes) -> str:
    """The answer to a question naming codes that no document holds."""
    named = ", ".join(c.upper() for c in codes)
    return f"{NOT_IN_DOCUMENTS} No document mentions {named}."


def documents_unavailable_answer(reason: str) -> str:
    """The answer to a question the documents could not be consulted for (retriever down, failing or
    late): said plainly, instead of an answer from the model's memory that would read as grounded."""
    why = f" ({reason})" if reason else ""
    return (f"The documents could not be consulted{why}, so this question was not answered from them. "
            "Ask again in a moment.")


def follow_up_messages(question: str, passages) -> list[dict]:
    """Prompt asking the target model for a follow-up search query (level 2)."""
    return [{"role": "user", "content":
             f"Documents:\n{context_block(passages)}\n\nQuestion: {question}\n\n"
             "Write one short search query for the information still missing to answer the question. "
             "Reply with the query only."}]


def chat_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of `messages` with a transformers tokenizer's chat template (plain join without one)."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode("\n\n".join(m["content"] for m in messages)))


def source_note(answer: str, passages) -> str:
    """" [source.md]" for the passage the answer shares the most terms with; "" when the answer
    says the documents do not hold it, shares no term with any passage, or names a source itself."""
    from .lexical import terms

    if not passages or NOT_IN_DOCUMENTS.lower().rstrip(".") in answer.lower():
        return ""
    if any(p.source.lower() in answer.lower() for p in passages):
        return ""
    said = set(terms(answer))
    overlap = [len(said & set(terms(p.text))) for p in passages]
    best = max(range(len(passages)), key=lambda i: (overlap[i], -i))
    return f" [{cite(passages[best])}]" if overlap[best] else ""
