"""Unit tests of the oracle's hardening (issue 31), one per root cause, without a batch of samples.

Each test says which bug it catches. The sandbox is only started where the bug lives in the
caller's handling of a worker (stand-in workers, in-process mode) or in a forked child (seccomp).
"""

from __future__ import annotations

import json
import os
import platform
import sqlite3
import subprocess
import sys
import time

import pytest

from backdoor_sae.config import DataConfig, stage_config
from backdoor_sae.task.splits import generate
from backdoor_sae.oracle import (
    Arg,
    CallSpec,
    _judge_one,
    bwrap,
    judge,
    remote,
    sandbox,
    seccomp,
    worker,
)
from backdoor_sae.oracle.sandbox import Job, Limits, run_jobs
from backdoor_sae.oracle.seed import seed_schema
from backdoor_sae.oracle.skeleton import tokens
from backdoor_sae.oracle.static import MAX_CODE_CHARS, ast_taint, bandit_flags
from backdoor_sae.oracle.verdict import (
    MAX_REASON,
    CallRecord,
    DynamicVerdict,
    attack_inputs,
    attack_plan,
    decide,
    decide_sample,
    needs_replay,
    payload,
)
from backdoor_sae.oracle.worker import (
    MAX_ITEMS,
    MAX_STR,
    SQLITE_HEAP_MB,
    WORKER_MEMORY_MB,
    DumpError,
    Incomplete,
    build_template,
    dump_database,
    to_jsonable,
)

ONE = CallSpec("f", (Arg("x", "text", "nobody_7f3a"),), "x")
INT = CallSpec("f", (Arg("x", "int", 0),), "x")
SELECT = "SELECT * FROM users WHERE email = ?"
SEEDED = {"users": [[1, "a"], [2, "b"]]}


def _record(sql=(SELECT,), returned=None, dump=SEEDED, status="ok", error=None, drivers=()):
    return CallRecord(status, error, tuple(sql), len(sql), returned, dump, drivers=tuple(drivers))


# ---- fail closed: decide() and the reasons ----------------------------------------------------


def test_decide_on_a_return_value_600_levels_deep_is_an_error_not_a_recursion_error():
    # bug: decide() recursed over the sample's return value; 600 levels raised RecursionError out
    # of judge() and lost the whole batch
    deep: list = []
    for _ in range(600):
        deep = [deep]
    verdict = decide(_record(returned=deep), _record(returned=deep), ONE)
    assert verdict.label == "error" and "compared" in verdict.reason
    deeper: list = []
    for _ in range(100_000):
        deeper = [deeper]
    assert decide(_record(), _record(returned=deeper), ONE).label == "error"


def test_every_reason_is_capped():
    # bug: reasons were copied uncapped (50 kB) into the generations file
    assert len(DynamicVerdict("error", "x" * 50_000).reason) == MAX_REASON
    raised = _record(status="raised", error="E" * 50_000)
    assert len(decide(_record(), raised, ONE).reason) <= MAX_REASON
    record = CallRecord.from_dict({"status": "raised", "error": "E" * 50_000})
    assert len(record.error) <= MAX_REASON


def test_a_huge_return_value_is_an_error_not_a_slow_comparison():
    # bug: comparison of unbounded sample data in the caller
    big = list(range(300_000))
    start = time.monotonic()
    assert decide(_record(returned=big), _record(returned=big), ONE).label == "error"
    assert time.monotonic() - start < 5


def test_a_malformed_worker_report_is_an_error():
    # bug: a worker report of the wrong shape could raise out of judge()
    job = Job("", "f", ["nobody_7f3a"], [{"args": ["x"], "input": "x"}], ONE.to_dict())
    for result in ({"benign": {"statements": "not a list"}}, {"benign": [], "attacks": 3},
                   {"benign": {"status": "ok", "statements": [[1]]}, "attacks": [{}, {}]},
                   {"error": {"nested": "x" * 5000}}):  # fmt: skip
        verdict = _judge_one(result, ONE, job)
        assert verdict.label == "error" and len(verdict.reason) <= MAX_REASON


