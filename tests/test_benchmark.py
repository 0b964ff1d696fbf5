"""The benchmark CLI end to end at CI size, and the analytic FLOP count against torch's own layer shapes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import cpu_model_name
from flax_resnet import benchmark, hugepages
from torch_ref import models as torch_models

ROOT = Path(__file__).resolve().parents[1]


def _torch_macs(arch: str, variant: str, size: int) -> int:
    """Multiply-adds of conv/linear layers measured with forward hooks on the torch reference model."""
    model = torch_models.create_model(arch, variant).eval()
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            total += output.numel() * module.in_channels * kh * kw  # batch 1
        else:
            total += module.in_features * module.out_features

    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return total


@pytest.mark.parametrize(
    ("arch", "variant", "size"),
    [("resnet18", "cifar", 32), ("resnet18", "imagenet", 32), ("resnet18", "article", 32), ("resnet50", "article", 32),
     ("resnet34", "imagenet", 65)],
)
def test_forward_macs_match_torch_model(arch: str, variant: str, size: int) -> None:
    assert benchmark.forward_macs(arch, variant, size) == _torch_macs(arch, variant, size)


def test_train_flops_by_hand() -> None:
    # cifar ResNet-18 stem conv: 32*32 positions * 3*3*3 * 64 = 1,769,472 MACs; training = 3 x 2 x forward MACs.
    layers = benchmark.model_layers("resnet18", "cifar")
    assert layers[0].macs == 32 * 32 * 27 * 64
    assert benchmark.train_flops_per_image("resnet18", "cifar") == 6 * benchmark.forward_macs("resnet18", "cifar")


def test_cli_writes_records(tmp_path: Path) -> None:
    out = tmp_path / "tmp.json"
    cmd = [
        sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--arch", "resnet18", "--variant", "imagenet",
        "--batch-size", "8", "--steps", "3", "--warmup", "1", "--windows", "5", "--modes", "jit,eager",
        "--json", str(out), "--profile", str(tmp_path / "profile"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads(out.read_text())
    seen = {(r["framework"], r["mode"], r["dtype"], r["input"]) for r in records}
    assert {("jax", "jit", "float32", "augmented"), ("jax", "jit", "float32", "fixed"),
            ("jax", "jit", "bfloat16", "augmented"), ("torch", "eager", "float32", "fixed")} <= seen
    for r in records:
        assert set(benchmark.RECORD_KEYS) <= set(r)
        assert r["train_images_per_second"] > 0 and r["eval_images_per_second"] > 0
        assert r["peak_memory_mb"] > 0 and r["compile_seconds"] >= 0
        assert len(r["window_images_per_second"]) == 5
        assert (r["arch"], r["variant"], r["batch_size"]) == ("resnet18", "imagenet", 8)
        assert r["device"].startswith("cpu (" + cpu_model_name()), r["device"]  # CPU ratios depend on the model
    assert "ratio jax float32 (augmented) / torch eager float32" in proc.stdout
    # Each record says how it was made: a table of rates cannot be checked, or trusted, without it.
    for r in records:
        assert r["command"].startswith("python scripts/benchmark.py --arch resnet18 --variant imagenet")
        assert (r["steps"], r["warmup"], r["windows"]) == (3, 1, 5) and r["date"].endswith(" UTC")
        assert {"python", "jax", "flax", "optax", "torch"} <= set(r["versions"])
        assert len(r["load_average_before"]) == 3 and len(r["load_average_after"]) == 3 and r["cpu_count"] >= 1
        assert r["git_commit"] is None or len(r["git_commit"].removesuffix("+changes")) == 40
    assert "not measured: torch eager bfloat16 (torch bfloat16 runs on a GPU only here)" in proc.stderr
    assert "compile s: jax, the train step's ahead-of-time compile" in proc.stdout
    # the script re-executes itself with malloc huge pages where the machine has them (flax_resnet/hugepages.py),
    # and each record says which pages its process had
    on = hugepages.enabled() or hugepages.wanted()  # set by the user already, or by the script's re-execution
    assert {r["malloc_hugepages"] for r in records} == {on}
    assert ("host malloc: transparent huge pages" if on else "host malloc: 4 KiB pages") in proc.stdout
    for r in records:
        if r["input"] == "augmented":  # the input work alone is part of the augmented step, so it is shorter
            step_ms = 1000 * r["batch_size"] / r["train_images_per_second"]
            assert 0 < r["input_ms_per_step"] < step_ms, (r["input_ms_per_step"], step_ms)
    assert "input work alone:" in proc.stdout
    # the augmented and fixed steps were timed in alternating windows, and their ratio is per window pair
    paired = {r["dtype"]: r["augmented_over_fixed_windows"] for r in records if r["input"] == "augmented"}
    assert set(paired) == {"float32", "bfloat16"} and all(len(v) == 5 and min(v) > 0 for v in paired.values())
    assert "input pipeline jax float32: augmented / fixed batch = " in proc.stdout
    assert "median of 5 paired windows" in proc.stdout
    # The trainer's call passes the state packed (flax_resnet/packing.py: 44 arrays for this ResNet-18, counted
    # in tests/test_packing.py) because the host's work per call grows with the arrays, and more so for the
    # TrainState pytree that the fixed step takes: 62 params (20 conv kernels, 20 BatchNorms' scale and bias,
    # fc weight and bias), 60 BatchNorm statistics (mean, var, count), 62 momentum buffers and the step = 185
    # (the benchmark's constant learning rate keeps no schedule count).
    host = {(r["dtype"], r["input"]): r["host_ms_per_call"] for r in records if r["framework"] == "jax"}
    assert all(ms > 0 for ms in host.values()), host
    assert host[("float32", "augmented")] < host[("float32", "fixed")], host
    arrays = {r["input"]: r["state_arrays"] for r in records if r["framework"] == "jax" and r["dtype"] == "float32"}
    assert arrays == {"augmented": 44, "fixed": 185}, arrays
    assert "host time per call jax float32:" in proc.stdout
    profiled = [r for r in records if r["framework"] == "torch" or r["input"] == "augmented"]
    assert all("profile" not in r for r in records if r not in profiled)
    for r in profiled:  # --profile: each torch run and the trainer's JAX call traced and summarized
        prof = r["profile"]
        assert prof["steps"] == 3 and prof["wall_ms_per_step"] > 0 and prof["top"], prof
        assert Path(prof["trace"]).is_file()
    assert "profile jax jit float32 (augmented): wall" in proc.stdout
    assert "profile torch eager float32 (fixed): wall" in proc.stdout


@pytest.mark.parametrize(
    ("flag", "says"),
    [
        (["--arch", "resnet19"], "argument --arch: invalid choice: 'resnet19' (choose from 'resnet18', "),
        # float64 needs 64-bit JAX for the whole process: it failed after the table's first line
        (["--dtypes", "float32,float64"], "error: unknown dtype 'float64'; valid choices: float32, bfloat16"),
    ],
)
def test_cli_bad_flag_is_one_line_error(tmp_path: Path, flag: list[str], says: str) -> None:
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), *flag, "--frameworks", "jax"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and says in proc.stderr, proc.stderr


@pytest.mark.parametrize(
    ("flags", "says"),
    [
        (["--warmup", "0"], "argument --warmup: must be a positive integer, got 0"),  # compile time in a window
        (["--conv-table", "t.md", "--batch-size", "0"], "argument --batch-size: must be at least 2"),
        (["--conv-table", "t.md", "--conv-repeats", "0"], "argument --conv-repeats: must be a positive integer"),
        (["--steps", "-1"], "argument --steps: must be a positive integer, got -1"),
        (["--peak-tflops", "-1"], "argument --peak-tflops: must be a positive finite number, got -1"),  # "-0.1%"
        (["--peak-tflops", "nan"], "argument --peak-tflops: must be a positive finite number, got nan"),
        (["--conv-table", "t.md", "--json", "t.json"], "--conv-table writes only its table: drop --json"),
    ],
)
def test_cli_counts_that_measure_nothing_or_compilation_are_usage_errors(
    flags: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_cli", ROOT / "scripts" / "benchmark.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        cli.main(flags)
    assert exit_info.value.code == 2 and says in capsys.readouterr().err.strip().splitlines()[-1]
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="--warmup >= 1"):  # the API refuses them too
        benchmark.run_benchmark("resnet18", "cifar", 8, warmup=0)
    with pytest.raises(ValueError, match="--conv-repeats >= 1"):
        benchmark.conv_shape_report(repeats=0)


@pytest.mark.parametrize("flag", ["--json", "--conv-table"])
def test_cli_output_in_a_missing_folder_is_refused_before_measuring(tmp_path: Path, flag: str) -> None:
    out = tmp_path / "missing" / "out"
    cmd = [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--frameworks", "jax", flag, str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{flag} {out}: no such directory" in proc.stderr.strip().splitlines()[-1]


def test_alternating_windows_time_each_call_in_abba_order() -> None:
    """Window by window, the calls take turns, reversed on odd windows, after each call's own warm-up."""
    log: list[str] = []
    synced: list[str] = []
    runs = [lambda: log.append("a") or "a", lambda: log.append("b") or "b"]
    times = benchmark.time_windows_alternating(runs, synced.append, warmup=1, windows=4, steps=2)
    assert "".join(log) == "a" + "b" + "aa" + "bb" + "bb" + "aa" + "aa" + "bb" + "bb" + "aa"
    assert "".join(synced) == "ab" + "abbaabba"  # after each call's warm-up, then after each window
    assert [len(t) for t in times] == [4, 4] and all(x >= 0 for t in times for x in t)
    assert benchmark.time_windows(runs[0], synced.append, warmup=0, windows=3, steps=1) and log.count("a") == 12


