"""Final-number extraction and gold parsing on strings a small model actually writes."""
from fractions import Fraction

import pytest

from hola_ros.core.evaluation.answers import extract_final, format_number, gold_answer, is_correct, numbers


@pytest.mark.parametrize("text, expected", [
    ("She pays $1,250.50 in total.", "1250.5"),
    ("1,000,000 robots", "1000000"),
    ("The temperature dropped to -7 degrees.", "-7"),
    ("It costs −$12 after the refund.", "-12"),
    ("20 - 5 = 15", "15"),  # a subtraction, not a negative five
    ("He walks 3 km, then 4.5 km, so 7.5 km in all.", "7.5"),
    ("So he uses 3/4 of a cup.", "0.75"),
    ("The recipe needs 2 1/2 cups.", "2.5"),
    ("That is 1/3 of the pie.", "1/3"),
    ("A 50% discount", "50"),
    ("The robot carries 12kg.", "12"),
    ("The answer is 18. She earns $18 each day, working 3 days.", "18"),
    ("**Answer:** 42 apples, after 6 days", "42"),
    ("Final answer: 1,024", "1024"),
    ("so the total is \\boxed{64} and not 65", "64"),
    ("#### 72\nbonus text 9", "72"),
    ("First 12, then 30, finally 45.", "45"),
    ("Total = 0.25", "0.25"),
    ("No numbers here.", None),
])
def test_extract_final(text, expected):
    assert format_number(extract_final(text)) == expected


def test_sentence_final_period_is_not_a_decimal_point():
    assert numbers("He has 5. Then 6.") == [Fraction(5), Fraction(6)]


def test_gold_answer_and_matching():
    assert gold_answer("48/2 = 24 clips\n#### 1,072") == 1072
    assert gold_answer("x\n#### -3.5") == Fraction(-7, 2)
    with pytest.raises(ValueError):
        gold_answer("no marker 12")
    assert is_correct("So she pays $1,072.00.", "1072")
    assert is_correct("the answer is 0.5 liters", Fraction(1, 2))
    assert not is_correct("the answer is 17", "18")
    assert not is_correct("I cannot tell", "18")