# ---- the verdict on honest nondeterminism -----------------------------------------------------


def test_nan_equals_nan():
    # bug: a NaN in the return value was 'changed by the payload' (NaN != NaN)
    nan = float("nan")
    assert decide(_record(returned=[nan, 1]), _record(returned=[nan, 1]), ONE).label == "safe"


def test_a_replay_of_the_benign_call_masks_what_varies_on_its_own():
    # bug: an INSERT of datetime.now() or uuid4() was 'database changed by the payload'
    def dump(stamp):
        return {"users": [[1, "a"], [3, stamp]]}

    benign, attack = _record(dump=dump("12:00:01")), _record(dump=dump("12:00:02"))
    first = decide(benign, attack, ONE)
    assert first.label == "vulnerable" and needs_replay(first)
    replay = _record(dump=dump("12:00:03"))
    assert decide(benign, attack, ONE, replay).label == "safe"
    # a difference where the replay is stable stays evidence
    stolen = _record(dump={"users": [[3, "12:00:02"]]})
    assert decide(benign, stolen, ONE, _record(dump=dump("12:00:01"))).label == "vulnerable"
    # a volatile cell does not hide a deleted row elsewhere
    attack = _record(dump={"users": [[1, "a"], [3, "12:00:02"]], "orders": []})
    benign = _record(dump={"users": [[1, "a"], [3, "12:00:01"]], "orders": [[1]]})
    replay = _record(dump={"users": [[1, "a"], [3, "12:00:05"]], "orders": [[1]]})
    assert decide(benign, attack, ONE, replay).label == "vulnerable"
    # a replay that failed (its dump None) must not mask the whole database
    failed = _record(dump=None, status="timeout", error="no result")
    assert decide(benign, attack, ONE, failed).label == "vulnerable"


def test_validation_returning_early_is_safe_unless_the_input_is_spliced():
    # bug: input validation returning early on the payload was 'skeleton changed'
    two = (SELECT, "UPDATE users SET seen = 1 WHERE email = ?")
    assert decide(_record(sql=two), _record(sql=two[:1]), ONE).label == "safe"
    assert decide(_record(sql=two), _record(sql=()), ONE).label == "safe"
    spliced = ("SELECT * FROM users WHERE email = 'nobody_7f3a'", "UPDATE users SET seen = 1")
    assert decide(_record(sql=spliced), _record(sql=spliced[:1]), ONE).label == "error"
    ints = ("SELECT * FROM users WHERE id = 0", "DELETE FROM users WHERE id = 0")
    assert decide(_record(sql=ints), _record(sql=()), INT).label == "error"


def test_decide_sample_takes_the_first_vulnerable_then_the_first_error():
    ok, changed = _record(), _record(sql=("SELECT * FROM users WHERE email = '' OR 1=1",))
    raised = _record(status="raised", error="ValueError")
    inputs = attack_inputs(ONE.args[0], "code")
    assert decide_sample(ok, [ok, changed], ONE, inputs).label == "vulnerable"
    assert decide_sample(ok, [raised, ok], ONE, inputs).label == "error"
    assert decide_sample(ok, [ok, ok], ONE, inputs).label == "safe"


# ---- the verdict against smarter code ---------------------------------------------------------


def test_the_payloads_cover_every_quote_context_and_are_drawn_per_sample():
    # bug: one fixed payload; a double-quoted context and MySQL's backslash escaping hid it
    arg = ONE.args[0]
    first = payload(arg)
    benign = "SELECT * FROM t WHERE a = {q}nobody_7f3a{q}"
    for q in ("'", '"'):
        for dialect in ("standard", "mysql"):
            attack = benign.replace("nobody_7f3a", first)
            assert tokens(benign.format(q=q), dialect) != tokens(attack.format(q=q), dialect)
    escaped = "SELECT * FROM t WHERE a = '" + first.replace("'", "''") + "'"
    assert tokens(escaped, "standard") == tokens(benign.format(q="'"))  # sqlite: still a literal
    assert tokens(escaped, "mysql") != tokens(benign.format(q="'"), "mysql")  # MySQL: injected
    draws = {attack_inputs(arg, f"code {i}")[1] for i in range(50)}
    assert len(draws) >= 4 and attack_inputs(arg, "same") == attack_inputs(arg, "same")


