"""Stage 4: prompt, reply parsing, answer -> pair, faithfulness guard and the stage itself."""

import json

import numpy as np
import pytest
from fake_openai_server import FakeOpenAIServer, ok
from hypothesis import given, settings
from hypothesis import strategies as st

from lmmixup.backends.base import Generation
from lmmixup.backends.openai_chat import OpenAIChatModel
from lmmixup.config import DistillConfig
from lmmixup.errors import LmmixupError
from lmmixup.io.jsonl import read_records, write_records
from lmmixup.method.faithfulness import check_faithfulness, copy_overlap
from lmmixup.method.prompt import TRUNCATION_MARKER, build_messages, linearise
from lmmixup.method.reply import ParsedOutput, answer_to_pair, is_well_formed, parse_output
from lmmixup.runtime.executor import REJECT_KEY
from lmmixup.stages.distill import distill_clusters, load_members, make_distill_fn
from lmmixup.stages.distill_drafts import GENERATION_ERROR, UNCLOSED_ANSWER

CFG = DistillConfig()

# ---------------------------------------------------------------------------- parse_output


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "<think>plan</think>\n<answer>\nQ: x\nA: y\n</answer>",
            ParsedOutput("plan", "Q: x\nA: y"),
        ),
        ("<answer>Q: x A: y</answer>", ParsedOutput(None, "Q: x A: y")),
        (
            "<think>a</think><answer>kept</answer> junk <answer>no</answer>",
            ParsedOutput("a", "kept"),
        ),
        ("<answer>first</answer><answer>second</answer>", ParsedOutput(None, "first")),
        (
            "<think>use <answer> and </answer> tags</think><answer>real</answer>",
            ParsedOutput("use <answer> and </answer> tags", "real"),
        ),
        ("<think>unclosed <answer>ans</answer>", ParsedOutput(None, "ans")),
        ("<answer>   </answer>", ParsedOutput(None, "")),
    ],
)
def test_parse_output(text, expected):
    assert parse_output(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "no tags at all", "<think>only thinking</think>", "<think>t</think><answer>cut at max"],
)
def test_parse_output_without_a_closed_answer_is_none(text):
    assert parse_output(text) is None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "Q: ", "A: ", "x", "\n"])
        | st.text(max_size=8),
        max_size=12,
    ).map("".join)
)
def test_parse_output_never_raises(text):
    parsed = parse_output(text)
    assert parsed is None or "</answer>" not in parsed.answer


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("<think>t</think><answer>a</answer>", True),
        ("  <think>\nt\n</think>\n\n<answer>\na\n</answer>\n", True),
        ("<answer>a</answer>", False),
        ("Sure! <think>t</think><answer>a</answer>", False),
        ("<think>t</think><answer>a</answer> bye", False),
        ("<think>t</think><answer>a</answer><answer>b</answer>", False),
        ("<answer>a</answer><think>t</think>", False),
        ("<think>t<think>u</think><answer>a</answer>", False),
    ],
)
def test_is_well_formed(text, expected):
    assert is_well_formed(text) is expected


# ---------------------------------------------------------------------------- answer_to_pair


@pytest.mark.parametrize(
    ("answer", "task_type", "pair"),
    [
        ("Q: What is 2+2?\nA: 4.", "qa", ("What is 2+2?", "4.")),
        (
            "Q: Largest planet?\nA) Mars\nB) Jupiter\nC) Venus\nD) Earth\nAnswer: B) Jupiter",
            "mcq",
            ("Largest planet?\nA) Mars\nB) Jupiter\nC) Venus\nD) Earth", "B) Jupiter"),
        ),
        ("The Moon is a star.\nAnswer: False", "tfq", ("The Moon is a star.", "False")),
        ("C: Physics\nS: Light is fast.", "cs", ("Physics", "Light is fast.")),
        (
            "Bees make honey. They live in hives! Most are workers.",
            "paragraph",
            ("Continue this paragraph: Bees make honey.", "They live in hives! Most are workers."),
        ),
    ],
)
def test_answer_to_pair(answer, task_type, pair):
    assert answer_to_pair(answer, task_type) == pair


