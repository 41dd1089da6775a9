"""In CI an integration test may not skip silently (tests/conftest.py, issue #15).

Each test runs pytest on a tiny test module with the suite's conftest and reads the outcomes.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

INTEGRATION = """
import pytest

pytestmark = pytest.mark.integration


@pytest.fixture
def certificates():
    pytest.skip("the openssl CLI is needed to make test certificates")


def test_skips_in_a_fixture(certificates):
    pass


def test_skips_in_its_body():
    pytest.skip("redis-cli is needed to create a cluster")


@pytest.mark.skipif(True, reason="this redis-server has no TLS")
def test_skipif():
    pass


@pytest.mark.xfail(reason="a known bug", strict=True)
def test_expected_failure():
    assert False


def test_runs():
    pass
"""

UNIT = """
import pytest


def test_unit_skip():
    pytest.skip("root ignores directory permissions")
"""

REASONS = (
    "the openssl CLI is needed to make test certificates",
    "redis-cli is needed to create a cluster",
    "this redis-server has no TLS",
)


@pytest.fixture
def suite(pytester: pytest.Pytester) -> pytest.Pytester:
    """A tiny suite: integration tests that skip three ways, an xfail, a pass, a unit skip."""
    pytester.makeconftest('pytest_plugins = ["tests.conftest"]')
    pytester.makeini(
        "[pytest]\nmarkers =\n    integration: talks to a real server\nxfail_strict = true\n"
    )
    pytester.makepyfile(test_real=INTEGRATION, test_unit=UNIT)
    return pytester


def test_in_ci_an_integration_skip_fails_with_its_reason(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    result = suite.runpytest("-rA")
    # A skip during setup (fixture, skipif) becomes a setup error, one in the test a failure.
    result.assert_outcomes(passed=1, failed=1, errors=2, skipped=1, xfailed=1)
    out = result.stdout.str()
    for reason in REASONS:
        assert f"skipped in CI (CI=true), which counts as a failure: Skipped: {reason}" in out
    result.stdout.fnmatch_lines(
        ["SKIPPED [[]1[]] test_unit.py:*: root ignores directory permissions"]
    )
    assert result.ret == pytest.ExitCode.TESTS_FAILED


@pytest.mark.parametrize("ci", [None, "false", ""])
def test_outside_ci_skips_stay_skips(
    suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None
) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    result = suite.runpytest("-rA")
    result.assert_outcomes(passed=1, skipped=4, xfailed=1)
    assert result.ret == pytest.ExitCode.OK


MODULE_SKIP = """
import pytest

pytest.importorskip("a_package_that_is_not_installed")


def test_never_collected():
    pass
"""


@pytest.mark.parametrize(("ci", "failed"), [("true", True), ("", False)])
def test_an_integration_module_skipped_at_import_fails_in_ci(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str, failed: bool
) -> None:
    pytester.makeconftest('pytest_plugins = ["tests.conftest"]')
    pytester.mkdir("integration")
    (pytester.path / "integration" / "test_optional.py").write_text(MODULE_SKIP)
    monkeypatch.setenv("CI", ci)
    result = pytester.runpytest("-rA")
    if failed:
        result.assert_outcomes(errors=1)
        result.stdout.fnmatch_lines(["*integration module skipped in CI (CI=true)*"])
    else:
        result.assert_outcomes(skipped=1)
