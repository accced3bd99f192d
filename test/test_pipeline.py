"""pipeline.answer's own steps: the repetition guard ends a looping answer as a success."""
from types import SimpleNamespace

from helpers_tiny import tiny_model
from hola_ros.core import pipeline
from hola_ros.core.pipeline import RepetitionGuard
from hola_ros.core.requests import GenerationRequest


def test_repetition_guard_trips_on_the_third_copy_of_a_sentence():
    guard = RepetitionGuard()
    guard.feed("The robot shows error E-214. The code should be 1. The code ")
    guard.feed("should be 1. Clean the plates. ")
    assert not guard.tripped  # two copies, short sentences and distinct ones do not count
    guard.feed("The code should be 1. And")
    assert guard.tripped
    short = RepetitionGuard()
    short.feed("Yes. Yes. Yes. Yes. ")
    assert not short.tripped  # under min_chars: a list of short items is not a loop


def _looping_generate(target, prompt_ids, config, drafter=None, request_id="", on_block=None, should_stop=None):
    """Stands in for hsd.generate: a model that says the same sentence until told to stop."""
    text = ""
    for _ in range(20):
        if should_stop():
            return SimpleNamespace(text=text, stop_reason="cancelled", stats={"new_tokens": len(text)})
        on_block([1], "The code should be 1. ")
        text += "The code should be 1. "
    return SimpleNamespace(text=text, stop_reason="max_new_tokens", stats={"new_tokens": len(text)})


def test_a_looping_answer_ends_as_a_success_with_stop_reason_repetition(monkeypatch):
    monkeypatch.setattr(pipeline, "generate", _looping_generate)
    target = tiny_model(seed=0)
    request = GenerationRequest(prompt="Say something.", request_id="loop", max_new_tokens=400,
                                retrieval_mode="off", decoding_mode="ar")
    streamed = []
    outcome = pipeline.answer(request, target, on_block=lambda ids, text: streamed.append(text))
    assert outcome.success and outcome.stats["stop_reason"] == "repetition"
    assert outcome.text == "".join(streamed) == "The code should be 1. " * 3
    cancelled = pipeline.answer(request, target, should_stop=lambda: True)  # the caller's cancel stays a cancel
    assert not cancelled.success and cancelled.error == "cancelled"
