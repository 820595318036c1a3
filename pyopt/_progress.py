"""Progress of long work on stderr (``pyopt bench``, ``pyopt train``): never silent.

On a terminal, one line redrawn in place: a bar, the elapsed time and what is running,
ticking every second even while the main thread sits in a JIT compile. Anywhere else (a
pipe, a log file, CI), plain lines: one per item of work, every note, and a heartbeat line
when an item runs long without one. Disabled (``--no-progress``), nothing at all.

:class:`KernelLoad` says, before the first call of some kernel families, whether it will
compile them or load them from Numba's on-disk cache, and after it what it did.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

HEARTBEAT_S = 15.0  # a line at least this often in line mode while work runs
TICK_S = 1.0  # bar redraws while nothing else redraws it (the elapsed time moves on)
MIN_REDRAW_S = 0.1  # updates faster than this (training steps) redraw the bar once
WIDTH = 119  # a bar line is cut to this many characters: one terminal line

# Kernel families (pyopt.kernels.<backend>.<family>) and what users know them as.
KERNEL_FAMILIES = {
    "batchnorm": "batch norm",
    "optim": "optimizers",
    "clip": "gradient clipping",
    "random": "dropout and init",
}


class Progress:
    """Progress of ``total`` items of work on ``stream``: a bar on a terminal, lines elsewhere.

    ``start(label)`` begins an item (a numbered line of its own in line mode),
    ``phase(label)`` work outside the count, ``status(text)`` says what is being done now
    (the bar shows it; a heartbeat line repeats it), ``advance()`` marks an item done,
    ``note(text)`` prints a line in either mode.
    Use it as a context manager, or call :meth:`close`: a background thread keeps the
    bar's clock and the heartbeat going while the main thread is busy.

    Args:
        stream: where to write (stderr); None disables everything.
        total: the number of items (0: no count or bar, only labels).
        bar: redraw one line in place; None: when ``stream`` is a terminal.
        heartbeat_s: in line mode, the longest silence while an item runs.
        width: characters of the bar.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> with Progress(out, total=2, bar=False) as progress:
        ...     progress.start("first case")
        ...     progress.advance()
        ...     progress.note("compiling the kernels")
        >>> print(out.getvalue(), end="")
        [1/2] first case
        compiling the kernels
    """

    def __init__(
        self,
        stream: TextIO | None,
        total: int = 0,
        *,
        bar: bool | None = None,
        heartbeat_s: float = HEARTBEAT_S,
        width: int = 24,
    ):
        self.stream, self.total, self.width = stream, total, width
        self.bar = bool(bar if bar is not None else stream is not None and _isatty(stream))
        self.heartbeat_s = heartbeat_s
        self.done = 0
        self._label = self._status = ""
        self._lock = threading.RLock()  # hidden()'s caller may note or advance within it
        self._started = self._last_line = self._last_draw = time.perf_counter()
        self._drawn = 0  # characters of the bar line on screen (0: none)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if stream is not None:
            self._thread = threading.Thread(target=self._watch, name="pyopt-progress", daemon=True)
            self._thread.start()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def elapsed(self) -> float:
        """Seconds since this progress began."""
        return time.perf_counter() - self._started

    def start(self, label: str) -> None:
        """Begin the next item of work, ``label`` (its numbered line, in line mode)."""
        self._begin(label, self._count())

    def phase(self, label: str) -> None:
        """Begin work that is not one of the ``total`` items (a probe, a warm-up)."""
        self._begin(label, "")

    def _begin(self, label: str, prefix: str) -> None:
        with self._lock:
            self._label, self._status = label, ""
            if self.bar:
                self._draw()
            else:
                self._line(prefix + label)

    def status(self, text: str) -> None:
        """What the current item is doing now (the bar's text; a heartbeat repeats it)."""
        with self._lock:
            self._status = text
            if self.bar and time.perf_counter() - self._last_draw >= MIN_REDRAW_S:
                self._draw()

    def advance(self, n: int = 1) -> None:
        """Mark ``n`` items done."""
        with self._lock:
            self.done += n
            if self.bar and time.perf_counter() - self._last_draw >= MIN_REDRAW_S:
                self._draw()

    def note(self, text: str) -> None:
        """A line of its own, in either mode (on a terminal, above the bar)."""
        with self._lock:
            self._clear()
            self._line(text)
            if self.bar:
                self._draw()

    @contextlib.contextmanager
    def hidden(self) -> Iterator[None]:
        """The bar off the screen while the caller writes to the terminal elsewhere
        (results on stdout), redrawn after; in line mode, nothing to hide."""
        with self._lock:
            self._clear()
            yield
            if self.bar:
                self._draw()

    def close(self) -> None:
        """Stop the clock and take the bar off the screen (what was noted stays)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with self._lock:
            self._clear()
            self.stream = None

    # --- drawing, under self._lock ---
    def _count(self) -> str:
        if not self.total:
            return ""
        digits = len(str(self.total))
        return f"[{self.done + 1:>{digits}}/{self.total}] "

    def _text(self) -> str:
        return ": ".join(t for t in (self._label, self._status) if t)

    def _draw(self) -> None:
        if self.stream is None:
            return
        parts = []
        if self.total:
            filled = self.width * min(self.done, self.total) // self.total
            parts.append(f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total}")
        parts.append(f"{self.elapsed:3.0f} s")
        line = ("  ".join(parts) + "  " + self._text())[:WIDTH]
        self.stream.write("\r" + line + " " * max(0, self._drawn - len(line)))
        self.stream.flush()
        self._drawn = len(line)
        self._last_draw = time.perf_counter()

    def _clear(self) -> None:
        if self.stream is not None and self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self.stream.flush()
            self._drawn = 0

    def _line(self, text: str) -> None:
        if self.stream is None:
            return
        self.stream.write(text + "\n")
        self.stream.flush()
        self._last_line = time.perf_counter()

    def _watch(self) -> None:
        # Bar: redraw each tick so the clock moves during a long compile or kernel.
        # Lines: a heartbeat after heartbeat_s without a line, so a log never stalls.
        while not self._stop.wait(TICK_S):
            with self._lock:
                if self.stream is None:
                    return
                if self.bar:
                    self._draw()
                elif time.perf_counter() - self._last_line >= self.heartbeat_s:
                    what = self._text() or "working"
                    self._line(f"  ... still {what} ({self.elapsed:.0f} s elapsed)")


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class KernelLoad:
    """What the first calls of some kernel families will do, said before and counted after.

    Before (:meth:`before`): whether Numba's on-disk cache holds the families' CPU kernels
    for this machine (each parallel kernel's cache index, checked as Numba checks it: same
    Numba version, unchanged source and bytecode, same CPU), so the calls will compile,
    load, or (some of each) either; a kernel can still compile for a dtype it has not met.
    After (:meth:`after`): the seconds since :meth:`before` and how many kernels were
    compiled and how many loaded, from Numba's own counters. CUDA kernels compile in
    every process.

    Args:
        backend: "cpu" or "cuda".
        families: kernel families (keys of ``KERNEL_FAMILIES``).
    """

    def __init__(self, backend: str, families: Iterable[str]):
        self.backend = backend
        self.families = tuple(dict.fromkeys(families))
        unknown = [f for f in self.families if f not in KERNEL_FAMILIES]
        if unknown:
            raise ValueError(f"unknown kernel families {unknown}; known: {list(KERNEL_FAMILIES)}")
        self._started = time.perf_counter()
        self._counts = self._cache_counts()

    def _dispatchers(self) -> list[Any]:
        if self.backend != "cpu":
            return []
        from numba.core.registry import CPUDispatcher

        from pyopt._backend import kernels_for

        # The module's own parallel kernels: what its launchers call from Python, each
        # cached on its own; the helpers they inline are compiled into them.
        found = []
        for family in self.families:
            module = kernels_for("cpu", family)
            found += [
                v
                for v in vars(module).values()
                if isinstance(v, CPUDispatcher)
                and v.py_func.__module__ == module.__name__
                and v.targetoptions.get("parallel")
            ]
        return found

    def _cache_counts(self) -> tuple[int, int]:
        hits = misses = 0
        for dispatcher in self._dispatchers():
            stats = dispatcher.stats
            hits += sum(stats.cache_hits.values())
            # Only misses that were compiled: a kernel that asks for a literal argument
            # (numba.literally) first misses on the non-literal signature, which is never
            # compiled (it raises to retry with the literal) and so is not an overload.
            misses += sum(
                n for sig, n in stats.cache_misses.items() if tuple(sig) in dispatcher.overloads
            )
        return hits, misses

    def cache_state(self) -> str:
        """``warm`` (every kernel has a fresh cache entry for this CPU), ``cold`` (none
        has), ``mixed``, or ``unknown`` (CUDA, or a Numba whose cache cannot be read)."""
        dispatchers = self._dispatchers()
        if not dispatchers:
            return "unknown"
        try:
            warm = [_has_cache_entry(d) for d in dispatchers]
        except Exception:  # Numba's cache layout is not public API: say we cannot tell
            return "unknown"
        if all(warm):
            return "warm"
        return "cold" if not any(warm) else "mixed"

    def _what(self) -> str:
        names = ", ".join(KERNEL_FAMILIES[f] for f in self.families)
        return f"pyopt's {self.backend.upper()} kernels for {names}"

    def before(self) -> str:
        """The line to print before the first calls."""
        self._started = time.perf_counter()
        self._counts = self._cache_counts()
        if self.backend != "cpu":
            return f"compiling {self._what()} (CUDA kernels compile in every process)"
        state = self.cache_state()
        if state == "cold":
            return f"compiling {self._what()} (first use on this machine; cached for later runs)"
        if state == "warm":
            return f"loading {self._what()} from the Numba cache (compiled on an earlier run)"
        return f"compiling or loading {self._what()} (some are in the Numba cache)"

    def counts(self) -> tuple[int, int]:
        """``(compiled, loaded from cache)``: CPU kernels, since construction or :meth:`before`."""
        hits, misses = self._cache_counts()
        return misses - self._counts[1], hits - self._counts[0]

    def after(self, during: str) -> str:
        """The line to print after them: kernels compiled and loaded, and the seconds that
        ``during`` (what ran since :meth:`before`, e.g. "the first step") took."""
        took = f"{during} took {time.perf_counter() - self._started:.1f} s"
        if self.backend != "cpu":
            return f"{self._what()}: ready ({took})"
        compiled, loaded = self.counts()
        return f"{self._what()}: {compiled} compiled, {loaded} loaded from the Numba cache ({took})"


def _has_cache_entry(dispatcher: Any) -> bool:
    """Whether ``dispatcher``'s on-disk cache index is fresh and holds an entry compiled
    for this CPU (Numba's own test when it loads one; it ignores a stale index)."""
    cache = dispatcher._cache
    index = cache._cache_file._load_index()  # {} when missing, stale or another Numba
    codegen = dispatcher.targetctx.codegen()
    return any(cache._index_key(key[0], codegen) == key for key in index)
