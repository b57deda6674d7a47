"""The passage store: a JSONL corpus converted once to an Arrow file that is memory-mapped.

wiki-18 has 21M passages (about 14 GB of JSONL). Holding them as Python dicts would take tens of
GB and minutes to load; an uncompressed Arrow IPC file is mapped in milliseconds, the OS pages in
only what lookups touch, and a batch of row numbers is fetched with one vectorised ``take``.

The Arrow file sits next to the JSONL (``wiki-18.jsonl`` -> ``wiki-18.arrow``) unless another path
is given, or that folder is read-only or inside this project's installed packages (the demo corpus
ships there): then it goes to the user's cache, ``$XDG_CACHE_HOME/search-r1-slime/corpora`` (by
default ``~/.cache/...``). It records the size and modification time of the JSONL it came from and
is rebuilt when they change, so an edited corpus never serves stale passages.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.json as pa_json
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

_SOURCE_KEY = b"search_r1.source"
# JSON bytes parsed per record batch: each batch becomes one chunk of the Arrow file, so a string
# column chunk stays far below Arrow's 2 GiB offset limit while 14 GB make under a thousand chunks.
_READ_BLOCK_BYTES = 16 << 20


def cache_dir() -> Path:
    """This project's folder in the user's cache (the XDG base directory convention)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(base) if os.path.isabs(base) else Path.home() / ".cache") / "search-r1-slime"


def _package_dirs() -> list[Path]:
    specs = (importlib.util.find_spec(name) for name in ("local_dense_retriever", "search_r1_slime"))
    return [Path(location).resolve() for spec in specs if spec is not None for location in spec.submodule_search_locations or ()]


def default_arrow_path(corpus_path: str | os.PathLike) -> Path:
    """Next to the corpus, unless that folder is read-only or inside an installed package of ours:
    then in the user's cache, named after the corpus and a digest of its full path."""
    path = Path(corpus_path)
    name = path.name
    for suffix in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    folder = path.resolve().parent
    if os.access(folder, os.W_OK) and not any(folder.is_relative_to(package) for package in _package_dirs()):
        return path.with_name(name + ".arrow")
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    return cache_dir() / "corpora" / f"{name}-{digest}.arrow"


def _source_stamp(corpus_path: Path) -> bytes:
    stat = corpus_path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}".encode()


def convert_jsonl(corpus_path: str | os.PathLike, arrow_path: str | os.PathLike, *, show_progress: bool | None = None) -> Path:
    """Stream a JSONL corpus (optionally ``.gz``) into an Arrow IPC file; return its path.

    Memory stays at about one read block whatever the corpus size. Every line must be a JSON
    object with a string ``contents`` field; other fields (``id``...) are kept as they are. The
    progress bar counts the corpus file's bytes read (``show_progress=None``: on a terminal only).
    """
    corpus_path, arrow_path = Path(corpus_path), Path(arrow_path)
    arrow_path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = arrow_path.with_name(arrow_path.name + ".tmp")
    try:
        rows = _write_arrow(corpus_path, tmp_path, show_progress)
    except BaseException:  # Ctrl-C or a broken line: no half-written copy is left behind
        tmp_path.unlink(missing_ok=True)
        raise
    os.replace(tmp_path, arrow_path)
    logger.info("converted %s (%d passages) to %s", corpus_path, rows, arrow_path)
    return arrow_path


def _write_arrow(corpus_path: Path, tmp_path: Path, show_progress: bool | None) -> int:
    rows = 0
    with pa.OSFile(str(corpus_path), "rb") as raw:
        source = pa.CompressedInputStream(raw, "gzip") if corpus_path.suffix == ".gz" else raw
        try:
            reader = pa_json.open_json(source, read_options=pa_json.ReadOptions(block_size=_READ_BLOCK_BYTES))
        except pa.ArrowInvalid as exc:
            raise ValueError(_json_error(corpus_path, exc)) from None
        schema = reader.schema
        if schema.get_field_index("contents") < 0 or not pa.types.is_string(schema.field("contents").type):
            raise ValueError(
                f"{corpus_path}: each line must be a JSON object with a string 'contents' field "
                f'(wiki-18 format: {{"id": "0", "contents": "\\"Title\\"\\ntext"}}); found fields {schema}'
            )
        schema = schema.with_metadata({_SOURCE_KEY: _source_stamp(corpus_path)})
        with (
            tqdm(total=raw.size(), unit="B", unit_scale=True, desc=f"converting {corpus_path.name} to Arrow", disable=_hidden(show_progress)) as bar,
            pa.OSFile(str(tmp_path), "wb") as sink,
            ipc.new_file(sink, schema) as writer,
        ):
            try:
                for batch in reader:
                    writer.write_batch(batch.replace_schema_metadata(schema.metadata))
                    rows += batch.num_rows
                    bar.update(raw.tell() - bar.n)
            except pa.ArrowInvalid as exc:
                raise ValueError(_json_error(corpus_path, exc)) from None
    return rows


