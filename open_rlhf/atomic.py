"""Atomic writes: a file, a figure, a CSV that grows by rows, and a model folder appear complete or not at all.

Used by every layer that writes results (stages, merging, reports, benchmarks); it imports nothing from the
project.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _temp_beside(path: Path, suffix: str = "") -> Iterator[str]:
    """Yield a temp file name in ``path``'s folder; when the block succeeds, give the file ordinary permissions
    (mkstemp makes it private) and `os.replace` it onto ``path``; on any exception, delete it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file in the same folder and `os.replace` (no torn files)."""
    with _temp_beside(Path(path)) as tmp, open(tmp, "w") as f:
        f.write(text)


def atomic_save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Save a matplotlib figure as a PNG at ``path`` via a temp file in the same folder and `os.replace`, so a
    plot is never seen half-written; the figure is closed afterwards (also on error)."""
    path = Path(path)
    try:
        with _temp_beside(path, suffix=".png") as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        import matplotlib.pyplot as plt

        plt.close(fig)
    return path


def append_csv(rows: list[dict], path: str | Path, context: dict | None = None) -> Path:
    """Append ``rows`` (plus ``context`` columns such as machine and versions) to a CSV, rewriting it atomically
    so an interrupted run never leaves a torn file; earlier rows are kept (new columns are added)."""
    path = Path(path)
    rows = [{**(context or {}), **r} for r in rows]
    old = list(csv.DictReader(path.open())) if path.is_file() else []
    fields = list(dict.fromkeys([k for r in old + rows for k in r]))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(old + rows)
    atomic_write_text(path, buffer.getvalue())
    return path


def publish_entries(source: Path, target: Path) -> None:
    """Rename every entry of the folder ``source`` into the existing folder ``target`` (same file system).

    A same-named folder in ``target`` (the leftover of an earlier interrupted publish of this same content) is
    replaced; other entries of ``target`` are not touched.
    """
    for entry in Path(source).iterdir():
        destination = Path(target) / entry.name
        if destination.is_dir() and not destination.is_symlink():
            shutil.rmtree(destination)
        os.replace(entry, destination)


@contextlib.contextmanager
def atomic_output_dir(output_dir: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary folder next to ``output_dir``; rename it to ``output_dir`` when the block succeeds,
    so ``output_dir`` appears complete or not at all (e.g. a merged model). On any exception the temporary folder is
    deleted and ``output_dir`` is never created.

    A stage's final model goes into the folder that already holds its checkpoints instead: see
    `open_rlhf.outputs.save_final`, which publishes with `publish_entries` behind a completion marker.

    Args:
        output_dir (`str` or `Path`): the final folder; it must not exist.

    Raises:
        FileExistsError: when ``output_dir`` exists (before, or in a race, after the block): a folder is never
            overwritten.
    """
    target = Path(output_dir)
    if target.exists():
        raise FileExistsError(f"{target} already exists; refusing to overwrite it. Pass a new output folder or "
                              "move the old one away yourself.")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the result is an ordinary shared folder
        if target.exists():
            raise FileExistsError(f"{target} appeared while it was being written; refusing to overwrite it.")
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
