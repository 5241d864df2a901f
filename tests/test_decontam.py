"""Decontamination: planted copies of evaluation questions are caught, unrelated rows are not."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lmmixup.errors import LmmixupError
from lmmixup.stages.decontaminate import (
    decontaminate,
    find_contaminated,
    ngram_index,
    read_eval_texts,
    words,
)

QUESTION = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
    "in May. How many clips did Natalia sell altogether in April and May?"
)
ANSWER = "Natalia sold 48/2 = 24 clips in May. Natalia sold 48+24 = 72 clips altogether. #### 72"
OTHER_QUESTION = (
    "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
    "How much did she earn?"
)
SHORT_QUESTION = "Who painted the Mona Lisa portrait?"  # 6 words: matched whole
TINY_QUESTION = "Why?"  # under min_words: skipped

EVAL_SETS = {
    "gsm8k": [QUESTION, ANSWER, OTHER_QUESTION],
    "trivia": [SHORT_QUESTION, TINY_QUESTION],
}


def row(row_id: str, prompt: str, completion: str = "Sure, here it is.") -> dict:
    return {"id": row_id, "prompt": prompt, "completion": completion, "source": "test"}


UNRELATED = [
    row("u1", "Write a haiku about autumn leaves falling on a quiet pond."),
    # shares many words with QUESTION, but no 13 consecutive ones
    row("u2", "Natalia sold clips to friends in April. How many friends did she have in May?"),
    row("u3", "The Mona Lisa hangs in the Louvre.", "Leonardo painted it; who painted the rest?"),
]


def test_words_ignore_case_punctuation_and_spacing():
    assert words("Hello,   WORLD! It's 4.5\u2014ok_yes") == [
        "hello",
        "world",
        "it",
        "s",
        "4",
        "5",
        "ok",
        "yes",
    ]


def test_exact_copy_changed_casing_and_embedded_copies_are_caught():
    shouted = QUESTION.upper().replace(",", "").replace("?", " ?!")
    rows = [
        row("exact", QUESTION, ANSWER),
        row("shouted", shouted),
        row("embedded", f"Please help me with homework.\n\nProblem 3: {QUESTION} Thanks a lot!"),
        row("in-completion", "Give me a word problem.", f"Here is one -- {QUESTION.lower()}"),
        *UNRELATED,
    ]
    report = find_contaminated(rows, EVAL_SETS)
    flagged = {rows[position]["id"] for position in report.matches}
    assert flagged == {"exact", "shouted", "embedded", "in-completion"}
    matched = report.matches[2]["gsm8k"]
    assert len(matched.split()) == 13 and matched in " ".join(words(QUESTION))


def test_short_question_matches_whole_and_word_aligned():
    rows = [
        row("short", "Quiz time: WHO painted the Mona-Lisa portrait??"),
        row("partial", "Who painted the Mona Lisa?"),  # 5 of the 6 words only
        row("glued", "Who painted the Mona Lisa portraits?"),  # "portraits" is another word
    ]
    report = find_contaminated(rows, EVAL_SETS)
    assert list(report.matches) == [0]
    assert report.matches[0] == {"trivia": "who painted the mona lisa portrait"}
    assert report.tasks["trivia"].too_short == 1  # "Why?" cannot be checked


def test_per_task_counts_and_example_ids():
    rows = [
        row("a", QUESTION),
        row("b", OTHER_QUESTION),
        row("c", SHORT_QUESTION),
        row("both", f"{SHORT_QUESTION} {OTHER_QUESTION}"),
        *UNRELATED,
        {"prompt": f"no id: {QUESTION}", "completion": "x"},
    ]
    report = find_contaminated(rows, EVAL_SETS).to_dict()
    assert report["rows"] == 8 and report["contaminated_rows"] == 5
    gsm8k, trivia = report["tasks"]["gsm8k"], report["tasks"]["trivia"]
    assert gsm8k["contaminated_rows"] == 4 and gsm8k["example_ids"] == ["a", "b", "both", 7]
    assert trivia["contaminated_rows"] == 2 and trivia["example_ids"] == ["c", "both"]
    assert gsm8k["eval_texts"] == 3 and trivia["eval_texts"] == 2


def test_split_keeps_unrelated_rows_and_explains_dropped_ones():
    rows = [row("copy", QUESTION), *UNRELATED, row("both", f"{OTHER_QUESTION} / {SHORT_QUESTION}")]
    kept, dropped, report = decontaminate(rows, EVAL_SETS)
    assert kept == UNRELATED  # untouched, in order
    assert [d["id"] for d in dropped] == ["copy", "both"]
    assert all(d["reason"] == "contaminated" for d in dropped)
    assert dropped[0]["tasks"] == ["gsm8k"] and dropped[1]["tasks"] == ["gsm8k", "trivia"]
    assert dropped[0]["ngram"] == " ".join(words(QUESTION)[:13])
    assert dropped[0]["prompt"] == QUESTION  # the row itself is kept in full
    assert "2 of 5 rows" in report.lines()[0]


def test_index_holds_hashes_of_every_ngram():
    index = ngram_index(["one two three four five", "a b"], n=3, min_words=2)
    assert index.lengths == {3, 2} and index.texts == 2 and index.too_short == 0
    assert len(index.hashes) == 3 + 1
    assert hash(("two", "three", "four")) in index.hashes


def test_smaller_n_catches_shorter_overlaps():
    rows = [row("r", "The portrait by Leonardo: who painted the Mona Lisa, really?")]
    assert not find_contaminated(rows, EVAL_SETS).matches
    assert find_contaminated(rows, EVAL_SETS, n=5).matches == {
        0: {"trivia": "who painted the mona lisa"}
    }


def test_read_eval_texts_takes_every_text_field_and_names_bad_lines(tmp_path):
    path = tmp_path / "eval.jsonl"
    lines = [{"question": "q1", "answer": "a1", "id": 3}, {"text": "t2", "answer": 5}]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    assert read_eval_texts(path) == ["q1", "a1", "t2"]
    path.write_text(json.dumps({"question": "q"}) + "\n{broken\n")
    with pytest.raises(LmmixupError, match=r"eval.jsonl:2: invalid JSON"):
        read_eval_texts(path)
    path.write_text(json.dumps({"label": 1}) + "\n")
    with pytest.raises(LmmixupError, match=r"eval.jsonl:1: no text field"):
        read_eval_texts(path)


def test_decontaminate_command_writes_clean_and_rejects(tmp_path):
    train = tmp_path / "train.jsonl"
    rows = [row("copy", f"Solve: {QUESTION}"), *UNRELATED]
    train.write_text(
        "\n".join(json.dumps(r) for r in rows) + "\n" + '{"prompt": "no completion"}\n'
    )
    eval_file = tmp_path / "gsm8k.jsonl"
    eval_file.write_text(json.dumps({"question": QUESTION, "answer": ANSWER}) + "\n")
    out = tmp_path / "clean.jsonl"
    command = [sys.executable, "-m", "lmmixup.cli", "-q", "decontaminate", str(train)]
    done = subprocess.run(
        [*command, "--against", f"gsm8k={eval_file}", "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "gsm8k: 1 rows" in done.stdout and "e.g. copy" in done.stdout
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["u1", "u2", "u3"]
    rejects = [
        json.loads(line) for line in (tmp_path / "clean.rejects.jsonl").read_text().splitlines()
    ]
    assert rejects[0]["line"] == 5 and "completion" in rejects[0]["reason"]
    assert rejects[1]["id"] == "copy" and rejects[1]["reason"] == "contaminated"
    bad = subprocess.run(
        [*command, "--against", str(eval_file), "-o", str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode == 2 and "expected NAME=FILE.jsonl" in bad.stderr
