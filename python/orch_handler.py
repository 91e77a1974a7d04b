"""Write an orch ``exec`` handler as one decorated Python function.

Stdlib only, Python >= 3.9. Copy this file next to your handler, or put its directory on
``sys.path``.

    from orch_handler import handler, Transient, Permanent, RateLimited, Result

    @handler                        # sequential, on the main thread
    def enrich(item):
        if not item.get("text"):
            raise Permanent("empty text")      # recorded in errors.parquet, not retried
        return {"id": item["id"], "n": len(item["text"])}

    # @handler(concurrency=8)        # calls run on a thread pool of 8, answers as they finish
    # async def enrich(item): ...    # async def: up to `concurrency` calls on one asyncio loop

Run it with ``python3 handler.py``; orch does that for you (``spec.handler.exec.command``).

Serving starts *at the decorator* when the function is defined in the script being run (its
module's ``__name__`` is ``"__main__"``); no ``if __name__ == "__main__":`` block is needed. The
decorator then answers requests until stdin closes and exits the process, so the code below the
decorated function runs only after that: define everything the handler uses (imports, helpers,
constants, models) *above* it. Imported from another module (a test), or defined in a REPL, a
notebook or ``python -c``, the decorator does nothing but return the function unchanged, so it
can be called directly. ``serve(fn)`` starts serving explicitly.

The protocol (docs/job-spec.md, "Handlers"), which this module implements:

* one long-lived process per worker; JSON lines both ways;
* request on stdin:   ``{"id": 17, "item": {...}}``;
* response on stdout: ``{"id": 17, "result": {...}}`` -- a dict is one output row, a list of
  dicts is several rows (an empty list: none) -- or
  ``{"id": 17, "error": {"kind": "transient" | "permanent" | "rate_limited", "message": "...",
  "retryAfter": 2.5}}`` (``retryAfter``: seconds to wait before the retry, optional); either may
  carry ``"usage": {"<rate limit name>": <tokens>}``, what the call consumed;
* responses may come out of order; the handler works on up to ``spec.handler.concurrency``
  requests at once, starting them in the order they arrive, and says so on its first stdout line,
  ``{"pipeline": true}``: orch then keeps more requests queued on stdin, so that the next one is
  always there when a call ends (an item's timeout counts from when it is started);
* stderr goes to the task log.

What this module does for you:

* return value ``None`` -> ``{}`` (one row that has only orch's ``_item`` column);
* ``raise Transient(msg)`` -> retried by orch with backoff; ``raise Permanent(msg)`` -> recorded
  and skipped; ``raise RateLimited(msg)`` -> the API refused for its rate: retried like
  transient; any other exception -> permanent, message ``"TypeName: message"``, with the
  traceback written to stderr;
* ``Transient(msg, retry_after=2.0)`` and ``RateLimited(msg, retry_after=2.0)``: the retry waits
  at least that many seconds (pass on the API's ``Retry-After``);
* usage, for rate limits counted in tokens (``spec.rateLimit``): ``return Result(value,
  usage={"openai": 1234})`` reports what the call consumed with its result, and
  ``raise RateLimited(msg, usage={"openai": 10})`` (any of the exceptions) with a failure.
  Counts are non-negative integers by rate limit name; anything else makes the item a permanent
  error naming the problem. The usage travels with the return value or the exception, never
  through shared state, so it is the same with threads and asyncio;
* a result that is not a dict, a list of dicts or None, or that JSON cannot encode (sets,
  datetimes, NaN/Infinity, unpaired surrogates), becomes a permanent error naming the problem;
* while serving, stdout is reserved for responses: ``print()``, and any child process that
  inherits file descriptor 1, write to stderr instead; stdin reads as empty (so neither
  ``input()`` nor a child process can swallow requests). Output printed *before* serving starts
  (at import time) still reaches stdout, where orch ignores it with a warning: log to stderr;
* a malformed request line is logged to stderr (its length, not its content) and skipped;
* on end of stdin, the requests in flight are finished and answered before the process exits.

How answers are written: the sequential ``@handler`` buffers its answers while more requests are
already waiting on stdin, and writes them in one go as soon as stdin has nothing more to read
(before it would wait for input), once 1 ms has passed since the first of them started (so a slow
handler's answers still go out one by one), and at exit. A single request is thus answered at
once, and a stream of queued requests costs one ``write`` per batch instead of one per item.
A process killed hard (``os._exit``, a signal, a crash in C code) can therefore lose the answers
of the last millisecond; orch then fails those items as in flight and retries them.
``@handler(concurrency=N)`` and ``async def`` handlers write each answer as it completes.
"""

