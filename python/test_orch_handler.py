"""Tests for orch_handler: each test runs a small handler script as a subprocess, the way orch
does, and checks what comes out of its stdout (and stderr).

Run from the repository root: ``python3 -m unittest discover -s python -v``.
"""

import contextlib
import importlib.util
import io
import json
import os
import select
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import orch_handler  # noqa: E402

PRELUDE = f"""\
import sys
sys.path.insert(0, {str(HERE)!r})
"""

# A handler whose behaviour is chosen by the item, used by most tests.
BEHAVIOURS = """\
import os, subprocess, sys
from orch_handler import handler, Transient, Permanent

class Oops(Exception):
    pass

@handler
def work(item):
    op = item.get("op")
    if op == "echo":
        return {"echo": item["value"]}
    if op == "none":
        return None
    if op == "list":
        return [{"n": i} for i in range(item["n"])]
    if op == "tuple":
        return ({"a": 1}, {"a": 2})
    if op == "transient":
        raise Transient("rate limited")
    if op == "permanent":
        raise Permanent("bad record")
    if op == "valueerror":
        raise ValueError("not a number: 'x'")
    if op == "oops":
        raise Oops()
    if op == "keyerror":
        return {"v": item["missing"]}
    if op == "nan":
        return {"v": float("nan")}
    if op == "set":
        return {"v": {1, 2}}
    if op == "scalar":
        return 42
    if op == "list-of-ints":
        return [1, 2]
    if op == "circular":
        d = {}
        d["self"] = d
        return d
    if op == "noisy":
        print("print() from the handler")
        print("a line that looks like a response:", '{"id": 999, "result": {}}')
        sys.stdout.write("sys.stdout.write, no newline")
        sys.stdout.flush()
        os.system("echo from a shell child")
        subprocess.run([sys.executable, "-c", "print('from a python child')"], check=True)
        try:
            got = input()
        except EOFError:
            got = None
        return {"quiet": True, "input": got}
    raise Permanent(f"unknown op {op!r}")

print("this line runs only after stdin closed")
"""


def run_handler(body, requests, timeout=60):
    """Runs a handler script with the given request lines on stdin (then EOF).

    Returns (responses as dicts in output order, stdout lines, stderr text, return code). Every
    stdout line must be a JSON response: anything else is a protocol violation.
    """
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "handler.py"
        script.write_text(PRELUDE + textwrap.dedent(body))
        lines = []
        for r in requests:
            lines.append(r if isinstance(r, str) else json.dumps(r))
        stdin = "".join(line + "\n" for line in lines).encode("utf-8")
        proc = subprocess.run(
            [sys.executable, str(script)],
            input=stdin,
            capture_output=True,
            timeout=timeout,
            cwd=tmp,
        )
    # The pipeline announcement is not a response (Pipeline tests it).
    out_lines = [
        line
        for line in proc.stdout.decode("utf-8").splitlines()
        if line.encode() + b"\n" != orch_handler.PIPELINE_ANNOUNCEMENT
    ]
    responses = [json.loads(line) for line in out_lines]
    return responses, out_lines, proc.stderr.decode("utf-8", "replace"), proc.returncode


ANNOUNCEMENT = {"pipeline": True}


def req(rid, **item):
    return {"id": rid, "item": item}


