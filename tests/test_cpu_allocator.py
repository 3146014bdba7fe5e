"""``import malign`` turns on TensorFlow's pooling (BFC) CPU allocator, unless the user
chose otherwise (the 224 px step was half page faults without it; benchmarks/RESULTS.md)."""

import os
import subprocess
import sys

PROBE = """
import malign, tensorflow as tf
tf.ones((512, 512)).numpy()
try:
    print("pooled", tf.config.experimental.get_memory_info("CPU:0")["peak"] >= 512 * 512 * 4)
except ValueError as error:  # the plain allocator keeps no statistics
    print("plain", error)
"""


def _probe(**env) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "TF_CPU_ALLOCATOR_USE_BFC"}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip().splitlines()[-1]


def test_import_malign_pools_cpu_memory():
    assert _probe() == "pooled True"


def test_the_users_choice_is_kept():
    assert _probe(TF_CPU_ALLOCATOR_USE_BFC="0").startswith("plain")
