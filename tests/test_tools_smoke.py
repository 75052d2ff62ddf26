"""The README's mmseg smoke run, exactly as written (run in a temporary folder that links tools/ and
svgfeat/): tools/write_sample.py writes data the shipped linear ADE20K config reads as it is, and
``--cfg-options data_root=DIR`` reaches every dataloader."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from conftest import require_extra  # noqa: E402

require_extra("mmseg")  # skip locally without the [mmseg] extra, fail under CI=true

ROOT = Path(__file__).resolve().parents[1]


def smoke_lines() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text[text.index("A smoke run of a shipped config"):]
    block = block[block.index("```") + 3:]
    block = block[:block.index("```")]
    return [ln for ln in block.strip().splitlines() if ln.strip()]


def test_readme_smoke_run_as_written(tmp_path):
    lines = smoke_lines()
    assert [ln.split()[1] for ln in lines] == ["tools/write_sample.py", "tools/write_sample.py", "tools/mmseg_train.py"]
    for name in ("tools", "svgfeat"):
        (tmp_path / name).symlink_to(ROOT / name)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    for ln in lines:
        r = subprocess.run(["bash", "-c", ln], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, (ln, r.stderr[-3000:])
    data = tmp_path / "data" / "digitseg"
    for sub in ("training", "validation"):
        imgs = sorted((data / "images" / sub).iterdir())
        assert imgs and {p.suffix for p in imgs} == {".jpg"}  # what ADE20KDataset lists
        assert {p.stem for p in imgs} == {p.stem for p in (data / "annotations" / sub).iterdir()}
    log = "\n".join(p.read_text() for p in (tmp_path / "runs" / "smoke").rglob("*.log"))
    assert re.search(r"Iter\(val\).*mIoU|mIoU", log), log[-2000:]
    assert (tmp_path / "runs" / "smoke" / "iter_2.pth").is_file()


def test_data_root_option_reaches_every_dataloader(tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from _mmseg_common import load_config
    finally:
        sys.path.remove(str(ROOT / "tools"))
    from svgfeat.integrations.mmseg import config_path

    for name in ("linear", "upernet", "svg_linear_nyu_416x544_38k.py"):
        cfg = load_config(str(config_path(name)), {"data_root": str(tmp_path / "d")}, str(tmp_path / "w"))
        for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
            assert cfg[key]["dataset"]["data_root"] == str(tmp_path / "d"), (name, key)
        cfg = load_config(str(config_path(name)), {"data_root": "a", "val_dataloader.dataset.data_root": "b"}, None)
        assert (cfg.train_dataloader.dataset.data_root, cfg.val_dataloader.dataset.data_root) == ("a", "b")
