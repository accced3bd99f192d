"""One request end to end, whatever the transport: retrieval decision, prompt, generation.

The verifier node runs this with ROS clients as `drafter` / `retrieve`; the CLI and the
benchmarks run it with in-process ones, so both paths share every step.
"""
import math
import re
import time
from typing import Callable

from hola_ros.core.hsd import GenerationConfig, generate
from hola_ros.core.requests import GenerationRequest
from hola_ros.core.retrieval.adacomp import gather_context
from hola_ros.core.retrieval.prompting import (ANSWER_STOPS, NOT_IN_DOCUMENTS, compose_messages, follow_up_messages,
                                               is_bare_refusal, source_note, unknown_codes_answer)
from hola_ros.core.scheduler import Outcome

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


class HeldRefusal:
    """Streams an answer, holding text back only while it may still be the bare refusal: a refusal
    that the pipeline re-checks is never shown, and any other answer flows on at once."""

    def __init__(self, emit: Callable[[list[int], str], None]):
        self.emit, self.ids, self.text, self.holding = emit, [], "", True

    def feed(self, token_ids, text) -> None:
        if not self.holding:
            self.emit(token_ids, text)
            return
        self.ids += list(token_ids)
        self.text += text
        if not NOT_IN_DOCUMENTS.lower().startswith(" ".join(self.text.split()).lower()):
            self.release()

    def release(self) -> None:
        if self.holding and (self.ids or self.text):
            self.emit(self.ids, self.text)
        self.holding = False

    def discard(self) -> None:
        self.ids, self.text, self.holding = [], "", False


def _retrieval(request: GenerationRequest, target, retrieve, stats: dict) -> tuple[list, bool, dict]:
    """(passages, grounded, evidence) for the request; a failing retriever leaves the answer
    ungrounded, flagged. `evidence`: what the retriever found out about the question (its detail)."""
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
    except Exception as exc:  # retriever down or failing: answer without it
        stats["flags"].append("retriever_unavailable")
        stats["degraded"] = True
        stats["retrieval_error"] = f"{type(exc).__name__}: {exc}"
        return [], False, {}
    stats.update(retrieval_level=decision.level, complexity_score=decision.score, retrievals=decision.retrievals,
                 context_tokens=decision.context_tokens, retrieval_detail=decision.detail,
                 sources=[{"text": p.text, "source": p.source, "score": p.score, "tokens": p.tokens}
                          for p in decision.passages])
    return decision.passages, decision.level > 0, decision.detail.get("evidence") or {}


class PromptTooLong(ValueError):
    pass


def _generate(request: GenerationRequest, target, messages: list[dict], grounded: bool, *, drafter, emit,
              cancelled: Callable[[], bool], generation_options: dict | None) -> tuple:
    """One generation of the answer: (result, stop_reason); stop strings end a grounded answer and
    the repetition guard one that loops (stop_reason "repetition")."""
    prompt_ids = target.chat_ids(messages)
    if len(prompt_ids) >= target.context_length:
        raise PromptTooLong(f"prompt is {len(prompt_ids)} tokens (chat template and retrieved context "
                            f"included); the model's context holds {target.context_length}")
    stop = tuple(request.stop) + tuple(s for s in ANSWER_STOPS if grounded and s not in request.stop)
    config = GenerationConfig(max_new_tokens=request.max_new_tokens, temperature=request.temperature,
                              top_p=request.top_p, top_k=request.top_k, seed=request.seed, stop=stop,
                              mode=request.decoding_mode, **(generation_options or {}))
    guard = RepetitionGuard()

    def block(token_ids, text):
        guard.feed(text)
        emit(token_ids, text)

    result = generate(target, prompt_ids, config, drafter=drafter if request.decoding_mode == "hsd" else None,
                      request_id=request.request_id, on_block=block, should_stop=lambda: cancelled() or guard.tripped)
    stop_reason = "repetition" if result.stop_reason == "cancelled" and not cancelled() else result.stop_reason
    return result, stop_reason


def _may_recheck(evidence: dict, passages: list, text: str, stop_reason: str) -> bool:
    """A bare refusal although the index knows every term of the question and passages were given."""
    return (bool(passages) and stop_reason != "cancelled" and is_bare_refusal(text)
            and "unknown_terms" in evidence and not evidence["unknown_terms"])


def answer(request: GenerationRequest, target, *, drafter=None, retrieve=None, on_block=None,
           should_stop=None, generation_options: dict | None = None, general_prompt: str = "") -> Outcome:
    """`retrieve(query, mode, budget) -> RetrievalDecision` may raise: the answer then comes
    without retrieval, flagged. `drafter` failures are handled inside generate() the same way.
    `general_prompt`: system prompt of a question answered without documents (level 0)."""
    started = time.monotonic()
    stats = {"retrieval_level": -1, "complexity_score": math.nan, "retrievals": 0, "context_tokens": 0,
             "sources": [], "flags": [], "degraded": False}
    passages, grounded, evidence = _retrieval(request, target, retrieve, stats)
    stats["retrieval_s"] = time.monotonic() - started
    emit = on_block or (lambda token_ids, text: None)
    codes = evidence.get("unknown_codes") if grounded else None
    if codes:  # the documents cannot say anything about a code none of them holds: no generation
        text = unknown_codes_answer(codes)
        emit([], text)
        stats.update(flags=stats["flags"] + ["unknown_code"], stop_reason="unknown_code", new_tokens=0,
                     decoding_mode=request.decoding_mode, total_s=time.monotonic() - started)
        return Outcome(True, text=text, stats=stats)

    cancelled = should_stop or (lambda: False)
    run = dict(drafter=drafter, cancelled=cancelled, generation_options=generation_options)
    held = HeldRefusal(emit) if grounded else None
    try:
        result, stop_reason = _generate(request, target, compose_messages(request.prompt, passages, grounded,
                                                                          general_prompt),
                                        grounded, emit=held.feed if held else emit, **run)
        if grounded and _may_recheck(evidence, passages, result.text, stop_reason):
            held.discard()
            stats["flags"].append("refusal_rechecked")
            stats["recheck"] = {"refused_new_tokens": result.stats.get("new_tokens", 0)}
            result, stop_reason = _generate(request, target,
                                            compose_messages(request.prompt, passages, refusal=False),
                                            grounded, emit=emit, **run)
        elif held:
            held.release()
    except PromptTooLong as exc:
        return Outcome(False, str(exc), stats={**stats, "stop_reason": "error"})
    return _finish(request, result, stop_reason, passages if grounded else [], stats, emit, started)


def _finish(request, result, stop_reason: str, passages: list, stats: dict, emit, started: float) -> Outcome:
    """The answer with its source note (streamed like the rest), flags and stats."""
    text = result.text
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
