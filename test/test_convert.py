import json
import math

from hola_ros.nodes.convert import msg_to_dict, passage_from_msg, passage_to_msg, stats_to_msg


def test_stats_round_trip_typed_fields_and_detail():
    stats = {"prompt_tokens": 12, "new_tokens": 5, "tokens_per_s": 9.5, "decoding_mode": "hsd", "degraded": True,
             "flags": ["drafter_unavailable"], "retrieval_level": 2, "complexity_score": 0.25,
             "sources": [{"text": "dock B", "source": "kb/dock.md", "score": 0.8, "tokens": 7, "trimmed": True}],
             "acceptance_per_level": {"L0": 0.5}, "stop_reason": "eos"}
    msg = stats_to_msg(stats)
    assert msg.new_tokens == 5 and msg.degraded and msg.flags == ["drafter_unavailable"]
    assert msg.sources[0].source == "kb/dock.md" and abs(msg.sources[0].score - 0.8) < 1e-6
    assert msg.sources[0].tokens == 7 and msg.sources[0].trimmed
    assert json.loads(msg.detail_json) == {"acceptance_per_level": {"L0": 0.5}}
    back = msg_to_dict(msg)
    assert back["retrieval_level"] == 2 and back["detail"]["acceptance_per_level"]["L0"] == 0.5
    assert back["sources"][0]["text"] == "dock B" and back["stop_reason"] == "eos"


def test_missing_figures_keep_neutral_defaults_and_nan_becomes_null():
    msg = stats_to_msg({})
    assert msg.retrieval_level == -1 and math.isnan(msg.complexity_score)
    assert msg_to_dict(msg)["complexity_score"] is None


def test_a_retrieved_passage_crosses_the_retrieve_service_whole():
    from hola_ros.core.retrieval.adacomp import Passage

    for trimmed in (False, True):  # the FAQ look-up must know a trimmed passage in the node graph too
        p = Passage("**Can I move a robot by hand?** Only when it is off.", "12-faq.md", 0.5, 17, trimmed)
        back = passage_from_msg(passage_to_msg(p))
        assert (back.text, back.source, back.tokens, back.trimmed) == (p.text, p.source, 17, trimmed)
        assert abs(back.score - 0.5) < 1e-6
