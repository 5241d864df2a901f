"""The model-free verifiers of a distilled pair (lmmixup.method.verify, lmmixup.method.answers)."""

import pytest

from lmmixup.config import DistillConfig
from lmmixup.method.answers import FinalAnswer, final_answer, normalise_number, numbers_in
from lmmixup.method.verify import (
    checked_equations,
    entities_in,
    near_copy_score,
    placeholders_in,
    verify_pair,
)

CFG = DistillConfig()


def member(prompt: str, completion: str) -> dict:
    return {"prompt": prompt, "completion": completion}


# ---------------------------------------------------------------------------- final answers

OPTIONS = "Q: How much?\nA) 98\nB) 294\nC) 96\nD) 980"


@pytest.mark.parametrize(
    ("prompt", "completion", "expected"),
    [
        ("q", "10 - 1 = 9\n#### 9", FinalAnswer("number", "9")),
        ("q", "#### 1\nthen\n#### $1,200.00", FinalAnswer("number", "1200")),
        ("q", "so \\boxed{3.0}", FinalAnswer("number", "3")),
        ("q", "The answer is $30.", FinalAnswer("number", "30")),
        ("q", "The final answer is: 16 feet", FinalAnswer("number", "16")),
        (OPTIONS, "A", FinalAnswer("number", "98")),
        (OPTIONS, "Answer: (C) because", FinalAnswer("number", "96")),
        ("Q: Pick\nA) red\nB) blue\nC) green\nD) pink", "B", FinalAnswer("text", "blue")),
        ("Statement: the sky is green", "False, it is blue", FinalAnswer("verdict", "false")),
        ("x", "Adding up... So the statement is True.", FinalAnswer("verdict", "true")),
        ("x", "a cat is nice", None),
        ("x", "The answer is a bit complicated.", None),
        (OPTIONS, "a lot of text", None),
    ],
)
def test_final_answer(prompt, completion, expected):
    assert final_answer(prompt, completion) == expected


def test_numbers_are_normalised():
    assert normalise_number("$1,200.50") == "1200.5"
    assert normalise_number("3.00") == "3"
    assert normalise_number("abc") is None
    assert numbers_in("$1,200 and 3.0 or 10-20 moves, 50% and 7.") == [
        "1200",
        "3",
        "10",
        "20",
        "50",
        "7",
    ]


# ---------------------------------------------------------------------------- the parts


def test_derived_numbers_are_correct_arithmetic_only():
    text = (
        "there were 10 pairs of socks * 2 socks/pair = 20 socks. 20 + 15 = 35 socks. "
        "<<6*2=12>> and 2 * 7 / 2 = 16 wrong; 50 socks – 35 socks = 15"
    )
    derived, wrong = checked_equations(text)
    assert derived == {"20", "35", "12", "15"}
    assert wrong == ["2*7/2=16"]


def test_only_plain_wrong_equations_count_as_wrong_arithmetic():
    right = "$30*7 = $210, <<6*2=12>>, 10 / 3 = 3.33, 100 x 1/4 = 25, 9 hours * 2/3 = 6 hours"
    unreadable = ".20*50 = 10 people, 2x + 10 = 100, (200+10)/3 = 70"
    assert checked_equations(f"{right}; {unreadable}")[1] == []
    assert checked_equations("So 5 + 5 = 11. Then 3 × 4 = 12.")[1] == ["5+5=11"]


def test_a_wrong_equation_is_flagged_unless_a_member_wrote_it():
    member = {"prompt": "A tank holds 17 feet, then 7 more.", "completion": "#### 16"}
    verdict = verify_pair("Tank depth?", "2 * 7 / 2 = 16 feet.\n#### 16", [member], CFG)
    assert "wrong_arithmetic" in verdict.flags
    assert verdict.as_dict()["wrong_arithmetic"] == ["2*7/2=16"]
    quoting = {"prompt": "Why would you say 9+10 = 21?", "completion": "It is a joke."}
    verdict = verify_pair("Why would you say 9+10 = 21?", "It is a joke.", [quoting], CFG)
    assert "wrong_arithmetic" not in verdict.flags