@pytest.mark.parametrize(
    ("answer", "task_type"),
    [
        ("A: 4\nQ: What?", "qa"),
        ("Q: Pick.\nA) x\nAnswer: A", "mcq"),
        ("Answer: True", "tfq"),
        ("S: s\nC: c", "cs"),
        ("One sentence only.", "paragraph"),
        ("", "paragraph"),
    ],
)
def test_answer_to_pair_without_the_parts_is_none(answer, task_type):
    assert answer_to_pair(answer, task_type) is None


# ---------------------------------------------------------------------------- the prompt


def test_linearise_format():
    members = [
        {"prompt": "What is 2+2?", "completion": "4"},
        {"prompt": " Name a colour. ", "completion": "Blue.\n"},
    ]
    assert linearise(members, 100) == "Q: What is 2+2?\nA: 4\n\nQ: Name a colour.\nA: Blue."


def test_linearise_cuts_long_members_with_a_marker():
    short_prompt = {"prompt": "Why?", "completion": "x" * 100}
    assert linearise([short_prompt], 50) == f"Q: Why?\nA: {'x' * 46}{TRUNCATION_MARKER}"
    both_long = {"prompt": "p" * 100, "completion": "c" * 100}
    expected = f"Q: {'p' * 25}{TRUNCATION_MARKER}\nA: {'c' * 25}{TRUNCATION_MARKER}"
    assert linearise([both_long], 50) == expected


def test_build_messages_carry_the_layout_and_the_members():
    members = [{"prompt": "p1", "completion": "c1"}, {"prompt": "p2", "completion": "c2"}]
    system, user = build_messages(members, "cs", CFG)
    assert (system["role"], user["role"]) == ("system", "user")
    assert "<think>" in system["content"] and "<answer>" in system["content"]
    assert "Q: p1\nA: c1\n\nQ: p2\nA: c2\n\n" in user["content"]
    assert user["content"].endswith("in this layout:\nC: <the category>\nS: <a statement about it>")
    assert "2 examples" in user["content"] and "a category and a statement" in user["content"]


# ---------------------------------------------------------------------------- faithfulness

MEMBERS = [
    "What is the capital of France?\nParis.",
    "How many people live in Paris?\nAbout two million.",
]


def test_copy_overlap_is_the_best_exact_ratio():
    assert copy_overlap(MEMBERS[1], MEMBERS) == 1.0
    assert copy_overlap("Tell me about Paris\nParis is the capital.", MEMBERS) < 0.9
    assert copy_overlap("anything", []) == 0.0


@settings(max_examples=100, deadline=None)
@given(
    st.text(alphabet="ab .", max_size=30),
    st.lists(st.text(alphabet="ab .", max_size=30), max_size=4),
)
def test_copy_overlap_pruning_keeps_the_exact_maximum(text, members):
    from difflib import SequenceMatcher

    from lmmixup.method.faithfulness import word_tokens

    exact = [
        SequenceMatcher(None, word_tokens(m), word_tokens(text), autojunk=False).ratio()
        for m in members
    ]
    assert copy_overlap(text, members) == pytest.approx(max(exact, default=0.0))


def test_faithful_pair_has_no_flags():
    unit = np.array([1.0, 0.0], dtype=np.float32)
    found = check_faithfulness(
        "What is the capital of France and how many people live there?\nParis, about two million.",
        MEMBERS,
        cfg=CFG,
        text_vector=unit,
        member_vectors=np.stack([unit, unit]),
    )
    assert found.flags == ()
    assert found.member_similarity == pytest.approx(1.0)
    assert found.copy_overlap < CFG.max_copy_overlap


def test_copy_is_flagged():
    found = check_faithfulness(MEMBERS[0] + " ", MEMBERS, cfg=CFG)
    assert found.flags == ("copy",)


def test_drift_is_flagged():
    members = np.array([[1.0, 0.0], [0.96, 0.28]], dtype=np.float32)
    found = check_faithfulness(
        "Bananas are yellow.\nYes.",
        MEMBERS,
        cfg=CFG,
        text_vector=np.array([0.0, 1.0], dtype=np.float32),
        member_vectors=members,
    )
    assert found.flags == ("drift",)
    assert found.member_similarity == pytest.approx(0.14)


