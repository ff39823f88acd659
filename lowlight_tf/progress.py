"""Progress of long jobs: a bar with rate and ETA on a terminal, plain periodic lines otherwise.

No TensorFlow here. Every long job (make_tfrecords, calibrate_simulation, evaluate, enhance,
reproduce) reports through `track`, so a user sees the same kind of progress everywhere, and a
log file (no terminal) gets one line every `interval` seconds instead of a redrawn bar.
"""
import sys
import time

import tqdm

# Seconds between plain progress lines when the output is not a terminal.
DEFAULT_INTERVAL = 30.0


def is_terminal(stream=None):
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def _format_duration(seconds):
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class _Lines:
    """The non-terminal stand-in for a tqdm bar: `update`, `set_postfix_str`, `close`."""

    def __init__(self, total, desc, unit, interval, stream):
        self.total, self.desc, self.unit = total, desc, unit
        self.interval, self.stream = interval, stream
        self.count, self.postfix = 0, ""
        self.start = self.last = time.monotonic()

    def _line(self, final=False):
        elapsed = max(time.monotonic() - self.start, 1e-9)
        rate = self.count / elapsed
        done = f"{self.count}/{self.total}" if self.total else f"{self.count}"
        eta = ""
        if self.total and rate > 0 and not final:
            eta = f", ETA {_format_duration((self.total - self.count) / rate)}"
        extra = f", {self.postfix}" if self.postfix else ""
        word = "done" if final else "progress"
        print(f"{self.desc}: {word} {done} {self.unit} ({rate:.2f} {self.unit}/s, "
              f"{_format_duration(elapsed)}{eta}{extra})", file=self.stream, flush=True)

    def update(self, n=1):
        self.count += n
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._line()

    def set_postfix_str(self, text):
        self.postfix = text

    def close(self):
        self._line(final=True)


def bar(total=None, desc="", unit="it", interval=DEFAULT_INTERVAL, stream=None, enabled=True):
    """A progress reporter with `update(n)`, `set_postfix_str(text)` and `close()`.

    Args:
      total: number of items expected (None when unknown: no ETA).
      desc: what is being done, e.g. "Evaluating model on rgb_dev:val".
      unit: the items' name, e.g. "images".
      interval: seconds between plain lines when `stream` is not a terminal.
      stream: where to write (sys.stderr by default).
      enabled: False gives a reporter that prints nothing (for quiet library calls).
    """
    stream = stream or sys.stderr
    if not enabled:
        return tqdm.tqdm(total=total, disable=True)
    if is_terminal(stream):
        return tqdm.tqdm(total=total, desc=desc, unit=f" {unit}", file=stream, dynamic_ncols=True)
    return _Lines(total, desc, unit, interval, stream)


def track(iterable, total=None, desc="", unit="it", **kwargs):
    """Yield the items of `iterable`, reporting progress through `bar` (see there)."""
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    reporter = bar(total=total, desc=desc, unit=unit, **kwargs)
    try:
        for item in iterable:
            yield item
            reporter.update(1)
    finally:
        reporter.close()


def warn(message):
    """One warning line on stderr (shown whatever a tool's verbosity says)."""
    print(f"Warning: {message}", file=sys.stderr, flush=True)
