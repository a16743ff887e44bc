"""Exceptions that carry an exit code. A ``UserError`` is shown as one line, never a traceback.

Exit codes (README): 0 ok; 1 a job failed or a regression was found; 2 usage or input error.
"""

from __future__ import annotations

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "SuiteError", "UserError"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class UserError(Exception):
    """A mistake in the user's input: one clear line naming the file, field, value and fix."""

    exit_code = EXIT_USAGE


class SuiteError(UserError):
    """Every problem found in a suite file, each with its YAML path."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        n = len(problems)
        head = f"{source}: {n} problem{'s' if n != 1 else ''}"
        super().__init__("\n".join([head, *(f"  {p}" for p in problems)]))