@pytest.mark.parametrize("text", [None, "", "  \n"])
def test_empty_is_flagged(text):
    assert check_faithfulness(text, MEMBERS, cfg=CFG).flags == ("empty",)


def test_truncated_is_flagged():
    assert check_faithfulness(None, MEMBERS, cfg=CFG, finish_reason="length").flags == (
        "truncated",
        "empty",
    )


# ---------------------------------------------------------------------------- the stage

POOL = [
    {"id": "m1", "prompt": "What is the capital of France?", "completion": "Paris.", "source": "s"},
    {
        "id": "m2",
        "prompt": "How many live in Paris?",
        "completion": "About 2 million.",
        "source": "s",
    },
    {"id": "m3", "prompt": "Name a prime.", "completion": "7", "source": "s", "task_type": "qa"},
    {"id": "m4", "prompt": "Is 9 prime?", "completion": "No.", "source": "s"},
    {"id": "m5", "prompt": "Spell cat.", "completion": "C-A-T", "source": "t"},
    {"id": "m6", "prompt": "Spell dog.", "completion": "D-O-G", "source": "t"},
]
CLUSTERS = [
    {"cluster_id": "c1", "source": "s", "member_ids": ["m1", "m2"], "size": 2, "cohesion": 0.7},
    {"cluster_id": "c2", "source": "s", "member_ids": ["m3", "m4"], "size": 2, "cohesion": 0.6},
]
GOOD = (
    "<think>Combine the capital and its population.</think>\n<answer>\n"
    "Q: What is the capital of France, and how many people live there?\n"
    "A: Paris, home to about 2 million people.\n</answer>"
)


class ScriptedGenerator:
    """Replies by the first member prompt found in the user message; counts its calls."""

    name = "scripted"
    fingerprint = "scripted"

    def __init__(self, replies: dict[str, Generation]):
        self.replies = replies
        self.calls: list[int] = []

    def generate(self, prompts, params):
        self.calls.append(len(prompts))
        assert params.stop == ("</answer>",)
        return [self._reply(messages[-1]["content"]) for messages in prompts]

    def _reply(self, content: str) -> Generation:
        key = next(key for key in self.replies if key in content)
        return self.replies[key]


class ConstantEmbedder:
    """Every text gets the same unit vector; counts its calls."""

    def __init__(self):
        self.calls = 0

    def encode(self, texts):
        self.calls += 1
        return np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (len(texts), 1))


def _fixture_generator() -> ScriptedGenerator:
    return ScriptedGenerator(
        {
            "capital of France": Generation(GOOD, "stop"),
            "Name a prime": Generation("I am not sure what to do.", "stop"),
        }
    )


def test_distill_fn_turns_a_batch_into_records_and_rejects():
    generator, embedder = _fixture_generator(), ConstantEmbedder()
    members = {record["id"]: record for record in POOL}
    good, bad = make_distill_fn(generator, embedder, CFG, members)(CLUSTERS)
    assert generator.calls == [2] and embedder.calls == 1
    assert good == {
        "id": "mix-c1",
        "prompt": "What is the capital of France, and how many people live there?",
        "completion": "Paris, home to about 2 million people.",
        "source": "s",
        "task_type": "qa",
        "cluster_id": "c1",
        "member_ids": ["m1", "m2"],
        "think": "Combine the capital and its population.",
        "raw_output": GOOD,
        "model": "scripted",
        "finish_reason": "stop",
        "checks": good["checks"],
    }
    assert good["checks"]["flags"] == [] and good["checks"]["member_similarity"] == 1.0
    assert bad[REJECT_KEY] == "unparsable"
    assert (bad["id"], bad["cluster_id"], bad["member_ids"]) == ("mix-c2", "c2", ["m3", "m4"])


