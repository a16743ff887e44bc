"""What .ci/run runs: the README's two test commands, which together cover every test."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_ci_runs_the_readme_commands_and_they_cover_every_test() -> None:
    out = subprocess.run(
        ["bash", str(ROOT / ".ci" / "run")],
        env={**os.environ, "CI_PRINT_COMMANDS": "1"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert len(out) == 2, out
    fast, slow = out
    readme = (ROOT / "README.md").read_text()
    assert fast in readme and slow in readme
    assert fast.startswith("python3 -m venv .venv") and 'pip install -e ".[test]"' in fast
    # The two marker expressions partition the tests: nothing is left out of CI.
    fast_pytest = shlex.split(fast.rsplit("&& ", 1)[1])
    slow_pytest = shlex.split(slow)
    assert fast_pytest[0] == slow_pytest[0] == "pytest"
    assert fast_pytest[fast_pytest.index("-m") + 1] == "not slow"
    assert slow_pytest[slow_pytest.index("-m") + 1] == "slow"


def test_captum_is_bounded_above_because_its_internals_are_imported() -> None:
    import re

    # the dependency line itself (tomllib needs Python 3.11; the project supports 3.10)
    (captum,) = re.findall(r'^\s*"(captum[^"]*)",', (ROOT / "pyproject.toml").read_text(), re.M)
    private = [
        line
        for path in (ROOT / "benchbox").rglob("*.py")
        for line in path.read_text(encoding="utf-8").splitlines()
        if re.search(r"from captum\.\w+\._", line)
    ]
    assert private, "no private captum import left: the upper bound may go"
    assert "<" in captum, f"{captum}: benchbox imports captum internals ({private[0].strip()})"
