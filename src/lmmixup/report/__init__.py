"""`lmmixup report`: one self-contained HTML page about a run directory.

The page needs no network and no files beside it: styles and a tiny script are inline, plots
are inline SVG (`lmmixup.report.svg`), and a Content-Security-Policy forbids loading anything.
Every section reads only the files it needs and says so when they are absent, so a run that
stopped half way (or one with only an experiment) still gets a report. Text from the data is
escaped and clipped; samples are capped, so the page stays small for any pool size.

Modules: `data` reads the run directory, `lineage` follows sampled clusters through the
stages, `sections` and `samples` turn them into plain values, `svg` draws the plots, and `page`
renders the jinja2 templates under `templates/`.
"""

from lmmixup.report.page import REPORT_FILE, build_report, write_report
from lmmixup.report.sections import SECTIONS

__all__ = ["REPORT_FILE", "SECTIONS", "build_report", "write_report"]
