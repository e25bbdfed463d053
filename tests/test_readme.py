import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_api_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README.md has no Python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert "test" in namespace


def test_ci_runs_the_readme_test_command():
    ci = (README.parent / ".ci" / "run").read_text()
    command = 'pip install -e ".[dev]" && python -m pytest'
    assert command in README.read_text()
    assert command in ci


def test_readme_main_job_uses_the_bundled_example_and_model():
    text = README.read_text()
    command = re.search(r"pip install \. && (medsi run \S+.*)", text).group(1)
    example = command.split()[2]
    assert (README.parent / example).is_file()
    assert (README.parent / "medsi" / "assets" / "default_bundle" / "manifest.json").is_file()