def _json_error(corpus_path: Path, exc: pa.ArrowInvalid) -> str:
    """Arrow's reason for refusing the corpus, with the file and the line it concerns.

    Arrow counts rows within its read block, not the file: the line is found again by reading the
    file up to the first line Python's json cannot parse (only ever on this error path).
    """
    reason = re.sub(r"\s+in row \d+$", "", str(exc).strip())
    opener = gzip.open if corpus_path.suffix == ".gz" else open
    with opener(corpus_path, "rt", encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, start=1):
            try:
                if line.strip():
                    json.loads(line)
            except json.JSONDecodeError:
                return f"{corpus_path}:{number}: {reason} (one JSON object a line expected)"
    return f"{corpus_path}: {reason} (one JSON object a line expected)"


def _hidden(show_progress: bool | None) -> bool | None:
    # tqdm's disable=None: shown on a terminal only (a server's log file gets no bar).
    return None if show_progress is None else not show_progress


class CorpusStore:
    """Read-only, memory-mapped passages, looked up by row number (the FAISS/BM25 document id)."""

    def __init__(self, corpus_path: str | os.PathLike, arrow_path: str | os.PathLike | None = None, *, show_progress: bool | None = None):
        self.corpus_path = Path(corpus_path)
        self.arrow_path = Path(arrow_path) if arrow_path is not None else default_arrow_path(corpus_path)
        if not self._arrow_is_current():
            logger.info("building the Arrow cache of %s at %s (once per corpus)", self.corpus_path, self.arrow_path)
            convert_jsonl(self.corpus_path, self.arrow_path, show_progress=show_progress)
        reader = ipc.open_file(pa.memory_map(str(self.arrow_path), "r"))
        # Zero-copy views of the mapped file, one per record batch: nothing is read until used.
        self._batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        self._starts = np.cumsum([0] + [batch.num_rows for batch in self._batches])
        self._table = pa.Table.from_batches(self._batches, schema=reader.schema)

    def _arrow_is_current(self) -> bool:
        if not self.corpus_path.exists():
            raise FileNotFoundError(f"corpus {self.corpus_path} does not exist; pass --corpus_path to a JSONL corpus")
        if not self.arrow_path.exists():
            return False
        schema = ipc.open_file(pa.memory_map(str(self.arrow_path), "r")).schema
        current = (schema.metadata or {}).get(_SOURCE_KEY) == _source_stamp(self.corpus_path)
        if not current:
            logger.warning("%s was built from another version of %s; rebuilding it", self.arrow_path, self.corpus_path)
        return current

    def __len__(self) -> int:
        return self._table.num_rows

    def get(self, rows: list[int]) -> list[dict]:
        """The passages at ``rows`` (in that order) as dicts of their JSON fields.

        Taken batch by batch: pyarrow's ``take`` on the whole (chunked) table first concatenates
        every chunk of every column, i.e. copies the corpus into memory (100 MB per call at 1M
        passages, measured with pyarrow 26).
        """
        wanted = np.asarray(rows, dtype=np.int64)
        chunk_of = np.searchsorted(self._starts, wanted, side="right") - 1
        found: list[dict] = [{}] * len(wanted)
        for chunk in np.unique(chunk_of):
            positions = np.flatnonzero(chunk_of == chunk)
            documents = self._batches[chunk].take(pa.array(wanted[positions] - self._starts[chunk])).to_pylist()
            for position, document in zip(positions, documents):
                found[position] = document
        return found

    def contents(self, start: int, stop: int) -> list[str]:
        """The ``contents`` strings of rows ``start``..``stop-1`` (for index building)."""
        return self._table.column("contents").slice(start, stop - start).to_pylist()
