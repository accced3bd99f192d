"""One request end to end, whatever the transport: retrieval decision, prompt, generation.

The verifier node runs this with ROS clients as `drafter` / `retrieve`; the CLI and the
benchmarks run it with in-process ones, so both paths share every step.
"""
import math
import re
import time
from dataclasses import asdict
from typing import Callable

from hola_ros.core.hsd import GenerationConfig, generate
from hola_ros.core.requests import GenerationRequest
from hola_ros.core.retrieval.adacomp import gather_context
from hola_ros.core.retrieval.lookup import document_answer
from hola_ros.core.retrieval.prompting import (ANSWER_STOPS, NOT_IN_DOCUMENTS, adds_nothing, compose_messages,
                                               documents_unavailable_answer, echoes, follow_up_messages,
                                               is_bare_refusal, may_become_refusal, new_terms, repeats_figure,
                                               source_note, unknown_codes_answer)
from hola_ros.core.retrieval.support import figures, figures_check, names_check
from hola_ros.core.scheduler import Outcome
from hola_ros.core.sessions import turn_messages

FOLLOW_UP_TOKENS = 32


def follow_up_query(target, question: str, passages) -> str:
    """Level 2: the target writes the search query for what the first passages did not cover."""
    prompt_ids = target.chat_ids(follow_up_messages(question, passages))
    result = generate(target, prompt_ids, GenerationConfig(max_new_tokens=FOLLOW_UP_TOKENS, mode="ar"),
                      drafter=None, request_id="follow-up")
    lines = [line.strip().strip('"') for line in result.text.strip().splitlines() if line.strip()]
    return lines[0] if lines else question


class RepetitionGuard:
    """Ends an answer that loops: small models repeat a sentence until the token limit (SmolLM2 on
    the demo question: "The code should be 1." twenty times). A sentence of at least
    `min_chars` characters seen `times` times trips it."""

    def __init__(self, times: int = 3, min_chars: int = 12):
        self.times, self.min_chars = times, min_chars
        self.text, self.tripped = "", False

    def feed(self, text: str) -> None:
        self.text += text
        counts: dict[str, int] = {}
        for sentence in re.split(r"(?<=[.!?\n])\s+", self.text)[:-1]:  # the last one may be unfinished
            sentence = sentence.strip()
            if len(sentence) >= self.min_chars:
                counts[sentence] = counts.get(sentence, 0) + 1
                self.tripped = self.tripped or counts[sentence] >= self.times


class HeldAnswer:
    """Streams a grounded answer once it says something: text is held back while it may still be
    the bare refusal or repeats only the question's own words, so an answer the pipeline replaces is
    never shown; any other flows on at once. `check(text)`: what of the text the documents do not
    support (its figures and names, `_support_check`): text with something unsupported is held, and
    `doubted` says the answer can stop there. The text is judged word by word, as plain decoding
    streams it (each complete word, in order, whatever block brought it): where a drafted block
    happens to end never decides what is checked, so HSD and plain decoding give the same answer."""

    def __init__(self, emit: Callable[[list[int], str], None], question: str,
                 check: Callable[[str], list[str]] | None = None):
        self.emit, self.question, self.check = emit, question, check
        self.ids, self.text, self.holding, self.doubted = [], "", True, False
        self.judged = 0  # how much of the text has been judged: up to the end of a complete word

    def feed(self, token_ids, text) -> None:
        if not self.holding:
            self.emit(token_ids, text)
            return
        self.ids += list(token_ids)
        self.text += text
        start = self.judged
        for word_end in re.finditer(r"\S\s", self.text[start:]):
            if self.doubted:
                return
            self.judged = start + word_end.end()
            self._judge(self.text[:self.judged])
            if not self.holding:
                return

    def _judge(self, complete: str) -> None:
        if may_become_refusal(complete) or not new_terms(complete, self.question):
            return
        if self.check is not None and self.check(complete):
            self.doubted = True
            return
        self.release()

    def release(self) -> None:
        if self.holding and (self.ids or self.text):
            self.emit(self.ids, self.text)
        self.holding = False

    def discard(self) -> None:
        self.ids, self.text, self.holding = [], "", False


