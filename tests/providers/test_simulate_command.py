"""`creditbot simulate` serves both APIs on one port and prints where."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]


def test_simulate_prints_its_url_and_serves_both_apis():
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "simulate", "--port", "0", "--mj-seconds", "0.1"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("Simulated upstream on http://127.0.0.1:")
        url = first.split(" on ", 1)[1].strip()
        models = httpx.get(url + "/v1/models", timeout=5).json()
        assert any(m["id"] == "gpt-4o" for m in models["data"])
        submit = httpx.post(url + "/mj/submit/imagine", json={"prompt": "cat"}, timeout=5).json()
        assert submit["code"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
