"""Final-number extraction for GSM8K-style answers, compared exactly as fractions.

The model's text may say "$1,250.50", "-3", "3/4", "2 1/2 cups", "50%" or "18 dollars", and
may mention several numbers: an explicit marker ("#### n", "\\boxed{n}", "the answer is n")
wins, else the last number in the text.
"""
from __future__ import annotations

import re
from fractions import Fraction

_CURRENCY = "$€£¥"
# a sign counts only when glued to the number: "20 - 5" is a subtraction, "-5" / "−$5" negative
_NUMBER = re.compile(
    r"(?P<sign>(?<![\w)\]])[-−])?"
    rf"[{_CURRENCY}]?\s?"
    r"(?:(?P<whole>\d+)\s+(?=\d+/\d))?"  # mixed number "2 1/2"
    r"(?P<int>\d{1,3}(?:,\d{3})+|\d+)?(?P<frac>\.\d+)?"
    r"(?:/(?P<den>\d+))?"
)
_MARKERS = [
    re.compile(r"####\s*"),
    re.compile(r"\\boxed\{\s*"),
    re.compile(r"\b(?:final\s+)?answers?\b\s*(?:\*\*)?\s*(?:is|was|would be|will be|=|:)\s*(?:\*\*)?\s*"
               r"(?:(?:approximately|about|exactly|roughly|equal to|a total of|now)\s+)*", re.IGNORECASE),
]
_GOLD = re.compile(r"####\s*(.+?)\s*$", re.MULTILINE)
_MARKER_REACH = 40  # characters after a marker searched for its number


def _value(m: re.Match) -> Fraction | None:
    if m.group("int") is None and m.group("frac") is None:
        return None
    digits = (m.group("int") or "0").replace(",", "") + (m.group("frac") or "")
    value = Fraction(digits)
    if m.group("den") is not None:
        den = int(m.group("den"))
        if den == 0:
            return None
        value /= den
    if m.group("whole") is not None:
        value += int(m.group("whole"))
    return -value if m.group("sign") else value


def numbers(text: str) -> list[Fraction]:
    """Every number in reading order."""
    out = []
    for m in _NUMBER.finditer(text):
        v = _value(m)
        if v is not None:
            out.append(v)
    return out


def parse_number(text: str) -> Fraction | None:
    """The first number in a short string ("1,234", "-$5", "3/4", "2.50"), else None."""
    found = numbers(text)
    return found[0] if found else None


def extract_final(text: str) -> Fraction | None:
    """The model's final numeric answer (see the module doc), or None when it gave no number."""
    for marker in _MARKERS:
        hits = [m.end() for m in marker.finditer(text)]
        for end in reversed(hits):  # a later statement of the answer replaces an earlier one
            window = text[end:end + _MARKER_REACH].split("\n", 1)[0]
            found = numbers(window)
            if found:
                return found[0]
    found = numbers(text)
    return found[-1] if found else None


def gold_answer(answer_field: str) -> Fraction:
    """The number on a GSM8K answer's "#### <n>" line; ValueError when it has none."""
    m = None
    for m in _GOLD.finditer(answer_field):
        pass
    value = parse_number(m.group(1)) if m else None
    if value is None:
        raise ValueError(f"no '#### <number>' line in answer: {answer_field[-80:]!r}")
    return value


def format_number(value: Fraction | None) -> str | None:
    """JSON-friendly text: "72", "0.25", or "1/3" when no short decimal is exact."""
    if value is None:
        return None
    if value.denominator == 1:
        return str(value.numerator)
    dec = value.numerator / value.denominator
    return repr(dec) if Fraction(repr(dec)) == value else f"{value.numerator}/{value.denominator}"


def is_correct(prediction_text: str, gold: Fraction | str) -> bool:
    gold_value = gold if isinstance(gold, Fraction) else parse_number(str(gold))
    got = extract_final(prediction_text)
    return got is not None and gold_value is not None and got == gold_value
