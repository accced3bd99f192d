"""What a constraint costs: token-mask time per token of the grammar libraries on the served
model's vocabulary, and decode speed of constrained against unconstrained AR and HSD
(`hola-ros bench-constraint`)."""
from __future__ import annotations

import json
import statistics
import sys
import time

# answers the masks are timed along (each tokenized by the model's tokenizer): tool calls of the demo
# site's tools, and a JSON object with a free-text string (the case where most tokens stay allowed)
CALLS = ['{"name": "charge", "arguments": {"dock": "CD-5"}}',
         '{"name": "navigate_to", "arguments": {"destination": "Zone M"}}',
         '{"name": "set_speed_limit", "arguments": {"max_speed_mps": 0.3}}']
NOTE_SCHEMA = {"type": "object", "properties": {"dock": {"type": "string", "enum": ["CD-1", "CD-5"]},
                                                "reason": {"type": "string", "maxLength": 200}},
               "required": ["dock", "reason"], "additionalProperties": False}
NOTE = '{"dock": "CD-5", "reason": "the battery is above 55 degrees and needs conditioning before it charges again"}'


def calls_schema(tools) -> dict:
    """One JSON Schema for a call of any of `tools` (tools.Tool): what both libraries compile."""
    from hola_ros.core.tools import _call_schema

    return {"anyOf": [{k: v for k, v in _call_schema(t).items() if k != "x-guidance"} for t in tools]}


def _summary(seconds: list[float], build_s: float) -> dict:
    ms = sorted(s * 1000 for s in seconds)
    return {"tokens": len(ms), "mask_ms_mean": round(statistics.fmean(ms), 4), "mask_ms_p50": round(ms[len(ms) // 2], 4),
            "mask_ms_max": round(ms[-1], 4), "compile_s": round(build_s, 4)}


def llguidance_masks(model, schema: dict, texts: list[str]) -> dict:
    """Per-token mask time along `texts`, with the grammar compile time (the tokenizer is built once
    per model beforehand, and timed apart)."""
    import numpy as np
    from llguidance import LLMatcher

    from hola_ros.core.constraint import JSON_LAYOUT, ll_tokenizer

    t0 = time.perf_counter()
    tokenizer = ll_tokenizer(model)
    tokenizer_s = time.perf_counter() - t0
    seconds, build = [], 0.0
    mask = np.zeros((model.vocab_size + 31) // 32, np.int32)
    for text in texts:
        t0 = time.perf_counter()
        matcher = LLMatcher(tokenizer, LLMatcher.grammar_from_json_schema(schema, defaults=JSON_LAYOUT), log_level=0)
        build += time.perf_counter() - t0
        for token in model.encode(text):
            t0 = time.perf_counter()
            matcher.unsafe_compute_mask_ptr(mask.ctypes.data, mask.nbytes)
            seconds.append(time.perf_counter() - t0)
            assert matcher.consume_token(token), matcher.get_error()
    return {**_summary(seconds, build / len(texts)), "tokenizer_s": round(tokenizer_s, 3)}


def xgrammar_masks(model, schema: dict, texts: list[str], path: str | None = None) -> dict:
    """The same with xgrammar (not a dependency: importable from `path`, or skipped with the reason).
    Its tokenizer info is built from the same tokenizer.json (byte-level vocabulary)."""
    if path:
        sys.path.insert(0, path)
    try:
        import xgrammar as xgr
    except ImportError as exc:
        return {"skipped": f"xgrammar not importable ({exc}); pip install --no-deps --target DIR xgrammar "
                           "apache-tvm-ffi, then --xgrammar-path DIR"}
    backend = model.tokenizer.backend_tokenizer
    t0 = time.perf_counter()
    vocab = [backend.id_to_token(i) or "" for i in range(model.vocab_size)]
    info = xgr.TokenizerInfo(vocab, vocab_type=xgr.VocabType.BYTE_LEVEL, vocab_size=model.vocab_size,
                             stop_token_ids=sorted(model.eos_token_ids))
    compiler = xgr.GrammarCompiler(info)
    tokenizer_s = time.perf_counter() - t0
    seconds, build = [], 0.0
    bitmask = xgr.allocate_token_bitmask(1, model.vocab_size)
    for text in texts:
        t0 = time.perf_counter()
        compiled = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=(", ", ": "))
        build += time.perf_counter() - t0
        matcher = xgr.GrammarMatcher(compiled)
        for token in model.encode(text):
            t0 = time.perf_counter()
            matcher.fill_next_token_bitmask(bitmask)
            seconds.append(time.perf_counter() - t0)
            assert matcher.accept_token(token), text
    return {**_summary(seconds, build / len(texts)), "tokenizer_s": round(tokenizer_s, 3)}


def decode_speeds(model, prompts: list[list[int]], grammar: str, max_new_tokens: int) -> dict:
    """Greedy AR and HSD (L0 n-gram drafter), with and without the tool grammar, on the same
    prompts: decode tokens per second over all prompts, tokens, mask seconds; constrained HSD's
    tokens equal constrained AR's (checked)."""
    from hola_ros.core.constraint import Constraint
    from hola_ros.core.hsd import GenerationConfig, generate

    out, tokens = {}, {}
    for name in ("ar", "hsd", "ar_constrained", "hsd_constrained"):
        mode, constrained = name.split("_")[0], name.endswith("constrained")
        new = decode = mask = 0.0
        tokens[name] = []
        for ids in prompts:
            c = Constraint(model, "lark", grammar) if constrained else None
            r = generate(model, ids, GenerationConfig(mode=mode, max_new_tokens=max_new_tokens), constraint=c)
            new += r.stats["new_tokens"]
            decode += r.stats["decode_s"]
            mask += c.mask_s if c else 0.0
            tokens[name].append(r.token_ids)
        out[name] = {"new_tokens": int(new), "decode_s": round(decode, 3),
                     "decode_tokens_per_s": round(new / decode, 2) if decode else None, "mask_s": round(mask, 3)}
    out["hsd_constrained_equals_ar_constrained"] = tokens["hsd_constrained"] == tokens["ar_constrained"]
    return out
