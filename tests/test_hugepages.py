"""flax_resnet/hugepages.py: when the scripts re-execute with glibc's hugetlb tunable, that they do it once, and
that it cuts the page faults of XLA:CPU's per-call temp buffer (counted by the kernel, getrusage)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from flax_resnet import hugepages

ON_THIS_MACHINE = hugepages.wanted(env={})  # glibc >= 2.35 on Linux with THP in madvise or always mode


def test_thp_mode_reads_the_bracketed_word(tmp_path: Path) -> None:
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert hugepages.thp_mode(f) == "madvise"
    f.write_text("[always] madvise never\n")
    assert hugepages.thp_mode(f) == "always"
    f.write_text("always madvise [never]\n")
    assert hugepages.thp_mode(f) == "never"
    assert hugepages.thp_mode(tmp_path / "missing") is None


def test_not_wanted_when_switched_off_already_set_or_thp_never() -> None:
    assert not hugepages.wanted(env={"FLAX_RESNET_HUGEPAGES": "0"}, mode="madvise")
    assert not hugepages.wanted(env={"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, mode="madvise")  # user's choice
    assert not hugepages.wanted(env={"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"},
                                mode="always")
    assert not hugepages.wanted(env={}, mode="never")


def test_with_tunable_keeps_the_users_other_tunables() -> None:
    env = hugepages.with_tunable({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "HOME": "/h"})
    assert env == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", "HOME": "/h"}
    assert hugepages.with_tunable({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    assert hugepages.tunable_set(env) and not hugepages.tunable_set({"GLIBC_TUNABLES": "glibc.malloc.hugetlbx=1"})
    assert hugepages.enabled(env) and hugepages.tunable_set({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    assert not hugepages.enabled({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}) and not hugepages.enabled({})


def _python(code: str, *args: str, stdin: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -c code args...` (with `stdin`: `python - args...`, the code read from stdin) from the repo root,
    with no hugetlb setting inherited but the `env` given."""
    environ = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "FLAX_RESNET_HUGEPAGES")}
    program = ["-"] if stdin else ["-c", code]
    return subprocess.run(
        [sys.executable, *program, *args], input=code if stdin else None, cwd=REPO, env={**environ, **env},
        capture_output=True, text=True, timeout=120,
    )


@pytest.mark.skipif(not ON_THIS_MACHINE, reason="needs glibc >= 2.35 on Linux with transparent huge pages")
def test_reexec_happens_once_in_the_same_process_with_the_same_arguments() -> None:
    code = (
        "import os, sys\n"
        "from flax_resnet.hugepages import reexec_with_hugepages\n"
        "print('start', os.getpid(), os.environ.get('GLIBC_TUNABLES'), flush=True)\n"
        "reexec_with_hugepages()\n"
        "print('main', os.getpid(), os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])\n"
    )
    proc = _python(code, "--arg", "x y")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    pid = lines[0].split()[1]
    assert lines == [
        f"start {pid} None",  # before: no tunable
        f"start {pid} glibc.malloc.hugetlb=1",  # the re-executed process runs the script again, same PID
        f"main {pid} glibc.malloc.hugetlb=1 ['--arg', 'x y']",  # once: the tunable is set now
    ]
    off = _python(code, FLAX_RESNET_HUGEPAGES="0")
    assert [line.split()[0] for line in off.stdout.splitlines()] == ["start", "main"]


@pytest.mark.skipif(not ON_THIS_MACHINE, reason="needs glibc >= 2.35 on Linux with transparent huge pages")
def test_a_program_read_from_stdin_runs_once_without_re_exec() -> None:
    # stdin is consumed by the first interpreter: a re-executed one would read an empty program and exit 0
    # having done nothing.
    code = (
        "import os\n"
        "from flax_resnet.hugepages import reexec_with_hugepages\n"
        "reexec_with_hugepages()\n"
        "print('main', os.environ.get('GLIBC_TUNABLES'))\n"
    )
    proc = _python(code, "x", stdin=True)
    assert proc.returncode == 0 and proc.stdout.splitlines() == ["main None"], proc.stdout + proc.stderr


