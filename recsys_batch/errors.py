"""Errors the engine raises on purpose; each carries the CLI exit code it maps to.

Exit codes (documented in the README): 0 published, 1 unexpected, 2 bad input or config,
3 quality gate refused to publish, 4 Redis unavailable or publish failed, 5 another run
holds the lock.
"""

from __future__ import annotations


class RecsysError(Exception):
    """Base class: a failure we anticipated and can explain in one line."""

    exit_code = 1


class ConfigError(RecsysError):
    """The configuration (file, env var or option) is invalid."""

    exit_code = 2


class DataError(RecsysError):
    """Input data is missing or malformed.

    The message always names the file, the column (when there is one) and the fix.
    """

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        column: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.file = file
        self.column = column
        self.fix = fix
        parts = [message]
        if file is not None:
            parts.append(f"file: {file}")
        if column is not None:
            parts.append(f"column: {column}")
        if fix is not None:
            parts.append(f"fix: {fix}")
        super().__init__(" | ".join(parts))


class SchemaMismatchError(DataError):
    """A scanned frame lacks a column or has a type that cannot be cast."""


class EmptyStageError(DataError):
    """A stage produced zero rows; publishing nothing would wipe the live recommendations."""


class QualityGateError(RecsysError):
    """The run's holdout quality is below the configured floor; nothing was published."""

    exit_code = 3


class PublishError(RecsysError):
    """Redis was unreachable or a write failed; the live version was left untouched."""

    exit_code = 4


class LockError(RecsysError):
    """Another batch run holds the lock."""

    exit_code = 5
