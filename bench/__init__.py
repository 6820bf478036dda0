"""Scenarios behind `distinfer bench`: real processes on loopback, measured side by side in one run.

Every figure the project is judged on is a ratio between targets measured in the same run on the
same machine (the absolute numbers drift with load and CPU frequency; ratios much less).
"""

__all__: list[str] = []