def test_placeholders():
    text = (
        "Visit [insert link] or [...] and {name}, <insert your email>, but not "
        "[a link](http://x), arr[i], \\frac{a}{b}, [ ] or [x]."
    )
    assert placeholders_in(text) == ["[insert link]", "[...]", "{name}", "<insert your email>"]


def test_a_pair_that_writes_out_a_slot_of_the_layout_is_a_placeholder():
    quantum = member("Explain quantum computing simply.", "It computes with qubits.")
    result = verify_pair("<the question>", "It computes with qubits.", [quantum], CFG)
    assert result.flags[:1] == ("placeholder",) and result.placeholders == ("<the question>",)
    assert placeholders_in("pick <option> a") == ["<option>"]
    assert placeholders_in("if a <b and c> d") == []


def test_entities_are_capitalised_words_mid_sentence():
    assert entities_in("The feature by Chime that I use. Then NASA said, Paris is big") == [
        "Chime",
        "NASA",
        "Paris",
    ]


def test_near_copy_score_and_tail():
    base = "the quick brown fox jumps over the lazy dog every single morning"
    share, tail = near_copy_score(base + " then sells [your_spot_limit]", [base, "other"])
    assert share > 0.7 and tail[-3:] == ["[", "your_spot_limit", "]"]
    assert near_copy_score("nothing alike here at all", [base]) == (
        0.0,
        ["nothing", "alike", "here", "at", "all"],
    )


# ---------------------------------------------------------------------------- verify_pair

THEO = member(
    "Theo has $10 and buys a pen for $7. How much does he have left?",
    "Theo has $10 and spends $7, so 10 - 7 = 3 dollars are left.\n#### 3",
)


def test_a_correct_merge_passes_and_carries_its_scores():
    other = member(
        "Theo had 10 dollars, bought a pen for 7 dollars. Money left?",
        "He has 10 - 7 = 3 left. The answer is 3.",
    )
    result = verify_pair(
        "Theo has $10 and buys a pen for $7. How much money does he have left?",
        "Theo spends $7 of his $10, so 10 - 7 = 3 dollars are left.\n#### 3",
        [THEO, other],
        CFG,
    )
    assert result.flags == ()
    checks = result.as_dict()
    assert checks["answer"] == "3" and checks["answer_agrees"] is True
    assert checks["member_answers"] == ["3"]
    assert checks["coverage"] >= CFG.min_coverage
    assert set(checks) == {
        "answer",
        "member_answers",
        "answer_agrees",
        "wrong_arithmetic",
        "unsupported_numbers",
        "placeholders",
        "unsupported_entities",
        "term_support",
        "near_copy",
        "coverage",
        "min_member_coverage",
        "spliced",
        "leaked",
    }
    assert checks["spliced"] is None and checks["leaked"] is None


def test_issue_bad_merge_answer_10_where_the_member_says_3():
    result = verify_pair(
        "Theo has $10 and buys a pen for $7. How much does he have left?",
        "Theo received $10 - $1 = $10 dollars.\n#### 10",
        [THEO],
        CFG,
    )
    assert result.answer_agrees is False
    assert "answer_mismatch" in result.flags


def test_issue_bad_merge_premises_gone_answers_60_where_the_member_says_30():
    pages = member(
        "Sarah reads 5 pages a day for 6 days. How many pages does she read?",
        "She reads 5 * 6 = 30 pages.\n#### 30",
    )
    result = verify_pair(
        "How many pages does she read?", "She reads 60 pages.\n#### 60", [pages], CFG
    )
    assert "answer_mismatch" in result.flags
    assert "unsupported_number" in result.flags and result.unsupported_numbers == ("60",)