FAULTS = """
import json, resource, sys
from flax_resnet.hugepages import enabled, reexec_with_hugepages
reexec_with_hugepages()
import jax, jax.numpy as jnp
@jax.jit
def f(a, b):
    y = a @ b  # (16384, 1024) float32, and its flip: XLA temp buffers (128 MiB), allocated afresh each call
    return jnp.sum(y * jnp.flip(y, 0))
a, b = jnp.ones((16384, 64)), jnp.ones((64, 1024))
compiled = f.lower(a, b).compile()
compiled(a, b).block_until_ready()
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    compiled(a, b).block_until_ready()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 5
temp = compiled.memory_analysis().temp_size_in_bytes
print(json.dumps({"on": enabled(), "faults": faults, "temp": temp}))
"""


@pytest.mark.skipif(not ON_THIS_MACHINE, reason="needs glibc >= 2.35 on Linux with transparent huge pages")
def test_huge_pages_cut_the_page_faults_of_xla_temp_buffers() -> None:
    results = {}
    for switch in ("0", "1"):
        proc = _python(FAULTS, FLAX_RESNET_HUGEPAGES=switch)
        assert proc.returncode == 0, proc.stderr
        results[switch] = json.loads(proc.stdout.splitlines()[-1])
    off, on = results["0"], results["1"]
    assert not off["on"] and on["on"]
    assert off["temp"] >= 64 * 2**20
    # 4 KiB pages: about one fault per page of the temp buffers (32,768); 2 MiB pages: 64
    assert off["faults"] >= 0.5 * off["temp"] / 4096, results
    assert on["faults"] <= 0.1 * off["faults"], results


def test_importing_the_re_exec_loads_neither_jax_nor_flax() -> None:
    # The CLIs re-execute themselves before their other imports; if importing the package's hugepages module
    # loaded jax and flax (~1.6 s), every launch would load them twice. The public API still resolves on use.
    code = (
        "import sys\n"
        "import flax_resnet.hugepages\n"
        "print(sorted(m for m in ('jax', 'flax', 'torch', 'numpy') if m in sys.modules))\n"
        "import flax_resnet\n"
        "print(flax_resnet.create_model.__module__, flax_resnet.normalize.__module__, flax_resnet.models.__name__)\n"
        "print(sorted(flax_resnet.__all__) == sorted(flax_resnet._EXPORTS), 'jax' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "[]",
        "flax_resnet.models flax_resnet.data flax_resnet.models",
        "True True",
    ]


@pytest.mark.parametrize(
    ("libc", "mode", "want"),
    [
        (("glibc", "2.35"), "madvise", True),
        (("glibc", "2.35"), "always", True),  # THP for everything also honours madvise
        (("glibc", "2.40"), "madvise", True),  # compared as numbers, not strings
        (("glibc", "3.0"), "always", True),
        (("glibc", "2.34"), "madvise", False),  # no glibc.malloc.hugetlb tunable yet
        (("glibc", "2.9"), "always", False),
        (("", ""), "madvise", False),  # musl and others
        (("glibc", "2.35"), "never", False),
    ],
)
def test_wanted_by_glibc_version_and_thp_mode(libc, mode, want, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hugepages.platform, "libc_ver", lambda: libc)
    monkeypatch.setattr(hugepages.sys, "platform", "linux")
    assert hugepages.wanted(env={}, mode=mode) is want


def test_the_last_tunable_setting_wins_and_an_empty_one_is_off(tmp_path: Path) -> None:
    # glibc applies GLIBC_TUNABLES left to right, so a later setting overrides an earlier one.
    both = "glibc.malloc.hugetlb=1:glibc.malloc.hugetlb=0"
    assert not hugepages.enabled({"GLIBC_TUNABLES": both})
    assert hugepages.enabled({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0:glibc.malloc.hugetlb=1"})
    assert not hugepages.enabled({"GLIBC_TUNABLES": "glibc.malloc.hugetlb="})
    assert hugepages.tunable_set({"GLIBC_TUNABLES": "glibc.malloc.hugetlb="})  # still the user's choice
    f = tmp_path / "enabled"
    f.write_text("always madvise never\n")  # no bracketed word: unknown, not "always"
    assert hugepages.thp_mode(f) is None


def test_a_failed_re_exec_runs_on(monkeypatch: pytest.MonkeyPatch) -> None:
    def execve(*args):
        raise OSError(8, "Exec format error")

    monkeypatch.setattr(hugepages, "wanted", lambda: True)
    monkeypatch.setattr(hugepages.sys, "argv", [__file__])
    monkeypatch.setattr(hugepages.os, "execve", execve)
    assert hugepages.reexec_with_hugepages() is None
