"""
The Python examples of README.md and docs/, run as written (against a real
node where they call one) so that what the docs show is what callnet does.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .daemon import running_node

ROOT = Path(__file__).parent.parent


def blocks(document: str, kind: str) -> dict[str, str]:
    """The fenced blocks of a document that follow a C{<!-- kind: name -->} marker."""
    text = (ROOT / document).read_text()
    pattern = re.compile(rf"<!-- {kind}: (\S+) -->\n```\w*\n(.*?)```", re.S)
    return dict(pattern.findall(text))


def run_python(code: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize("name", ["sync", "handle", "callbacks", "await"])
def test_readme_python_example(tmp_path: Path, name: str) -> None:
    """Each README example prints exactly the output the README shows under it."""
    code = blocks("README.md", "example")[name]
    expected = blocks("README.md", "output")[name]
    with running_node(tmp_path) as node:
        # The README talks to the default port; the test's node has its own.
        result = run_python(code.replace("127.0.0.1:7600", f"127.0.0.1:{node.port}"), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected


def test_testing_doc_trial_example(tmp_path: Path) -> None:
    """docs/testing.md's trial example passes under trial."""
    (tmp_path / "greeter.py").write_text(blocks("docs/testing.md", "file")["greeter.py"])
    (tmp_path / "test_greeter.py").write_text(blocks("docs/testing.md", "test")["trial"])
    result = subprocess.run(
        [sys.executable, "-m", "twisted.trial", "test_greeter"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED (successes=3)" in result.stdout


def test_testing_doc_pytest_example(tmp_path: Path) -> None:
    """docs/testing.md's pytest example passes under pytest."""
    (tmp_path / "greeter.py").write_text(blocks("docs/testing.md", "file")["greeter.py"])
    (tmp_path / "test_greeter.py").write_text(blocks("docs/testing.md", "test")["pytest"])
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_greeter.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout
