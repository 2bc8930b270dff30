import pytest

from backdoor_sae.common.io import atomic_path, read_jsonl, write_jsonl, write_text


def test_atomic_write_replaces_in_one_step(tmp_path):
    target = tmp_path / "a.txt"
    write_text(target, "old")
    write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "rows.jsonl"
    write_jsonl(target, [{"a": 1}])

    def rows():
        yield {"a": 2}
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_jsonl(target, rows())
    assert read_jsonl(target) == [{"a": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]


def test_atomic_directory(tmp_path):
    target = tmp_path / "ckpt"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "w.bin").write_bytes(b"1")
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "w.bin").write_bytes(b"2")
    assert (target / "w.bin").read_bytes() == b"2"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]
