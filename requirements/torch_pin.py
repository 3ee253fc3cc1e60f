"""Print torch's pin from pyproject.toml's train extra (`make lock` writes requirements/torch.txt).

Torch is the one requirement of the train image not in train.lock: its source is a build
argument (PyTorch's CPU index, a mirror or a directory), so it is pinned by version only.
A resolution that took torch's CUDA build (nvidia-* packages) is refused here, not shipped.
"""

import sys
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
project = tomllib.loads((HERE.parent / "pyproject.toml").read_text())["project"]
torch = [r for r in project["optional-dependencies"]["train"] if r.startswith("torch==")]
if len(torch) != 1:
    sys.exit(f"torch_pin: expected one torch== pin in the train extra, found {torch}")
if "nvidia-" in (HERE / "train.lock").read_text():
    sys.exit("torch_pin: train.lock holds CUDA packages: set LOCK_TORCH_OPTIONS to the CPU build")
print("# Written by `make lock` from pyproject.toml: torch alone, by version (see train.lock).")
print(torch[0])
