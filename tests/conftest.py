"""Fixtures for the rollout plugin's tests: a saved Qwen-like tokenizer and a small world of
loopback servers (SGLang stand-in + retrieval stand-in) around one slime sample."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer

from search_r1_slime.http_client import close_shared_session
from tests.fakes.retriever import FakeRetriever, doc
from tests.fakes.sglang import FakeSGLang, Turn
from tests.fakes.tokenizer import build_qwen_like_tokenizer
from tests.real_slime import SlimeSources, imported

QUESTION = "who wrote hamlet?"
HAMLET_DOCS = [
    doc("1", "Hamlet", "Hamlet is a tragedy written by William Shakespeare."),
    doc("2", "William Shakespeare", "William Shakespeare was an English playwright."),
    doc("3", "Elsinore", "Elsinore is the setting of Hamlet."),
    doc("4", "Globe Theatre", "A theatre in London."),
]


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("qwen_like_tokenizer")
    build_qwen_like_tokenizer(path)
    return str(path)


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    # Loaded exactly as the plugin loads args.hf_checkpoint.
    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="session")
def slime_sources(tmp_path_factory) -> SlimeSources:
    """slime's source archives (../shared/slime/), each unpacked once per session on first use."""
    return SlimeSources(tmp_path_factory.mktemp("slime"))


@pytest.fixture
def slime(request, slime_sources):
    """slime at the revision a test is parametrized with (``indirect=True``), imported for the test."""
    with imported(slime_sources.path(request.param)):
        yield request.param


def encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


class World:
    """One trajectory's surroundings: the SGLang and retrieval stand-ins, slime's args and sample."""

    def __init__(self, tokenizer, tokenizer_dir: str):
        self.tokenizer = tokenizer
        self.tokenizer_dir = tokenizer_dir
        self.prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"Answer the question. For example, <answer> Beijing </answer>. Question: {QUESTION}"}],
            tokenize=False,
            add_generation_prompt=True,
        )
        self.prompt_ids = encode(tokenizer, self.prompt)
        self.sglang: FakeSGLang | None = None
        self.retriever: FakeRetriever | None = None

    async def serve(self, turns: list[Turn], corpus: dict | None = None) -> None:
        self.sglang = await FakeSGLang(self.tokenizer, self.prompt_ids, turns).__aenter__()
        default_corpus = {"who wrote hamlet": HAMLET_DOCS, "hamlet author": HAMLET_DOCS[1:]}
        self.retriever = await FakeRetriever(default_corpus if corpus is None else corpus).__aenter__()

    def args(self, *, partial_rollout: bool = False, **search_r1) -> SimpleNamespace:
        config = {"local": {"search_url": self.retriever.search_url}, "search_timeout": 2}
        for key, value in search_r1.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        return SimpleNamespace(
            sglang_router_ip="127.0.0.1",
            sglang_router_port=self.sglang.port,
            hf_checkpoint=self.tokenizer_dir,
            rollout_max_response_len=200,
            partial_rollout=partial_rollout,
            search_r1=config,
        )

    def sample(self, sample_cls, answers=("William Shakespeare",)):
        return sample_cls(prompt=self.prompt, label={"style": "rule", "ground_truth": {"target": list(answers)}})

    @staticmethod
    def sampling_params(max_new_tokens: int = 200, **overrides) -> dict:
        # What slime's GenerateState builds for every sample.
        params = dict(
            temperature=1.0,
            top_p=1.0,
            top_k=-1,
            max_new_tokens=max_new_tokens,
            stop=None,
            stop_token_ids=None,
            skip_special_tokens=True,
            no_stop_trim=True,
            spaces_between_special_tokens=False,
        )
        params.update(overrides)
        return params

    def ids(self, text: str) -> list[int]:
        return encode(self.tokenizer, text)

    async def close(self) -> None:
        for server in (self.sglang, self.retriever):
            if server is not None:
                await server.__aexit__(None, None, None)
        await close_shared_session()


@pytest.fixture
async def world(tokenizer, tokenizer_dir):
    w = World(tokenizer, tokenizer_dir)
    yield w
    await w.close()

