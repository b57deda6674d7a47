"""download.py: argument handling, resumable steps, joining, unpacking and size checks, offline.

The hub is replaced by files on disk: either ``--from_dir`` (a real feature) or a recording
source injected into ``main`` that serves local files under any repository id.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

from local_dense_retriever import download
from tests.fakes.hub import run_without_hub

CORPUS_LINES = b'{"id": "0", "contents": "\\"A\\"\\na"}\n{"id": "1", "contents": "\\"B\\"\\nb"}\n'


@pytest.fixture
def hub_dir(tmp_path: Path) -> Path:
    """What the two wiki-18 repositories hold, as local files."""
    d = tmp_path / "hub"
    d.mkdir()
    (d / "part_aa").write_bytes(b"A" * 1000)
    (d / "part_ab").write_bytes(b"B" * 333)
    (d / "wiki-18.jsonl.gz").write_bytes(gzip.compress(CORPUS_LINES))
    return d


class RecordingSource(download.LocalSource):
    """Serves hub_dir's files under any repo id and records what was asked for."""

    def __init__(self, directory: Path):
        super().__init__(directory)
        object.__setattr__(self, "fetched", [])

    def fetch(self, repo_id: str, filename: str, local_dir: Path) -> Path:
        self.fetched.append((repo_id, filename))
        return super().fetch(repo_id, filename, local_dir)


def run(argv: list[str], source=None) -> int:
    return download.main([*argv, "--no_progress"], source=source)


def test_from_dir_joins_parts_unpacks_corpus_and_removes_downloads(hub_dir, tmp_path):
    out = tmp_path / "out"
    assert run(["--save_path", str(out), "--from_dir", str(hub_dir)]) == 0
    assert (out / "e5_Flat.index").read_bytes() == b"A" * 1000 + b"B" * 333
    assert (out / "wiki-18.jsonl").read_bytes() == CORPUS_LINES
    assert sorted(p.name for p in out.iterdir()) == ["e5_Flat.index", "wiki-18.jsonl"]


def test_every_repo_and_file_flag_is_honoured(hub_dir, tmp_path):
    (hub_dir / "x1").write_bytes(b"1")
    (hub_dir / "x2").write_bytes(b"22")
    source = RecordingSource(hub_dir)
    argv = ["--save_path", str(tmp_path / "out"), "--repo_id", "me/my-index", "--corpus_repo_id", "me/my-corpus",
            "--index_parts", "x2", "x1", "--index_name", "mine.index", "--keep_downloads"]
    assert run(argv, source) == 0
    assert source.fetched == [("me/my-index", "x2"), ("me/my-index", "x1"), ("me/my-corpus", "wiki-18.jsonl.gz")]
    assert (tmp_path / "out" / "mine.index").read_bytes() == b"221"
    assert (tmp_path / "out" / "x1").exists() and (tmp_path / "out" / "wiki-18.jsonl.gz").exists()


def test_corpus_file_flag_and_skip_index(hub_dir, tmp_path):
    shutil.copy(hub_dir / "wiki-18.jsonl.gz", hub_dir / "small.jsonl.gz")
    source = RecordingSource(hub_dir)
    assert run(["--save_path", str(tmp_path / "out"), "--skip_index", "--corpus_file", "small.jsonl.gz"], source) == 0
    assert source.fetched == [(download.CORPUS_REPO, "small.jsonl.gz")]
    assert (tmp_path / "out" / "small.jsonl").read_bytes() == CORPUS_LINES


def test_skip_corpus_fetches_only_the_index(hub_dir, tmp_path):
    source = RecordingSource(hub_dir)
    assert run(["--save_path", str(tmp_path / "out"), "--skip_corpus"], source) == 0
    assert source.fetched == [(download.INDEX_REPO, "part_aa"), (download.INDEX_REPO, "part_ab")]


def test_finished_steps_are_skipped_on_a_second_run(hub_dir, tmp_path):
    out = tmp_path / "out"
    assert run(["--save_path", str(out), "--from_dir", str(hub_dir)]) == 0
    source = RecordingSource(hub_dir)
    assert run(["--save_path", str(out)], source) == 0
    assert source.fetched == []


def test_a_part_of_the_wrong_size_is_reported_and_nothing_is_joined(hub_dir, tmp_path, caplog):
    class ShortSource(download.LocalSource):
        def fetch(self, repo_id, filename, local_dir):
            path = super().fetch(repo_id, filename, local_dir)
            if filename == "part_ab":
                path.write_bytes(b"B" * 100)  # as if the transfer stopped early
            return path

    out = tmp_path / "out"
    assert run(["--save_path", str(out), "--skip_corpus"], ShortSource(hub_dir)) == 1
    assert "part_ab has 100 bytes but 333 were expected" in caplog.text
    assert not (out / "e5_Flat.index").exists()


