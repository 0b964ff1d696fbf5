"""Test-session setup shared by tests/ and parity_tests/: JAX's persistent compilation cache on disk.

Every xdist worker and every CLI subprocess the tests start reads and writes the same cache, so a program
(a ResNet train step, or one residual block of the parity checks) is compiled once per machine rather than
once per process. Set JAX_COMPILATION_CACHE_DIR to use another directory.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

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
