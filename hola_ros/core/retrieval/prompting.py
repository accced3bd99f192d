"""Grounded prompts: the model answers from the retrieved documents, names its source, and says
plainly when the documents do not hold the answer.

A request that retrieval decided to ground (level 1 or 2) gets a system prompt with those rules
and the passages, each under its source name; a level-0 request (the gate found nothing in the
documents to ground it on: a greeting, arithmetic, general knowledge) goes to the model as the
plain question. `ANSWER_STOPS` end a grounded answer where small models start a new, invented
exchange instead of stopping (the loop seen with SmolLM2), so those tokens are never spent.
"""
from __future__ import annotations

NOT_IN_DOCUMENTS = "The documents do not say."
SYSTEM_PROMPT = (
    "You answer questions using only the documents given with the question. "
    "Answer in one or two short sentences and copy codes, figures and units exactly as the documents give them. "
    "After the answer, name the document you used in square brackets, for example [04-error-codes.md]. "
    f"If the documents do not contain the answer, reply only: {NOT_IN_DOCUMENTS}")
NO_DOCUMENTS = "(no document matched the question)"
# where a grounded answer is over: the model starts another question, document or turn
ANSWER_STOPS = ("\nQuestion:", "\nDocuments:", "\n\n\n")


def format_passage(p) -> str:
    return f"[{p.source}]\n{p.text}\n\n"


def context_block(passages) -> str:
    return "".join(format_passage(p) for p in passages).rstrip()


def compose_messages(question: str, passages, grounded: bool = True) -> list[dict]:
    """Chat messages for the target. grounded=False (retrieval level 0): the plain question."""
    if not grounded:
        return [{"role": "user", "content": question}]
    documents = context_block(passages) if passages else NO_DOCUMENTS
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": f"Documents:\n{documents}\n\nQuestion: {question}"}]


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
