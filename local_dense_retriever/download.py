"""Download the wiki-18 E5 index and corpus, join and unpack them, and check every size.

    python -m local_dense_retriever.download --save_path /data/wiki-18

Result in ``--save_path``: ``e5_Flat.index`` (the two hub parts joined) and ``wiki-18.jsonl`` (the
corpus unpacked), ready for ``retrieval_server --index_path ... --corpus_path ...``.
``--index hnsw64`` fetches Search-R1's prebuilt HNSW64 index instead (``e5_HNSW64.index``, about
75 GB: faster on CPU, less exact; bench/index_menu.py measures HNSW's recall). Both indexes are
split in parts of the same names, so fetch one per run (``--skip_corpus`` for the second). About 60-70 GB
is downloaded and 132 GB is needed while parts and joined index coexist; the parts and the ``.gz``
are deleted once their output is verified (``--keep_downloads`` keeps them).

Downloads go through ``huggingface_hub`` (resumable: an interrupted run picks up where it
stopped, and finished steps are skipped). ``--from_dir`` takes the same files from a local
directory instead, e.g. a copy on shared storage.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tqdm.auto import tqdm

from local_dense_retriever.cli import ArgumentParser
from local_dense_retriever.logs import setup_logging

logger = logging.getLogger(__name__)

INDEX_REPO = "PeterJinGo/wiki-18-e5-index"
INDEX_PARTS = ("part_aa", "part_ab")
INDEX_NAME = "e5_Flat.index"


@dataclass(frozen=True)
class PrebuiltIndex:
    repo_id: str
    parts: tuple[str, ...]
    name: str


# Search-R1's prebuilt e5-base-v2 indexes of wiki-18 (hub dataset repositories, split in parts).
PREBUILT = {
    "flat": PrebuiltIndex(INDEX_REPO, INDEX_PARTS, INDEX_NAME),
    "hnsw64": PrebuiltIndex("PeterJinGo/wiki-18-e5-index-HNSW64", ("part_aa", "part_ab"), "e5_HNSW64.index"),
}
CORPUS_REPO = "PeterJinGo/wiki-18-corpus"
CORPUS_FILE = "wiki-18.jsonl.gz"

_COPY_CHUNK = 16 << 20


class DownloadError(RuntimeError):
    pass


# Where the hub's errors come from: huggingface_hub itself and the HTTP stack under it (which one
# depends on its version). An error from anywhere else is a bug of ours and keeps its traceback.
_HUB_LIBRARIES = frozenset({"huggingface_hub", "httpx", "httpx2", "httpcore", "httpcore2", "requests", "urllib3"})


@contextmanager
def from_the_hub(what: str, offline: str) -> Iterator[None]:
    """Turn a failure of the hub or of the network under it into one ``DownloadError`` line that
    says ``what`` failed and, for a machine without Hub access, the ``offline`` alternative."""
    try:
        yield
    except Exception as exc:
        if not isinstance(exc, OSError) and type(exc).__module__.split(".")[0] not in _HUB_LIBRARIES:
            raise
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")[:300]
        raise DownloadError(
            f"cannot {what} from the Hugging Face hub ({type(exc).__name__}: {reason}); without Hub access, {offline}"
        ) from exc


_OFFLINE = "copy the files onto this machine and pass --from_dir DIR"


class Source(Protocol):
    """Where the files come from: the Hugging Face hub, or a local directory."""

    def sizes(self, repo_id: str, filenames: list[str]) -> dict[str, int]:
        """The expected size in bytes of each file."""
        ...

    def fetch(self, repo_id: str, filename: str, local_dir: Path) -> Path:
        """Put ``filename`` into ``local_dir`` (resuming a partial download) and return its path."""
        ...


class HubSource:
    """Hugging Face dataset repositories, through huggingface_hub."""

    def sizes(self, repo_id: str, filenames: list[str]) -> dict[str, int]:
        from huggingface_hub import HfApi

        with from_the_hub(f"list the files of {repo_id}", _OFFLINE):
            found = {f.path: f.size for f in HfApi().get_paths_info(repo_id, filenames, repo_type="dataset")}
        missing = sorted(set(filenames) - set(found))
        if missing:
            raise DownloadError(f"dataset repo {repo_id} has no file(s) {missing}; check --repo_id / --corpus_repo_id and the file names")
        return found

    def fetch(self, repo_id: str, filename: str, local_dir: Path) -> Path:
        from huggingface_hub import hf_hub_download

        with from_the_hub(f"download {repo_id}/{filename}", _OFFLINE):
            return Path(hf_hub_download(repo_id=repo_id, filename=filename, repo_type="dataset", local_dir=local_dir))


@dataclass(frozen=True)
class LocalSource:
    """Files already on disk in ``directory`` (repository ids are ignored)."""

    directory: Path
    show_progress: bool = True

    def _path(self, filename: str) -> Path:
        path = self.directory / filename
        if not path.is_file():
            raise DownloadError(f"{path} does not exist; --from_dir must hold {filename}")
        return path

    def sizes(self, repo_id: str, filenames: list[str]) -> dict[str, int]:
        return {name: self._path(name).stat().st_size for name in filenames}

    def fetch(self, repo_id: str, filename: str, local_dir: Path) -> Path:
        return join_parts([self._path(filename)], local_dir / filename, show_progress=self.show_progress, verb="copying")


def check_size(path: Path, expected: int) -> None:
    actual = path.stat().st_size
    if actual != expected:
        raise DownloadError(
            f"{path} has {actual} bytes but {expected} were expected: the download is incomplete or "
            "corrupt; delete the file and run again"
        )


def check_free_space(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise DownloadError(f"{directory} has {free / 1e9:.1f} GB free but this step needs {needed / 1e9:.1f} GB; free space or pick another --save_path")


def _progress(total: int, desc: str, show: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=not show)


def join_parts(parts: Iterable[Path], output: Path, *, show_progress: bool = True, verb: str = "joining") -> Path:
    """Concatenate ``parts`` in order into ``output`` (written under a temporary name first)."""
    parts = list(parts)
    tmp = output.with_name(output.name + ".partial")
    with open(tmp, "wb") as out, _progress(sum(p.stat().st_size for p in parts), f"{verb} into {output.name}", show_progress) as bar:
        for part in parts:
            with open(part, "rb") as src:
                while chunk := src.read(_COPY_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
    tmp.replace(output)
    return output


def gunzip(source: Path, output: Path, *, show_progress: bool = True) -> Path:
    """Unpack ``source``; gzip's own CRC and length check rejects a truncated or corrupt file."""
    tmp = output.with_name(output.name + ".partial")
    try:
        with open(source, "rb") as raw, gzip.open(raw) as src, open(tmp, "wb") as out, _progress(
            source.stat().st_size, f"unpacking {source.name}", show_progress
        ) as bar:
            while chunk := src.read(_COPY_CHUNK):
                out.write(chunk)
                bar.update(raw.tell() - bar.n)
    except (OSError, EOFError) as exc:
        tmp.unlink(missing_ok=True)
        raise DownloadError(f"{source} is not a complete gzip file ({exc}); delete it and run again") from exc
    tmp.replace(output)
    return output


