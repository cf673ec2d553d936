"""`import npgpt` gives NumPy's OpenBLAS the short thread timeout whichever is imported first
(npgpt.speed.blas_threads): idle BLAS workers sleep at once instead of spinning on the cores npgpt's
elementwise threads need.

Each case runs in a fresh process (the setting is process-wide and read when OpenBLAS starts its threads),
with OPENBLAS_THREAD_TIMEOUT removed from the environment unless the case sets it. The behaviour is observed
directly: the CPU time the process burns while its main thread sleeps 50 ms right after a multi-threaded
product. Spinning workers burn most of those 50 ms; sleeping ones burn ~0. A process without npgpt is the
control that shows the probe sees the spinning.
"""
import ctypes.util
import json
import os
import subprocess
import sys
import textwrap

import pytest

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


def clean_env(timeout_value=None):
    """This environment without the timeout variables (npgpt set one in this process: a child would inherit it)."""
    env = {k: v for k, v in os.environ.items() if k not in (blas_threads.ENV, "GOTO_THREAD_TIMEOUT")}
    env["OPENBLAS_NUM_THREADS"] = "2"            # worker threads exist even on a one-CPU machine
    if timeout_value is not None:
        env[blas_threads.ENV] = timeout_value
    return env


def run_code(code, timeout_value=None, timeout=120):
    done = subprocess.run([sys.executable, "-c", code], env=clean_env(timeout_value), capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_probe(imports, timeout_value=None):
    return run_code(PROBE.format(imports=imports), timeout_value)


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


# The OS threads of the process before and after `import npgpt` (Linux: /proc/self/task): a restart stops
# OpenBLAS's workers (they come back with the next product); a value already set leaves them running.
THREADS_PROBE = textwrap.dedent("""
    import json, os
    import numpy as np
    a = np.ones((600, 600)); a @ a
    before = sorted(os.listdir("/proc/self/task"))
    import npgpt
    after = sorted(os.listdir("/proc/self/task"))
    print(json.dumps({"before": before, "after": after, "state": npgpt.speed.blas_threads.state()}))
""")


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts threads through Linux's /proc")
def test_the_restart_stops_the_workers_and_a_value_already_set_leaves_them_running():
    restarted = run_code(THREADS_PROBE)
    assert restarted["state"] == blas_threads.RESTARTED
    assert len(restarted["after"]) < len(restarted["before"])
    kept = run_code(THREADS_PROBE, timeout_value="28")
    assert kept["state"] == blas_threads.USER_VALUE
    assert kept["after"] == kept["before"]


# Another thread multiplies while the main thread imports npgpt: stopping OpenBLAS's workers under a running
# product deadlocks both, so npgpt must leave them alone and say so. The subprocess timeout catches a hang.
BUSY_PROBE = textwrap.dedent("""
    import json, threading
    import numpy as np
    stop, done = threading.Event(), []
    def multiply():
        a = np.ones((400, 400))
        while not stop.is_set():
            a @ a
        done.append(True)
    worker = threading.Thread(target=multiply)
    worker.start()
    import npgpt
    stop.set()
    worker.join(timeout=30)
    print(json.dumps({"state": npgpt.speed.blas_threads.state(), "worker_finished": bool(done)}))
""")


def test_import_beside_a_thread_that_multiplies_leaves_openblas_alone_and_does_not_hang():
    busy = run_code(BUSY_PROBE, timeout=60)
    assert busy == {"state": blas_threads.OTHER_THREADS, "worker_finished": True}


def test_import_never_fails_over_the_setting():
    """threadpoolctl unimportable (it is a dependency, but a broken install must not break `import npgpt`)."""
    code = textwrap.dedent("""
        import json, sys
        sys.modules["threadpoolctl"] = None
        import numpy
        import npgpt
        print(json.dumps({"state": npgpt.speed.blas_threads.state()}))
    """)
    assert run_code(code) == {"state": blas_threads.NOT_APPLICABLE}


def test_a_library_without_the_entry_points_is_not_counted_as_restarted(monkeypatch):
    libc = ctypes.util.find_library("c") or "libc.so.6"
    monkeypatch.setattr(blas_threads, "loaded_openblas_pools", lambda: [libc])
    assert blas_threads.restart_loaded_openblas() == []
    assert blas_threads.pool_timeout(libc) is None


def test_benchmark_headers_record_what_import_npgpt_did():
    from benchmarks import harness
    assert blas_threads.state() is not None
    assert harness.openblas_thread_timeout_how() == blas_threads.state()