def test_issue_bad_merge_near_copy_ending_in_a_placeholder():
    spot = member(
        "what is my spotme limit",
        'The information provided does not specify your "SpotMe" limit. SpotMe is a feature '
        "that allows eligible members to overdraft their account up to $20.00 without any "
        "overdraft fees. To see your current limit, log in to the app.",
    )
    result = verify_pair(
        "What is my spotme limit",
        'The information provided does not specify your "SpotMe" limit. SpotMe is a feature '
        "that allows eligible members to overdraft their account up to $20.00 without any "
        "overdraft fees. To see your current limit, [your_spot_limit]",
        [spot],
        CFG,
    )
    assert result.flags[:1] == ("near_copy",)
    assert "placeholder" in result.flags and result.placeholders == ("[your_spot_limit]",)


QUANTUM = "Explain quantum computing in simple terms"
QUANTUM_ANSWER = (
    "Quantum computing is a type of computing that uses quantum mechanics to process and "
    "store data. It uses quantum bits (qubits) instead of classical bits and can perform "
    "certain tasks much faster than classical computers. In simple terms, quantum computing "
    "takes advantage of the strange and unique properties of matter and energy at the "
    "quantum level to solve problems that would be too complex for classical computers."
)


def test_near_copy_with_a_reworded_question_and_an_invented_ending():
    """A sampled demo pair (best of 8, 2026-11-30): a member's answer with its last clause
    replaced; the reworded question must not hide the copy."""
    other = member(
        QUANTUM, "Quantum computing is a type of computing where information is processed."
    )
    copied = QUANTUM_ANSWER.replace(
        "problems that would be too complex for classical computers.",
        "complex problems, just like classical computing. Question is true and answer is True.",
    )
    result = verify_pair(
        "What is quantum computing in simple terms?",
        copied,
        [member(QUANTUM, QUANTUM_ANSWER), other],
        CFG,
    )
    assert result.flags[:1] == ("near_copy",)
    assert 0.75 <= result.near_copy < 0.8


def test_a_reworded_copy_that_keeps_the_ending_is_no_near_copy():
    result = verify_pair(
        "What is quantum computing?", QUANTUM_ANSWER, [member(QUANTUM, QUANTUM_ANSWER)], CFG
    )
    assert "near_copy" not in result.flags and result.near_copy == 1.0


def test_no_final_answer_when_a_member_states_one():
    result = verify_pair(
        "Theo has $10 and buys a pen for $7.", "He has some money left.", [THEO], CFG
    )
    assert "no_final_answer" in result.flags and result.answer is None


def test_members_without_final_answers_do_not_ask_for_one():
    chat = member("Tell me about dogs.", "Dogs are loyal animals that love walks and play.")
    result = verify_pair(
        "Tell me about dogs.", "Dogs are loyal animals that love play.", [chat], CFG
    )
    assert result.answer_agrees is None and "no_final_answer" not in result.flags


def test_unsupported_numbers_have_a_tolerance_but_the_answer_has_none():
    base = member("Ann has 25 apples and 40 pears.", "She has 25 + 40 = 65 fruits. #### 65")
    cfg = DistillConfig(max_unsupported_numbers=1)
    one = verify_pair(
        "Ann has 25 apples and 40 pears.",
        "She has 25 + 40 = 65 fruits, 99 boxes. #### 65",
        [base],
        cfg,
    )
    assert one.unsupported_numbers == ("99",) and "unsupported_number" not in one.flags
    two = verify_pair(
        "Ann has 25 apples and 40 pears.",
        "She has 25 + 40 = 65 fruits, 99 boxes, 77 bags. #### 65",
        [base],
        cfg,
    )
    assert "unsupported_number" in two.flags
    small = verify_pair(
        "Ann has 25 apples and 40 pears.",
        "Step 1: 25 + 40 = 65. Step 2: done. #### 65",
        [base],
        cfg,
    )
    assert small.flags == ()


