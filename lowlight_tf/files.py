"""Writing files safely: atomic writes and the one output-path policy of every tool.

No TensorFlow here (tools and decoding workers import it cheaply). Two promises to users:
- A report, model, preset or image the project writes is either complete or absent: every write
  goes to a hidden temporary file in the target's folder and is renamed over the target only
  when it is complete (`os.replace` is atomic on one file system), so a kill or a full disk never
  leaves a truncated file under the final name.
- No tool writes over a file it did not create in this run unless the user says `--overwrite`,
  and never onto one of its inputs (`OutputGuard`).
"""
import contextlib
import json
import os
import tempfile

# Largest image (width x height of the decoded picture, raw or ordinary) any tool decodes. A
# 200 MP picture is larger than every current camera sensor; a crafted header that claims more
# is refused before any pixel is decoded (`--max_pixels` overrides it in every tool).
DEFAULT_MAX_PIXELS = 200_000_000


class OutputExistsError(FileExistsError):
    """An output path that holds a file this run did not create; the message says what to do."""


class OutputIsInputError(ValueError):
    """An output path that is one of the run's inputs (refused even with --overwrite)."""


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(temporary, path):
    """Give the finished temporary file ordinary permissions, then rename it over `path`."""
    # mkstemp creates 0600 files; a report or photo should get what open() would have given.
    os.chmod(temporary, 0o666 & ~_umask())
    os.replace(temporary, path)


@contextlib.contextmanager
def atomic_write(path, mode="w", encoding="utf-8"):
    """Open a temporary file beside `path`; on success it replaces `path` in one step.

    Usage: `with atomic_write(path) as f: f.write(text)`. On an exception inside the block the
    temporary file is removed and `path` is left as it was.

    Args:
      path: the final file path; its folder must exist.
      mode: "w" (text) or "wb" (bytes).
      encoding: text encoding for mode "w".
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}.")
    with atomic_path(path) as temporary:
        with open(temporary, mode, **({"encoding": encoding} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def write_text(path, text):
    """Write `text` (str) to `path` atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)


def write_bytes(path, data):
    """Write `data` (bytes) to `path` atomically."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def write_json(path, value, default=None):
    """Write `value` as indented JSON (with a final newline) to `path` atomically."""
    write_text(path, json.dumps(value, indent=2, default=default) + "\n")


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path` with the same extension; rename it over `path` after.

    For writers that take a file name rather than a file object (Keras `model.save` needs the
    `.keras` ending, Pillow infers the format from the ending). The writer must create the file.
    """
    folder, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    fd, temporary = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".partial{ext}", dir=folder)
    os.close(fd)
    try:
        yield temporary
        _publish(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temporary)
        raise


def save_model(model, path):
    """`model.save(path)` atomically (a kill mid-save leaves the previous file or none)."""
    with atomic_path(path) as temporary:
        model.save(temporary)


def _key(path):
    return os.path.normcase(os.path.realpath(path))


class OutputGuard:
    """The output-path policy shared by every tool that writes next to a user's data.

    `claim(path)` returns `path` when the run may write it: the path is not an input, and it
    either does not exist, was claimed earlier in this run, or `overwrite` is set. Otherwise it
    raises with the path and what to do. Comparisons resolve symbolic links and `..`.
    """

    def __init__(self, inputs=(), overwrite=False):
        self.overwrite = bool(overwrite)
        self._inputs = {_key(p) for p in inputs}
        self._claimed = set()

    def add_inputs(self, paths):
        """Mark more paths as inputs (never written, even with overwrite)."""
        self._inputs.update(_key(p) for p in paths)

    def is_claimed(self, path):
        return _key(path) in self._claimed

    def is_free(self, path):
        """True when `claim(path)` would succeed (for choosing among candidate names)."""
        key = _key(path)
        if key in self._inputs:
            return False
        return key in self._claimed or self.overwrite or not os.path.lexists(path)

    def claim(self, path):
        """Reserve `path` for this run; raises OutputIsInputError / OutputExistsError."""
        key = _key(path)
        if key in self._inputs:
            raise OutputIsInputError(
                f"Refusing to write {path}: it is one of this run's inputs. Choose another "
                "output directory (inputs are never overwritten, even with --overwrite).")
        if key not in self._claimed and not self.overwrite and os.path.lexists(path):
            raise OutputExistsError(
                f"Refusing to write {path}: the file exists and this run did not create it. "
                "Choose another output directory, move the file, or pass --overwrite.")
        self._claimed.add(key)
        return path
