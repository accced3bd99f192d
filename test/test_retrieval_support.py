"""support.py: an answer's figures must stand in the passages beside what the question asks."""
from hola_ros.core.retrieval.adacomp import Passage
from hola_ros.core.retrieval.support import figures, unsupported_figures, unsupported_names

SPECS = Passage("# Features > Specifications\n| Feature | TurtleBot 4 Lite | TurtleBot 4 |\n|---|---|---|\n"
                "| Maximum payload | 9 kg | 9 kg |\n| Battery life | 2h 30m - 4h depending on load | 2h 30m - 4h |\n"
                "| Weight | 3270 g | 3945 g |", "features.md", 0.6)
BATTERY = Passage("# Battery care\nThe Tern T2 runs on a 48 V lithium iron phosphate battery. "
                  "A full charge gives about 9 hours of typical work.", "07-battery.md", 0.5)
TEMPERATURE = Passage("# Environment\nThe maximum operating temperature of the charger is 40 C.", "env.md", 0.5)


def test_figures_are_numbers_on_their_own_not_the_digits_of_names_or_codes():
    assert figures("Tern T2 shows E-311 on the A1M8: 12m, 28.8W, $1,000, 10.42.0.1, H.1.0, 2h 30m") == [
        "12", "28.8", "1000", "10.42.0.1", "2", "30"]


def test_a_figure_from_the_row_the_question_asks_about_is_supported():
    q = "What is the maximum payload of the TurtleBot 4?"
    assert unsupported_figures("The maximum payload is 9 kg.", q, [SPECS], ["maximum", "payload"]) == []
    # "weigh" finds the "Weight" row, as the retrieval itself does
    assert unsupported_figures("It weighs 3945 g.", "How much does the TurtleBot 4 weigh?", [SPECS], ["weigh"]) == []


def test_a_figure_copied_from_a_neighbouring_fact_is_not():
    q = "What is the maximum operating temperature of the TurtleBot 4?"
    specific = ["maximum", "oper", "temperatur"]
    # the battery-life row holds none of the three words; a passage that names all three (another device) exists
    assert unsupported_figures("The maximum operating temperature is 2h 30m.", q, [SPECS, TEMPERATURE],
                               specific) == ["2", "30"]
    assert unsupported_figures("The price is $1,000.", "What is the price of a TurtleBot 4?", [SPECS],
                               ["price"]) == ["1000"]


def test_the_best_unit_the_passages_have_supports_its_figure():
    """Where no unit holds half the question's specific terms, the unit that holds the most of them
    still states the figure ("Wait about 90 seconds for the boot" for "... take to boot after it is
    switched on?")."""
    boot = Passage("# Start of shift\n- Wait about 90 seconds for the boot.", "10-startup.md", 0.5)
    q = "How long does a Tern T2 take to boot after it is switched on?"
    assert unsupported_figures("About 90 seconds.", q, [boot], ["take", "boot", "switch"]) == []


def test_words_the_index_does_not_know_and_figures_the_question_holds_do_not_count():
    q = "What voltage does the robot's battery have, and how long does a full charge last in typical work?"
    answer = "The battery has 48 V. A full charge gives about 9 hours of typical work."
    specific = ["voltag", "full", "last", "typic", "work"]
    assert unsupported_figures(answer, q, [BATTERY], specific, unknown_terms=["voltag"]) == []
    assert unsupported_figures(answer, q, [BATTERY], specific) == ["48"]  # "voltage" counted: no unit holds it
    assert unsupported_figures("The TurtleBot 4 is 4.", "What is the TurtleBot 4?", [SPECS], ["maximum"]) == []
    assert unsupported_figures("No figure here.", "What is the price?", [SPECS], ["price"]) == []


NAVIGATOR = Passage("# TurtleBot 4 Navigator > GPTNode\nThe node runs on the Raspberry Pi® 4 with the OAK-D-Pro camera "
                    "of the Create® 3 base.", "turtlebot4/tutorials/turtlebot4_navigator.md", 0.5)


def test_names_no_passage_holds_are_the_models_own():
    q = "Which GPU model does the TurtleBot 4 have?"
    assert unsupported_names("The GPU model for the TurtleBot 4 is NVIDIA GeForce GTX 1080.", q, [NAVIGATOR]) == [
        "NVIDIA", "GeForce", "GTX"]
    assert unsupported_names("It has an Intel chip. Nothing else.", q, [NAVIGATOR]) == ["Intel"]  # inside a sentence


def test_names_are_read_in_letters_and_digits_and_sentence_starts_are_not_names():
    q = "Which camera does the TurtleBot 4 have?"
    # "OAK-D Pro" and "Create 3" are the passage's "OAK-D-Pro" and "Create® 3"; "It", "Yes" begin sentences
    assert unsupported_names("It has the OAK-D Pro on the Create 3. Yes, the Raspberry Pi 4 runs it. I think so.",
                             q, [NAVIGATOR]) == []
    assert unsupported_names("The TurtleBot 4 has a camera [turtlebot4/tutorials/turtlebot4_navigator.md].", q,
                             [NAVIGATOR]) == []  # the source note is not the answer's
