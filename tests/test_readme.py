"""The README stays true: its Python examples run, its commands exist, CI runs its test command."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import golden_path

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_quick_start_has_exactly_two_commands():
    qs = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", qs, re.S)
    assert len(blocks) == 2 and all(len(b.strip().splitlines()) == 1 for b in blocks)
    assert blocks[0].startswith("pip install -e . && svgfeat ")
    assert blocks[1].strip() == 'pip install -e ".[dev,mmseg,faiss,hf]" && pytest -q'  # CI runs the faiss and parquet tests
    ci = (REPO / ".ci" / "run").read_text()
    assert "grep -E '^pip install -e \"\\.\\[dev' README.md" in ci


def test_python_examples_run(tmp_path):
    """The README's Python blocks run as written: `pretrained=True` reads a local Hub cache holding the golden
    files under the released names (HF_HUB_OFFLINE=1: the real download code, no network)."""
    from _hub_helpers import build_golden_hub, hub_env

    build_golden_hub(tmp_path / "hf", golden_path)
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks
    for code in blocks:
        r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                           env=hub_env(tmp_path / "hf"))
        assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.parametrize("cmd", sorted(set(re.findall(r"^svgfeat ([a-z-]+)", README, re.M))))
def test_cli_commands_in_readme_exist(cmd):
    r = subprocess.run([sys.executable, "-m", "svgfeat", cmd, "--help"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
