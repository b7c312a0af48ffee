"""Writing files so that a crash or a kill never leaves a half-written one behind.

Write to a temporary file in the same folder, flush it to disk, then ``os.replace`` it over
the target: the rename is atomic, so readers see the old file or the new one, never a mix.
The file gets the permissions ``open`` would give a new one (``0o666`` less the umask), not
the owner-only ``0o600`` of a temporary file.

>>> import tempfile, pathlib
>>> with tempfile.TemporaryDirectory() as tmp:
...     path = pathlib.Path(tmp) / "notes.txt"
...     with atomic_open(path, "w") as f:
...         _ = f.write("kept whole")
...     path.read_text(), sorted(p.name for p in path.parent.iterdir())
('kept whole', ['notes.txt'])
"""

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_open(path, mode="wb", **kwargs):
    """Open a temporary file for writing; on a clean exit it replaces ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0o600, readable by us alone
        with os.fdopen(fd, mode, **kwargs) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask():
    """The process's umask (Python can only read it by setting it, so set it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
