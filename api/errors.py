"""Anticipated failures of a lookup, answered as JSON (never a traceback)."""

from __future__ import annotations


class Unavailable(Exception):
    """The service cannot answer right now: answered with HTTP 503 and a JSON body.

    Parameters
    ----------
    reason
        Short machine-readable code: ``redis_unavailable``, ``no_live_version``,
        ``unsupported_format``, ``version_incomplete``, ``corrupt_value``, ``starting``.
    detail
        One human-readable sentence naming the key and, where there is one, the fix.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

    def body(self) -> dict[str, str]:
        """The JSON body of the 503 answer."""
        return {"error": self.reason, "detail": self.detail}


def rule_error_body(rule: str, message: str, where: str = "query") -> dict[str, object]:
    """The 422 body of a bad scenario or rule, in FastAPI's validation shape, naming it in
    ``loc`` and ``msg`` (the fast path and the FastAPI routes answer the same bytes)."""
    return {"detail": [{"type": "value_error", "loc": [where, rule], "msg": message}]}
