"""The report page: the sections' values laid out by the package's jinja2 templates.

Autoescaping is on for every template: data text (prompts, completions, ids, reasons) is
escaped where it is inserted; only the plots, built and escaped in `lmmixup.report.svg`, arrive
as `Markup`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from jinja2 import Environment, PackageLoader, StrictUndefined

from lmmixup.io.jsonl import write_text_atomic
from lmmixup.report.data import clip, load_run, read_warnings
from lmmixup.report.sections import SECTIONS, Bold

REPORT_FILE = "report.html"

_ENV = Environment(
    loader=PackageLoader("lmmixup.report", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)
_ENV.tests["bold"] = lambda value: isinstance(value, Bold)


def build_report(run_dir: str | Path, link_base: str | Path | None = None) -> str:
    """The HTML text of the report for a run directory or a folder of stage outputs; links
    to its files are relative to `link_base` (the report's folder; default the run's)."""
    run = load_run(run_dir)
    run.link_base = Path(link_base) if link_base is not None else None
    sections = [(key, title, render(run)) for key, title, render in SECTIONS]
    config = run.path / "config.yaml"
    bad_lines = "; ".join(
        f"{name}: {len(lines)} lines" for name, lines in sorted(run.bad_lines.items())
    )
    return _ENV.get_template("report.html.j2").render(
        name=run.path.name or str(run.path),
        path=str(run.path.resolve()),
        generated=datetime.now(UTC).isoformat(timespec="seconds"),
        warnings=read_warnings(run),
        folder=run.files is not None,
        sections=sections,
        config=(
            clip(config.read_text(encoding="utf-8", errors="replace"), 20000)
            if config.is_file()
            else None
        ),
        bad_lines=bad_lines,
    )


def write_report(run_dir: str | Path, output: str | Path | None = None) -> Path:
    """Write the report (default RUN_DIR/report.html) atomically; returns its path."""
    output = Path(output) if output is not None else Path(run_dir) / REPORT_FILE
    html = build_report(run_dir, link_base=output.parent)
    write_text_atomic(output, html)
    return output
