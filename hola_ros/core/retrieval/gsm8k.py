"""GSM8K-train as development data: deterministic folds, worked-example passages, answer matching.

Only the train split is available offline, so folds of it stand in for dev and test: fold
`i % folds == dev_fold` is held out, the other folds become the worked-example index.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

_CALC = re.compile(r"<<[^>]*>>")
_FINAL = re.compile(r"####\s*(.+)\s*$")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass
class Example:
    line: int
    question: str
    rationale: str  # worked solution without calculator annotations, ending "The answer is X."
    answer: str  # the final number


def load(path, folds: int = 5) -> list[Example]:
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            m = _FINAL.search(rec["answer"])
            if not m:
                raise ValueError(f"{path}:{n}: answer has no '#### <number>' line")
            final = m.group(1).strip().replace(",", "")
            body = _CALC.sub("", rec["answer"][:m.start()]).strip()
            out.append(Example(n, rec["question"].strip(), f"{body}\nThe answer is {final}.", final))
    return out


def split(examples: list[Example], dev_fold: int = 0, folds: int = 5) -> tuple[list[Example], list[Example]]:
    """(index part, held-out part) by position modulo `folds`."""
    held = [e for i, e in enumerate(examples) if i % folds == dev_fold]
    rest = [e for i, e in enumerate(examples) if i % folds != dev_fold]
    return rest, held


def write_worked_examples(examples: list[Example], path) -> Path:
    """JSONL with a `text` field (question + worked solution), ready for `ingest(field="text")`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for e in examples:
            f.write(json.dumps({"text": f"Question: {e.question}\nAnswer: {e.rationale}", "line": e.line}) + "\n")
    return path


def extract_answer(text: str) -> str | None:
    """The number after 'The answer is', else the last number in the text."""
    m = re.search(r"answer is[^\d-]*(-?\d[\d,]*(?:\.\d+)?)", text, flags=re.IGNORECASE)
    if m:
        return _normalise(m.group(1))
    nums = _NUMBER.findall(text)
    return _normalise(nums[-1]) if nums else None


def _normalise(num: str) -> str:
    num = num.replace(",", "").rstrip(".")
    try:
        value = float(num)
    except ValueError:
        return num
    return str(int(value)) if value == int(value) else str(value)


def exact_match(prediction: str, gold: str) -> bool:
    got = extract_answer(prediction)
    return got is not None and got == _normalise(gold)


def build_index(train_path, dev_fold: int = 0, folds: int = 5, embedder=None, index_type: str | None = None,
                progress: bool = False):
    """Index the worked examples of every fold but `dev_fold` (cached); returns (index_dir, held-out)."""
    from .chunking import ChunkingConfig
    from .ingest import cache_dir, ingest, sha256_file

    rest, held = split(load(train_path), dev_fold, folds)
    key = f"{sha256_file(Path(train_path))[:12]}-fold{dev_fold}of{folds}"
    work = cache_dir() / f"gsm8k-{key}"
    jsonl = work / "worked_examples.jsonl"
    if not jsonl.is_file():
        write_worked_examples(rest, jsonl)
    # one passage per worked example: 240 words covers all but ~2% of them
    ingest(work / "index", [jsonl], embedder=embedder, chunking=ChunkingConfig(size=240, overlap=40),
           index_type=index_type, progress=progress)
    return work / "index", held
