"""The GPU recipe's commands run with only the packages a lent GPU machine's image holds.

scripts/gpu_check.sh runs the repository there without installing it, on the image's own torch,
transformers and peft, with bm25s and the corpus carried beside it (scripts/device_carry.sh). A
module-level import of one of our other dependencies on that path (faiss, gguf, fastapi, ...) fails
only there, where device time is scarce (docs/TRAINING.md, "One GPU"). Here those packages are
hidden from `clara synth`, `clara train` and the export, each in its own process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

# Our dependencies that the device image lacks and the carry does not bring (its image's package
# list as of 2026-11; bm25s travels in the carry's site/).
NOT_IN_DEVICE_IMAGE = ("faiss", "gguf", "pypdf", "docx", "fastapi", "uvicorn", "mcp", "ray")

# As if not installed: importing raises ModuleNotFoundError, importlib.util.find_spec says None.
HIDE_AND_RUN = """
import importlib.util, runpy, sys
hidden = set(sys.argv[1].split(","))

class NotInImage:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in hidden:
            raise ModuleNotFoundError(f"No module named {name!r} (not in the device image)")
        return None

sys.meta_path.insert(0, NotInImage())
find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: (
    None if name.partition(".")[0] in hidden else find_spec(name, package))
sys.argv = sys.argv[2:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def run_without_image_gaps(module: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", HIDE_AND_RUN, ",".join(NOT_IN_DEVICE_IMAGE), module, *args],
                          env=env, capture_output=True, text=True, timeout=300)


def test_hidden_packages_are_really_hidden():
    """clara_cli.index imports faiss at module level: it must fail there, as on the device."""
    run = run_without_image_gaps("clara_cli.index")
    assert run.returncode != 0 and "No module named 'faiss' (not in the device image)" in run.stderr


def test_gpu_recipe_commands_run_without_packages_the_device_image_lacks(tmp_path, tiny_model_dir):
    synth = run_without_image_gaps("clara_cli.cli", "synth", "--split", "train", "--limit", "30",
                                   "--questions", "natural", "--out", str(tmp_path / "data"))
    assert synth.returncode == 0, synth.stderr[-3000:]
    train = run_without_image_gaps("clara_cli.cli", "train", "scp", str(tmp_path / "data" / "pretrain.jsonl"),
                                   "--init-from", str(tiny_model_dir), "--out", str(tmp_path / "scp"),
                                   "--steps", "2", "--batch-size", "2", "--grad-accum", "2", "--no-dropout",
                                   "--dtype", "fp32", "--device", "cpu", "--json")
    assert train.returncode == 0, train.stderr[-3000:]
    assert json.loads(train.stdout.splitlines()[-1])["step"] == 2
    export = run_without_image_gaps("clara_cli.train.export", str(tmp_path / "scp"), str(tmp_path / "model"), "bf16")
    assert export.returncode == 0, export.stderr[-3000:]
    assert (tmp_path / "model" / "clara.json").is_file()
