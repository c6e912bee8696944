"""`python app.py` starts offline on the CPU with the tiny model; flags; the ZeroGPU shim."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_python_app_py_starts_offline_with_the_tiny_model(tiny_checkpoint, tmp_path):
    from gradio_client import Client

    port = _free_port()
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", EDITMGT_CACHE=str(tmp_path))
    proc = subprocess.Popen(
        [sys.executable, "app.py", "--port", str(port), "--checkpoint", f"tiny={tiny_checkpoint}",
         "--max-loaded", "2", "--memory-budget", "1", "--device", "cpu"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        deadline = time.time() + 180
        while time.time() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
            lines.append(line)
            if f"127.0.0.1:{port}" in line:
                break
        log = "".join(lines)
        assert f"127.0.0.1:{port}" in log, log
        assert "start-up model: tiny" in log
        client = Client(f"http://127.0.0.1:{port}", verbose=False)
        models = {m["id"]: m for m in client.predict(api_name="/models")}
        assert models["tiny"]["state"] == "not loaded"  # nothing heavy loads before first use
        assert "--checkpoint" in models["tiny"]["source"]
        client.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_flags_parse():
    import app

    args = app.parse_args(["--model", "tiny", "--8bit", "--checkpoint", "a=b/c", "--checkpoint", "d=/e",
                           "--host", "0.0.0.0", "--port", "9000", "--share", "--max-loaded", "3",
                           "--memory-budget", "12.5", "--device", "cuda:1"])
    assert (args.model, args.load_8bit, args.checkpoint) == ("tiny", True, ["a=b/c", "d=/e"])
    assert (args.host, args.port, args.share, args.max_loaded, args.memory_budget, args.device) == (
        "0.0.0.0", 9000, True, 3, 12.5, "cuda:1")


def test_bad_zoo_exits_with_a_message(tmp_path, caplog):
    import app

    bad = tmp_path / "zoo.yaml"
    bad.write_text("models:\n  - id: x\n")
    with pytest.raises(SystemExit) as exit_info:
        app.main(["--zoo", str(bad)])
    assert exit_info.value.code == 2
    assert "field 'label' is missing" in caplog.text


def test_spaces_shim_is_a_no_op_off_zero_gpu():
    from editmgt_app import gpu

    def f(x):
        return x + 1

    assert gpu.gpu(duration=lambda x: 10)(f)(1) == 2
    assert 20 <= gpu.edit_duration(16, 1, 1024) <= gpu.MAX_DURATION_S
    assert gpu.edit_duration(100, 8, 1024) == gpu.MAX_DURATION_S
