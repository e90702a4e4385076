"""Atomic writes leave ordinary files: complete, and readable by others as any file the user writes (umask)."""

from __future__ import annotations

import os
import stat

from open_rlhf.atomic import atomic_write_text
from open_rlhf.outputs import new_results_dir


def test_atomic_write_text_replaces_whole_file_with_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "results.md"
        path.write_text("old")
        atomic_write_text(path, "new text")
        assert path.read_text() == "new text" and stat.S_IMODE(path.stat().st_mode) == 0o644
        assert [p.name for p in tmp_path.iterdir()] == ["results.md"]  # no temp file left behind
    finally:
        os.umask(old)


def test_new_results_dir_never_reuses_a_non_empty_folder(tmp_path, monkeypatch):
    import pytest

    from open_rlhf.errors import OutputDirError

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("kept")
    with pytest.raises(OutputDirError, match="runs/safety/<time>/. It holds"):
        new_results_dir(str(tmp_path / "taken"), "safety", "It holds x.")
    assert new_results_dir(str(tmp_path / "empty"), "eval") == tmp_path / "empty"
    monkeypatch.chdir(tmp_path)
    first = new_results_dir(None, "eval")
    first.mkdir(parents=True)
    assert new_results_dir(None, "eval") != first and first.parent == tmp_path.joinpath("runs", "eval").relative_to(tmp_path)
