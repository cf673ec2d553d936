"""`import npgpt` gives NumPy's OpenBLAS the short thread timeout whichever is imported first
(npgpt.speed.blas_threads): idle BLAS workers sleep at once instead of spinning on the cores npgpt's
elementwise threads need.

Each case runs in a fresh process (the setting is process-wide and read when OpenBLAS starts its threads),
with OPENBLAS_THREAD_TIMEOUT removed from the environment unless the case sets it. The behaviour is observed
directly: the CPU time the process burns while its main thread sleeps 50 ms right after a multi-threaded
product. Spinning workers burn most of those 50 ms; sleeping ones burn ~0. A process without npgpt is the
control that shows the probe sees the spinning.
"""
import json
import os
import subprocess
import sys
import textwrap

from npgpt.speed import blas_threads

PROBE = textwrap.dedent("""
    import json, sys, time
    {imports}
    import numpy as np

    def idle_cpu_after_a_product():
        a = np.ones((600, 600), dtype=np.float32)
        a @ a                                              # wakes OpenBLAS's workers
        before = time.process_time()                       # CPU time of all the process's threads
        time.sleep(0.05)
        return time.process_time() - before

    a = np.random.default_rng(0).standard_normal((300, 200))
    b = np.random.default_rng(1).standard_normal((200, 100))
    report = {{"idle_cpu": min(idle_cpu_after_a_product() for _ in range(3)),
              "product_right": bool(abs(a @ b - np.einsum("ik,kj->ij", a, b)).max() < 1e-9)}}
    if "npgpt" in sys.modules:
        from npgpt.speed import blas_threads
        report["state"] = blas_threads.state()
        report["pools"] = blas_threads.loaded_openblas_pools()
        report["timeouts"] = [blas_threads.pool_timeout(path) for path in report["pools"]]
        report["again"] = blas_threads.apply_at_import()
    print(json.dumps(report))
""")


def run_probe(imports, timeout_value=None):
    env = {k: v for k, v in os.environ.items() if k not in (blas_threads.ENV, "GOTO_THREAD_TIMEOUT")}
    env["OPENBLAS_NUM_THREADS"] = "2"            # worker threads exist even on a one-CPU machine
    if timeout_value is not None:
        env[blas_threads.ENV] = timeout_value
    done = subprocess.run([sys.executable, "-c", PROBE.format(imports=imports)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_numpy_imported_first_gets_its_openblas_threads_restarted_with_the_short_timeout():
    control = run_probe("import numpy")                              # OpenBLAS's default: workers spin
    late = run_probe("import numpy\nnumpy.ones((400, 400)) @ numpy.ones((400, 400))\nimport npgpt")
    assert late["state"] == blas_threads.RESTARTED
    assert late["pools"], "NumPy's wheels ship a pthreads OpenBLAS; the probe expects one"
    assert late["timeouts"] == [4] * len(late["pools"])
    assert late["again"] == late["state"]                             # applied once per process
    assert late["product_right"] and control["product_right"]         # the restarted pool still multiplies right
    # the control's spinning worker burns most of the 50 ms sleep; after the restart the workers sleep
    assert control["idle_cpu"] > 0.02, control
    assert late["idle_cpu"] < 0.01, late


def test_npgpt_imported_first_sets_the_variable_before_openblas_starts():
    early = run_probe("import npgpt")
    assert early["state"] == blas_threads.SET_BEFORE_NUMPY
    assert early["timeouts"] == [4] * len(early["pools"])
    assert early["idle_cpu"] < 0.01, early


def test_a_value_the_user_set_wins_and_nothing_is_restarted():
    kept = run_probe("import numpy\nimport npgpt", timeout_value="28")
    assert kept["state"] == blas_threads.USER_VALUE
    assert kept["timeouts"] == [28] * len(kept["pools"])
    assert kept["idle_cpu"] > 0.02, kept                             # OpenBLAS's own spinning, as asked