def test_a_truncated_gzip_is_rejected_and_leaves_no_corpus(hub_dir, tmp_path, caplog):
    packed = (hub_dir / "wiki-18.jsonl.gz").read_bytes()
    (hub_dir / "wiki-18.jsonl.gz").write_bytes(packed[: len(packed) - 6])
    out = tmp_path / "out"
    assert run(["--save_path", str(out), "--from_dir", str(hub_dir), "--skip_index"]) == 1
    assert "is not a complete gzip file" in caplog.text
    assert not (out / "wiki-18.jsonl").exists() and not (out / "wiki-18.jsonl.partial").exists()


def test_missing_file_in_from_dir_is_a_clear_error(tmp_path, caplog):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run(["--save_path", str(tmp_path / "out"), "--from_dir", str(empty)]) == 1
    assert "--from_dir must hold part_aa" in caplog.text


def test_not_enough_disk_space_stops_before_downloading(hub_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(download.shutil, "disk_usage", lambda _: shutil._ntuple_diskusage(10**6, 10**6 - 10, 10))
    source = RecordingSource(hub_dir)
    assert run(["--save_path", str(tmp_path / "out")], source) == 1
    assert source.fetched == []
    assert "GB free but this step needs" in caplog.text


def test_save_path_is_required():
    with pytest.raises(SystemExit) as exc:
        download.main([])
    assert exc.value.code == 2


def test_hnsw64_fetches_search_r1s_prebuilt_hnsw_index(hub_dir, tmp_path):
    source = RecordingSource(hub_dir)
    assert run(["--save_path", str(tmp_path / "out"), "--index", "hnsw64", "--skip_corpus"], source) == 0
    assert source.fetched == [("PeterJinGo/wiki-18-e5-index-HNSW64", "part_aa"), ("PeterJinGo/wiki-18-e5-index-HNSW64", "part_ab")]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["e5_HNSW64.index"]
    assert (tmp_path / "out" / "e5_HNSW64.index").read_bytes() == b"A" * 1000 + b"B" * 333


def test_hnsw64_from_a_local_directory_with_an_explicit_name(hub_dir, tmp_path):
    out = tmp_path / "out"
    assert run(["--save_path", str(out), "--from_dir", str(hub_dir), "--index", "hnsw64", "--index_name", "hnsw.index", "--skip_corpus"]) == 0
    assert (out / "hnsw.index").read_bytes() == b"A" * 1000 + b"B" * 333


def test_without_hub_access_one_line_names_the_offline_option(tmp_path):
    result = run_without_hub("local_dense_retriever.download", "--save_path", str(tmp_path / "out"), "--no_progress", home=tmp_path / "hf")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert " ERROR __main__: cannot list the files of PeterJinGo/wiki-18-e5-index from the Hugging Face hub (" in line
    assert line.endswith("; without Hub access, copy the files onto this machine and pass --from_dir DIR")
    assert list((tmp_path / "out").iterdir()) == []


def test_copies_from_a_local_directory_show_a_progress_bar_unless_asked_not_to(hub_dir, tmp_path, capsys):
    assert download.main(["--save_path", str(tmp_path / "out"), "--from_dir", str(hub_dir), "--skip_corpus"]) == 0
    bars = capsys.readouterr().err
    assert "copying into part_aa: 100%" in bars and "joining into e5_Flat.index: 100%" in bars

    assert download.main(["--save_path", str(tmp_path / "quiet"), "--from_dir", str(hub_dir), "--skip_corpus", "--no_progress"]) == 0
    assert "100%" not in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--from_dir", "{tmp}/nowhere"], "--from_dir {tmp}/nowhere is not a directory"),
    (["--skip_index", "--skip_corpus"], "--skip_index and --skip_corpus together leave nothing to do"),
    (["--save_path", "{tmp}/a_file"], "cannot create the directory --save_path {tmp}/a_file: File exists"),
])
def test_a_bad_flag_is_refused_before_any_download(tmp_path, capsys, flags, message):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit) as exit_:
        download.main(["--save_path", str(tmp_path / "out"), *[f.format(tmp=tmp_path) for f in flags]])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()  # the error alone, no usage before it
    assert line.endswith(f"error: {message.format(tmp=tmp_path)}")