@pytest.mark.parametrize(
    ("generation", "reason"),
    [
        (Generation("<think>t</think><answer>Q: What is the capital", "length"), "truncated"),
        (Generation("<answer>just words</answer>", "stop"), "format"),
        (Generation("<answer> </answer>", "stop"), "empty"),
        (Generation("<answer>Q: What is the capital of France?\nA: Paris.", "stop"), "copy"),
        (Generation("", "error", error="HTTP 500"), "generation_error"),
        # the model ended the reply (end of sequence) before closing its answer
        (Generation(GOOD.removesuffix("</answer>"), "eos"), UNCLOSED_ANSWER),
        (
            Generation("<answer>Q: What is the capital of France?\nA: Paris.", "eos"),
            UNCLOSED_ANSWER,
        ),
        (Generation("<think>t</think>\nno answer block", "eos"), "unparsable"),
    ],
)
def test_distill_fn_reject_reasons(generation, reason):
    generator = ScriptedGenerator({"capital": generation})
    members = {record["id"]: record for record in POOL}
    (record,) = make_distill_fn(generator, ConstantEmbedder(), CFG, members)(CLUSTERS[:1])
    assert record[REJECT_KEY] == reason
    assert record["cluster_id"] == "c1"


MERGED_OPEN = GOOD.removesuffix("</answer>")


@pytest.mark.parametrize(
    ("names_stop", "reply", "reason"),
    [
        (True, ok(MERGED_OPEN), UNCLOSED_ANSWER),  # vLLM, ended at EOS: stop_reason null
        (True, ok(MERGED_OPEN, stop_reason="</answer>"), None),  # vLLM, ended on the stop
        (False, ok(MERGED_OPEN), UNCLOSED_ANSWER),  # no stop_reason: the text as written
        (False, ok(GOOD + "\nand then some"), None),
    ],
)
def test_a_server_reply_whose_answer_never_closed_is_rejected(names_stop, reply, reason):
    members = {record["id"]: record for record in POOL}
    prompt = build_messages([members["m1"], members["m2"]], "qa", CFG)
    with FakeOpenAIServer(stop_reason=names_stop) as server:
        server.script(prompt[-1]["content"], reply)
        with OpenAIChatModel("fake", server.base_url, max_retries=0) as model:
            (record,) = make_distill_fn(model, ConstantEmbedder(), CFG, members)(CLUSTERS[:1])
    assert record.get(REJECT_KEY) == reason
    if reason is None:
        assert record["completion"] == "Paris, home to about 2 million people."


def test_task_type_comes_from_the_members():
    generator = ScriptedGenerator({"Name a prime": Generation("<answer>x</answer>", "stop")})
    members = {record["id"]: record for record in POOL}
    cfg = DistillConfig(default_task_type="paragraph")
    (record,) = make_distill_fn(generator, ConstantEmbedder(), cfg, members)(CLUSTERS[1:])
    assert record["task_type"] == "qa"


def test_missing_members_are_an_error_naming_the_cluster_line(tmp_path):
    write_records(tmp_path / "pool.jsonl", POOL[:1])
    clusters = [(3, CLUSTERS[0])]
    with pytest.raises(LmmixupError, match=r"clusters\.jsonl:3: member 'm2' is not in"):
        load_members(tmp_path / "pool.jsonl", tmp_path / "clusters.jsonl", clusters)


def _write_inputs(tmp_path):
    write_records(tmp_path / "pool.jsonl", POOL)
    write_records(tmp_path / "clusters.jsonl", CLUSTERS)
    return tmp_path / "clusters.jsonl", tmp_path / "pool.jsonl"


def test_distill_clusters_resumes_at_cluster_granularity(tmp_path, monkeypatch):
    generator = _fixture_generator()
    monkeypatch.setattr("lmmixup.backends.load_generator", lambda cfg, cache: generator)
    monkeypatch.setattr("lmmixup.backends.embed.load_embedder", lambda *_: ConstantEmbedder())
    clusters, pool = _write_inputs(tmp_path)
    out, rejects = tmp_path / "distilled.jsonl", tmp_path / "rejects.jsonl"

    first = distill_clusters(clusters, pool, out, rejects, CFG)
    assert (first["written"], first["rejected"], first["reject_reasons"]) == (
        1,
        1,
        {"unparsable": 1},
    )
    (reject,) = read_records(rejects)
    assert (reject["id"], reject["line"], reject["raw"]["cluster_id"]) == ("mix-c2", 2, "c2")

    second = distill_clusters(clusters, pool, out, rejects, CFG)
    assert (second["already_done"], second["written"], second["rejected"]) == (2, 0, 0)
    assert (second["distilled"], second["reject_reasons"]) == (1, {"unparsable": 1})
    assert generator.calls == [2]
    assert len(read_records(rejects)) == 1


