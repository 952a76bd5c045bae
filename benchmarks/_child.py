"""Run one measurement of a benchmark script in a fresh Python process.

A fresh process gives every measurement clean memory counters (peak RSS, CUDA peak) and no warm
caches from the previous one. The script re-runs itself with `--child SPEC_JSON` and prints
`RESULT <json>` as its last such line.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

PREFIX = "RESULT "


def child_main(measure: Any, spec_json: str) -> int:
    """The child side: measure(spec) -> dict, printed for the parent."""
    print(PREFIX + json.dumps(measure(json.loads(spec_json))))
    return 0


def run_child(script: str, spec: dict[str, Any], env: dict[str, str] | None = None
              ) -> tuple[dict[str, Any] | None, str]:
    """The parent side: (result, "") or (None, the child's stderr) when it failed or printed no result."""
    proc = subprocess.run([sys.executable, script, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    found = [line for line in proc.stdout.splitlines() if line.startswith(PREFIX)]
    if proc.returncode != 0 or not found:
        return None, proc.stderr or "no output"
    return json.loads(found[-1][len(PREFIX):]), ""
