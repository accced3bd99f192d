"""Command evaluation: robot requests over the demo site turned into tool calls, judged by the
call's validity against its tool's schema and by the intended call and arguments.

Data (data/kb_eval/commands.jsonl), one request per line:
  id        unique id
  split     tune or heldout (prompts were tuned on one, figures are reported on the other)
  request   what a person asks the robot ("Go charge at the dock used for battery conditioning.")
  grounded  true when the call needs the documents (CD-5 is the conditioning dock)
  expect    the intended call {"name": ..., "arguments": {...}}
Tools: data/kb_eval/robot_tools.json (navigate_to, charge, lift, set_speed_limit, report_fault, wait,
emergency_stop).

Configurations, through the verifier's path (`pipeline` with the retriever's auto gate over the
demo KB, HSD with the L0 n-gram drafter): `constrained` (the tools' grammar, tool_choice required)
and `unconstrained` (the same prompt decoded freely; its first JSON object, fenced or not, counts as
the call when it names a tool and validates).
"""
from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

COMMAND_CONFIGS = ("constrained", "unconstrained")


@dataclass(frozen=True)
class CommandItem:
    id: str
    split: str
    request: str
    grounded: bool
    expect: dict


def load_items(path, split: str = "heldout") -> list[CommandItem]:
    items = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = {"id", "split", "request", "expect"} - set(row)
        if missing or set(row["expect"]) != {"name", "arguments"}:
            raise ValueError(f"{path}:{n}: needs id, split, request and expect {{name, arguments}}")
        items.append(CommandItem(row["id"], row["split"], row["request"], bool(row.get("grounded")), row["expect"]))
    if len({i.id for i in items}) != len(items):
        raise ValueError(f"{path}: ids are not unique")
    return [i for i in items if split == "all" or i.split == split]


def same_value(got, want) -> bool:
    """Numbers by value (1 == 1.0), strings case-insensitively, objects key by key."""
    if isinstance(want, bool) or isinstance(got, bool):
        return got is want
    if isinstance(want, (int, float)) and isinstance(got, (int, float)):
        return abs(float(got) - float(want)) < 1e-9
    if isinstance(want, str) and isinstance(got, str):
        return got.strip().lower() == want.strip().lower()
    if isinstance(want, dict) and isinstance(got, dict):
        return set(got) == set(want) and all(same_value(got[k], want[k]) for k in want)
    return got == want


def intended(calls: list[dict], expect: dict) -> bool:
    """The answer is exactly the intended call."""
    return len(calls) == 1 and calls[0]["name"] == expect["name"] and same_value(calls[0]["arguments"],
                                                                                  expect["arguments"])


def run_item(config: str, item: CommandItem, tools_json: str, target, drafter, retrieve, max_new_tokens: int,
             prompt_cache=None) -> dict:
    """One request under one configuration, as the verifier would serve it (`prompt_cache`: the
    verifier's, so the system turn with the tools is prefilled once)."""
    from hola_ros.core.pipeline import _retrieval
    from hola_ros.core.requests import GenerationRequest
    from hola_ros.core.structured import answer_structured

    request = GenerationRequest(prompt=item.request, request_id=f"{config}-{item.id}", max_new_tokens=max_new_tokens,
                                retrieval_mode="auto", decoding_mode="hsd", tools=tools_json, tool_choice="required")
    t0 = time.perf_counter()
    stats = {"retrieval_level": -1, "sources": [], "flags": [], "degraded": False}
    passages, grounded, _ = _retrieval(request, target, retrieve, stats)
    run = dict(drafter=drafter, cancelled=lambda: False, generation_options=None, prompt_cache=prompt_cache,
               conversation=None)
    outcome = answer_structured(request, target, passages if grounded else [], stats, lambda ids, text: None, run,
                                time.monotonic(), constrained=config == "constrained")
    calls = [{"name": c.name, "arguments": c.arguments} for c in outcome.tool_calls]
    if config == "unconstrained" and not calls:
        calls = lenient_calls(outcome.text, tools_json)
    return {"config": config, "id": item.id, "split": item.split, "grounded": item.grounded,
            "valid": bool(calls), "intended": intended(calls, item.expect),
            "calls": calls, "expect": item.expect, "text": outcome.text, "error": outcome.error,
            "level": stats.get("retrieval_level"), "sources": sorted({p["source"] for p in stats.get("sources", [])}),
            "new_tokens": stats.get("new_tokens"), "latency_s": round(time.perf_counter() - t0, 3)}


def lenient_calls(text: str, tools_json: str) -> list[dict]:
    """The first JSON object anywhere in free text (inside a ```json fence, after a sentence), as a
    call when it names a tool and its arguments validate: unconstrained output judged generously."""
    from hola_ros.core.tools import ToolError, parse_calls, parse_tools

    start = text.find("{")
    try:
        found, _ = json.JSONDecoder().raw_decode(text[start:]) if start >= 0 else (None, 0)
        calls = parse_calls(json.dumps(found), parse_tools(tools_json)) if isinstance(found, dict) else []
    except (ValueError, ToolError):
        return []
    return [{"name": c.name, "arguments": c.arguments} for c in calls]


def summarize(rows: list[dict], items: list[CommandItem], configs) -> dict:
    ids = {i.id for i in items}
    out = {}
    for config in configs:
        rs = [r for r in rows if r["config"] == config and r["id"] in ids]
        if not rs:
            continue
        grounded = [r for r in rs if r["grounded"]]
        out[config] = {"n": len(rs), "valid_rate": _rate(rs, "valid"), "intended_rate": _rate(rs, "intended"),
                       "intended_rate_grounded": _rate(grounded, "intended"),
                       "intended_rate_direct": _rate([r for r in rs if not r["grounded"]], "intended"),
                       "latency_p50_s": round(statistics.median(r["latency_s"] for r in rs), 3),
                       "missed": [r["id"] for r in rs if not r["intended"]]}
    return out


def _rate(rows: list[dict], key: str):
    return round(sum(bool(r[key]) for r in rows) / len(rows), 4) if rows else None