def test_failed_generations_are_retried_on_the_next_run(tmp_path, monkeypatch):
    failing = ScriptedGenerator(
        {
            "capital of France": Generation("", "error", error="HTTP 500"),
            "Name a prime": Generation("I am not sure what to do.", "stop"),
        }
    )
    working = _fixture_generator()
    generators = iter([failing, working])
    monkeypatch.setattr("lmmixup.backends.load_generator", lambda cfg, cache: next(generators))
    monkeypatch.setattr("lmmixup.backends.embed.load_embedder", lambda *_: ConstantEmbedder())
    clusters, pool = _write_inputs(tmp_path)
    out, rejects = tmp_path / "distilled.jsonl", tmp_path / "rejects.jsonl"
    first = distill_clusters(clusters, pool, out, rejects, CFG)
    assert first["reject_reasons"] == {GENERATION_ERROR: 1, "unparsable": 1}

    second = distill_clusters(clusters, pool, out, rejects, CFG)
    assert (second["already_done"], second["written"], second["distilled"]) == (1, 1, 1)
    assert second["reject_reasons"] == {"unparsable": 1}  # a final reject is not asked again
    assert working.calls == [1] and read_records(out)[0]["cluster_id"] == "c1"


def test_tiny_llama_through_hf_backend(tmp_path, monkeypatch, tiny_llama):
    """A random 2-layer Llama with the real SmolLM2 tokenizer, through HFChatModel and the cache."""
    from lmmixup.io.cache import CallCache

    model_dir = tiny_llama
    cfg = DistillConfig.model_validate(
        {"generator": {"model": str(model_dir), "batch_size": 2}, "max_new_tokens": 16}
    )
    clusters, pool = _write_inputs(tmp_path)
    cache = CallCache(tmp_path / "calls.sqlite")
    monkeypatch.setattr("lmmixup.backends.embed.load_embedder", lambda *_: ConstantEmbedder())

    def run(name: str) -> dict:
        out, rejects = tmp_path / f"{name}.jsonl", tmp_path / f"{name}-rejects.jsonl"
        counts = distill_clusters(clusters, pool, out, rejects, cfg, cache)
        done = read_records(out) + [r["raw"] for r in read_records(rejects)]
        assert sorted(record["cluster_id"] for record in done) == ["c1", "c2"]
        return counts

    first = run("a")
    assert first["written"] + first["rejected"] == 2
    assert cache.misses == 2 and cache.hits == 0
    assert run("a")["already_done"] == 2
    assert cache.misses == 2
    fresh = run("b")
    assert (fresh["already_done"], cache.hits, cache.misses) == (0, 2, 2)
    json.dumps(fresh)


# ---------------------------------------------------------------------------- verifiers, coherence, best-of-n

MATH_POOL = [
    {
        "id": "p1",
        "prompt": "Theo has $10 and buys a pen for $7. How much does he have left?",
        "completion": "Theo spends $7 of his $10, so 10 - 7 = 3 dollars are left.\n#### 3",
        "source": "s",
    },
    {
        "id": "p2",
        "prompt": "Theo had 10 dollars and bought a pen for 7 dollars. How much money is left?",
        "completion": "He has 10 - 7 = 3 dollars left. The answer is 3.",
        "source": "s",
    },
]
MATH_CLUSTER = {"cluster_id": "c9", "source": "s", "member_ids": ["p1", "p2"], "size": 2}
MATH_QUESTION = "With $10, Theo buys a pen for $7. What money remains?"
RIGHT = f"<answer>Q: {MATH_QUESTION}\nA: He spends $7 of his $10: 10 - 7 = 3 dollars left.\n#### 3</answer>"
WRONG = f"<answer>Q: {MATH_QUESTION}\nA: Theo received $10 - $1 = $10.\n#### 10</answer>"


