"""The README's two set-up commands: CI runs both verbatim, each in a fresh environment, and both install
torch 2.13.0 first."""

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_opens_with_two_commands_and_ci_runs_both_verbatim():
    demo, tests = _readme_commands()
    assert demo.endswith("monai-xres demo") and "pytest" in tests
    for command in (demo, tests):
        assert command.startswith("python3 -m venv .venv && . .venv/bin/activate")
        assert command.index("pip install torch==2.13.0") < command.index("pip install -e")
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert demo in ci and tests in ci
    assert ci.index(demo) < ci.index(tests)
    # each command gets a fresh environment: the first one's is removed before the second is made
    between = ci[ci.index(demo) + 1: ci.index(tests)]
    assert "rm -rf .venv outputs" in between and "deactivate" in between


def test_a_failing_first_command_fails_ci():
    """`set -e` does not stop inside an && list: .ci/run checks the first command's status itself. Run its
    first block with a ``python3`` that fails: the block must exit with that status."""
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    start = lines.index("set +e")
    end = next(i for i, line in enumerate(lines) if line.startswith("if [ \"$status\""))
    block = "\n".join(["set -euo pipefail", "python3() { return 3; }", *lines[start:end + 1], "echo went-on"])
    run = subprocess.run(["bash", "-c", block], capture_output=True, text=True)
    assert run.returncode == 3 and "went-on" not in run.stdout and "failed with status 3" in run.stderr
