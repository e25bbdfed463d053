"""Fixtures of the DICOM export tests: dciodvfy and pydicom's strict validation."""

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest


@contextlib.contextmanager
def strict_pydicom():
    """Make pydicom raise on any invalid value while reading or writing, then restore."""
    settings = pydicom.config.settings
    previous = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = pydicom.config.RAISE
    settings.writing_validation_mode = pydicom.config.RAISE
    try:
        yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = previous


@pytest.fixture
def strict_dicom():
    """pydicom's strict validation for one test (the setting is restored afterwards)."""
    with strict_pydicom():
        yield


@pytest.fixture(scope="session")
def dciodvfy():
    """A checker running dciodvfy (Debian dicom3tools) on a file.

    It fails the test on any line starting with "Error", prints the warnings and returns
    them. Without dciodvfy the test is skipped, unless MEDSI_REQUIRE_TOOLS=1 (then it fails).
    """
    executable = shutil.which("dciodvfy")
    if executable is None:
        reason = (
            "dciodvfy is not installed (Debian package dicom3tools: apt-get install "
            "dicom3tools); the DICOM objects were not checked against the standard"
        )
        if os.environ.get("MEDSI_REQUIRE_TOOLS") == "1":
            pytest.fail(f"MEDSI_REQUIRE_TOOLS=1 but {reason}")
        pytest.skip(reason)

    def check(path: Path) -> list[str]:
        result = subprocess.run(
            [executable, str(path)], capture_output=True, text=True, timeout=120, check=False
        )
        lines = (result.stdout + result.stderr).splitlines()
        errors = [line for line in lines if line.startswith("Error")]
        warnings = sorted({line for line in lines if line.startswith("Warning")})
        for line in warnings:
            print(f"dciodvfy {Path(path).name}: {line}")
        assert not errors, f"dciodvfy found errors in {path}:\n" + "\n".join(errors)
        return warnings

    return check