# A handler reporting usage and rate refusals, in each serving mode.
USAGE = """\
import asyncio
from orch_handler import handler, Transient, Permanent, RateLimited, Result

def work(item):
    op = item["op"]
    if op == "usage":
        return Result({"n": item["n"]}, usage={"openai": item["n"] * 10})
    if op == "usage-list":
        return Result([{"a": 1}, {"a": 2}], usage={"openai": 3, "other": 0})
    if op == "usage-none":
        return Result(None)
    if op == "usage-empty":
        return Result({"x": 1}, usage={})
    if op == "bad-usage":
        return Result({"x": 1}, usage={"openai": -1})
    if op == "float-usage":
        return Result({"x": 1}, usage={"openai": 1.5})
    if op == "limited":
        raise RateLimited("429 from the API", retry_after=2.5, usage={"openai": 1})
    if op == "limited-plain":
        raise RateLimited("slow down")
    if op == "transient-wait":
        raise Transient("busy", retry_after=1)
    if op == "bad-wait":
        raise Transient("busy", retry_after=-1)
    raise Permanent("unknown op")

MODE = "@MODE@"
if MODE == "sequential":
    handler(work)
elif MODE == "threads":
    handler(concurrency=4)(work)
else:
    async def awork(item):
        await asyncio.sleep(0)
        return work(item)
    handler(concurrency=4)(awork)
"""


class UsageAndRateLimits(unittest.TestCase):
    EXPECTED = {
        1: {"id": 1, "result": {"n": 2}, "usage": {"openai": 20}},
        2: {"id": 2, "result": [{"a": 1}, {"a": 2}], "usage": {"openai": 3, "other": 0}},
        3: {"id": 3, "result": {}},
        4: {"id": 4, "result": {"x": 1}},
        7: {
            "id": 7,
            "error": {"kind": "rate_limited", "message": "429 from the API", "retryAfter": 2.5},
            "usage": {"openai": 1},
        },
        8: {"id": 8, "error": {"kind": "rate_limited", "message": "slow down"}},
        9: {"id": 9, "error": {"kind": "transient", "message": "busy", "retryAfter": 1}},
    }

    def test_every_mode_reports_usage_and_waits(self):
        requests = [
            req(1, op="usage", n=2),
            req(2, op="usage-list"),
            req(3, op="usage-none"),
            req(4, op="usage-empty"),
            req(5, op="bad-usage"),
            req(6, op="float-usage"),
            req(7, op="limited"),
            req(8, op="limited-plain"),
            req(9, op="transient-wait"),
            req(10, op="bad-wait"),
        ]
        for mode in ["sequential", "threads", "asyncio"]:
            with self.subTest(mode=mode):
                responses, _, stderr, rc = run_handler(USAGE.replace("@MODE@", mode), requests)
                self.assertEqual(rc, 0, stderr)
                by_id = {r["id"]: r for r in responses}
                self.assertEqual(sorted(by_id), list(range(1, 11)))
                for rid, expected in self.EXPECTED.items():
                    self.assertEqual(by_id[rid], expected)
                # Bad usage: a permanent error naming the problem, no usage sent.
                for rid in (5, 6):
                    self.assertNotIn("usage", by_id[rid])
                    self.assertEqual(by_id[rid]["error"]["kind"], "permanent")
                    self.assertIn("usage['openai']", by_id[rid]["error"]["message"])
                # A bad retry_after fails loudly at the raise.
                self.assertEqual(by_id[10]["error"]["kind"], "permanent")
                self.assertIn("retry_after", by_id[10]["error"]["message"])

    def test_direct_use(self):
        import orch_handler as h

        r = h.Result({"a": 1}, usage={"x": 2})
        self.assertEqual((r.value, r.usage), ({"a": 1}, {"x": 2}))
        e = h.RateLimited("m", retry_after=0.5)
        self.assertEqual((e.kind, e.message, e.retry_after, e.usage), ("rate_limited", "m", 0.5, None))
        self.assertTrue(issubclass(h.RateLimited, h.HandlerError))
        for bad in (-1, float("nan"), float("inf"), "2", True):
            with self.assertRaises(ValueError):
                h.Transient("m", retry_after=bad)