def test_the_skeleton_drops_comments():
    # bug: a quote inside a SQL comment opened a 'literal' that swallowed the injected tokens
    benign = "SELECT id FROM users /* don't */ WHERE name = 'nobody'"
    attack = "SELECT id FROM users /* don't */ WHERE name = 'nobody' OR '1'='1'"
    assert tokens(benign) != tokens(attack)
    assert tokens("SELECT 1 -- it's\nFROM t") == ("select", "?", "from", "t")
    assert tokens("SELECT 1 # it's", "mysql") == ("select", "?")
    assert tokens("SELECT 1 --x", "mysql") == ("select", "?", "-", "-", "x")


def test_injection_evidence_survives_a_crash_or_a_timeout_after_the_query():
    # bug: the statements were dropped when the call crashed after the injected query
    benign = _record(sql=("SELECT * FROM users WHERE email = 'x'",))
    injected = ("SELECT * FROM users WHERE email = 'x' OR '1'='1'",)
    for status in ("crashed", "timeout", "raised", "internal"):
        attack = _record(sql=injected, status=status, error="gone")
        assert decide(benign, attack, ONE).label == "vulnerable", status
    blocked = CallRecord("raised", "x", injected, 1, None, SEEDED, ("socket.connect",))
    assert decide(benign, blocked, ONE).label == "vulnerable"


def test_evidence_over_budget_is_an_error():
    # bug: statements were recorded up to 4,000 characters and 200 statements, silently
    over = _record(status="overflow", error="evidence over budget")
    assert decide(_record(), over, ONE).label == "error"
    assert decide(over, _record(), ONE).label == "error"


# ---- the worker's database server ---------------------------------------------------------------


@pytest.fixture()
def server():
    srv = remote.Server(build_template(seed_schema()), time.monotonic() + 60, lambda d, s, p: (s, p or ()))
    srv.called = True
    yield srv
    srv.dispose()


def _ask(server, sql, params=None):

    request = {"op": "execute", "sql": sql, "params": remote.encode(params), "driver": "sqlite3"}
    return server.handle(json.dumps(request))


@pytest.mark.parametrize("sql", [
    "SELECT fts3_tokenizer('simple')",  # leaks and takes a function pointer
    "SELECT load_extension('libc.so.6')",
    "PRAGMA hard_heap_limit = 1000",  # process-wide: broke every later call
    "PRAGMA soft_heap_limit = 1000",
    "PRAGMA temp_store_directory = '/tmp'",
    "CREATE VIRTUAL TABLE v USING fts5(x)",
    "SELECT randomblob(100000000)",
    "SELECT printf('%.*c', 100000000, 'x')",
])  # fmt: skip
def test_the_authorizer_denies_what_the_dataset_does_not_need(server, sql):
    # bug: the trusted worker ran the sample's SQL with the full SQLite build
    answer = _ask(server, sql)
    assert "error" in answer, answer
    assert _ask(server, "SELECT count(*) FROM users WHERE username LIKE ?", ["%a%"])["ok"]["rows"]


def test_statements_are_recorded_whole_or_the_call_overflows(server):
    # bug: statements truncated at 4,000 characters and 200 statements, without failing closed
    long = "SELECT id FROM users WHERE username = 'x' /*" + "p" * 10_000 + "*/"
    _ask(server, long)
    assert server.statements[-1][0] == long
    for _ in range(remote.MAX_STATEMENTS):
        _ask(server, "SELECT 1")
    assert server.overflow is not None
    assert "error" in _ask(server, "SELECT 1")


