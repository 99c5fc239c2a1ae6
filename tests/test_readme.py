"README.md is generated from nbs/index.ipynb, and CI runs exactly the README's quick-start commands."
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands():
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sh\n(.+?)\n```", section)


def test_readme_has_exactly_two_commands():
    cmds = quick_start_commands()
    assert len(cmds) == 2, cmds
    assert cmds[0].endswith("leaf_nb demo")
    assert "pytest" in cmds[1] and "nbdev_test" in cmds[1]


def test_ci_runs_every_part_of_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text().replace(" -q", "")
    for cmd in quick_start_commands():
        for part in cmd.split(" && "):
            part = part.replace("HF_HUB_OFFLINE=1 ", "")  # CI exports it once
            if part == "pip install -e .":
                continue  # covered by the dev extra, which includes gguf
            assert part in ci, f"README step not in .ci/run: {part!r}"


@pytest.mark.skipif(shutil.which("jupyter") is None, reason="needs nbconvert (dev extra)")
def test_readme_is_generated_from_index():
    r = subprocess.run([sys.executable, "-m", "nbconvert", "--to", "markdown", "--stdout", str(ROOT / "nbs" / "index.ipynb")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout == (ROOT / "README.md").read_text(), \
        "README.md is out of date: jupyter nbconvert --to markdown --stdout nbs/index.ipynb > README.md"
