import pytest
from click.testing import CliRunner

import medsi.selftest
from medsi import __version__
from medsi.cli import main


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


@pytest.mark.slow
def test_selftest_quick_passes_and_prints_a_table():
    result = CliRunner().invoke(main, ["selftest", "--quick"])
    assert result.exit_code == 0, result.output
    assert "truncated normal vs mpmath" in result.output
    assert "null uniformity, iid, signed" in result.output
    assert "FAIL" not in result.output
    assert "All checks passed." in result.output


def test_selftest_exits_non_zero_when_a_check_fails(monkeypatch):
    failing = [
        medsi.selftest.CheckResult("exact intervals", True, "ok", 0.1),
        medsi.selftest.CheckResult("null uniformity", False, "KS p 0.001", 0.2),
    ]
    monkeypatch.setattr(medsi.selftest, "run_selftest", lambda **kwargs: failing)
    result = CliRunner().invoke(main, ["selftest", "--quick"])
    assert result.exit_code == 1
    assert "FAIL" in result.output
    assert "null uniformity" in result.output