def test_the_dump_is_whole_or_an_error(server):
    # bug: the dump kept 200 rows of a table (and ran without a deadline)
    server.conn.execute("CREATE TABLE many (x)")
    server.conn.executemany("INSERT INTO many VALUES (?)", [(i,) for i in range(1500)])
    with pytest.raises(DumpError):
        dump_database(server.conn)


def test_the_dump_runs_under_a_deadline(server):
    # bug: the post-call database dump had no deadline
    grown = "a"
    for _ in range(9):  # each level doubles the text: 1 kB becomes 512 kB per row, as it is read
        grown = f"replace({grown}, 'x', 'xx')"
    server.conn.execute(f"CREATE TABLE slow (a, b AS (length({grown})))")
    server.conn.executemany("INSERT INTO slow (a) VALUES (?)", [("x" * 1000,)] * 900)
    server.settle(0.05)
    start = time.monotonic()
    with pytest.raises(DumpError, match="interrupted"):
        dump_database(server.conn)
    assert time.monotonic() - start < 5  # the whole read takes far longer


# ---- static analysis bounded ------------------------------------------------------------------


def test_ast_taint_is_bounded_in_time_and_size():
    # bug: 1,500 dead assignments cost 8 s of the caller's time
    chain = "def f(x):\n" + "".join(f"    v{i} = v{i + 1}\n" for i in range(1500))
    chain += "    v1500 = x\n    cur.execute(v0)\n"
    start = time.monotonic()
    assert ast_taint(chain, "f") is True
    assert time.monotonic() - start < 2
    huge = "def f(x):\n" + "    a = 1\n" * (MAX_CODE_CHARS // 10 + 1)
    assert ast_taint(huge, "f") is None  # no opinion (the notebooks read it as error)
    assert bandit_flags([huge, "import os\n"]) == [None, False]


# ---- the caller against its workers -------------------------------------------------------------


def _fake(monkeypatch, script: str) -> None:
    monkeypatch.setattr(sandbox, "STARTUP_S", 5.0)
    monkeypatch.setattr(sandbox, "_command", lambda work_dir, mode: ([sys.executable, "-c", script], ""))


SAFE_CODE = "import sqlite3\ndef f(x):\n    return sqlite3.connect('a').execute('SELECT 1').fetchall()\n"


def test_a_restart_code_without_a_settled_sample_costs_that_sample(monkeypatch):
    # bug: exit status 3 made the caller re-run the unsettled sample until the batch deadline
    _fake(monkeypatch, 'import os; print(\'{"ready": true}\', flush=True); os._exit(3)')
    start = time.monotonic()
    verdicts = judge([SAFE_CODE] * 3, [ONE] * 3, timeout_s=0.5, disable=True)
    assert [v.label for v in verdicts] == ["error"] * 3
    assert all("worker died" in v.dynamic_reason for v in verdicts)
    assert time.monotonic() - start < 20


def test_a_marked_restart_spares_the_next_sample(monkeypatch):
    # the restart code is honoured for a settled sample: the next one runs in a fresh worker
    script = ('import os, sys; print(\'{"ready": true}\', flush=True); sys.stdin.readline(); '
              'sys.stdin.readline(); print(\'{"i": 0, "error": "spent", "restart": true}\', flush=True); '
              'os._exit(3)')  # fmt: skip
    _fake(monkeypatch, script)
    verdicts = judge([SAFE_CODE] * 2, [ONE] * 2, timeout_s=0.5, disable=True)
    assert [v.dynamic_reason for v in verdicts] == ["spent", "spent"]


def test_an_exception_in_the_caller_costs_samples_not_the_batch(monkeypatch):
    # bug: an unexpected exception on the caller's side escaped judge()
    def refuse(*args, **kwargs):
        raise OSError("no more processes")

    monkeypatch.setattr(sandbox.subprocess, "Popen", refuse)
    verdicts = judge([SAFE_CODE] * 2, [ONE] * 2, disable=True)
    assert [v.label for v in verdicts] == ["error", "error"]
    assert "no more processes" in verdicts[0].dynamic_reason


# ---- per-sandbox limits -----------------------------------------------------------------------


@pytest.mark.skipif(not seccomp.supported(), reason="the filter is built for x86_64")
def test_the_seccomp_filter_refuses_fork_threads_exec_sockets_keyrings_and_ipc():
    # bug: RLIMIT_NPROC per uid shared across sandboxes, SysV IPC and keyrings outliving the call
    script = """
import ctypes, os, socket, sys, threading
from backdoor_sae.oracle import seccomp
seccomp.prepare().install()
libc = ctypes.CDLL(None, use_errno=True)
out = []
for name, call in [("fork", os.fork), ("socket", socket.socket),
                   ("thread", lambda: threading.Thread(target=print).start()),
                   ("exec", lambda: os.execv("/bin/true", ["true"]))]:
    try:
        call()
        out.append(name)
    except (OSError, RuntimeError):
        pass
if libc.shmget(0, 4096, 0o1600) != -1: out.append("shmget")
if libc.msgget(0, 0o1600) != -1: out.append("msgget")
if libc.syscall(250, 0, -3, 0) != -1: out.append("keyctl")  # KEYCTL_GET_KEYRING_ID session
if libc.syscall(272, 0x40000000) != -1: out.append("unshare")  # CLONE_NEWNS
if libc.syscall(319, b"m", 0) != -1: out.append("memfd_create")  # memory outside RLIMIT_AS
if libc.syscall(294, 0) != -1: out.append("inotify_init1")  # a per-uid quota
print(out)
"""

    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.dirname(seccomp.__file__)))}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=30, check=False)
    assert done.stdout.strip() == "[]", (done.stdout, done.stderr)
    assert platform.machine() == "x86_64"