class Basics(unittest.TestCase):
    def test_results(self):
        responses, _, stderr, rc = run_handler(
            BEHAVIOURS,
            [
                req(1, op="echo", value="héllo ✓"),
                req(2, op="none"),
                {"id": 3, "item": {"op": "echo", "value": {"nested": [1, None, True]}}},
            ],
        )
        self.assertEqual(rc, 0, stderr)
        self.assertEqual(
            responses,
            [
                {"id": 1, "result": {"echo": "héllo ✓"}},
                {"id": 2, "result": {}},
                {"id": 3, "result": {"echo": {"nested": [1, None, True]}}},
            ],
        )

    def test_list_results(self):
        responses, _, stderr, rc = run_handler(
            BEHAVIOURS,
            [req(1, op="list", n=3), req(2, op="list", n=0), req(3, op="tuple")],
        )
        self.assertEqual(rc, 0, stderr)
        self.assertEqual(
            responses,
            [
                {"id": 1, "result": [{"n": 0}, {"n": 1}, {"n": 2}]},
                {"id": 2, "result": []},
                {"id": 3, "result": [{"a": 1}, {"a": 2}]},
            ],
        )

    def test_transient_and_permanent(self):
        responses, _, stderr, rc = run_handler(
            BEHAVIOURS, [req(1, op="transient"), req(2, op="permanent")]
        )
        self.assertEqual(rc, 0, stderr)
        self.assertEqual(
            responses,
            [
                {"id": 1, "error": {"kind": "transient", "message": "rate limited"}},
                {"id": 2, "error": {"kind": "permanent", "message": "bad record"}},
            ],
        )
        # Expected failures are not tracebacks.
        self.assertNotIn("Traceback", stderr)

    def test_exception_mapping(self):
        responses, _, stderr, rc = run_handler(
            BEHAVIOURS, [req(1, op="valueerror"), req(2, op="oops"), req(3, op="keyerror")]
        )
        self.assertEqual(rc, 0, stderr)
        self.assertEqual(
            responses,
            [
                {"id": 1, "error": {"kind": "permanent", "message": "ValueError: not a number: 'x'"}},
                {"id": 2, "error": {"kind": "permanent", "message": "Oops"}},
                {"id": 3, "error": {"kind": "permanent", "message": "KeyError: 'missing'"}},
            ],
        )
        # Unexpected exceptions leave their traceback in the task log.
        self.assertIn("Traceback", stderr)
        self.assertIn("ValueError: not a number", stderr)

    def test_results_that_are_not_rows_or_not_json(self):
        responses, _, stderr, rc = run_handler(
            BEHAVIOURS,
            [
                req(1, op="nan"),
                req(2, op="set"),
                req(3, op="scalar"),
                req(4, op="list-of-ints"),
                req(5, op="echo", value="\ud800"),  # an unpaired surrogate cannot be UTF-8
                req(6, op="circular"),
            ],
        )
        self.assertEqual(rc, 0, stderr)
        self.assertEqual([r["id"] for r in responses], [1, 2, 3, 4, 5, 6])
        for r in responses:
            self.assertEqual(r["error"]["kind"], "permanent", r)
        self.assertIn("not JSON-serialisable", responses[0]["error"]["message"])
        self.assertIn("set", responses[1]["error"]["message"])
        self.assertIn("int", responses[2]["error"]["message"])
        self.assertIn("list", responses[3]["error"]["message"])
        self.assertIn("not JSON-serialisable", responses[4]["error"]["message"])
        self.assertIn("not JSON-serialisable", responses[5]["error"]["message"])

    def test_print_does_not_corrupt_stdout(self):
        responses, out_lines, stderr, rc = run_handler(
            BEHAVIOURS, [req(1, op="noisy"), req(2, op="echo", value=2)]
        )
        self.assertEqual(rc, 0, stderr)
        # run_handler already parsed every stdout line as JSON; check there is nothing else.
        self.assertEqual(len(out_lines), 2, out_lines)
        self.assertEqual(
            responses,
            [
                {"id": 1, "result": {"quiet": True, "input": None}},
                {"id": 2, "result": {"echo": 2}},
            ],
        )
        for text in (
            "print() from the handler",
            '{"id": 999, "result": {}}',
            "sys.stdout.write, no newline",
            "from a shell child",
            "from a python child",
        ):
            self.assertIn(text, stderr)

    def test_code_below_the_decorator_runs_after_serving(self):
        _, out_lines, stderr, rc = run_handler(BEHAVIOURS, [req(1, op="none")])
        self.assertEqual(rc, 0, stderr)
        self.assertEqual(len(out_lines), 1)
        # The decorator exits the process when stdin closes.
        self.assertNotIn("this line runs only after stdin closed", stderr)

    def test_malformed_lines_are_skipped(self):
        responses, _, stderr, rc = run_handler(
            BEHAVIOURS,
            [
                "this is not json",
                '{"id": 1, "item": ',  # truncated
                "[1, 2, 3]",
                '{"item": {"op": "none"}}',  # no id
                '{"id": true, "item": {"op": "none"}}',
                "",
                "   ",
                req(2, op="echo", value="after the garbage"),
                '{"id": 3}',  # valid id, no item: answered, so orch need not wait
            ],
        )
        self.assertEqual(rc, 0, stderr)
        self.assertEqual(
            responses,
            [
                {"id": 2, "result": {"echo": "after the garbage"}},
                {"id": 3, "error": {"kind": "permanent", "message": "request has no `item`"}},
            ],
        )
        self.assertEqual(stderr.count("orch_handler: skipping"), 5, stderr)
        # Only the length of a bad line is logged, never its content.
        self.assertNotIn("this is not json", stderr)

    def test_sequential_is_in_order_one_at_a_time(self):
        body = """\
        import threading, time
        from orch_handler import handler
        state = {"now": 0, "max": 0}
        lock = threading.Lock()

        @handler
        def work(item):
            with lock:
                state["now"] += 1
                state["max"] = max(state["max"], state["now"])
            time.sleep(item["sleep"])
            with lock:
                state["now"] -= 1
            return {"max_in_flight": state["max"], "thread": threading.current_thread().name}
        """
        requests = [req(i, sleep=0.05 * (5 - i)) for i in range(5)]
        responses, _, stderr, rc = run_handler(body, requests)
        self.assertEqual(rc, 0, stderr)
        self.assertEqual([r["id"] for r in responses], [0, 1, 2, 3, 4])
        for r in responses:
            self.assertEqual(r["result"], {"max_in_flight": 1, "thread": "MainThread"})


    def test_requests_in_any_json_layout(self):
        # orch writes `{"id":N,"item":...}` exactly, which is read by a shortcut; every other
        # layout of the same object must give the same answers, and near-misses of the shortcut
        # must not be taken for requests.
        responses, _, stderr, rc = run_handler(
            BEHAVIOURS,
            [
                '{"id":1,"item":{"op":"echo","value":"plain"}}',
                '{"item": {"op": "echo", "value": "item first"}, "id": 2}',
                '{ "id" : 3 , "item" : {"op":"echo","value":"spaces"} }',
                '{"id":4,"item":{"op":"echo","value":"extra key"},"trace":"t"}',
                '{"id":"five","item":{"op":"echo","value":"string id"}}',
                '{"id":6,"item":{"op":"echo","value":"crlf"}}\r',
                '{"id":7,"item":{"op":"echo","value":"é ✓ \\u00e9"}}',
                '{"id":8,"item":{"op":"echo","value":[1,{"}":"{"}]}}',
                '{"id":9,"item":{"op":"echo","value":"two braces"}}}',  # not JSON
                '{"id":10,"item":{"op":"echo","value":1},"item":2',  # truncated
                '{"id":011,"item":{"op":"echo","value":"leading zero"}}',  # not JSON
                '{"id":12,"item":',  # truncated
                '{"id":13,"item":{"op":"echo","value":"after"}}',
            ],
        )
        self.assertEqual(rc, 0, stderr)
        self.assertEqual(
            responses,
            [
                {"id": 1, "result": {"echo": "plain"}},
                {"id": 2, "result": {"echo": "item first"}},
                {"id": 3, "result": {"echo": "spaces"}},
                {"id": 4, "result": {"echo": "extra key"}},
                {"id": "five", "result": {"echo": "string id"}},
                {"id": 6, "result": {"echo": "crlf"}},
                {"id": 7, "result": {"echo": "é ✓ é"}},
                {"id": 8, "result": {"echo": [1, {"}": "{"}]}},
                {"id": 13, "result": {"echo": "after"}},
            ],
        )
        self.assertEqual(stderr.count("orch_handler: skipping"), 4, stderr)


