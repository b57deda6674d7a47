"""Real English text, offline, for retrieval-quality benchmarks: WordNet's synsets and examples.

Needs Debian's ``wordnet-base`` package (``apt-get install -y wordnet-base``). A passage is one
synset: the title is its first word, the text its other words and its definition. A query is one
of WordNet's usage examples ("The patient must be sedated before the operation"), which share
words and meaning with their synset but are not copies of it. Passage embeddings are computed
once with the packaged MiniLM in fp32 and cached under ``bench/_work/``.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np

WORDNET_DIR = Path("/usr/share/wordnet")
_PARTS_OF_SPEECH = ("noun", "verb", "adj", "adv")
_QUOTED = re.compile(r'"([^"]{12,})"')


def _synsets() -> list[tuple[str, str, list[str]]]:
    """(title, text, examples) for every WordNet synset, in file order."""
    if not (WORDNET_DIR / "data.noun").exists():
        raise SystemExit(f"{WORDNET_DIR}/data.noun is missing: apt-get update && apt-get install -y wordnet-base")
    synsets = []
    for pos in _PARTS_OF_SPEECH:
        for line in (WORDNET_DIR / f"data.{pos}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or " | " not in line:
                continue  # the licence header
            fields, gloss = line.split(" | ", 1)
            parts = fields.split()
            words = [parts[4 + 2 * i].replace("_", " ") for i in range(int(parts[3], 16))]
            definition = gloss.split('; "')[0].strip().rstrip(";")
            synonyms = f"also: {', '.join(words[1:])}. " if len(words) > 1 else ""
            synsets.append((words[0], synonyms + definition, _QUOTED.findall(gloss)))
    return synsets


def build(workdir: Path, passages: int, queries: int, seed: int = 0) -> tuple[Path, list[str]]:
    """A corpus JSONL of ``passages`` synsets (a random sample) and ``queries`` usage examples."""
    synsets = _synsets()
    random.Random(seed).shuffle(synsets)
    chosen = synsets[:passages]
    corpus = workdir / f"wordnet_{len(chosen)}.jsonl"
    if not corpus.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        with open(corpus, "w") as f:
            for i, (title, text, _) in enumerate(chosen):
                f.write(json.dumps({"id": str(i), "contents": f'"{title}"\n{text}'}) + "\n")
    examples = [example for _, _, found in chosen for example in found]
    random.Random(seed + 1).shuffle(examples)
    return corpus, examples[:queries]


def passage_embeddings(corpus: Path, encode, batch: int = 512) -> np.ndarray:
    """The corpus's passage vectors from ``encode(texts) -> array``, cached next to the corpus."""
    cache = corpus.with_suffix(".fp32.npy")
    if cache.exists():
        return np.load(cache)
    texts = [json.loads(line)["contents"] for line in corpus.read_text().splitlines()]
    vectors = np.concatenate([encode(texts[i : i + batch]) for i in range(0, len(texts), batch)])
    np.save(cache, vectors)
    return vectors


def flat_index(corpus: Path, vectors: np.ndarray) -> Path:
    """The flat inner-product index of the corpus's passage vectors, written once next to it."""
    path = corpus.with_name(f"{corpus.stem}_Flat.index")
    if not path.exists():
        import faiss

        flat = faiss.IndexFlatIP(vectors.shape[1])
        flat.add(vectors)
        faiss.write_index(flat, str(path))
    return path
