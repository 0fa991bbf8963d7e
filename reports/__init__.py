"""refbench's reports: result files in, one self-contained HTML report, a markdown summary,
run-vs-run comparisons and the CI gate out.

Imports neither torch nor numba: it reads JSON files (see ``loading.py`` for the formats).
Command line: ``python -m reports build | compare | gate | baseline`` (``--help`` on each).
From Python::

    from reports.build import build, compare, run_gate
    built = build("correctness.json", ["bench.json"], "reports/out")
"""

from reports.loading import InputError

__all__ = ["InputError"]