def test_unsupported_entities_above_the_tolerance():
    dogs = member("Tell me about dogs.", "Dogs are loyal animals that love walks and play.")
    text = "Dogs are loyal animals that love walks, says Oxford, near Berlin and Rome."
    assert "unsupported_entity" in verify_pair("Tell me about dogs.", text, [dogs], CFG).flags
    assert (
        "unsupported_entity"
        not in verify_pair(
            "Tell me about dogs.", text, [dogs], DistillConfig(max_unsupported_entities=3)
        ).flags
    )


def test_low_coverage_when_the_pair_drops_the_members_content():
    pizza = member("How much do 3 pizzas at $12 cost?", "3 * 12 = 36 dollars. #### 36")
    pen = member("Theo buys a pen for $7 with $10.", "10 - 7 = 3. #### 3")
    result = verify_pair("1. The answer is 36.", "2. The answer is 36.", [pizza, pen], CFG)
    assert result.answer_agrees is True
    assert result.coverage < CFG.min_coverage and "low_coverage" in result.flags


# ---------------------------------------------------------------------------- spliced, leaked

PENS = member(
    "Theo buys 3 pens at $2 each. How much does he spend?",
    "He spends 3 * 2 = $6 on pens.\n#### 6",
)
PIZZA = member(
    "A pizza has 8 slices and Ann eats 3 of them. How many slices are left?",
    "There are 8 - 3 = 5 slices left.\n#### 5",
)


def test_a_question_joined_to_another_members_answer_is_spliced():
    result = verify_pair(PENS["prompt"], PIZZA["completion"], [PENS, PIZZA], CFG)
    assert result.spliced == (0, 1)
    assert "spliced" in result.flags
    assert result.as_dict()["spliced"] == [0, 1]


def test_a_clipped_members_question_joined_to_another_members_answer_is_spliced():
    # The distiller saw only the first part of a long question (max_member_chars) and copied
    # that part: compared with the whole member it is under 0.8 alike, as shown it is a copy.
    letter = "Dear landlord, I am writing about the broken heating in my flat. " * 12
    long_question = member(letter + "Can you fix it this week?", "I will send someone.")
    title = member("Suggest a title for an article about city gardens.", "Green Roofs Rising")
    cfg = DistillConfig(max_member_chars=400)
    clipped_prompt = letter[:300]
    result = verify_pair(clipped_prompt, title["completion"], [long_question, title], cfg)
    assert result.spliced == (0, 1)
    assert "spliced" in result.flags


def test_redundant_members_asking_the_same_question_are_not_spliced():
    other = member(PENS["prompt"], "Each pen costs $2, so 3 pens cost $6.\n#### 6")
    result = verify_pair(PENS["prompt"], other["completion"], [PENS, other], CFG)
    assert result.spliced is None
    assert "spliced" not in result.flags


def test_an_answer_from_a_member_whose_question_was_cut_short_is_not_spliced():
    # MIXTURE members are damaged copies: one asks only the start of the question.
    short = member("Theo buys 3 pens", "Each pen costs $2, so 3 pens cost $6.\n#### 6")
    result = verify_pair(PENS["prompt"], short["completion"], [PENS, short], CFG)
    assert result.spliced is None


def test_a_copy_of_one_member_is_not_spliced_when_another_gives_the_same_answer():
    greeting = member("hi", "Hello! How can I help you today?")
    other = member("Tell me a joke about cats.", "Hello! How can I help you today?")
    result = verify_pair(greeting["prompt"], greeting["completion"], [other, greeting], CFG)
    assert result.spliced is None


def test_a_merge_of_its_own_words_is_not_spliced():
    result = verify_pair(
        "Theo buys 3 pens at $2 each; what does he pay?",
        "Three pens at $2 cost 3 * 2 = $6.\n#### 6",
        [PENS, PIZZA],
        CFG,
    )
    assert "spliced" not in result.flags