def test_the_rates_count_the_timed_steps_of_the_batch_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every window made to last 1 s: 3 timed steps of 8 images are 24 img/s, train and eval, JAX and torch (a
    rate over the warm-up steps too, or over another batch size, would not be)."""
    real = benchmark.time_windows_alternating

    def one_second_windows(runs, sync, warmup, windows, steps):
        real(runs, sync, warmup, windows, steps)  # every call made as usual; only the clock is replaced
        return [[1.0] * windows for _ in runs]

    monkeypatch.setattr(benchmark, "time_windows_alternating", one_second_windows)
    counts = dict(steps=3, warmup=2, windows=2)
    records = [*benchmark.bench_jax("resnet18", "imagenet", 8, "float32", **counts),
               benchmark.bench_torch("resnet18", "imagenet", 8, "eager", "float32", **counts)]  # fmt: skip
    for r in records:
        assert (r["train_images_per_second"], r["eval_images_per_second"]) == (24.0, 24.0), r
        assert r["window_images_per_second"] == [24.0, 24.0]


def test_a_record_is_the_median_window_and_its_flops_by_hand() -> None:
    # Three windows of 10 steps of 8 images in 1, 2 and 4 s: 80, 40 and 20 img/s, median 40 (mean 46.7, max 80).
    r = benchmark._record("jax", "jit", "float32", "resnet18", "cifar", 8, "cpu", "fixed", [1.0, 2.0, 4.0], [0.5],
                          10, 3.0, 100.0, "rss", peak_tflops=2.0)  # fmt: skip
    assert r["window_images_per_second"] == [80.0, 40.0, 20.0]
    assert r["train_images_per_second"] == 40.0 and r["eval_images_per_second"] == 160.0
    assert r["achieved_tflops"] == pytest.approx(40.0 * r["train_flops_per_image"] / 1e12)
    assert r["fraction_of_peak"] == pytest.approx(r["achieved_tflops"] / 2.0)


def test_a_refused_run_leaves_no_profile_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("benchmark_cli", ROOT / "scripts" / "benchmark.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    (tmp_path / "kept").mkdir()
    code = cli.main(["--frameworks", "jax", "--dtypes", "float16", "--profile", str(tmp_path / "kept/new/deep")])
    assert code == 2 and "error: unknown dtype 'float16'" in capsys.readouterr().err
    assert [p.name for p in tmp_path.rglob("*")] == ["kept"]  # the folders it made, not the one that was there


def test_the_table_names_the_pages_malloc_asks_for() -> None:
    assert hugepages.describe({}) == "4 KiB pages"
    assert hugepages.describe({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}) == "transparent huge pages"
    # 2 is HugeTLB: the kernel's reserved pool, not transparent huge pages (the table said so for both)
    assert hugepages.describe({"GLIBC_TUNABLES": "a=1:glibc.malloc.hugetlb=2"}) == (
        "HugeTLB pages (glibc.malloc.hugetlb=2)"
    )


def test_the_conv_table_refuses_a_jax_off_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch's tensors stay on the CPU there: JAX on a GPU would make the speedup column meaningless
    monkeypatch.setattr(benchmark.jax, "default_backend", lambda: "gpu")
    with pytest.raises(ValueError, match="--conv-table times the CPU's lowerings, and JAX is on gpu"):
        benchmark.conv_shape_report(repeats=1)
