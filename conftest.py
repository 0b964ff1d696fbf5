"""Test-session setup shared by tests/ and parity_tests/: JAX's persistent compilation cache on disk, and memory
released after each test module.

Every xdist worker and every CLI subprocess the tests start reads and writes the same cache, so a program
(a ResNet train step, or one residual block of the parity checks) is compiled once per machine rather than
once per process. Set JAX_COMPILATION_CACHE_DIR to use another directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import tempfile
from pathlib import Path

import pytest

CACHE_ENV = {
    "JAX_COMPILATION_CACHE_DIR": str(Path(tempfile.gettempdir()) / f"flax-resnet-tests-jax-cache-{os.getuid()}"),
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
}
for _k, _v in CACHE_ENV.items():
    os.environ.setdefault(_k, _v)

import jax  # noqa: E402 - after the cache environment is set

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


@pytest.fixture(autouse=True, scope="module")
def _release_memory():
    """After each test module, drop JAX's in-memory caches of traced and compiled programs and hand freed heap
    back to the system (glibc keeps it otherwise: 3 of the 6 GB a process held after parity_tests/test_models.py).
    Each xdist worker runs hundreds of tests; two of them grew past 8 GB, which with the CLI subprocesses of some
    tests exhausted a 24 GiB CI machine. A program needed again comes from the persistent cache on disk."""
    yield
    jax.clear_caches()
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)