def test_the_think_sentence_of_the_training_targets_leaking_into_the_pair_is_caught():
    completion = (
        "He spends 3 * 2 = $6 on pens. Keep what they agree on, fix the errors and restore "
        "what some of them leave out.\n#### 6"
    )
    result = verify_pair(PENS["prompt"], completion, [PENS], CFG)
    assert "leaked_instruction" in result.flags
    assert "fix the errors and restore" in result.leaked


def test_instruction_words_a_member_has_too_are_not_a_leak():
    text = "Keep all the essential information of the group and drop repetition."
    quoting = member("What does the merge prompt say?", text)
    result = verify_pair(quoting["prompt"], text, [quoting], CFG)
    assert result.leaked is None
    assert "leaked_instruction" not in result.flags


def test_a_short_shared_phrase_is_not_a_leak():
    result = verify_pair(
        PENS["prompt"], "He spends $6, which is clear and correct.\n#### 6", [PENS], CFG
    )
    assert result.leaked is None


def test_a_completion_ending_on_a_colon_is_unfinished():
    pricing = member("Make a pricing list that costs $1200.", "Here is a list:\n* Audio: $400")
    result = verify_pair(
        pricing["prompt"], "Sure, here is an example pricing list:", [pricing], CFG
    )
    assert "unfinished" in result.flags


def test_a_completion_that_only_repeats_its_prompt_is_an_echo():
    hello = member("hi", "Hello! How can I assist you today?")
    echo = verify_pair("How can I assist you today?", "How can I assist you today?", [hello], CFG)
    assert echo.flags[:1] == ("echo",)
    assert "echo" not in verify_pair("hi", hello["completion"], [hello], CFG).flags


def test_a_pair_mostly_of_terms_no_member_has_is_unsupported_terms():
    kali = member(
        "How do I see disabled users in Kali?",
        "In Kali Linux, view disabled users with sudo cat /etc/shadow: a locked account "
        "shows an exclamation mark in its password field.",
    )
    invented = verify_pair(
        "How do I ninja a user in cron?",
        "In Kali Linux, ninja a user with sudo net admin, or netadd when needed; it reveals "
        "usernames, passwords and privilege levels.",
        [kali],
        CFG,
    )
    assert "unsupported_terms" in invented.flags and invented.term_support < 0.5
    kept = verify_pair(kali["prompt"], kali["completion"], [kali], CFG)
    assert "unsupported_terms" not in kept.flags and kept.term_support == 1.0


@pytest.mark.parametrize("ending", ["...", "\u2026"])
def test_a_completion_that_breaks_off_is_unfinished(ending):
    cut = member("How do I see disabled users?", "Run sudo cat /etc/shadow; locked ones are loc...")
    result = verify_pair(
        cut["prompt"], f"Run sudo cat /etc/shadow; locked are loc{ending}", [cut], CFG
    )
    assert "unfinished" in result.flags
    whole = verify_pair(
        cut["prompt"], "Run sudo cat /etc/shadow; locked ones show a !.", [cut], CFG
    )
    assert "unfinished" not in whole.flags


def test_min_member_coverage_is_the_least_kept_member():
    copied = verify_pair(PENS["prompt"], PENS["completion"], [PENS, PIZZA], CFG)
    assert copied.min_member_coverage < 0.5 < copied.coverage
    alone = verify_pair(PENS["prompt"], PENS["completion"], [PENS], CFG)
    assert alone.min_member_coverage == 1.0


def test_a_merge_that_leaves_a_member_out_is_dropped_member():
    result = verify_pair(
        PENS["prompt"], "Three pens at $2 each cost 3 * 2 = $6.\n#### 6", [PENS, PIZZA], CFG
    )
    assert "dropped_member" in result.flags
    both = verify_pair(
        "Theo buys 3 pens at $2 each, and Ann eats 3 of a pizza's 8 slices. What is left?",
        "Theo spends 3 * 2 = $6 on pens; 8 - 3 = 5 pizza slices are left.\n#### 6",
        [PENS, PIZZA],
        CFG,
    )
    assert "dropped_member" not in both.flags
