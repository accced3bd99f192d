"""Incremental detokenization for streaming: text deltas that never split a UTF-8 character
and never show the beginning of a stop string that may still complete."""
from __future__ import annotations

_REPLACEMENT = "\ufffd"


class TextStream:
    """Feed token ids block by block; get the new text and whether a stop string completed.

    Decodes the whole output each time (byte-level BPE and sentencepiece only render correctly
    in context; a few hundred tokens decode in microseconds) and holds back a trailing
    replacement character (an incomplete UTF-8 sequence) and any suffix that could be the
    start of a stop string.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...] | list[str] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.emitted = ""  # text already handed out
        self.text = ""  # decoded output so far, cut at a completed stop string
        self.stopped = False

    def _decode(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def push(self, ids: list[int]) -> tuple[str, int | None]:
        """Append ids; return (text delta, n) where n is set when a stop string completed
        inside this block: only the first n of these ids belong to the output."""
        stop_at = None
        for j, tok in enumerate(ids):
            self.ids.append(tok)
            if self.stop and self._stop_index(self._decode()) is not None:
                stop_at = j + 1
                break
        full = self._decode()
        if stop_at is not None:
            self.stopped = True
            self.text = full[: self._stop_index(full)]
            return self._emit(self.text), stop_at
        self.text = full
        safe = full[:-1] if full.endswith(_REPLACEMENT) else full
        return self._emit(safe[: len(safe) - self._held_back(safe)]), None

    def flush(self) -> str:
        """Everything not yet emitted (end of generation)."""
        return self._emit(self.text)

    def _stop_index(self, text: str) -> int | None:
        hits = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return min(hits) if hits else None

    def _held_back(self, text: str) -> int:
        # the longest suffix of text that is a proper prefix of some stop string
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best

    def _emit(self, upto: str) -> str:
        # emitted text is final; if the decoder ever revises earlier text, only the part
        # beyond what was already sent goes out
        if len(upto) <= len(self.emitted):
            return ""
        delta = upto[len(self.emitted):]
        self.emitted += delta
        return delta
