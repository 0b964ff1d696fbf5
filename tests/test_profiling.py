"""The trace summary against hand-built traces (the GPU layout cannot be produced on CPU CI), and a real
jax.profiler trace of a small jitted function."""

from __future__ import annotations

import contextlib
import gzip
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest
import torch

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


def test_device_lines_without_stream_or_xla_ops_names_still_count_device_events_only(tmp_path: Path) -> None:
    events = [
        _meta("process_name", 1, "/host:CPU"),
        _meta("process_name", 2, "/device:TPU:0"),
        _meta("thread_name", 2, "TensorCore", tid=3),
        _span(1, 1, "host_op", 9000.0),
        _span(2, 3, "fusion.7", 300.0),
        _span(2, 3, "fusion.7", 100.0),
    ]
    s = profiling.summarize_jax_trace(_write(tmp_path / "t.trace.json.gz", events), steps=2, wall_seconds=0.01)
    assert s["source"] == "device events"
    assert s["device_ms_per_step"] == pytest.approx(0.2)  # (300 + 100) us over 2 steps, the host op left out
    assert [k["name"] for k in s["top"]] == ["fusion.7"]


def test_format_profile_lists_the_requested_number_of_kernels() -> None:
    totals = {f"k{i}": float(100 - i) for i in range(30)}
    s = profiling._summary("device stream kernels", 1, 1.0, totals, dict.fromkeys(totals, 1))
    assert len(s["top"]) == profiling.TOP
    for top in (3, 12, 25):
        assert len(profiling.format_profile("x", s, top=top).splitlines()) == 1 + top
    empty = profiling._summary("host", 1, 1.0, {"a": 0.0}, {"a": 1})
    assert empty["top"][0]["share"] == 0.0  # no time at all: no share, not 100%


def test_a_profile_that_writes_no_trace_is_an_error_even_after_an_earlier_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An earlier trace in the same directory must not be summarized as this profile's.
    f = jax.jit(lambda x: (x * 2).sum())
    x = jnp.ones((8,))
    profiling.profile_jax(lambda: f(x), 1, tmp_path)
    monkeypatch.setattr(jax.profiler, "trace", lambda *a, **k: contextlib.nullcontext())
    with pytest.raises(RuntimeError, match="wrote no trace"):
        profiling.profile_jax(lambda: f(x), 1, tmp_path)


def test_stream_named_host_threads_are_not_device_kernels(tmp_path: Path) -> None:
    events = [
        _meta("process_name", 1, "/host:CPU"),
        _meta("process_name", 2, "/device:GPU:0"),
        _meta("thread_name", 1, "StreamExecutor callback", tid=7),
        _meta("thread_name", 2, "Stream #13(Compute)", tid=13),
        _span(1, 7, "host_callback", 5000.0),
        _span(2, 13, "gemm", 250.0),
    ]
    s = profiling.summarize_jax_trace(_write(tmp_path / "t.trace.json.gz", events), steps=1, wall_seconds=0.01)
    assert s["source"] == "device stream kernels" and [k["name"] for k in s["top"]] == ["gemm"]
    assert s["device_ms_per_step"] == pytest.approx(0.25)


def test_jax_wall_time_waits_for_the_device(tmp_path: Path) -> None:
    # jax dispatches asynchronously: a wall time taken before the results are ready measures the dispatch only.
    f = jax.jit(lambda x: jnp.tanh(x @ x @ x @ x).sum())
    x = jnp.ones((1024, 1024))
    f(x).block_until_ready()
    synced = []
    for _ in range(3):
        t0 = time.perf_counter()
        f(x).block_until_ready()
        synced.append(time.perf_counter() - t0)
    s = profiling.profile_jax(lambda: f(x), 3, tmp_path)
    assert s["wall_ms_per_step"] >= 0.5 * 1000 * min(synced), (s["wall_ms_per_step"], synced)



def test_jax_wall_time_leaves_out_work_queued_before_the_profile(tmp_path: Path) -> None:
    # The step's input is still being computed when profiling starts: that wait belongs to the caller, not to
    # the traced steps, so profile_jax lets it finish before its clock starts.
    heavy = jax.jit(lambda x: jax.lax.fori_loop(0, 40, lambda i, a: jnp.tanh(a @ a), x))
    cheap = jax.jit(lambda a: a[0, :8] * 2)
    x = jnp.full((1024, 1024), 1e-3)
    cheap(heavy(x)).block_until_ready()
    t0 = time.perf_counter()
    heavy(x).block_until_ready()
    heavy_seconds = time.perf_counter() - t0
    pending = heavy(x)  # dispatched, not finished
    s = profiling.profile_jax(lambda: cheap(pending), 3, tmp_path)
    assert 3 * s["wall_ms_per_step"] < 0.25 * 1000 * heavy_seconds, (s["wall_ms_per_step"], heavy_seconds)

def test_torch_profile_counts_top_level_operators_once(tmp_path: Path) -> None:
    a, b = torch.randn(64, 64), torch.randn(64, 64)
    s = profiling.profile_torch(lambda: torch.nn.functional.linear(a, b).relu(), 4, tmp_path, "lin")
    assert s["source"].startswith("host operators") and s["steps"] == 4
    calls = {k["name"]: k["calls_per_step"] for k in s["top"]}
    # linear's own children (aten::t, aten::addmm or aten::matmul...) are nested under it: not counted again
    assert calls == {"aten::linear": 1.0, "aten::relu": 1.0}, calls
    assert s["kernels_per_step"] == 2.0
    assert Path(s["trace"]).is_file() and Path(s["trace"]).name == "lin.trace.json"