from __future__ import annotations

import asyncio
import inspect
import io
import json
import os
import re
import select
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Optional, Tuple

__all__ = [
    "handler",
    "serve",
    "Transient",
    "Permanent",
    "RateLimited",
    "HandlerError",
    "Result",
]

if sys.version_info < (3, 9):
    raise ImportError("orch_handler needs Python 3.9 or newer")

_PREFIX = "orch_handler: "


class HandlerError(Exception):
    """An item failure of a given kind; raise `Transient`, `RateLimited` or `Permanent`.

    `retry_after`: seconds orch waits at least before retrying the item (transient kinds).
    `usage`: tokens the failed call still consumed, by rate limit name.
    """

    kind = "permanent"

    def __init__(
        self,
        message: object = "",
        *,
        retry_after: Optional[float] = None,
        usage: Optional[dict] = None,
    ) -> None:
        super().__init__(message)
        self.message = str(message) if str(message) else type(self).__name__
        if retry_after is not None and (
            isinstance(retry_after, bool)
            or not isinstance(retry_after, (int, float))
            or not retry_after >= 0
            or retry_after == float("inf")
        ):
            raise ValueError(f"retry_after must be a number of seconds >= 0, got {retry_after!r}")
        self.retry_after = retry_after
        self.usage = usage


class Transient(HandlerError):
    """The item may succeed later (rate limit, timeout, service down): orch retries it."""

    kind = "transient"


class Permanent(HandlerError):
    """The item cannot succeed (bad record): orch records it in errors.parquet and moves on."""

    kind = "permanent"


class RateLimited(HandlerError):
    """The API refused the call for its rate (HTTP 429): orch retries it like `Transient`,
    after `retry_after` seconds when given."""

    kind = "rate_limited"


class Result:
    """A result with the tokens its call consumed: ``return Result({"x": 1}, usage={"openai":
    1234})``. `value` is what the handler would return otherwise (a dict, a list of dicts or
    None); `usage` maps rate limit names to non-negative integers."""

    __slots__ = ("value", "usage")

    def __init__(self, value: Any, usage: Optional[dict] = None) -> None:
        self.value = value
        self.usage = usage

    def __repr__(self) -> str:
        return f"Result({self.value!r}, usage={self.usage!r})"


def handler(fn: Optional[Callable] = None, *, concurrency: int = 1):
    """Marks `fn` as the orch handler; serves at once if `fn` is defined in ``__main__``.

    ``@handler``: one call at a time on the main thread (async def: one at a time on asyncio).
    ``@handler(concurrency=N)``: up to N calls at once -- on a thread pool for a plain function,
    as asyncio tasks for an async def -- answered as they complete, started in the order the
    requests arrive (orch queues more than N on stdin). Keep N equal to
    ``spec.handler.concurrency``: orch times each item from when it becomes one of the first N
    unanswered requests.
    """
    _check_concurrency(concurrency)

    def decorate(f: Callable) -> Callable:
        try:
            f.orch_concurrency = concurrency  # type: ignore[attr-defined]
        except (AttributeError, TypeError):  # a bound method, say: serve() just uses 1
            pass
        if _is_main_script(f) and not _serving.is_set():
            try:
                serve(f, concurrency)
            except KeyboardInterrupt:
                sys.exit(130)
            sys.exit(0)
        return f

    if fn is not None:
        if not callable(fn):
            raise TypeError(
                "use @handler or @handler(concurrency=N); got a positional "
                f"{type(fn).__name__} argument"
            )
        return decorate(fn)
    return decorate


def serve(
    fn: Callable,
    concurrency: Optional[int] = None,
    *,
    stdin: Optional[io.BufferedIOBase] = None,
    stdout: Optional[io.BufferedIOBase] = None,
) -> None:
    """Answers requests with `fn` until stdin closes, then returns.

    `concurrency` defaults to the value given to ``@handler`` (1 when undecorated). `stdin`
    and `stdout` are binary streams to use instead of the process's file descriptors 0 and 1
    (for tests); when they are given, ``sys.stdout`` is still pointed at stderr but no file
    descriptor is touched.
    """
    if concurrency is None:
        concurrency = getattr(fn, "orch_concurrency", 1)
    _check_concurrency(concurrency)
    if _serving.is_set():
        raise RuntimeError("orch_handler: already serving")
    _serving.set()
    try:
        with _Channel(stdin, stdout) as channel:
            name = getattr(fn, "__qualname__", repr(fn))
            if _is_async(fn):
                mode = "asyncio"
                run = _serve_async
            elif concurrency > 1:
                mode = "threads"
                run = _serve_threads
            else:
                mode = "sequential"
                run = _serve_sequential
            _log(f"serving {name} (concurrency {concurrency}, {mode})")
            channel.announce_pipeline()
            run(fn, concurrency, channel)
            _log(
                f"stdin closed; answered {channel.answered} requests "
                f"({channel.failed} errors), skipped {channel.skipped} malformed lines"
            )
    finally:
        _serving.clear()