class SeededGenerator:
    """Replies by the call's seed (candidate i has seed i); records each call's params."""

    name = "seeded"
    fingerprint = "seeded"

    def __init__(self, replies: list[str]):
        self.replies = replies
        self.params: list = []

    def generate(self, prompts, params):
        self.params.append(params)
        return [Generation(self.replies[params.seed], "stop") for _ in prompts]


def test_a_pair_failing_a_verifier_is_rejected_with_its_reason_and_scores():
    members = {record["id"]: record for record in MATH_POOL}
    generator = SeededGenerator([WRONG])
    (record,) = make_distill_fn(generator, ConstantEmbedder(), CFG, members)([MATH_CLUSTER])
    assert record[REJECT_KEY] == "answer_mismatch"
    checks = record["checks"]
    assert checks["answer"] == "10" and checks["member_answers"] == ["3"]
    assert checks["answer_agrees"] is False and "answer_mismatch" in checks["flags"]
    for key in (
        "unsupported_numbers",
        "placeholders",
        "unsupported_entities",
        "near_copy",
        "coverage",
    ):
        assert key in checks


def test_a_faithful_pair_is_kept_with_its_scores():
    members = {record["id"]: record for record in MATH_POOL}
    (record,) = make_distill_fn(SeededGenerator([RIGHT]), ConstantEmbedder(), CFG, members)(
        [MATH_CLUSTER]
    )
    assert REJECT_KEY not in record and record["checks"]["flags"] == []
    assert record["checks"]["answer_agrees"] is True and "candidates" not in record


KALI = "How do I see disabled users in Kali?"
REDUNDANT_POOL = [
    {
        "id": "k1",
        "prompt": KALI,
        "completion": "Run sudo cat /etc/shadow in a terminal.",
        "source": "s",
    },
    {
        "id": "k2",
        "prompt": KALI,
        "completion": "Run sudo cat /etc/shadow in a terminal!",
        "source": "s",
    },
]
COPY_OF_K1 = f"<think>Same reply.</think>\n<answer>\nQ: {KALI}\nA: Run sudo cat /etc/shadow in a terminal.\n</answer>"


def test_a_copy_of_one_member_merges_redundant_members():
    members = {record["id"]: record for record in REDUNDANT_POOL}
    cluster = {"cluster_id": "k", "source": "s", "member_ids": ["k1", "k2"], "size": 2}
    (record,) = make_distill_fn(SeededGenerator([COPY_OF_K1]), ConstantEmbedder(), CFG, members)(
        [cluster]
    )
    assert REJECT_KEY not in record
    assert record["checks"]["copy_overlap"] >= CFG.max_copy_overlap
    assert record["checks"]["min_member_coverage"] >= CFG.redundant_coverage


def test_a_copy_of_one_member_that_drops_another_is_still_a_copy():
    pool = [
        *REDUNDANT_POOL[:1],
        {
            "id": "k3",
            "prompt": "Name a Linux log file.",
            "completion": "/var/log/syslog holds system messages.",
            "source": "s",
        },
    ]
    members = {record["id"]: record for record in pool}
    cluster = {"cluster_id": "k", "source": "s", "member_ids": ["k1", "k3"], "size": 2}
    (record,) = make_distill_fn(SeededGenerator([COPY_OF_K1]), ConstantEmbedder(), CFG, members)(
        [cluster]
    )
    assert record[REJECT_KEY] == "copy"


def test_incoherent_clusters_are_rejected_without_a_model_call():
    members = {record["id"]: record for record in POOL}
    generator, embedder = _fixture_generator(), ConstantEmbedder()
    clusters = [{**CLUSTERS[0], "coherent": False, "cohesion": 0.2}, CLUSTERS[1]]
    incoherent, other = make_distill_fn(generator, embedder, CFG, members)(clusters)
    assert incoherent == {
        "id": "mix-c1",
        "source": "s",
        "cluster_id": "c1",
        "member_ids": ["m1", "m2"],
        "cohesion": 0.2,
        REJECT_KEY: "incoherent",
    }
    assert other["cluster_id"] == "c2" and generator.calls == [1]
    only_incoherent = [{**CLUSTERS[1], "coherent": False}]
    (record,) = make_distill_fn(generator, embedder, CFG, members)(only_incoherent)
    assert record[REJECT_KEY] == "incoherent" and generator.calls == [1]


