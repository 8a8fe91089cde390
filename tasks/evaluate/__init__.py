"""Stage evaluate: stage.py (metrics and plots), report.py (reports/retrieval.html), history.py (the nightly
evaluation's history)."""
