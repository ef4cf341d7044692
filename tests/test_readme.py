"""The README's two set-up commands: CI runs the test command verbatim, and both install torch 2.13.0 first."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_opens_with_two_commands_and_ci_runs_the_second():
    demo, tests = _readme_commands()
    assert demo.endswith("monai-xres demo") and "pytest" in tests
    for command in (demo, tests):
        assert command.index("pip install torch==2.13.0") < command.index("pip install -e")
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert tests in ci