def _retrieval(request: GenerationRequest, target, retrieve, stats: dict) -> tuple[list, bool, dict]:
    """(passages, grounded, evidence) for the request; a failing retriever leaves it without passages,
    flagged, and its reason in stats["retrieval_error"]. `evidence`: what the retriever found out
    about the question (its detail)."""
    if request.retrieval_mode == "off":
        return [], False, {}
    if retrieve is None:
        if request.retrieval_mode != "auto":
            stats["flags"].append("retriever_unavailable")
            stats["degraded"] = True
        return [], False, {}
    try:
        decision = gather_context(request.prompt, request.retrieval_mode, retrieve=retrieve,
                                  follow_up=lambda q, found: follow_up_query(target, q, found))
    except Exception as exc:  # retriever down, failing or late: the caller decides what to answer
        stats["flags"].append("retriever_unavailable")
        stats["degraded"] = True
        stats["retrieval_error"] = str(exc) or type(exc).__name__
        return [], False, {}
    stats.update(retrieval_level=decision.level, complexity_score=decision.score, retrievals=decision.retrievals,
                 context_tokens=decision.context_tokens, retrieval_detail=decision.detail,
                 sources=[asdict(p) for p in decision.passages])
    return decision.passages, decision.level > 0, decision.detail.get("evidence") or {}


class PromptTooLong(ValueError):
    pass


def _generate(request: GenerationRequest, target, messages: list[dict], grounded: bool, *, drafter, emit,
              cancelled: Callable[[], bool], generation_options: dict | None, prompt_cache=None,
              conversation=None, constraint=None, tools=None, halt: Callable[[], bool] | None = None) -> tuple:
    """One generation of the answer: (result, stop_reason); stop strings end a grounded answer and
    the repetition guard one that loops (stop_reason "repetition"); `halt()` true ends it too (stop
    reason "unsupported": the pipeline will not show what follows). `prompt_cache`
    (kvcache.PromptCache of the target): the prompt's shared prefix (the system turn with the
    grounding rules) is not prefilled again. `conversation` (sessions.Conversation): the turn
    follows its earlier ones and its KV state is the conversation's; a request's system_prompt
    replaces the system message (sessions.turn_messages). `constraint` (constraint.Constraint):
    only what its grammar allows is generated, with no stop strings; `tools`: rendered by the
    chat template."""
    if conversation is not None:
        messages = conversation.messages(messages, request.system_prompt)
        conversation.asked = messages[-1]["content"]
    elif request.system_prompt:
        messages = turn_messages(messages, request.system_prompt)
    prompt_ids = target.chat_ids(messages, tools) if tools else target.chat_ids(messages)
    if len(prompt_ids) >= target.context_length:
        raise PromptTooLong(f"prompt is {len(prompt_ids)} tokens (chat template and retrieved context "
                            f"included); the model's context holds {target.context_length}")
    stop = () if constraint is not None else (
        tuple(request.stop) + tuple(s for s in ANSWER_STOPS if grounded and s not in request.stop))
    config = GenerationConfig(max_new_tokens=request.max_new_tokens, temperature=request.temperature,
                              top_p=request.top_p, top_k=request.top_k, seed=request.seed, stop=stop,
                              mode=request.decoding_mode, **(generation_options or {}))
    guard = RepetitionGuard()

    def block(token_ids, text):
        guard.feed(text)
        emit(token_ids, text)

    result = generate(target, prompt_ids, config, drafter=drafter if request.decoding_mode == "hsd" else None,
                      request_id=request.request_id, on_block=block,
                      should_stop=lambda: cancelled() or guard.tripped or bool(halt and halt()),
                      cache=prompt_cache, **_turn_options(conversation, constraint))
    stop_reason = result.stop_reason
    if stop_reason == "cancelled" and not cancelled():
        stop_reason = "repetition" if guard.tripped else "unsupported"
    return result, stop_reason