# --- internals ---------------------------------------------------------------------------------

_serving = threading.Event()


def _check_concurrency(concurrency: object) -> None:
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}")


def _is_main_script(fn: Callable) -> bool:
    """Whether `fn` is defined in the script being run (not in a REPL or a notebook)."""
    if getattr(fn, "__module__", None) != "__main__":
        return False
    main = sys.modules.get("__main__")
    # A REPL, a notebook or `python -c` has no __file__: serving there would block on stdin.
    return main is not None and getattr(main, "__file__", None) is not None


def _is_async(fn: Callable) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)
    )


def _log(message: str) -> None:
    try:
        sys.stderr.write(_PREFIX + message + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class _Closed(Exception):
    """stdout is gone: nobody can receive answers anymore."""


class _Channel:
    """The request and response streams, with stdout reserved for responses while serving."""

    def __init__(
        self,
        stdin: Optional[io.BufferedIOBase],
        stdout: Optional[io.BufferedIOBase],
    ) -> None:
        self._given = stdin is not None or stdout is not None
        self.inp = stdin
        self.out = stdout
        self._lock = threading.Lock()
        self._saved_fds: Optional[Tuple[int, int]] = None
        self._saved_std: Optional[Tuple[Any, Any]] = None
        self.closed = False
        self.answered = 0
        self.failed = 0
        self.skipped = 0

    def __enter__(self) -> "_Channel":
        self._saved_std = (sys.stdin, sys.stdout)
        if self._given:
            if self.inp is None:
                self.inp = io.BytesIO()
            if self.out is None:
                self.out = sys.stdout.buffer
        else:
            try:
                sys.stdout.flush()
            except (OSError, ValueError):
                pass
            try:
                # Keep private copies of the real fds 0 and 1, then point fd 1 at stderr and fd 0
                # at /dev/null: this also covers C extensions and child processes.
                saved_in, saved_out = os.dup(0), os.dup(1)
                self._saved_fds = (os.dup(0), os.dup(1))
                os.dup2(2, 1)
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.close(null)
                self.inp = os.fdopen(saved_in, "rb")
                self.out = os.fdopen(saved_out, "wb")
            except OSError as e:
                # No usable fds (embedded interpreter?): fall back to the Python-level streams.
                _log(f"cannot redirect file descriptors ({e}); only print() is redirected")
                self._saved_fds = None
                self.inp = sys.stdin.buffer
                self.out = sys.stdout.buffer
        sys.stdout = sys.stderr
        sys.stdin = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved_std is not None:
            sys.stdin, sys.stdout = self._saved_std
        if self._saved_fds is not None:
            for f in (self.out, self.inp):
                try:
                    f.close()  # type: ignore[union-attr]
                except (OSError, ValueError):
                    pass
            saved_in, saved_out = self._saved_fds
            os.dup2(saved_in, 0)
            os.dup2(saved_out, 1)
            os.close(saved_in)
            os.close(saved_out)
            self._saved_fds = None

    def lines(self):
        assert self.inp is not None
        while not self.closed:
            raw = self.inp.readline()
            if not raw:
                return
            yield raw

    def chunks(self, before_wait: Callable[[], None]):
        """Yields lists of request lines (without their newline), as many as one read gives.

        Calls `before_wait()` before every read that may block, that is whenever stdin has
        nothing to read right now -- or when that cannot be told (a stream without a file
        descriptor, a platform without poll()): then before every read.
        """
        inp = self.inp
        assert inp is not None
        read1 = getattr(inp, "read1", None)
        if read1 is None:  # no partial reads: a line at a time
            while not self.closed:
                before_wait()
                raw = inp.readline()
                if not raw:
                    return
                yield [raw]
            return
        ready = _ready_check(inp)
        rest = b""
        while not self.closed:
            if ready is None or not ready():
                before_wait()
            data = read1(_READ_CHUNK)
            if not data:
                if rest:
                    yield [rest]
                return
            if rest:
                data = rest + data
            lines = data.split(b"\n")
            rest = lines.pop()
            if lines:
                yield lines

    def announce_pipeline(self) -> None:
        """Tells orch that requests are started in arrival order, at most `concurrency` at a
        time (every serving mode does so), so that it may queue more on stdin."""
        assert self.out is not None
        try:
            self.out.write(PIPELINE_ANNOUNCEMENT)
            self.out.flush()
        except (OSError, ValueError) as e:
            self.closed = True
            _log(f"cannot write to stdout ({e}); orch went away? stopping")

    def write(self, line: bytes, ok: bool) -> None:
        """Writes one response line and flushes; raises `_Closed` when stdout is gone."""
        assert self.out is not None
        with self._lock:
            if self.closed:
                raise _Closed()
            try:
                self.out.write(line)
                self.out.flush()
            except (OSError, ValueError) as e:
                self.closed = True
                _log(f"cannot write to stdout ({e}); orch went away? stopping")
                raise _Closed() from e
            self.answered += 1
            if not ok:
                self.failed += 1

    def skip(self, why: str) -> None:
        with self._lock:
            self.skipped += 1
        _log(why)


_READ_CHUNK = 64 * 1024
PIPELINE_ANNOUNCEMENT = b'{"pipeline": true}\n'


def _ready_check(stream: Any) -> Optional[Callable[[], bool]]:
    """A function telling whether `stream` can be read without blocking (data or end of file
    waiting), or None when that cannot be known."""
    try:
        fd = stream.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return None

    def ready() -> bool:
        try:
            return bool(poller.poll(0))
        except OSError:
            return False

    return ready


_NO_ITEM = object()

# The request exactly as orch's worker writes it: `{"id":17,"item":<item>}`. Such a line is cut
# apart instead of parsed whole, which halves the cost of reading it; anything else (other key
# order, spaces, a string id) takes the general path below. Taking the cut is safe: if the text
# between `"item":` and the final `}` is one JSON value, the whole line is this two-key object.
_FAST_REQUEST = re.compile(rb'\{"id":(0|[1-9][0-9]{0,17}),"item":')
_raw_decode = json.JSONDecoder().raw_decode


def _parse(raw: bytes, channel: _Channel) -> Optional[Tuple[Any, Any]]:
    """(id, item) of a request line; None for a blank or malformed line (logged and skipped).

    A request with a valid id but no item gives ``(id, _NO_ITEM)``: it is answered with a
    permanent error, so that orch does not wait for it until the timeout.
    """
    m = _FAST_REQUEST.match(raw)
    if m is not None:
        try:
            text = raw[m.end() :].decode("utf-8")
            item, end = _raw_decode(text)
        except ValueError:  # also UnicodeDecodeError: the general path reports it
            pass
        else:
            rest = text[end:]
            if rest == "}" or rest.strip() == "}":
                return int(m.group(1)), item
    line = raw.strip()
    if not line:
        return None
    # Only lengths are logged: a request line holds item content, which may be sensitive.
    try:
        request = json.loads(line)
    except ValueError as e:
        channel.skip(f"skipping a request line that is not JSON ({len(line)} bytes): {e}")
        return None
    if not isinstance(request, dict):
        channel.skip(
            f"skipping a request line that is not a JSON object ({len(line)} bytes)"
        )
        return None
    rid = request.get("id")
    if isinstance(rid, bool) or not isinstance(rid, (int, str)):
        channel.skip(f"skipping a request without an integer id ({len(line)} bytes)")
        return None
    item = request.get("item", _NO_ITEM)
    if item is _NO_ITEM:
        _log(f"request {rid} has no item; answering with a permanent error")
    return rid, item


# One encoder for the whole run: json.dumps with non-default options builds a new encoder on
# every call, which costs microseconds per item.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _c_encoder() -> Optional[Callable[[Any], str]]:
    """The C encoder behind `_ENCODER`, built once.

    `JSONEncoder.encode` builds a new C encoder object (and a closure) on every call; keeping
    one saves about a microsecond per item. It is built without circular-reference markers, so
    that it holds no state and pool threads can share it: a circular result then fails with a
    RecursionError instead of a ValueError, and is a permanent error all the same. None where
    the C encoder is missing or its signature differs (checked on a sample): then `_ENCODER`.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    try:
        encoder = make(
            None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",",
            False, False, False,
        )
        sample = {"a": [1, 2.5, None, True], "é": "x\n"}

        def encode(value: Any) -> str:
            return "".join(encoder(value, 0))

        if encode(sample) != _ENCODER.encode(sample):
            return None
        return encode
    except Exception:  # noqa: BLE001 - any trouble: use the plain encoder
        return None


_encode: Callable[[Any], str] = _c_encoder() or _ENCODER.encode


def _json(value: Any) -> bytes:
    return _encode(value).encode("utf-8")


def _usage_problem(usage: Any) -> Optional[str]:
    """Why `usage` is not a dict of non-negative integer counts by name, or None."""
    if not isinstance(usage, dict):
        return f"usage must be a dict of token counts by rate limit name, got {type(usage).__name__}"
    for name, count in usage.items():
        if not isinstance(name, str) or not name:
            return f"usage names must be non-empty strings, got {name!r}"
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            return f"usage[{name!r}] must be an integer >= 0, got {count!r}"
    return None


def _error_line(
    rid: Any,
    kind: str,
    message: str,
    retry_after: Optional[float] = None,
    usage: Optional[dict] = None,
) -> bytes:
    error: dict = {"kind": kind, "message": message}
    if retry_after is not None:
        error["retryAfter"] = retry_after
    body: dict = {"id": rid, "error": error}
    if usage is not None:
        problem = _usage_problem(usage)
        if problem is not None:
            return _error_line(rid, "permanent", problem)
        body["usage"] = usage
    try:
        return _json(body) + b"\n"
    except (ValueError, TypeError, UnicodeError):
        # A message with an unpaired surrogate, say: keep it readable, drop what cannot encode.
        body["error"]["message"] = message.encode("utf-8", "replace").decode("utf-8")
        return _json(body) + b"\n"


def _describe(e: BaseException) -> str:
    text = str(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _failure(rid: Any, e: BaseException) -> bytes:
    """The response line for an exception raised by the handler."""
    if isinstance(e, HandlerError):
        return _error_line(
            rid,
            e.kind,
            e.message,
            getattr(e, "retry_after", None),
            getattr(e, "usage", None),
        )
    _log(f"request {rid}: the handler raised {type(e).__name__}:")
    try:
        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass
    return _error_line(rid, "permanent", _describe(e))


def _result_line(rid: Any, value: Any) -> Tuple[bytes, bool]:
    """The response line for a returned value, and whether it is a result (not an error)."""
    if type(value) is dict and type(rid) is int:
        # The common case, without building an envelope dict to encode.
        try:
            return ('{"id":%d,"result":%s}\n' % (rid, _encode(value))).encode("utf-8"), True
        except (TypeError, ValueError, UnicodeError, RecursionError):
            pass  # the general path below names the problem
    usage = None
    if isinstance(value, Result):
        value, usage = value.value, value.usage
        if usage is not None:
            problem = _usage_problem(usage)
            if problem is not None:
                return _error_line(rid, "permanent", problem), False
            if not usage:
                usage = None
    if value is None:
        value = {}
    elif isinstance(value, tuple):
        value = list(value)
    if inspect.isawaitable(value):
        if inspect.iscoroutine(value):
            value.close()  # no "never awaited" warning
        return (
            _error_line(
                rid,
                "permanent",
                "the handler returned an awaitable; declare it with `async def` so that "
                "orch_handler awaits it",
            ),
            False,
        )
    if isinstance(value, list):
        bad = next((v for v in value if not isinstance(v, dict)), _NO_ITEM)
        if bad is not _NO_ITEM:
            return (
                _error_line(
                    rid,
                    "permanent",
                    "the handler returned a list holding a value of type "
                    f"{type(bad).__name__}; a list result must hold dicts (one per row)",
                ),
                False,
            )
    elif not isinstance(value, dict):
        return (
            _error_line(
                rid,
                "permanent",
                f"the handler returned a value of type {type(value).__name__}; return a dict "
                "(one row), "
                "a list of dicts (several rows) or None (an empty row)",
            ),
            False,
        )
    envelope = {"id": rid, "result": value}
    if usage is not None:
        envelope["usage"] = usage
    try:
        return _json(envelope) + b"\n", True
    except (TypeError, ValueError, UnicodeError, RecursionError) as e:
        return (
            _error_line(
                rid, "permanent", f"the result is not JSON-serialisable: {_describe(e)}"
            ),
            False,
        )


def _answer(fn: Callable, rid: Any, item: Any) -> Tuple[bytes, bool]:
    if item is _NO_ITEM:
        return _error_line(rid, "permanent", "request has no `item`"), False
    try:
        value = fn(item)
    except Exception as e:
        return _failure(rid, e), False
    return _result_line(rid, value)


# The sequential server writes its buffered answers once this long (seconds) has passed since the
# first of them started, so that a slow handler's answers are not held back while further
# requests wait on stdin: with calls this slow, one write per answer costs nothing.
_FLUSH_INTERVAL = 0.001
# ... and once this many answers are buffered, which bounds the buffer.
_FLUSH_COUNT = 1024


def _serve_sequential(fn: Callable, _concurrency: int, channel: _Channel) -> None:
    """One call at a time, answers written in batches (see the module docstring).

    Answers are buffered while more requests can be read without waiting, and written before
    any read that could wait: orch only sends more once it has answers, so holding them back
    then would stall both sides.
    """
    out = channel.out
    assert out is not None
    pending: list = []
    failed = 0
    clock = time.monotonic

    def flush() -> None:
        nonlocal failed
        if not pending:
            return
        if channel.closed:
            raise _Closed()
        try:
            out.write(b"".join(pending))
            out.flush()
        except (OSError, ValueError) as e:
            channel.closed = True
            _log(f"cannot write to stdout ({e}); orch went away? stopping")
            raise _Closed() from e
        channel.answered += len(pending)
        channel.failed += failed
        pending.clear()
        failed = 0

    try:
        started = clock()
        for lines in channel.chunks(flush):
            for raw in lines:
                request = _parse(raw, channel)
                if request is None:
                    continue
                if not pending:
                    started = clock()
                line, ok = _answer(fn, *request)
                pending.append(line)
                if not ok:
                    failed += 1
                if len(pending) >= _FLUSH_COUNT or clock() - started >= _FLUSH_INTERVAL:
                    flush()
    except _Closed:
        return
    finally:
        # End of input, or an exception on its way out (SystemExit from the handler, say):
        # what was answered still goes out.
        try:
            flush()
        except _Closed:
            pass


def _serve_threads(fn: Callable, concurrency: int, channel: _Channel) -> None:
    def work(rid: Any, item: Any) -> None:
        try:
            try:
                line, ok = _answer(fn, rid, item)
            except BaseException as e:  # SystemExit and the like, raised in a pool thread
                line, ok = _failure(rid, e), False
            channel.write(line, ok)
        except _Closed:
            pass
        except BaseException:  # a bug here must not vanish silently inside a future
            _log(f"request {rid}: internal error:\n{traceback.format_exc()}")

    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="orch-handler")
    try:
        for raw in channel.lines():
            request = _parse(raw, channel)
            if request is not None:
                pool.submit(work, *request)
    finally:
        # On end of input: finish and answer what is in flight. When stdout is gone: drop it.
        pool.shutdown(wait=True, cancel_futures=channel.closed)


def _serve_async(fn: Callable, concurrency: int, channel: _Channel) -> None:
    async def one(rid: Any, item: Any, slots: asyncio.Semaphore) -> None:
        try:
            if item is _NO_ITEM:
                line, ok = _answer(fn, rid, item)
            else:
                try:
                    value = await fn(item)
                except Exception as e:
                    line, ok = _failure(rid, e), False
                else:
                    line, ok = _result_line(rid, value)
            channel.write(line, ok)
        except _Closed:
            pass
        finally:
            slots.release()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        # Blocking reads happen on a thread: this works for pipes, files and terminals alike.
        def read() -> None:
            try:
                for raw in channel.lines():
                    loop.call_soon_threadsafe(queue.put_nowait, raw)
            except BaseException as e:  # noqa: BLE001 - reported, then treated as end of input
                loop.call_soon_threadsafe(_log, f"cannot read stdin: {_describe(e)}")
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        threading.Thread(target=read, name="orch-handler-stdin", daemon=True).start()
        slots = asyncio.Semaphore(concurrency)
        tasks: set = set()
        while True:
            raw = await queue.get()
            if raw is None:
                break
            request = _parse(raw, channel)
            if request is None:
                continue
            await slots.acquire()
            if channel.closed:
                slots.release()
                break
            task = asyncio.ensure_future(one(*request, slots))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if channel.closed:
            for task in tasks:
                task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run(main())
