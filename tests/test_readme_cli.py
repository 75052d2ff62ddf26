"""Every `svgfeat ...` line of the README's bash blocks runs end to end (issue H, point 3).

The lines are read from README.md, placeholders are mapped to golden files and tiny generated data (TOKENS),
per-command small-size settings are appended (RULES), and the commands run in README order in one temporary
folder (in-process through ``svgfeat.cli.main``; ``serve`` in a subprocess). A line that exits non-zero, that
does not produce what it promises (RULES' ``expect``), or that no rule knows how to map FAILS the test: add a
rule when you add a README command.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

# ----------------------------------------------------------------------------------------------- the table
# placeholder token -> value ({G} golden dir, {R} ../shared/reference, {T} generated tiny data under tmp)
TOKENS = {
    "D.pth": "{G}/dinov3_vits16plus_random.pth",
    "S.ckpt": "{G}/svg_ae_shared.ckpt",
    "V1-SVG-XL-7000K-256x256.pt": "{G}/svg_dit_shared.pt",
    "dinov3_sp_stats.pt": "{R}/dinov3_sp_stats.pt",
    "/data/imagenet": "{T}/imagenet",
    "/data/ADEChallengeData2016": "{T}/ade",
    "/data/nyu": "{T}/nyu",
    "DATA": "sample:photos",
    "CACHE": "runs/cache",
    "IMG...": ["{T}/img1.png", "{T}/img2.png"],
    "IMG": "{T}/img1.png", "photo.jpg": "{T}/img1.png", "img.jpg": "{T}/img1.png",
    "img1.jpg": "{T}/img1.png", "img2.jpg": "{T}/img2.png", "a.jpg": "{T}/img1.png", "b.jpg": "{T}/img2.png",
    "VIRTUAL_imagenet256_labeled.npz": "{T}/ref_stats.npz",
    "pt_inception-2015-12-05-6726825d.pth": "{T}/inception_random.pth",
    "cuda": "cpu",          # `--device cuda` -> CPU
}
# the value of these options is replaced (big-machine settings)
OPTION_VALUES = {"--workers": "0", "--batch-size": None}

# command prefix -> extra args appended (small sizes), option values replaced, outputs expected. Why each override:
# the full-size SVG-S+ encoder costs ~16x more at 256 px than at 64 px on CPU; iterations/steps are cut to seconds.
RULES = {
    "doctor": {},
    "encode": {"expect": ["feats.safetensors"]},
    "reconstruct": {"expect": ["recon.png"]},
    # the README's cache: any group set; dino is added so the README's patch index (group dino) has its group
    "extract": {"set": {"--groups": "latent,cls,pooled,dino", "--size": "64"}, "append": ["--limit", "16"],
                "expect_dir": True},
    "cache info": {}, "cache verify": {},
    "stats": {},
    "export": {"expect_out": True},
    "eval imagenet": {"set": {"--size": "64"}, "append": ["--limit", "40", "--iterations", "20", "--batch-size", "8"],
                      "expect": ["results.json", "results.md", "lr_curve.png"], "in_out": True},
    "probe": {"append": ["--iterations", "20"], "expect_out": True},
    "knn": {"expect_out": True},
    "index build": {"expect_out": True},
    "index info": {},
    # search/serve encode an uploaded image: --model test_tiny in the README would not match the cache's encoder
    # (the README's CACHE is extracted with --dinov3 D.pth); that encoder is used instead (see notes/hub.md).
    "search": {"swap": {"--model test_tiny": "--dinov3 D.pth"}, "expect": ["results.html"]},
    "serve": {"swap": {"--model test_tiny": "--dinov3 D.pth"}, "server": True},
    "seg train": {"append": ["--iters", "2", "--warmup", "1", "--crop-size", "64", "--batch-size", "2",
                             "--eval-limit", "2", "--slide-crop", "64", "--slide-stride", "48"],
                  "expect": ["head.safetensors"], "in_out": True},
    "seg eval": {"append": ["--limit", "2", "--slide-crop", "64", "--slide-stride", "48"]},
    "seg predict": {"expect_out": True},
    "pca": {"expect_out": True},
    # the generation pipeline's cache: 8 images (views 2) of the tiny ImageNet tree at 256 (the DiT's 16x16 grid)
    "extract@gen": {"append": ["--limit", "8", "--batch-size", "4"], "expect_dir": True},
    # svg_dit_xl (676M parameters) cannot take a CPU step in seconds: the same code path with test_dit_tiny
    "train-dit": {"set": {"--model": "test_dit_tiny", "--batch-size": "4"}, "append": ["--steps", "2"],
                  "expect_dir": True},
    "generate": {"set": {"--steps": "2", "--n": "1"}, "expect": ["grid.png"], "in_out": True},
    "interpolate": {"expect_out": True},
    "fid": {},
    "train-ae": {"set": {"--size": "64"}, "append": ["--steps", "1", "--batch-size", "2", "--num-samples", "2",
                                                      "--stats-images", "2", "--no-progress"],
                 "expect": ["encoder.safetensors"], "in_out": True},
    # depth: the sample and a 4+4-image NYUv2 tree (mmseg layout) of sample:depth images, a few iterations
    "depth train": {"append": ["--iters", "2", "--warmup", "1", "--batch-size", "2", "--crop-size", "64,64",
                               "--eval-limit", "2"],
                    "expect": ["head.safetensors", "metrics.json"], "in_out": True},
    "depth eval": {"append": ["--limit", "2"]},
    "depth predict": {"expect": ["img1_depth.png", "img1_side.png"], "in_out": True},
    "eval-recon": {"set": {"--sheet": "recon.png"}, "append": ["--size", "64", "--limit", "2", "--batch-size", "2",
                                                                 "--lpips", "none", "--no-progress"],
                   "expect": ["recon.png"]},
}


# ----------------------------------------------------------------------------------------------- parsing
def readme_commands(text: str) -> list[str]:
    """`svgfeat ...` commands of the README's bash blocks: continuation lines joined, comments and optional
    [...] parts removed, `a ; b` and `pip install ... && b` split."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        lines, cur = [], ""
        for raw in block.splitlines():
            line = raw.rstrip()
            if cur and (cur.endswith("\\") or re.match(r"\s+(\[|--)", line)):
                cur = cur.rstrip("\\").rstrip() + " " + line.strip()
                continue
            if cur:
                lines.append(cur)
            cur = line
        if cur:
            lines.append(cur)
        for line in lines:
            line = re.sub(r"\s#.*$", "", line)
            for part in re.split(r";|&&", line):
                part = part.strip()
                if part.startswith("svgfeat "):
                    while re.search(r"\[[^\[\]]*\]", part):
                        part = re.sub(r"\s*\[[^\[\]]*\]", "", part)
                    out.append(part)
    return out


