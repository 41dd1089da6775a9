"""What ``recsys --help`` and ``recsys nightly-batch --help`` promise (issue #29, item 8)."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from cli.main import app
from recsys_batch.config import PublishConfig


def _help(*args: str) -> str:
    """The help screen as one line of words (rich draws boxes and wraps at the width)."""
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": "100"})
    assert result.exit_code == 0, result.output
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", result.output).split())


@pytest.mark.parametrize("args", [(), ("nightly-batch",)])
def test_nightly_help_names_the_configured_list_length(args: tuple[str, ...]) -> None:
    """Catches the help text saying "top 5" again while a version stores 20 per user."""
    top_n = PublishConfig().top_n
    assert top_n == 20  # the default README and docs/redis-format.md describe
    text = _help(*args)
    assert f"top N items (publish.top_n, default {top_n})" in text
    assert "top 5" not in text
