"""The memory-mapped passage store: lookups, the Arrow cache and its invalidation."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from local_dense_retriever.corpus import CorpusStore, default_arrow_path

REPO = Path(__file__).resolve().parent.parent


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [{"id": str(i), "contents": f'"Title {i}"\ntext {i}'} for i in range(5)]


def test_rows_come_back_in_the_order_asked_with_all_fields(tmp_path):
    store = CorpusStore(write_jsonl(tmp_path / "c.jsonl", ROWS))
    assert len(store) == 5
    assert store.get([3, 0, 3]) == [ROWS[3], ROWS[0], ROWS[3]]
    assert store.contents(1, 3) == [ROWS[1]["contents"], ROWS[2]["contents"]]


def test_arrow_cache_sits_next_to_the_corpus_and_is_reused(tmp_path):
    corpus = write_jsonl(tmp_path / "wiki.jsonl", ROWS)
    CorpusStore(corpus)
    arrow = tmp_path / "wiki.arrow"
    assert default_arrow_path(corpus) == arrow and arrow.exists()
    os.utime(arrow, ns=(1, 1))  # if it were rewritten, its mtime would move
    CorpusStore(corpus)
    assert arrow.stat().st_mtime_ns == 1


def test_arrow_cache_is_rebuilt_when_the_corpus_changes(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", ROWS)
    assert len(CorpusStore(corpus, tmp_path / "cache.arrow")) == 5
    write_jsonl(corpus, ROWS + [{"id": "5", "contents": '"New"\nnew'}])
    store = CorpusStore(corpus, tmp_path / "cache.arrow")
    assert len(store) == 6 and store.get([5])[0]["contents"] == '"New"\nnew'


def test_gzipped_corpus_is_read(tmp_path):
    path = tmp_path / "c.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in ROWS).encode()))
    store = CorpusStore(path)
    assert store.arrow_path == tmp_path / "c.arrow" and store.get([4]) == [ROWS[4]]


def test_lines_without_contents_are_a_clear_error(tmp_path):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"id": "0", "text": "no contents"}])
    with pytest.raises(ValueError, match="string 'contents' field"):
        CorpusStore(corpus)


@pytest.mark.parametrize("name, opener", [("c.jsonl", open), ("c.jsonl.gz", gzip.open)])
def test_a_broken_line_is_named_by_file_and_line_and_leaves_no_partial_copy(tmp_path, name, opener):
    corpus = tmp_path / name
    with opener(corpus, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in ROWS[:2]) + '{"id": "2", "contents": "x"\n' + json.dumps(ROWS[3]) + "\n")
    with pytest.raises(ValueError) as error:
        CorpusStore(corpus, tmp_path / "c.arrow")
    assert str(error.value) == f"{corpus}:3: JSON parse error: Missing a comma or '}}' after an object member. (one JSON object a line expected)"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_missing_corpus_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="pass --corpus_path"):
        CorpusStore(tmp_path / "nope.jsonl")


def snapshot(folder) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if "__pycache__" not in p.parts}


def test_the_shipped_demo_corpus_is_converted_into_the_users_cache_not_the_package(tmp_path, monkeypatch):
    from search_r1_slime.demo import DEMO_CORPUS

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    package = DEMO_CORPUS.parent.parent
    before = snapshot(package)
    store = CorpusStore(DEMO_CORPUS)
    assert store.arrow_path.parent == tmp_path / "cache" / "search-r1-slime" / "corpora"
    assert store.arrow_path.name.startswith("demo_corpus-") and store.arrow_path.exists()
    assert store.get([0])[0]["id"] == "0"
    assert snapshot(package) == before  # nothing written inside the installed package


def test_without_xdg_cache_home_the_cache_is_under_the_home_folder(tmp_path, monkeypatch):
    from search_r1_slime.demo import DEMO_CORPUS

    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_arrow_path(DEMO_CORPUS).parent == tmp_path / ".cache" / "search-r1-slime" / "corpora"


def test_a_corpus_on_a_read_only_mount_is_converted_into_the_users_cache(tmp_path):
    """A read-only folder cannot stop root (CI runs as root), a read-only mount does: the corpus's
    folder is mounted read-only in a mount namespace of its own (a user namespace makes that
    possible without privileges), where the store is opened."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("needs unshare (util-linux) for a read-only mount")
    corpus = write_jsonl((tmp_path / "ro").mkdir() or tmp_path / "ro" / "c.jsonl", ROWS)
    open_store = "import sys; from local_dense_retriever.corpus import CorpusStore; print(CorpusStore(sys.argv[1]).arrow_path)"
    script = f'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && exec "$2" -c "$3" "$4"'
    result = subprocess.run(
        [unshare, "--user", "--map-root-user", "--mount", "sh", "-c", script, "sh", tmp_path / "ro", sys.executable, open_store, corpus],
        env={**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache"), "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=120,
    )
    if result.returncode != 0 and "Operation not permitted" in result.stderr and "Traceback" not in result.stderr:
        pytest.skip(f"this machine allows no user and mount namespaces: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    arrow = Path(result.stdout.strip())
    assert arrow.parent == tmp_path / "cache" / "search-r1-slime" / "corpora" and arrow.exists()
    assert sorted(p.name for p in (tmp_path / "ro").iterdir()) == ["c.jsonl"]


def test_the_conversion_shows_its_progress_unless_asked_not_to(tmp_path, capsys):
    corpus = write_jsonl(tmp_path / "c.jsonl", ROWS)
    CorpusStore(corpus, tmp_path / "quiet.arrow", show_progress=False)
    assert "converting" not in capsys.readouterr().err
    CorpusStore(corpus, tmp_path / "shown.arrow", show_progress=True)
    assert "converting c.jsonl to Arrow: 100%" in capsys.readouterr().err
