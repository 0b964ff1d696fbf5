"""scripts/parity_report.py: the table is the worst recorded difference per check, with pass counts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="1" skipped="1" tests="7" time="312.5"
 timestamp="2026-12-01T23:10:04.123456+00:00">
<testcase classname="parity_tests.test_gradients" name="test_gradients[resnet50-cifar]" time="10">
  <properties><property name="max_diff" value="5e-13"/><property name="torch_fp32_vs_fp64" value="0.013"/></properties>
</testcase>
<testcase classname="parity_tests.test_gradients" name="test_gradients[resnet18-cifar]" time="10">
  <properties><property name="max_diff" value="2e-14"/><property name="torch_fp32_vs_fp64" value="0.003"/></properties>
</testcase>
<testcase classname="parity_tests.test_weights" name="test_init_std[resnet18-cifar]" time="1">
  <properties><property name="max_diff" value="0.04"/></properties><failure message="x">boom</failure>
</testcase>
<testcase classname="parity_tests.test_weights" name="test_roundtrip_bitwise[resnet18-cifar]" time="1"/>
<testcase classname="parity_tests.test_weights" name="test_roundtrip_bitwise[resnet50-cifar]" time="1">
  <error message="fixture">setup failed</error>
</testcase>
<testcase classname="parity_tests.test_weights" name="test_roundtrip_bitwise[resnet34-cifar]" time="0">
  <skipped message="no"/>
</testcase>
<testcase classname="tests.test_data" name="test_something_else" time="1"/>
</testsuite></testsuites>
"""


def test_report_from_junit(tmp_path: Path) -> None:
    junit = tmp_path / "parity.xml"
    junit.write_text(JUNIT)
    out = tmp_path / "parity.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "parity_report.py"), str(junit), "--out", str(out), "--machine", "m"],
        capture_output=True, text=True,
    )
    # the init-std failure and the round trip's error count; the skipped round trip is not run
    assert proc.returncode == 1 and "2 parity test(s) failed" in proc.stderr
    text = out.read_text()
    assert "date 2026-12-01; wall time of the run 5.2 min (including 1 other tests, ignored in the table)" in text
    assert "parity tests 0.4 worker-minutes" in text  # 10 + 10 + 1 + 1 + 1 s
    # the largest of each column, although the largest comes first in the file
    grad = next(line for line in text.splitlines() if line.startswith("| gradients"))
    assert "| 2 / 2 | 5.00e-13 (resnet50-cifar); torch fp32 vs torch fp64 itself: up to 1.3e-02 |" in grad
    init = next(line for line in text.splitlines() if line.startswith("| fresh-init"))
    assert "| 0 / 1 | 4.00e-02 (resnet18-cifar) |" in init
    roundtrip = next(line for line in text.splitlines() if line.startswith("| round trip"))
    assert roundtrip.endswith("| 1 / 2 | - |")


def test_report_rejects_a_file_without_parity_tests(tmp_path: Path) -> None:
    junit = tmp_path / "other.xml"
    junit.write_text('<testsuites><testsuite time="1"><testcase name="test_x"/></testsuite></testsuites>')
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "parity_report.py"), str(junit)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1 and "no parity test results" in proc.stderr and proc.stderr.count("\n") == 1
