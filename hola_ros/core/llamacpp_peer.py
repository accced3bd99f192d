"""llama.cpp on a GGUF through llama-cpp-python's low-level API: the peer every speed figure is
compared with (plain decoding, what llama_ros ships), and its verify-cost curve.

Optional: llama-cpp-python is built by `make peers`; nothing in the package needs it.
"""
from __future__ import annotations

import time

import numpy as np

from hola_ros.core.kvcache import common_prefix


class LlamaCpp:
    """One llama.cpp context over a GGUF, one sequence, logits as numpy rows."""

    def __init__(self, gguf: str, threads: int = 2, n_ctx: int = 4096, n_batch: int = 512):
        import llama_cpp.llama_cpp as lib
        from llama_cpp._logger import set_verbose

        set_verbose(False)  # llama.cpp logs every model load to stderr otherwise
        self.lib = lib
        lib.llama_backend_init()
        self.model = lib.llama_model_load_from_file(str(gguf).encode(), lib.llama_model_default_params())
        if not self.model:
            raise RuntimeError(f"llama.cpp could not load {gguf}")
        params = lib.llama_context_default_params()
        params.n_ctx, params.n_batch, params.n_ubatch = n_ctx, n_batch, n_batch
        params.n_threads = params.n_threads_batch = threads
        params.no_perf = True
        self.ctx = lib.llama_init_from_model(self.model, params)
        vocab = lib.llama_model_get_vocab(self.model)
        self.n_vocab = lib.llama_vocab_n_tokens(vocab)
        self.eos = {t for t in range(self.n_vocab) if lib.llama_vocab_is_eog(vocab, t)}
        self.memory = lib.llama_get_memory(self.ctx)
        self.batch = lib.llama_batch_init(n_batch, 0, 1)
        self.n_batch = n_batch
        self.cached: list[int] = []  # the tokens llama.cpp's cache holds

    def decode(self, tokens: list[int], pos: int, all_logits: bool = False) -> np.ndarray:
        """Feed tokens at positions pos..; logits of every row (all_logits) or of the last one."""
        del self.cached[pos:]
        self.cached.extend(tokens)
        rows = []
        for start in range(0, len(tokens), self.n_batch):
            chunk = tokens[start:start + self.n_batch]
            last = start + len(chunk) == len(tokens)
            b = self.batch
            b.n_tokens = len(chunk)
            for i, tok in enumerate(chunk):
                b.token[i], b.pos[i], b.n_seq_id[i] = tok, pos + start + i, 1
                b.seq_id[i][0] = 0
                b.logits[i] = all_logits or (last and i == len(chunk) - 1)
            if self.lib.llama_decode(self.ctx, b) != 0:
                raise RuntimeError("llama_decode failed")
            if all_logits:
                rows.append(np.ctypeslib.as_array(self.lib.llama_get_logits(self.ctx), shape=(len(chunk), self.n_vocab)).copy())
        if all_logits:
            return np.concatenate(rows)
        return np.ctypeslib.as_array(self.lib.llama_get_logits_ith(self.ctx, -1), shape=(1, self.n_vocab)).copy()

    def truncate(self, length: int) -> None:
        """Drop cached positions >= length."""
        self.lib.llama_memory_seq_rm(self.memory, 0, length, -1)
        del self.cached[length:]

    def greedy(self, prompt: list[int], max_new_tokens: int, ignore_eos: bool = True,
               reuse_prefix: bool = False) -> tuple[list[int], dict]:
        """Plain decoding: one llama_decode per token (llama.cpp's fast one-row path). With
        reuse_prefix the cache keeps what the prompt shares with the tokens decoded before (as
        llama.cpp's server does with cache_prompt). Returns (tokens, timings)."""
        t0 = time.perf_counter()
        keep = min(common_prefix(self.cached, prompt), len(prompt) - 1) if reuse_prefix else 0
        self.truncate(keep)
        row = self.decode(prompt[keep:], keep)[0]
        out, first = [], None
        for i in range(max_new_tokens):
            if ignore_eos:
                row[list(self.eos)] = -np.inf
            tok = int(row.argmax())
            if tok in self.eos:
                break
            out.append(tok)
            first = first or time.perf_counter() - t0
            if i + 1 < max_new_tokens:
                row = self.decode([tok], len(prompt) + i)[0]
        total = time.perf_counter() - t0
        return out, {"first_token_s": first or total, "total_s": total, "reused_prompt_tokens": keep}

    def close(self) -> None:
        self.lib.llama_batch_free(self.batch)
        self.lib.llama_free(self.ctx)
        self.lib.llama_model_free(self.model)


def memory_probe(ggufs: list[str], prompts: list[list[int]], max_new_tokens: int, threads: int = 2) -> dict:
    """One process holding the same models the graph serves (the target and its level-1 drafter, each in
    its own llama.cpp context, as llama_ros loads a speculative draft model), the target decoding the
    prompts greedily: its RSS after the answers and its peak (MB = 2^20 bytes)."""
    import resource

    import psutil

    peers = [LlamaCpp(g, threads=threads) for g in ggufs]
    for prompt in prompts:
        peers[0].greedy(prompt, max_new_tokens, ignore_eos=False)
    return {"ggufs": list(ggufs), "rss_mb": psutil.Process().memory_info().rss / 2**20,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(memory_probe(**json.loads(sys.argv[1]))))
