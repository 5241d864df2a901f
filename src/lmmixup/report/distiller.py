"""The report's distiller-evaluation section: the table `lmmixup eval distiller` wrote in the
`eval` stage of a `lmmixup train distiller` run (one row per measure, one column per model)."""

from __future__ import annotations

import json

from lmmixup.report.data import RunView, clip

EVAL_RESULTS = "eval/results.json"


def distiller_eval_section(run: RunView) -> dict:
    """The models compared (label and path) and the side-by-side table of their measures."""
    from lmmixup.evaluation.distiller import results_table

    path = run.path / EVAL_RESULTS
    if not path.is_file():
        # not missing data: only `lmmixup train distiller` runs have this stage
        return {
            "note": f"No distiller evaluation in this run ({EVAL_RESULTS} comes from the eval stage of `lmmixup train distiller`)."
        }
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        header, rows = results_table(results)
        models = [
            (clip(label, 80), clip(m["model"], 300)) for label, m in results["models"].items()
        ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return {
            "note": f"{EVAL_RESULTS} could not be read ({type(exc).__name__}: {clip(exc, 200)})"
        }
    return {
        "test": clip(results.get("test", "?"), 300),
        "records": str(results.get("records", "?")),
        "models": models,
        "header": [clip(name, 80) for name in header],
        "rows": [[clip(cell, 80) for cell in row] for row in rows],
    }
