"""Between engine data (plain dicts) and hola_ros messages."""
import array
import json
import math

from hola_ros.msg import GenerationStats, Passage, ToolCall


def passage_to_msg(p) -> Passage:
    """A retrieved passage (retrieval.adacomp.Passage, or its dict in answer stats' sources) as a
    message, its trimmed flag included: the verifier's FAQ look-up must not answer from an entry
    that lost a sentence."""
    f = p if isinstance(p, dict) else vars(p)
    return Passage(text=str(f.get("text", "")), source=str(f.get("source", "")), score=float(f.get("score", 0.0)),
                   tokens=int(f.get("tokens", 0)), trimmed=bool(f.get("trimmed", False)),
                   section=str(f.get("section", "")), page=int(f.get("page", 0)))


def passage_from_msg(msg: Passage):
    from hola_ros.core.retrieval.adacomp import Passage as Retrieved

    return Retrieved(msg.text, msg.source, float(msg.score), int(msg.tokens), bool(msg.trimmed), msg.section,
                     int(msg.page))


def stats_to_msg(stats: dict) -> GenerationStats:
    """Typed fields of GenerationStats from the engine's stats dict; the rest goes to detail_json."""
    msg = GenerationStats(retrieval_level=-1, complexity_score=math.nan)
    fields = msg.get_fields_and_field_types()
    rest = {}
    for key, value in stats.items():
        if key == "sources":
            msg.sources = [passage_to_msg(p) for p in value]
        elif key in fields and key != "detail_json":
            current = getattr(msg, key)
            if isinstance(current, list):
                setattr(msg, key, [str(v) for v in value])
            elif value is not None:
                setattr(msg, key, type(current)(value))
        else:
            rest[key] = value
    msg.detail_json = json.dumps(rest, default=str, sort_keys=True)
    return msg


def tool_calls_to_msg(calls) -> list:
    """tools.ToolCall list as ToolCall messages (arguments as JSON text)."""
    return [ToolCall(name=c.name, arguments_json=c.arguments_json()) for c in calls]


def msg_to_dict(msg):
    """Any ROS message as plain JSON-ready data; detail_json strings are parsed back."""
    if hasattr(msg, "get_fields_and_field_types"):
        out = {}
        for name in msg.get_fields_and_field_types():
            value = getattr(msg, name)
            if name == "detail_json":
                out["detail"] = json.loads(value) if value else {}
            else:
                out[name] = msg_to_dict(value)
        return out
    if isinstance(msg, (list, tuple, array.array)):
        return [msg_to_dict(v) for v in msg]
    if hasattr(msg, "tolist"):
        return msg.tolist()
    if isinstance(msg, float) and not math.isfinite(msg):
        return None
    return msg