def rule_for(argv: list[str]) -> tuple[str, dict]:
    for n in (2, 1):
        key = " ".join(argv[:n])
        if key in RULES:
            return key, RULES[key]
    raise AssertionError(f"README command `svgfeat {' '.join(argv)}` has no rule in tests/test_readme_cli.py RULES: "
                         "add one (placeholders, small settings, expected outputs)")


def map_command(cmd: str, ctx: dict) -> tuple[str, list[str], dict]:
    text = cmd[len("svgfeat "):]
    argv0 = shlex.split(text)
    key, rule = rule_for(argv0)
    if key == "extract" and any("/data/imagenet" in a for a in argv0):
        key, rule = "extract@gen", RULES["extract@gen"]
    for a, b in rule.get("swap", {}).items():
        text = text.replace(a, b)
    argv = []
    for tok in shlex.split(text):
        argv += map_token(tok, ctx)
    for opt, val in OPTION_VALUES.items():  # big-machine settings
        if opt in argv:
            i = argv.index(opt)
            argv[i:i + 2] = [] if val is None else [opt, val]
    for opt, val in rule.get("set", {}).items():
        if opt in argv:
            argv[argv.index(opt) + 1] = val
        else:
            argv += [opt, val]
    extra = rule.get("append", [])
    argv += [a for j, a in enumerate(extra) if not (a.startswith("-") and a in argv) and
             not (j > 0 and extra[j - 1].startswith("-") and extra[j - 1] in argv)]
    return key, argv, rule


def map_token(tok: str, ctx: dict) -> list[str]:
    def fill(v):
        return v.format(G=ctx["G"], R=ctx["R"], T=ctx["T"])

    if tok.startswith("../shared/golden/"):
        return [f"{ctx['G']}/{tok.split('/')[-1]}"]
    if tok in TOKENS:
        v = TOKENS[tok]
        return [fill(x) for x in v] if isinstance(v, list) else [fill(v)]
    for k in ("/data/imagenet", "/data/ADEChallengeData2016", "/data/nyu", "CACHE"):
        if tok.startswith(k):
            return [fill(TOKENS[k]) + tok[len(k):]]
    return [tok]