def _turn_options(conversation, constraint) -> dict:
    """generate()'s conversation and constraint arguments, where there are some."""
    options = {"cache_key": conversation.cache_key} if conversation is not None else {}
    return {**options, "constraint": constraint} if constraint is not None else options


def _may_recheck(evidence: dict, passages: list, text: str, stop_reason: str) -> bool:
    """A bare refusal although the index knows every term of the question and passages were given."""
    return (bool(passages) and stop_reason != "cancelled" and is_bare_refusal(text)
            and "unknown_terms" in evidence and not evidence["unknown_terms"])


def answer(request: GenerationRequest, target, *, drafter=None, retrieve=None, on_block=None,
           should_stop=None, generation_options: dict | None = None, general_prompt: str = "",
           document_lookup: bool = True, prompt_cache=None, ungrounded_fallback: bool = False,
           conversation=None) -> Outcome:
    """`retrieve(query, mode, budget) -> RetrievalDecision` may raise (retriever down, failing or
    late): the answer then says that the documents could not be consulted, without a generation
    (stop reason and flag `documents_unavailable`, flagged `retriever_unavailable`, degraded), since
    the gate that decides whether a question needs them did not run either; `ungrounded_fallback`:
    the model answers from the question alone instead, flagged. `drafter` failures are handled
    inside generate(): plain decoding, flagged.
    `general_prompt`: system prompt of a question answered without documents (level 0);
    `document_lookup`: a question about a code that keys a retrieved table row, or one that a
    retrieved FAQ entry asks, is answered with that row or entry (`retrieval.lookup`), without a
    generation; `prompt_cache`, `conversation`: see _generate (an answered turn is left in
    `conversation.last_turn` for sessions.Conversations.end). A request with a json_schema,
    grammar or tools gets a constrained answer (structured.answer_structured)."""
    outcome = _answer(request, target, drafter=drafter, retrieve=retrieve, on_block=on_block,
                      should_stop=should_stop, generation_options=generation_options, general_prompt=general_prompt,
                      document_lookup=document_lookup, prompt_cache=prompt_cache,
                      ungrounded_fallback=ungrounded_fallback, conversation=conversation)
    if conversation is not None and outcome.success:
        conversation.last_turn = (conversation.asked or request.prompt,
                                  outcome.stats.pop("turn_text", outcome.text))
    outcome.stats.pop("turn_text", None)
    return outcome


def _answer(request: GenerationRequest, target, *, drafter, retrieve, on_block, should_stop, generation_options,
            general_prompt: str, document_lookup: bool, prompt_cache, ungrounded_fallback: bool,
            conversation) -> Outcome:
    started = time.monotonic()
    stats = {"retrieval_level": -1, "complexity_score": math.nan, "retrievals": 0, "context_tokens": 0,
             "sources": [], "flags": [], "degraded": False}
    passages, grounded, evidence = _retrieval(request, target, retrieve, stats)
    stats["retrieval_s"] = time.monotonic() - started
    emit = on_block or (lambda token_ids, text: None)
    if conversation is not None:
        conversation.asked = None
    if "retrieval_error" in stats and not ungrounded_fallback:
        answer_text = documents_unavailable_answer(stats["retrieval_error"])
        return _without_model(request, answer_text, "documents_unavailable", stats, emit, started)
    cancelled = should_stop or (lambda: False)
    run = dict(drafter=drafter, cancelled=cancelled, generation_options=generation_options, prompt_cache=prompt_cache,
               conversation=conversation)
    if request.structured:
        from hola_ros.core.structured import answer_structured

        return answer_structured(request, target, passages if grounded else [], stats, emit, run, started)
    codes = evidence.get("unknown_codes") if grounded else None
    if codes:  # the documents cannot say anything about a code none of them holds: no generation
        return _without_model(request, unknown_codes_answer(codes), "unknown_code", stats, emit, started)
    found = document_answer(request.prompt, passages) if grounded and document_lookup else None
    if found:  # the code's own table row, or the FAQ entry that asks the question, is the answer
        sources = " ".join(f"[{s}]" for s in found.sources)
        return _without_model(request, f"{found.text} {sources}", found.kind, stats, emit, started)

    try:
        if grounded:
            result, text, stop_reason = _grounded(request, target, passages, evidence, stats, emit, run)
            if stop_reason != "cancelled" and not is_bare_refusal(text):
                text = _echoed_parts(request, target, text, passages, stats, emit, run)
        else:
            messages = compose_messages(request.prompt, [], False, general_prompt)
            result, stop_reason = _generate(request, target, messages, False, emit=emit, **run)
            text = result.text
    except PromptTooLong as exc:
        return Outcome(False, str(exc), stats={**stats, "stop_reason": "error"})
    return _finish(request, result, text, stop_reason, passages if grounded else [], stats, emit, started)