def test_best_of_n_keeps_a_passing_candidate_and_notes_the_tries():
    members = {record["id"]: record for record in MATH_POOL}
    generator = SeededGenerator([WRONG, WRONG, RIGHT, WRONG])
    cfg = DistillConfig(candidates=4, candidate_temperature=0.8)
    (record,) = make_distill_fn(generator, ConstantEmbedder(), cfg, members)([MATH_CLUSTER])
    assert REJECT_KEY not in record
    assert (record["candidates"], record["candidate"], record["raw_output"]) == (4, 2, RIGHT)
    temperatures = [(p.temperature, p.seed) for p in generator.params]
    assert temperatures == [(0.0, 0), (0.8, 1), (0.8, 2), (0.8, 3)]  # distinct cache keys


def test_best_of_n_without_a_passing_candidate_rejects_with_the_first_ones_reason():
    members = {record["id"]: record for record in MATH_POOL}
    unparsable = "no answer block at all"
    cfg = DistillConfig(candidates=3)
    generator = SeededGenerator([WRONG, unparsable, unparsable])
    (record,) = make_distill_fn(generator, ConstantEmbedder(), cfg, members)([MATH_CLUSTER])
    assert (record[REJECT_KEY], record["candidates"], record["candidate"]) == (
        "answer_mismatch",
        3,
        0,
    )


def test_every_cluster_ends_as_one_output_or_one_reject(tmp_path, monkeypatch):
    generator = SeededGenerator([RIGHT, WRONG])
    monkeypatch.setattr("lmmixup.backends.load_generator", lambda cfg, cache: generator)
    monkeypatch.setattr("lmmixup.backends.embed.load_embedder", lambda *_: ConstantEmbedder())
    pool = [{**r, "id": f"{r['id']}-{n}"} for n in range(3) for r in MATH_POOL]
    clusters = [
        {**MATH_CLUSTER, "member_ids": ["p1-0", "p2-0"]},
        {**MATH_CLUSTER, "cluster_id": "c10", "member_ids": ["p1-1", "p2-1"], "coherent": False},
        {**MATH_CLUSTER, "cluster_id": "c11", "member_ids": ["p1-2", "p2-2"], "coherent": True},
    ]
    write_records(tmp_path / "pool.jsonl", pool)
    write_records(tmp_path / "clusters.jsonl", clusters)
    out, rejects = tmp_path / "distilled.jsonl", tmp_path / "rejects.jsonl"
    cfg = DistillConfig(candidates=2)
    counts = distill_clusters(
        tmp_path / "clusters.jsonl", tmp_path / "pool.jsonl", out, rejects, cfg
    )
    ids = [r["cluster_id"] for r in read_records(out)] + [
        r["raw"]["cluster_id"] for r in read_records(rejects)
    ]
    assert sorted(ids) == ["c10", "c11", "c9"]
    assert counts["reject_reasons"] == {"incoherent": 1} and counts["distilled"] == 2


def test_no_model_loads_when_every_cluster_is_incoherent(tmp_path, monkeypatch):
    def refuse(cfg, cache):
        raise AssertionError("the distiller was loaded for incoherent clusters only")

    monkeypatch.setattr("lmmixup.backends.load_generator", refuse)
    monkeypatch.setattr("lmmixup.backends.embed.load_embedder", lambda *_: ConstantEmbedder())
    write_records(tmp_path / "pool.jsonl", MATH_POOL)
    write_records(tmp_path / "clusters.jsonl", [{**MATH_CLUSTER, "coherent": False}])
    out, rejects = tmp_path / "distilled.jsonl", tmp_path / "rejects.jsonl"
    counts = distill_clusters(
        tmp_path / "clusters.jsonl", tmp_path / "pool.jsonl", out, rejects, DistillConfig()
    )
    assert counts["reject_reasons"] == {"incoherent": 1} and counts["distilled"] == 0
