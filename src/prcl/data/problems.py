"""Collecting every problem with a dataset before refusing it, so users fix them in one go."""

from __future__ import annotations

from prcl.errors import DataError

SHOWN_IN_ERRORS = 12


class DataProblems(DataError):
    """Several problems with a dataset, one line each; ``problems`` keeps the full list."""

    def __init__(self, problems: list[str], hint: str = "") -> None:
        self.problems = list(problems)
        shown = self.problems[:SHOWN_IN_ERRORS]
        more = len(self.problems) - len(shown)
        lines = [f"{len(self.problems)} problem(s) with the dataset:", *(f"  {p}" for p in shown)]
        if more:
            lines.append(f"  ... and {more} more")
        if hint:
            lines.append(hint)
        super().__init__("\n".join(lines))


def problems_of(error: DataError) -> list[str]:
    """The individual problems an error stands for (one for a plain DataError)."""
    return error.problems if isinstance(error, DataProblems) else [str(error)]


def raise_if_any(problems: list[str], hint: str = "") -> None:
    """Raise DataProblems when the list is not empty."""
    if problems:
        raise DataProblems(problems, hint)
