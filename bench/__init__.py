"""acseg-bench: the harness around the :mod:`acseg` library (data, feature cache, runs, tracking, CLI)."""

__version__ = "0.1.0"
