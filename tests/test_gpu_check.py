"""benchmarks/gpu_check.py at its tiny size on the CPU: every part runs, the results file holds them, no Ray."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_runs_tiny_without_ray(tmp_path):
    out = tmp_path / "gpu.json"
    script = ("import runpy, sys; sys.argv = ['benchmarks/gpu_check.py', '--tiny', '--out', sys.argv[1]]\n"
              "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
              "except SystemExit as e:\n    assert not e.code, e.code\n"
              "assert 'ray' not in sys.modules, 'gpu_check imported ray'\n")
    done = subprocess.run([sys.executable, "-c", script, str(out)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["tiny"] and result["device"] == "cpu" and result["gpu"] is None
    extraction = result["extraction"]
    assert extraction["steps"] > 0 and extraction["detection"]["device"] == "cpu"
    training = result["training"]
    assert [row["epoch"] for row in training["side_by_side"]] == [1, 2]
    assert training["bf16"]["dtypes"]["attention.lstm"] == training["fp32"]["dtypes"]["attention.lstm"] == \
        "torch.float32"
    assert training["bf16"]["dtypes"]["classifier"] == "torch.bfloat16"
    assert result["bdlstm"]["bdlstm_ms_median"] > 0 and result["sriv_epoch"]["epoch"]["videos"] > 0
    assert "skipped" in result["ray_train"] and result["total_s"] > 0
