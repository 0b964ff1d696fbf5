"""The trace summary against hand-built traces (the GPU layout cannot be produced on CPU CI), and a real
jax.profiler trace of a small jitted function."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from flax_resnet import profiling


def _write(path: Path, events: list[dict]) -> Path:
    with gzip.open(path, "wt") as f:
        json.dump({"displayTimeUnit": "ns", "metadata": {}, "traceEvents": events}, f)
    return path


def _meta(kind: str, pid: int, name: str, tid: int = 0) -> dict:
    return {"ph": "M", "name": kind, "pid": pid, "tid": tid, "args": {"name": name}}


def _span(pid: int, tid: int, name: str, dur: float) -> dict:
    return {"ph": "X", "pid": pid, "tid": tid, "name": name, "ts": 0, "dur": dur}


def test_gpu_layout_counts_stream_kernels_once(tmp_path: Path) -> None:
    # A GPU trace repeats each op on an "XLA Ops" line; only the stream's kernels may count.
    events = [
        _meta("process_name", 1, "/host:CPU"),
        _meta("process_name", 2, "/device:GPU:0"),
        _meta("thread_name", 2, "Stream #13(Compute)", 13),
        _meta("thread_name", 2, "XLA Ops", 99),
        _span(1, 1, "$train.py:10 step", 5000.0),
        _span(1, 1, "PjitFunction(step)", 800.0),
        *[_span(2, 13, "sm90_xmma_fprop_implicit_gemm", 300.0) for _ in range(4)],
        *[_span(2, 13, "loop_add_fusion", 50.0) for _ in range(2)],
        _span(2, 13, "input_reduce_fusion", 200.0),
        *[_span(2, 99, "fusion.1", 1000.0) for _ in range(3)],
    ]
    s = profiling.summarize_jax_trace(_write(tmp_path / "t.trace.json.gz", events), steps=2, wall_seconds=0.004)
    assert s["source"] == "device stream kernels"
    assert s["wall_ms_per_step"] == pytest.approx(2.0)
    assert s["device_ms_per_step"] == pytest.approx((4 * 300 + 2 * 50 + 200) / 1000 / 2)  # 0.75 ms
    assert s["kernels_per_step"] == pytest.approx(3.5)
    top = s["top"][0]
    assert top["name"] == "sm90_xmma_fprop_implicit_gemm"
    assert top["ms_per_step"] == pytest.approx(0.6) and top["calls_per_step"] == pytest.approx(2.0)
    assert top["share"] == pytest.approx(1200 / 1500)
    assert [k["name"] for k in s["top"]] == ["sm90_xmma_fprop_implicit_gemm", "input_reduce_fusion", "loop_add_fusion"]


def test_device_without_stream_lines_uses_xla_ops(tmp_path: Path) -> None:
    events = [
        _meta("process_name", 2, "/device:TPU:0"),
        _meta("thread_name", 2, "XLA Ops", 5),
        _meta("thread_name", 2, "XLA Modules", 6),
        _span(2, 5, "convolution.3", 400.0),
        _span(2, 6, "jit_step", 900.0),
    ]
    s = profiling.summarize_jax_trace(_write(tmp_path / "t.trace.json.gz", events), steps=1, wall_seconds=0.001)
    assert s["source"] == "device XLA ops"
    assert s["device_ms_per_step"] == pytest.approx(0.4)


def test_cpu_trace_of_a_jitted_function(tmp_path: Path) -> None:
    f = jax.jit(lambda x: jnp.tanh(x @ x).sum())
    x = jnp.ones((256, 256))
    s = profiling.profile_jax(lambda: f(x), 3, tmp_path)
    assert Path(s["trace"]).is_file()
    assert s["source"].startswith("host events") and s["steps"] == 3
    assert s["wall_ms_per_step"] > 0 and s["top"]
    names = [k["name"] for k in s["top"]]
    assert not any(n.startswith("$") or "::" in n for n in names), names  # Python and runtime frames left out
    text = profiling.format_profile("f", s)
    assert text.startswith("profile f: wall") and len(text.splitlines()) == 1 + min(12, len(s["top"]))