# ----------------------------------------------------------------------------------------------- data
def make_data(T: Path) -> None:
    import torch

    from svgfeat.data import open_dataset
    from svgfeat.data.segmentation import open_seg_dataset, write_folder_dataset
    from svgfeat.evaluation.fid import build_fid_inception

    T.mkdir(parents=True, exist_ok=True)
    photos = open_dataset("sample:photos")
    for i in (1, 2):
        photos.load(i).save(T / f"img{i}.png")
    digits = open_dataset("sample:digits/train")
    for c in range(3):  # 3 classes, 6 train + 2 val images each, at 256 px (the DiT's 16x16 grid)
        idx = [i for i in range(len(digits)) if int(digits.labels[i]) == c][:8]
        for k, i in enumerate(idx):
            d = T / "imagenet" / ("train" if k < 6 else "val") / f"n0000000{c}"
            d.mkdir(parents=True, exist_ok=True)
            digits.load(i).resize((256, 256)).save(d / f"{i:04d}.png")
    seg = open_seg_dataset("sample:digitseg/train")

    class First4:  # the first 4 pairs, for write_folder_dataset
        paths, classes = seg.paths[:4], seg.classes

        def __len__(self):
            return 4

        def load_pair(self, i):
            return seg.load_pair(i)

    write_folder_dataset(First4(), T / "ade", layout="ade20k", split="train")
    write_folder_dataset(First4(), T / "ade", layout="ade20k", split="val")
    from svgfeat.data.depth import open_depth_dataset, write_depth_folder

    rooms = open_depth_dataset("sample:depth/val").subset(range(4))  # 4 rendered rooms per NYUv2 split
    for split in ("train", "test"):
        write_depth_folder(rooms, T / "nyu", layout="nyu-mmseg", split=split)
    torch.save(build_fid_inception().state_dict(), T / "inception_random.pth")  # random weights: plumbing only
    np.savez(T / "ref_stats.npz", mu=np.zeros(2048), sigma=np.eye(2048))


# ----------------------------------------------------------------------------------------------- running
def run_cli(argv: list[str]) -> int:
    from svgfeat.cli import main

    try:
        main(argv)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def run_server(argv: list[str], cwd: Path) -> None:
    port = _free_port()
    i = argv.index("--port")
    argv[i + 1] = str(port)
    proc = subprocess.Popen([sys.executable, "-m", "svgfeat", *argv], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=5) as r:
                    info = json.loads(r.read())
                assert r.status == 200 and isinstance(info, dict) and info, info
                return
            except OSError:
                if proc.poll() is not None:
                    raise AssertionError(f"serve exited {proc.returncode}: {proc.stdout.read()[-2000:]}") from None
                time.sleep(1)
        raise AssertionError("serve did not answer /api/info within 300 s")
    finally:
        proc.terminate()
        proc.wait(30)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _out_arg(argv):
    for o in ("-o", "--out"):
        if o in argv:
            return argv[argv.index(o) + 1]
    return None


def test_readme_parsing_covers_known_shapes():
    cmds = readme_commands("```bash\nsvgfeat a X [--b c] \\\n   --d e   # note\nsvgfeat x y ; svgfeat z\n"
                           "pip install -e . && svgfeat q\nsvgfeat r A\n        [--s t] [--u v]\n```\n")
    assert cmds == ["svgfeat a X --d e", "svgfeat x y", "svgfeat z", "svgfeat q", "svgfeat r A"]
    with pytest.raises(AssertionError, match="has no rule"):
        rule_for(["no-such-command"])


def test_every_readme_cli_line_runs(tmp_path, golden, monkeypatch):
    G = Path(golden("dinov3_vits16plus_random.pth")).parent
    R = G.parent / "reference"
    if not (R / "dinov3_sp_stats.pt").is_file():
        golden("../reference/dinov3_sp_stats.pt")  # skip, or fail under CI=true, through conftest
    ctx = {"G": str(G), "R": str(R), "T": str(tmp_path / "data")}
    make_data(Path(ctx["T"]))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # never the user's cache
    commands = readme_commands((ROOT / "README.md").read_text())
    assert len(commands) >= 20, commands
    failures = []
    for cmd in commands:
        key, argv, rule = map_command(cmd, ctx)
        t = time.time()
        if rule.get("server"):
            try:
                run_server(argv, work)
            except AssertionError as e:
                failures.append(f"{cmd}\n  -> {' '.join(argv)}\n  {e}")
            continue
        code = run_cli(argv)
        missing = []
        out = _out_arg(argv)
        base = Path(out) if (out and rule.get("in_out")) else work
        for f in rule.get("expect", []):
            if not (base / f).exists() and not (work / f).exists():
                missing.append(str(base / f))
        if (rule.get("expect_out") or rule.get("expect_dir")) and out and not Path(out).exists():
            missing.append(out)
        print(f"[{time.time() - t:6.1f} s] exit {code}: svgfeat {' '.join(argv)}")
        if code != 0 or missing:
            failures.append(f"{cmd}\n  -> svgfeat {' '.join(argv)}\n  exit {code}, missing {missing}")
    assert not failures, "README commands failed:\n" + "\n".join(failures)
