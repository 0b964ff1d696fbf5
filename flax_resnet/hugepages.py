"""Transparent huge pages for the host buffers XLA:CPU allocates afresh every step.

XLA:CPU allocates one temp buffer per execution (1.36 GB for the cifar-stem ResNet-18 train step at batch 128,
157 MB for the imagenet stem); glibc serves it with a fresh mmap and unmaps it after the step, so every step
faults its pages in again: ~348,000 4 KiB faults and ~0.7 s of kernel time per cifar step on a 2-core Xeon.
With glibc's `glibc.malloc.hugetlb=1` tunable, malloc asks for transparent huge pages on its mappings
(madvise), and the same step takes ~1,400 faults (results/cpu_2026-11-29_hugepages/). Tunables are read only
when a process starts, so the command-line scripts re-execute themselves once with it set (same PID, same
arguments). `FLAX_RESNET_HUGEPAGES=0` turns this off.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb"
ENV_SWITCH = "FLAX_RESNET_HUGEPAGES"  # "0": never re-execute
THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")
GLIBC_WITH_TUNABLE = (2, 35)  # the first glibc with glibc.malloc.hugetlb


def thp_mode(path: Path = THP_MODE_FILE) -> str | None:
    """The kernel's transparent-huge-page mode (`always`, `madvise` or `never`), None where there is none."""
    try:
        text = path.read_text()
    except OSError:
        return None
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return None


def _glibc_version() -> tuple[int, ...] | None:
    name, version = platform.libc_ver()
    if name != "glibc" or not version:
        return None
    try:
        return tuple(int(p) for p in version.split(".")[:2])
    except ValueError:
        return None


def _tunable_value(env: dict[str, str] | os._Environ[str]) -> str | None:
    values = [item.split("=", 1) for item in env.get("GLIBC_TUNABLES", "").split(":") if item]
    found = [kv[1] if len(kv) == 2 else "" for kv in values if kv[0] == TUNABLE]
    return found[-1] if found else None


def tunable_set(env: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Whether GLIBC_TUNABLES in `env` already names the hugetlb tunable (to any value: the user's choice)."""
    return _tunable_value(env) is not None


def enabled(env: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """Whether this process's malloc asks for huge pages (the tunable set to a non-zero value)."""
    return _tunable_value(env) not in (None, "", "0")


def describe(env: dict[str, str] | os._Environ[str] = os.environ) -> str:
    """The pages this process's malloc asks for, as a table says it: glibc.malloc.hugetlb=1 is transparent huge
    pages (madvise), 2 is HugeTLB pages from the kernel's reserved pool."""
    value = _tunable_value(env)
    if value in (None, "", "0"):
        return "4 KiB pages"
    return "HugeTLB pages (glibc.malloc.hugetlb=2)" if value == "2" else "transparent huge pages"


def wanted(env: dict[str, str] | os._Environ[str] = os.environ, mode: str | None = None) -> bool:
    """Whether this process should re-execute with huge pages: Linux with glibc >= 2.35, a THP mode that honours
    madvise, the tunable not yet set (by us or the user), and FLAX_RESNET_HUGEPAGES not "0"."""
    if env.get(ENV_SWITCH, "") == "0" or tunable_set(env) or sys.platform != "linux":
        return False
    version = _glibc_version()
    if version is None or version < GLIBC_WITH_TUNABLE:
        return False
    return (thp_mode() if mode is None else mode) in ("always", "madvise")


def with_tunable(env: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """A copy of `env` whose GLIBC_TUNABLES also sets glibc.malloc.hugetlb=1 (other tunables kept)."""
    out = dict(env)
    items = [item for item in out.get("GLIBC_TUNABLES", "").split(":") if item]
    out["GLIBC_TUNABLES"] = ":".join([*items, f"{TUNABLE}=1"])
    return out


def reexec_with_hugepages() -> None:
    """Re-execute this Python process with huge pages for malloc, if `wanted()`; otherwise return.

    Call it first thing in a script's `__main__` block: it replaces the process (same PID, arguments and
    interpreter options), so nothing done before it survives. The tunable is then set, so it runs once."""
    program = sys.argv[0]  # "-c" for `python -c`, whose code is in the arguments; a path otherwise
    if not wanted() or program == "-" or (program != "-c" and not Path(program).is_file()):
        return  # a program read from stdin (`python - < x.py`) or a pipe cannot be read again: it would run nothing
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], with_tunable(os.environ))
    except OSError:  # could not re-execute: run on as is, with 4 KiB pages
        return
