"""lowlight_tf.files: atomic writes leave the old file or the new one; the output-path policy."""
import os

import pytest

from lowlight_tf import files


def test_atomic_write_replaces_only_on_success(tmp_path):
    path = tmp_path / "report.json"
    files.write_json(str(path), {"a": 1})
    with pytest.raises(RuntimeError):
        with files.atomic_write(str(path)) as f:
            f.write("half a rep")
            raise RuntimeError("killed")
    assert path.read_text() == '{\n  "a": 1\n}\n'
    assert os.listdir(tmp_path) == ["report.json"]  # no temporary left behind


def test_atomic_path_keeps_extension_and_cleans_up(tmp_path):
    target = tmp_path / "model.keras"
    with files.atomic_path(str(target)) as temporary:
        assert temporary.endswith(".keras") and os.path.dirname(temporary) == str(tmp_path)
        with open(temporary, "wb") as f:
            f.write(b"weights")
    assert target.read_bytes() == b"weights"
    with pytest.raises(ValueError):
        with files.atomic_path(str(target)) as temporary:
            raise ValueError("writer failed")
    assert target.read_bytes() == b"weights" and os.listdir(tmp_path) == ["model.keras"]


def test_output_guard_refuses_existing_and_inputs(tmp_path):
    user_file = tmp_path / "a_enhanced.png"
    user_file.write_bytes(b"user data")
    source = tmp_path / "a.png"
    source.write_bytes(b"input")
    guard = files.OutputGuard(inputs=[str(source)])
    with pytest.raises(files.OutputExistsError, match="--overwrite"):
        guard.claim(str(user_file))
    with pytest.raises(files.OutputIsInputError):
        guard.claim(str(tmp_path / "." / "a.png"))
    fresh = str(tmp_path / "b_enhanced.png")
    assert guard.claim(fresh) == fresh
    open(fresh, "wb").close()
    assert guard.claim(fresh) == fresh  # created by this run: may be written again
    overwriting = files.OutputGuard(inputs=[str(source)], overwrite=True)
    assert overwriting.claim(str(user_file)) == str(user_file)
    with pytest.raises(files.OutputIsInputError):
        overwriting.claim(str(source))


def test_written_files_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        files.write_text(str(tmp_path / "a.txt"), "x")
        with files.atomic_path(str(tmp_path / "b.png")) as temporary:
            open(temporary, "wb").close()
    finally:
        os.umask(old)
    for name in ("a.txt", "b.png"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644