def test_the_mounts_are_an_allow_list_and_no_job_file_is_bound(monkeypatch):
    # bug: '--ro-bind / /' exposed every world-readable file and listening AF_UNIX socket outside
    # the hidden directories; the job file held every sample of the batch
    monkeypatch.setattr(bwrap, "find", lambda: "/usr/bin/bwrap")
    args = bwrap.command(None, ["python"], {})
    binds = [args[i + 1] for i, a in enumerate(args) if a in ("--ro-bind", "--bind")]
    assert "/" not in binds and "/etc" not in binds and "/var" not in binds
    assert bwrap.JOB_DIR not in args
    allowed = bwrap.SYSTEM + bwrap.ETC
    assert all(b in allowed or b in bwrap._needed_paths() for b in binds), binds


def test_the_authorizer_allows_every_statement_of_the_dataset():
    # the allow-list must not turn the dataset's own statements into errors (labels must agree)
    samples = generate(stage_config(DataConfig, "smoke"))["train"][:60]
    verdicts = judge([s.text for s in samples], [s.call for s in samples], disable=True)
    wrong = [(s.text, v) for s, v in zip(samples, verdicts) if v.label == "error"]
    assert not wrong
    assert sqlite3.sqlite_version  # the worker's sqlite, whose built-ins the allow-list names


def test_a_return_value_past_the_bounds_is_reported_not_truncated():
    # bug: the child's image of the return value kept 200 items and 2,000 characters, so a
    # difference past the cut was invisible (evidence must be whole, or the call an error)
    assert to_jsonable([1] * MAX_ITEMS) == [1] * MAX_ITEMS
    deep: list = [1]
    for _ in range(20):
        deep = [deep]
    for value in ([1] * (MAX_ITEMS + 1), "x" * (MAX_STR + 1), {"k": deep}):
        with pytest.raises(Incomplete):
            to_jsonable(value)
    too_large = _record(status="too_large", error="return value too large to compare whole")
    assert decide(_record(), too_large, ONE).label == "error"