class Batching(unittest.TestCase):
    """The sequential server writes answers in batches, but never holds one back while it waits
    for input (orch sends more only after it got answers) and never loses one at exit."""

    class CountingOut(io.RawIOBase):
        """A stdout that records each write, to tell batches apart."""

        def __init__(self):
            super().__init__()
            self.writes = []

        def writable(self):
            return True

        def write(self, data):
            self.writes.append(bytes(data))
            return len(data)

        def lines(self):
            lines = [json.loads(line) for line in b"".join(self.writes).splitlines()]
            return [line for line in lines if line != ANNOUNCEMENT]

    def serve_on_pipe(self, fn, request_lines):
        """serve(fn) in this process with `request_lines` already waiting in a pipe."""
        data = "".join(line + "\n" for line in request_lines).encode("utf-8")
        r, w = os.pipe()
        writer = threading.Thread(target=lambda: (os.write(w, data), os.close(w)))
        writer.start()
        out = self.CountingOut()
        with open(r, "rb") as stdin, contextlib.redirect_stderr(io.StringIO()):
            orch_handler.serve(fn, stdin=stdin, stdout=out)
        writer.join()
        return out

    def test_a_single_request_is_answered_without_more_input(self):
        body = """\
        from orch_handler import handler

        @handler
        def work(item):
            return {"n": item["n"] * 10}
        """
        with tempfile.TemporaryDirectory() as tmp:
            script = Path(tmp) / "handler.py"
            script.write_text(PRELUDE + textwrap.dedent(body))
            with subprocess.Popen(
                [sys.executable, str(script)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            ) as proc:
                self.assertEqual(json.loads(proc.stdout.readline()), ANNOUNCEMENT)
                # Like orch at concurrency 1 before it reads the announcement: the next request
                # goes out only after the answer, so the handler must write it while stdin
                # stays open and empty.
                for n in range(3):
                    proc.stdin.write(json.dumps(req(n, n=n)).encode() + b"\n")
                    proc.stdin.flush()
                    # A generous guard against hanging the suite, not a timing assertion.
                    readable, _, _ = select.select([proc.stdout], [], [], 30)
                    self.assertTrue(readable, f"request {n} was not answered while stdin is open")
                    self.assertEqual(
                        json.loads(proc.stdout.readline()), {"id": n, "result": {"n": n * 10}}
                    )
                proc.stdin.close()
                self.assertEqual(proc.wait(timeout=30), 0)
                self.assertEqual(proc.stdout.read(), b"")

    def test_queued_requests_are_answered_in_few_writes(self):
        n = 2000
        requests = [json.dumps({"id": i, "item": {"n": i, "pad": "x" * (i % 7)}}) for i in range(n)]
        out = self.serve_on_pipe(lambda item: {"n": item["n"], "len": len(item["pad"])}, requests)
        self.assertEqual(
            out.lines(), [{"id": i, "result": {"n": i, "len": i % 7}} for i in range(n)]
        )
        # All of them were waiting: far fewer writes than answers (one per read of stdin,
        # plus one per 1 ms or 1024 answers on a slow machine).
        self.assertLess(len(out.writes), n // 10, [len(w) for w in out.writes])

    def test_pipelined_answers_match_their_requests(self):
        # Ids in any order, items that differ, some failing: each answer names its own request.
        n = 3000
        ids = [(i * 7919) % n for i in range(n)]

        def fn(item):
            if item["k"] % 5 == 0:
                raise orch_handler.Permanent(f"no {item['k']}")
            return {"k": item["k"], "sq": item["k"] * item["k"]}

        out = self.serve_on_pipe(fn, [json.dumps({"id": i, "item": {"k": i}}) for i in ids])
        answers = out.lines()
        self.assertEqual([a["id"] for a in answers], ids)
        for a in answers:
            k = a["id"]
            if k % 5 == 0:
                self.assertEqual(a["error"], {"kind": "permanent", "message": f"no {k}"})
            else:
                self.assertEqual(a["result"], {"k": k, "sq": k * k})

    def test_slow_answers_are_not_held_back(self):
        # Every request is already waiting, but each call takes longer than the flush interval:
        # the answers of earlier items must be out before the next call starts.
        written_before = []
        out = None

        def fn(item):
            written_before.append(len(out.lines()) if out is not None else 0)
            time.sleep(0.02)
            return {"n": item["n"]}

        data = "".join(json.dumps(req(i, n=i)) + "\n" for i in range(5)).encode()
        r, w = os.pipe()
        os.write(w, data)
        os.close(w)
        out = self.CountingOut()
        with open(r, "rb") as stdin, contextlib.redirect_stderr(io.StringIO()):
            orch_handler.serve(fn, stdin=stdin, stdout=out)
        self.assertEqual(written_before, [0, 1, 2, 3, 4])
        self.assertEqual([a["id"] for a in out.lines()], [0, 1, 2, 3, 4])

    def test_answers_are_written_when_the_handler_exits(self):
        body = """\
        import sys
        from orch_handler import handler

        @handler
        def work(item):
            if item.get("exit"):
                sys.exit(5)
            return {"n": item["n"]}
        """
        requests = [req(i, n=i) for i in range(3)] + [req(3, exit=True), req(4, n=4)]
        responses, _, stderr, rc = run_handler(body, requests)
        self.assertEqual(rc, 5, stderr)
        self.assertEqual(responses, [{"id": i, "result": {"n": i}} for i in range(3)])

    def test_a_stream_without_a_file_descriptor(self):
        # Cannot tell whether reading would block: flushes before every read, still answers all.
        requests = b"".join(
            json.dumps(req(i, x=i)).encode() + b"\n" for i in range(500)
        ) + b'{"id": 500, "item": {"x": 500}}'  # no final newline
        out = self.CountingOut()
        with contextlib.redirect_stderr(io.StringIO()):
            orch_handler.serve(lambda item: item, stdin=io.BytesIO(requests), stdout=out)
        self.assertEqual(out.lines(), [{"id": i, "result": {"x": i}} for i in range(501)])


class Pipeline(unittest.TestCase):
    """Every serving mode starts requests in arrival order, at most `concurrency` at a time, and
    says so first, so that orch queues more requests on stdin."""

    def test_every_mode_announces_a_pipeline_before_any_answer(self):
        handlers = {
            "sequential": "@handler\ndef work(item):\n    return item\n",
            "threads": "@handler(concurrency=3)\ndef work(item):\n    return item\n",
            "asyncio": "@handler(concurrency=3)\nasync def work(item):\n    return item\n",
        }
        for mode, body in handlers.items():
            with self.subTest(mode), tempfile.TemporaryDirectory() as tmp:
                script = Path(tmp) / "handler.py"
                script.write_text(PRELUDE + "from orch_handler import handler\n" + body)
                proc = subprocess.run(
                    [sys.executable, str(script)],
                    input=b"".join(json.dumps(req(i, n=i)).encode() + b"\n" for i in range(5)),
                    capture_output=True,
                    timeout=60,
                )
                self.assertEqual(proc.returncode, 0, proc.stderr)
                lines = proc.stdout.splitlines(keepends=True)
                self.assertEqual(lines[0], orch_handler.PIPELINE_ANNOUNCEMENT)
                self.assertEqual(
                    sorted(json.loads(line)["id"] for line in lines[1:]), list(range(5))
                )

    def test_threads_start_queued_requests_in_arrival_order(self):
        started = []
        lock = threading.Lock()

        def fn(item):
            with lock:
                started.append(item["n"])
            time.sleep(0.005)
            return item

        requests = "".join(json.dumps(req(i, n=i)) + "\n" for i in range(40)).encode()
        with contextlib.redirect_stderr(io.StringIO()):
            orch_handler.serve(fn, 4, stdin=io.BytesIO(requests), stdout=io.BytesIO())
        # A pool of 4 takes them in order: none starts before one that came 4 or more earlier.
        for position, n in enumerate(started):
            self.assertLess(abs(position - n), 4, started)


class Concurrency(unittest.TestCase):
    THREADS = """\
    import threading, time
    from orch_handler import handler
    state = {"now": 0, "max": 0}
    lock = threading.Lock()

    @handler(concurrency=3)
    def work(item):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(item["sleep"])
        with lock:
            state["now"] -= 1
        if item.get("fail"):
            raise RuntimeError(f"failed {item['n']}")
        return {"n": item["n"], "max_in_flight": state["max"]}
    """

    ASYNC = """\
    import asyncio
    from orch_handler import handler
    state = {"now": 0, "max": 0}

    @handler(concurrency=3)
    async def work(item):
        state["now"] += 1
        state["max"] = max(state["max"], state["now"])
        await asyncio.sleep(item["sleep"])
        state["now"] -= 1
        if item.get("fail"):
            raise RuntimeError(f"failed {item['n']}")
        return {"n": item["n"], "max_in_flight": state["max"]}
    """

    def check_out_of_order(self, body):
        # Item n sleeps longer the smaller n is, so answers come back roughly reversed.
        n_items = 9
        requests = [
            {"id": 100 + n, "item": {"n": n, "sleep": 0.04 * (n_items - n), "fail": n == 4}}
            for n in range(n_items)
        ]
        responses, out_lines, stderr, rc = run_handler(body, requests)
        self.assertEqual(rc, 0, stderr)
        self.assertEqual(len(out_lines), n_items)
        ids = [r["id"] for r in responses]
        self.assertEqual(sorted(ids), [100 + n for n in range(n_items)])
        self.assertNotEqual(ids, sorted(ids), "expected answers out of request order")
        max_seen = 0
        for r in responses:
            n = r["id"] - 100
            if n == 4:
                self.assertEqual(
                    r["error"], {"kind": "permanent", "message": f"RuntimeError: failed {n}"}
                )
                continue
            # The answer belongs to the request with the same id.
            self.assertEqual(r["result"]["n"], n)
            max_seen = max(max_seen, r["result"]["max_in_flight"])
        self.assertLessEqual(max_seen, 3)
        self.assertGreaterEqual(max_seen, 2, "expected calls to overlap")

    def test_threads_out_of_order(self):
        self.check_out_of_order(self.THREADS)

    def test_async_out_of_order(self):
        self.check_out_of_order(self.ASYNC)

    def test_in_flight_requests_are_answered_after_eof(self):
        # stdin closes right after the last request; all of them must still be answered.
        for body in (self.THREADS, self.ASYNC):
            requests = [req(n, n=n, sleep=0.2) for n in range(6)]
            responses, _, stderr, rc = run_handler(body, requests)
            self.assertEqual(rc, 0, stderr)
            self.assertEqual(sorted(r["id"] for r in responses), list(range(6)))

    def test_async_errors_and_print(self):
        body = """\
        import asyncio
        from orch_handler import handler, Transient

        @handler(concurrency=2)
        async def work(item):
            await asyncio.sleep(0)
            print("hello from async")
            if item.get("t"):
                raise Transient("try later")
            if item.get("bad"):
                raise ValueError("bad")
            return None
        """
        responses, _, stderr, rc = run_handler(
            body, [req(1, t=True), "garbage", req(2, bad=True), req(3)]
        )
        self.assertEqual(rc, 0, stderr)
        by_id = {r["id"]: r for r in responses}
        self.assertEqual(len(responses), 3)
        self.assertEqual(by_id[1]["error"], {"kind": "transient", "message": "try later"})
        self.assertEqual(by_id[2]["error"], {"kind": "permanent", "message": "ValueError: bad"})
        self.assertEqual(by_id[3]["result"], {})
        self.assertIn("hello from async", stderr)


class ExplicitUse(unittest.TestCase):
    def test_explicit_serve(self):
        body = """\
        from orch_handler import serve

        def double(item):
            return {"x": item["x"] * 2}

        if __name__ == "__main__":
            serve(double, concurrency=2)
            # After serve() returns, print() writes to the real stdout again.
            print('{"id": "after", "result": {}}')
        """
        responses, _, stderr, rc = run_handler(body, [req(1, x=2), req(2, x=5)])
        self.assertEqual(rc, 0, stderr)
        self.assertEqual(
            sorted(responses[:2], key=lambda r: r["id"]),
            [{"id": 1, "result": {"x": 4}}, {"id": 2, "result": {"x": 10}}],
        )
        self.assertEqual(responses[2:], [{"id": "after", "result": {}}])

    def test_importing_does_not_serve(self):
        with tempfile.TemporaryDirectory() as tmp:
            module = Path(tmp) / "my_handler.py"
            module.write_text(
                textwrap.dedent(
                    """\
                    from orch_handler import handler, Permanent

                    @handler(concurrency=4)
                    def enrich(item):
                        if not item:
                            raise Permanent("empty")
                        return {"k": sorted(item)}
                    """
                )
            )
            spec = importlib.util.spec_from_file_location("my_handler", module)
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
        # The function is returned unchanged and can be unit-tested directly.
        self.assertEqual(mod.enrich({"b": 1, "a": 2}), {"k": ["a", "b"]})
        self.assertEqual(mod.enrich.orch_concurrency, 4)
        with self.assertRaises(orch_handler.Permanent):
            mod.enrich({})

    def test_serve_on_given_streams(self):
        requests = b'{"id": 1, "item": {"x": 1}}\nnope\n{"id": 2, "item": {"x": 2}}\n'
        out = io.BytesIO()
        stdout_before = sys.stdout

        def inc(item):
            print("printed while serving")  # goes to stderr, not to `out`
            return {"x": item["x"] + 1}

        log = io.StringIO()
        with contextlib.redirect_stderr(log):
            orch_handler.serve(inc, stdin=io.BytesIO(requests), stdout=out)
        self.assertIs(sys.stdout, stdout_before)
        self.assertIn("printed while serving", log.getvalue())
        self.assertIn("skipping a request line that is not JSON", log.getvalue())
        self.assertEqual(
            [json.loads(line) for line in out.getvalue().splitlines()],
            [ANNOUNCEMENT, {"id": 1, "result": {"x": 2}}, {"id": 2, "result": {"x": 3}}],
        )

    def test_bad_concurrency(self):
        with self.assertRaises(ValueError):
            orch_handler.handler(concurrency=0)
        with self.assertRaises(TypeError):
            orch_handler.handler(3)

    def test_error_classes(self):
        self.assertEqual(orch_handler.Transient("x").kind, "transient")
        self.assertEqual(orch_handler.Permanent("x").kind, "permanent")
        self.assertEqual(orch_handler.Transient().message, "Transient")
        self.assertTrue(issubclass(orch_handler.Transient, orch_handler.HandlerError))


if __name__ == "__main__":
    unittest.main()
