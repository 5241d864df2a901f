"""The public Python API: the names the GUIDE documents import from the top-level package,
stay lazy, and the GUIDE's example runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import lmmixup

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "GUIDE.md"


def test_every_public_name_resolves():
    for name in lmmixup.__all__:
        assert getattr(lmmixup, name) is not None, name


def test_the_documented_names_import():
    from lmmixup import (  # noqa: F401
        KnnBayesScorer,
        cluster_embeddings,
        compress_score,
        long_tail_scores,
        parse_output,
        parse_rating,
        rank_records,
    )
    from lmmixup.rewards import (  # noqa: F401
        alignment_reward,
        format_reward,
        mixup_reward,
        quality_reward,
    )


def test_an_unknown_name_is_an_attribute_error():
    try:
        lmmixup.no_such_name  # noqa: B018
    except AttributeError as error:
        assert "no_such_name" in str(error)
    else:
        raise AssertionError("lmmixup.no_such_name resolved")


def test_importing_the_package_loads_no_heavy_library():
    code = "import sys, lmmixup; print(sorted(m for m in ('numpy', 'torch', 'faiss') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_guide_example_runs():
    text = GUIDE.read_text(encoding="utf-8")
    match = re.search(r"<!-- api-example -->\n```python\n(.*?)```", text, re.DOTALL)
    assert match, "the GUIDE's Python API example is marked <!-- api-example -->"
    exec(compile(match.group(1), str(GUIDE), "exec"), {})
