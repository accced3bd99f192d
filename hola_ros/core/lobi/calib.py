"""Calibration text: GSM8K-style JSONL (question/answer or text fields) or plain text."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np


def default_calib() -> Path:
    from hola_ros.package_data import gsm8k_train
    return gsm8k_train()


def load_texts(path: str | Path, limit: int) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"calibration file {path} not found")
    texts: list[str] = []
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            for line in f:
                if len(texts) >= limit:
                    break
                if not line.strip():
                    continue
                row = json.loads(line)
                text = row.get("text") or "\n".join(str(row[k]) for k in ("question", "answer") if k in row)
                if text:
                    texts.append(text)
    else:
        texts = [p.strip() for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()][:limit]
    if not texts:
        raise ValueError(f"no calibration text in {path}")
    return texts


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def token_rows(texts: list[str], tokenizer, seq_len: int, sep: int | None) -> np.ndarray:
    """Concatenate the texts' tokens (separated by `sep`) and cut them into [n, seq_len] rows."""
    stream: list[int] = []
    for t in texts:
        stream.extend(tokenizer.encode(t, add_special_tokens=False))
        if sep is not None:
            stream.append(sep)
    n = len(stream) // seq_len
    if n == 0:
        raise ValueError(f"calibration text has {len(stream)} tokens, fewer than one {seq_len}-token sequence")
    return np.asarray(stream[: n * seq_len], np.int64).reshape(n, seq_len)


def token_sequences(texts: list[str], tokenizer, seq_len: int, sep: int | None):
    """token_rows as a torch tensor."""
    import torch

    return torch.from_numpy(token_rows(texts, tokenizer, seq_len, sep))