def _without_model(request: GenerationRequest, text: str, reason: str, stats: dict, emit, started: float) -> Outcome:
    """An answer the documents decide alone (stop reason and flag `reason`): no tokens generated."""
    emit([], text)
    stats.update(flags=stats["flags"] + [reason], stop_reason=reason, new_tokens=0,
                 decoding_mode=request.decoding_mode, total_s=time.monotonic() - started)
    return Outcome(True, text=text, stats=stats)


def _support_check(question: str, passages: list, evidence: dict) -> Callable[[str], list[str]] | None:
    """What of an answer the passages do not support (`support.py`): its figures that no passage states
    beside what the question asks (when the retriever reported specific terms to check against), then
    its names that no passage holds; None without passages."""
    if not passages:
        return None
    names = names_check(question, passages)
    specific, unknown = evidence.get("specific_terms"), evidence.get("unknown_terms") or []
    if not specific:
        return names
    said_figures = figures_check(question, passages, specific, unknown)
    return lambda text: said_figures(text) or names(text)


def _grounded(request: GenerationRequest, target, passages: list, evidence: dict, stats: dict, emit, run: dict):
    """(result, text, stop_reason) of a grounded answer, with its re-checks: a bare refusal to a
    question whose every term the index knows is asked again without the refusal rule; an answer
    that repeats only the question's words is asked again for a complete sentence, and when that
    adds nothing either, the answer is NOT_IN_DOCUMENTS; so is an answer whose first figure no
    passage states beside what the question asks (it stops there). A replaced attempt is never
    streamed."""
    question = request.prompt
    check = _support_check(question, passages, evidence)

    def attempt(**rules):
        held = HeldAnswer(emit, question, check)
        result, stop_reason = _generate(request, target, compose_messages(question, passages, **rules), True,
                                        emit=held.feed, halt=lambda: held.doubted, **run)
        return held, result, stop_reason

    held, result, stop_reason = attempt()
    if _may_recheck(evidence, passages, result.text, stop_reason):
        held.discard()
        stats["flags"].append("refusal_rechecked")
        stats["recheck"] = {"refused_new_tokens": result.stats.get("new_tokens", 0)}
        held, result, stop_reason = attempt(refusal=False)
    if stop_reason == "cancelled" or not adds_nothing(result.text, question):
        return _settled(held, result, stop_reason, check, stats, emit)
    held.discard()
    stats["flags"].append("echo_rechecked")
    stats["echo"] = {"answer": result.text, "new_tokens": result.stats.get("new_tokens", 0)}
    held, result, stop_reason = attempt(in_full=True)
    if stop_reason == "cancelled" or not adds_nothing(result.text, question):
        return _settled(held, result, stop_reason, check, stats, emit)
    held.discard()
    emit([], NOT_IN_DOCUMENTS)
    return result, NOT_IN_DOCUMENTS, stop_reason