def download_index(source: Source, repo_id: str, parts: list[str], save_path: Path, index_name: str, *, keep_downloads: bool, show_progress: bool) -> Path:
    output = save_path / index_name
    sizes = source.sizes(repo_id, parts)
    total = sum(sizes[p] for p in parts)
    if output.exists() and output.stat().st_size == total:
        logger.info("%s is already complete (%d bytes); skipping", output, total)
        return output
    missing = sum(sizes[p] for p in parts if not (save_path / p).exists())
    check_free_space(save_path, missing + total)
    paths = []
    for part in parts:
        logger.info("fetching %s/%s (%.1f GB)", repo_id, part, sizes[part] / 1e9)
        path = source.fetch(repo_id, part, save_path)
        check_size(path, sizes[part])
        paths.append(path)
    join_parts(paths, output, show_progress=show_progress)
    check_size(output, total)
    if not keep_downloads:
        for path in paths:
            path.unlink()
    logger.info("index ready: %s", output)
    return output


def download_corpus(source: Source, repo_id: str, filename: str, save_path: Path, *, keep_downloads: bool, show_progress: bool) -> Path:
    output = save_path / filename.removesuffix(".gz")
    if output.exists():  # written under a temporary name and renamed when complete
        logger.info("%s is already there; skipping", output)
        return output
    size = source.sizes(repo_id, [filename])[filename]
    check_free_space(save_path, size)
    logger.info("fetching %s/%s (%.1f GB)", repo_id, filename, size / 1e9)
    packed = source.fetch(repo_id, filename, save_path)
    check_size(packed, size)
    if filename.endswith(".gz"):
        gunzip(packed, output, show_progress=show_progress)
        if not keep_downloads:
            packed.unlink()
    logger.info("corpus ready: %s", output)
    return output


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="python -m local_dense_retriever.download",
        description="Download the wiki-18 E5 index and corpus from the Hugging Face hub (or copy them from --from_dir).",
    )
    p.add_argument("--save_path", required=True, help="directory for e5_Flat.index and wiki-18.jsonl")
    p.add_argument("--index", choices=list(PREBUILT), default="flat",
                   help="which prebuilt index: flat (exact, e5_Flat.index) or hnsw64 (Search-R1's e5_HNSW64.index)")
    p.add_argument("--repo_id", default=None, help="dataset repo holding the index parts (default: --index's)")
    p.add_argument("--index_parts", nargs="+", default=None, help="part files, joined in this order (default: --index's)")
    p.add_argument("--index_name", default=None, help="name of the joined index file (default: --index's)")
    p.add_argument("--corpus_repo_id", default=CORPUS_REPO, help="dataset repo holding the corpus")
    p.add_argument("--corpus_file", default=CORPUS_FILE, help="corpus file in that repo, unpacked if .gz")
    p.add_argument("--skip_index", action="store_true", help="do not download the index")
    p.add_argument("--skip_corpus", action="store_true", help="do not download the corpus")
    p.add_argument("--keep_downloads", action="store_true", help="keep the parts and the .gz after joining/unpacking")
    p.add_argument("--from_dir", type=Path, default=None, help="take the files from this directory instead of the hub, for machines without Hub access (default: the hub)")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None, *, source: Source | None = None) -> int:
    """``source`` overrides where files come from (tests pass their own)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging()
    if args.skip_index and args.skip_corpus:
        parser.refuse("--skip_index and --skip_corpus together leave nothing to do")
    if args.from_dir is not None and not args.from_dir.is_dir():
        parser.refuse(f"--from_dir {args.from_dir} is not a directory")
    save_path = Path(args.save_path)
    try:
        save_path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        parser.refuse(f"cannot create the directory --save_path {save_path}: {exc.strerror}")
    show = not args.no_progress
    if not show:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()  # the hub's own bars, one per file downloaded
    if source is None:
        source = LocalSource(args.from_dir, show_progress=show) if args.from_dir else HubSource()
    try:
        if not args.skip_index:
            prebuilt = PREBUILT[args.index]
            repo_id, parts, name = args.repo_id or prebuilt.repo_id, args.index_parts or list(prebuilt.parts), args.index_name or prebuilt.name
            download_index(source, repo_id, parts, save_path, name, keep_downloads=args.keep_downloads, show_progress=show)
        if not args.skip_corpus:
            download_corpus(source, args.corpus_repo_id, args.corpus_file, save_path, keep_downloads=args.keep_downloads, show_progress=show)
    except (DownloadError, OSError) as exc:  # OSError: the disk (full, read-only, not ours)
        logger.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