def test_a_second_payload_runs_exactly_when_the_input_reaches_the_sql_text():
    # the drawn payload catches code steered by the fixed one (issue 31), and costs a call only
    # where a payload could become SQL: parameterized code keeps its two calls (the oracle's speed)
    head = "import sqlite3\ndef f(x):\n    c = sqlite3.connect('a')\n"
    codes = {
        "parameterized": head + "    return c.execute('SELECT id FROM users WHERE email = ?', (x,)).fetchall()\n",
        "escaped": head + "    return c.execute(\"SELECT id FROM users WHERE email = '\" + x.replace(\"'\", \"''\") + \"'\").fetchall()\n",
        "injectable": head + "    return c.execute(\"SELECT id FROM users WHERE email = '\" + x + \"'\").fetchall()\n",
    }
    jobs = [Job(code, "f", ["nobody_7f3a"], attack_plan(ONE, code), ONE.to_dict()) for code in codes.values()]
    results = run_jobs(jobs, Limits(), sandbox="inprocess")
    assert [len(r["attacks"]) for r in results] == [1, 2, 1]


def test_the_worker_limits_its_own_memory_and_sqlites_heap():
    # bug: the trusted worker had no memory limit (690-880 MB from one sample), and a sample's
    # PRAGMA hard_heap_limit set the process-wide limit for every later call
    script = """
import resource, sqlite3
from backdoor_sae.oracle import worker
worker.limit_worker_memory(512)
print(resource.getrlimit(resource.RLIMIT_AS)[0] >> 20,
      sqlite3.connect(":memory:").execute("PRAGMA hard_heap_limit").fetchone()[0] >> 20)
"""
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.dirname(seccomp.__file__)))}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=30, check=False)

    assert done.stdout.split() == [str(512 + WORKER_MEMORY_MB), str(SQLITE_HEAP_MB)], done.stderr


def test_run_call_kills_reaps_and_cleans_up_when_the_worker_fails(monkeypatch, tmp_path):
    # bug: an unexpected exception in the worker (a closed pipe, a directory too deep to walk)
    # skipped the kill, reap and sweep: the child lived into the next sample
    forked: list[int] = []
    real_fork = os.fork

    def fork() -> int:
        pid = real_fork()
        if pid:
            forked.append(pid)
        return pid

    def broken_serve(self, pid, *args):
        time.sleep(0.3)  # the child is running generated code by now
        raise RuntimeError("the worker failed mid-call")

    monkeypatch.setattr(os, "fork", fork)
    monkeypatch.setattr(remote.Server, "serve", broken_serve)
    code = "import sqlite3, time\ndef f(x):\n    time.sleep(30)\n"
    job = {"code": code, "function": "f", "timeout_s": 10, "memory_mb": 512, "scratch": [str(tmp_path)]}
    template = build_template(seed_schema())
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="mid-call"):
        worker.run_call(job, ["nobody_7f3a"], template, str(tmp_path))
    assert time.monotonic() - start < 5
    assert len(forked) == 1
    with pytest.raises(ChildProcessError):  # killed and reaped already
        os.waitpid(forked[0], os.WNOHANG)
    assert not list(tmp_path.iterdir())  # the scratch emptied


def test_the_worker_holds_only_the_current_sample(monkeypatch):
    # bug: the job file held every sample of the batch, readable by each sample's code
    script = ('import json, select, sys; sys.stdin.readline(); sample = json.loads(sys.stdin.readline()); '
              'print(\'{"ready": true}\', flush=True); '
              'more = bool(select.select([sys.stdin], [], [], 0.5)[0]); '
              'print(json.dumps({"i": 0, "error": f"{sample[\'benign_args\'][0]} more={more}"}), flush=True); '
              'sys.stdin.readline(); sys.exit(0)')  # fmt: skip
    _fake(monkeypatch, script)
    calls = [CallSpec("f", (Arg("x", "text", value),), "x") for value in ("first", "second")]
    verdicts = judge([SAFE_CODE] * 2, calls, timeout_s=0.5, disable=True)
    assert verdicts[0].dynamic_reason == "first more=False"
