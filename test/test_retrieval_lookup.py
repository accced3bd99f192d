"""retrieval.lookup: a question about a code is answered with the code's table row, a question that
a FAQ entry asks with its answer, and only then."""
from hola_ros.core.retrieval.adacomp import Passage
from hola_ros.core.retrieval.lookup import document_answer, faq_answer, keyed_rows, row_answer

DOCKS = Passage("# Charging docks\nThere are six charging docks, named CD-1 to CD-6.\n"
                "| Dock | Location | Notes |\n|---|---|---|\n"
                "| CD-1 | north wall | fast charger |\n"
                "| CD-5 | maintenance bay (Zone M), left bay | standard charger; used for battery conditioning |",
                "02-charging-docks.md", 0.6)
ERRORS = Passage("# Error codes\nThe code has the form E-nnn.\n"
                 "| Code | Meaning | What to do |\n|---|---|---|\n"
                 "| E-214 | docking failed three times | clean the dock contact plates. |\n"
                 "| E-402 | payload above the 600 kg limit | remove load |",
                 "04-error-codes.md", 0.5)

FAQ = Passage("# Frequently asked questions\n"
              "**Can I move a robot by hand?** Only when it is switched off: turn the yellow key to OFF and "
              "pull the brake release lever.\n"
              "**Which dock is fastest?** CD-1 and CD-2 on the north wall are the fast chargers.\n"
              "**Who may change the speed limits?** Only a supervisor, in the fleet manager; robots get it at the next shift.",
              "12-faq.md", 0.5)


def test_a_code_that_keys_one_row_is_answered_with_that_row_under_its_column_names():
    found = row_answer("Where is charging dock CD-5?", [ERRORS, DOCKS])
    assert found.text == ("CD-5 — Location: maintenance bay (Zone M), left bay. "
                          "Notes: standard charger; used for battery conditioning.")
    assert found.sources == ["02-charging-docks.md"]


def test_two_codes_from_two_tables_are_answered_in_the_question_order():
    found = row_answer("What do E-402 and CD-1 stand for?", [DOCKS, ERRORS])
    assert found is None  # 'stand' is in neither passage: the question asks more than the rows
    found = row_answer("What do the docks CD-1 and error E-214 mean?", [DOCKS, ERRORS])
    assert found.text.startswith("CD-1 — Location: north wall.") and "E-214 — Meaning: docking failed three times." in found.text
    assert found.sources == ["02-charging-docks.md", "04-error-codes.md"]


def test_the_model_answers_whatever_the_rows_cannot():
    assert row_answer("What is the speed limit near CD-5?", [DOCKS]) is None  # speed, limit: not in the rows' passage
    assert row_answer("What does error E-214 mean and how long does docking take?", [ERRORS]) is None  # a second question
    assert row_answer("Where is charging dock CD-6?", [DOCKS]) is None  # CD-6 keys no row (only prose)
    assert row_answer("Which dock is a fast charger?", [DOCKS]) is None  # no code
    twice = Passage(DOCKS.text.replace("| CD-1 | north wall", "| CD-5 | north wall"), "other.md", 0.4)
    assert row_answer("Where is charging dock CD-5?", [twice]) is None  # one code, two rows: ambiguous


def test_only_rows_whose_first_cell_is_a_single_code_are_keyed():
    table = Passage("| Area | Limit |\n|---|---|\n| Walkway crossings X1 and X2 | 0.5 m/s |\n| CD-5 area | 0.3 m/s |\n"
                    "| 1.5m/s | default |", "03-speed-limits.md", 0.5)
    assert keyed_rows([table]) == []
    assert [r.key for r in keyed_rows([DOCKS, ERRORS, DOCKS])] == ["cd-1", "cd-5", "e-214", "e-402"]  # each row once


def test_a_faq_entry_answers_the_question_it_asks_in_other_words():
    found = faq_answer("Who may change the speed limits of the robots?", [DOCKS, FAQ])
    assert found.text == "Only a supervisor, in the fleet manager; robots get it at the next shift."
    assert found.sources == ["12-faq.md"]
    assert found.kind == "faq_entry"
    # "charging" and "chargers" are one word (their stems differ), "fastest" is the entry's own
    assert faq_answer("Which charging docks are the fastest?", [FAQ]).text.startswith("CD-1 and CD-2")
    assert document_answer("Where is charging dock CD-5?", [DOCKS, FAQ]).kind == "table_row"  # a row first


def test_a_faq_entry_does_not_answer_a_question_it_does_not_ask():
    assert faq_answer("Who may change the speed limits in Zone C at night?", [FAQ]) is None  # zone, night: unanswered
    assert faq_answer("When may a supervisor change the speed limits?", [FAQ]) is None  # asks when, the entry who
    assert faq_answer("Which dock is fastest, and who may change the speed limits?", [FAQ]) is None  # two questions
    assert faq_answer("Where is the fastest dock?", [FAQ]) is None  # where, not which
    trimmed = Passage(FAQ.text, FAQ.source, FAQ.score, 40, trimmed=True)
    assert faq_answer("Can I move a robot by hand?", [trimmed]) is None  # a trimmed passage may lack a sentence
    both = Passage(FAQ.text.replace("Which dock is fastest?", "Which dock is fastest of all?"), "other.md", 0.4)
    assert faq_answer("Which dock is fastest?", [FAQ, both]) is None  # two entries ask it: ambiguous
    assert faq_answer("Can I move a robot by hand?", [FAQ]).text.startswith("Only when it is switched off")