def _settled(held: HeldAnswer, result, stop_reason: str, check, stats: dict, emit) -> tuple:
    """The attempt's answer, shown; one still held because a figure or name of it is not the
    documents' (the 0.5B's "The price of a TurtleBot 4 is $1,000.", "... is NVIDIA GeForce GTX 1080.")
    is replaced by NOT_IN_DOCUMENTS (flag `unsupported_figure` or `unsupported_name`, the answer and
    what it lacks in stats["unsupported"])."""
    unsupported = check(result.text) if stop_reason != "cancelled" and held.holding and check is not None else []
    if unsupported:
        held.discard()
        kind = "figure" if set(unsupported) & set(figures(result.text)) else "name"
        stats["flags"].append(f"unsupported_{kind}")
        stats["unsupported"] = {"answer": result.text, "new_tokens": result.stats.get("new_tokens", 0),
                                "not_in_documents": unsupported}
        emit([], NOT_IN_DOCUMENTS)
        return result, NOT_IN_DOCUMENTS, stop_reason
    held.release()
    return result, result.text, stop_reason


def _echoed_parts(request: GenerationRequest, target, text: str, passages: list, stats: dict, emit, run: dict) -> str:
    """A question that joins several, answered with a clause that only restates one part ("The
    access point covers Zone B, and ...") or that repeats the figure an earlier clause gave
    (`repeats_figure`): that part is asked alone, from the passages its own retrieval found, and
    what it adds is appended (after the source note of what came before, so each half names its
    document); a repeated figure, only when the part alone gives another. The streamed answer is
    never taken back, only continued."""
    extra = []
    for part in stats.get("retrieval_detail", {}).get("parts", []):
        own = [passages[i] for i in part.get("passages", []) if i < len(passages)]
        repeated = bool(own) and not echoes(text, part["question"]) and repeats_figure(text, part["question"])
        if not own or not (repeated or echoes(text, part["question"])):
            continue
        question = part["question"][:1].upper() + part["question"][1:]
        result, stop_reason = _generate(request, target, compose_messages(question, own), True,
                                        emit=lambda token_ids, delta: None, **{**run, "conversation": None})
        said = _without_question(result.text.strip(), question)
        stats.setdefault("parts_rechecked", []).append({"part": part["question"], "answer": said,
                                                        "new_tokens": result.stats.get("new_tokens", 0)})
        check = _support_check(question, own, stats["retrieval_detail"].get("evidence") or {})
        if (stop_reason != "cancelled" and not is_bare_refusal(said) and not adds_nothing(said, part["question"])
                and (check is None or not check(said)) and not (repeated and set(figures(said)) <= set(figures(text)))):
            extra.append(said + source_note(said, own))
    if not extra:
        return text
    stats["flags"].append("part_rechecked")
    more = source_note(text, passages) + " " + " ".join(extra)
    emit([], more)
    return text + more


def _without_question(said: str, question: str) -> str:
    """The answer without the question it may begin by repeating ("When is a battery replaced?
    Every ..." as the 0.5B answered a part asked alone)."""
    return said[len(question):].lstrip() if said.lower().startswith(question.lower()) else said


def _finish(request, result, text: str, stop_reason: str, passages: list, stats: dict, emit,
            started: float) -> Outcome:
    """The answer with its source note (streamed like the rest), flags and stats."""
    stats["turn_text"] = text  # what a conversation keeps of this turn (the note is not the model's)
    note = source_note(text, passages) if passages and stop_reason != "cancelled" else ""
    if note:  # the answer names the document it draws on
        text += note
        emit([], note)
    flags = stats["flags"] + [f for f in result.stats.get("flags", []) if f not in stats["flags"]]
    degraded = bool(stats["degraded"] or result.stats.get("degraded"))
    stats.update(result.stats)
    stats.update(flags=flags, degraded=degraded, stop_reason=stop_reason,
                 decoding_mode=result.stats.get("mode", request.decoding_mode), total_s=time.monotonic() - started)
    if stop_reason == "cancelled":
        return Outcome(False, "cancelled", text=text, stats=stats)
    return Outcome(True, text=text, stats=stats)
