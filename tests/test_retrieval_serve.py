"""The retrieval server on Ray Serve (local_dense_retriever/serve_app.py), in a real local Ray
cluster on loopback: one cluster for the whole module (starting Ray takes 10 s to minutes on a
busy 2-core machine), the demo corpus with the packaged MiniLM, requests through Serve's HTTP proxy.

Where ray is not installed (it is the optional ``serve`` extra) the module is skipped; under
``CI`` it must run, so there its absence fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from local_dense_retriever.app import create_app
from search_r1_slime import demo

try:
    import ray
    from ray import serve
except ImportError:  # pragma: no cover - depends on the environment
    if os.environ.get("CI"):
        pytest.fail("ray[serve] is not installed: CI must run the Serve tests (the test extra installs the serve extra)",
                    pytrace=False)
    pytest.skip("ray[serve] is not installed (pip install -e '.[serve]')", allow_module_level=True)

from local_dense_retriever import serve_app
from local_dense_retriever.serve_app import DEPLOYMENT_NAME, RetrievalDeployment, config_args, server_config

REPO = Path(__file__).resolve().parent.parent
APP = "retrieval"
# Generous: on a shared 2-core machine Ray's start and a replica's model load can take minutes.
STARTUP_TIMEOUT_S = 600
# The first test also starts the cluster (pytest-timeout counts fixtures' setup).
pytestmark = pytest.mark.timeout(2 * STARTUP_TIMEOUT_S)
# Scores of the same query encoded alone or in a batch differ in the last bits.
SCORE_TOLERANCE = 1e-4
QUESTIONS = [
    demo.DEFAULT_QUERY,
    "Who was the first person to walk on the Moon?",
    "Which element has the chemical symbol Au?",
    "Who wrote Pride and Prejudice?",
    "When did the Titanic sink?",
    "What is the tallest building in the world?",
    "Who discovered penicillin?",
    "Who painted The Starry Night?",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(condition, what: str, timeout_s: float = STARTUP_TIMEOUT_S, every_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s")
        time.sleep(every_s)
    return value


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    return demo.prepare(tmp_path_factory.mktemp("demo_data"), show_progress=False)


@pytest.fixture(scope="module")
def standalone(config):
    with TestClient(create_app(config)) as client:
        _wait_for(lambda: client.get("/health").json()["status"] != "loading", "the standalone server's load", 120)
        assert client.get("/health").status_code == 200
        yield client


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster (no dashboard) with Serve's proxy on a free loopback port; its URL."""
    # The replicas import this checkout (its folder on PYTHONPATH), as the test process does.
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": pythonpath}})
    try:
        port = _free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield f"http://127.0.0.1:{port}"
    finally:
        serve.shutdown()
        ray.shutdown()


def deploy(config, replicas: int) -> None:
    """(Re)deploy the app with ``replicas`` replicas of one CPU each; returns once all are running."""
    deployment = RetrievalDeployment.options(num_replicas=replicas, ray_actor_options={"num_cpus": 1})
    serve.run(deployment.bind(server_config(config_args(config))), name=APP, route_prefix="/")
    _wait_for(lambda: running_replicas() == replicas, f"{replicas} running replicas")


def running_replicas() -> int:
    return serve_app.running_replicas(APP)


def replica_actor_names() -> set[str]:
    return serve_app.replica_actor_names(APP)


def same_ranking(got: list[dict], expected: list[dict]) -> bool:
    """The same passages in the same order; passages whose expected scores tie within tolerance may
    come in either order (a batch of another shape can swap them). Passages are told apart by their
    contents: the plugin's client hands on nothing else."""
    mine = [hit["document"]["contents"] for hit in got]
    theirs = [hit["document"]["contents"] for hit in expected]
    if sorted(mine) != sorted(theirs):
        return False
    score = {hit["document"]["contents"]: hit["score"] for hit in expected}
    return all(abs(score[a] - score[b]) <= SCORE_TOLERANCE for a, b in zip(mine, theirs))


def test_the_serve_app_answers_as_the_standalone_server(config, standalone, cluster):
    import httpx

    deploy(config, replicas=1)
    body = {"queries": QUESTIONS, "topk": 5, "return_scores": True}
    served = httpx.post(f"{cluster}/retrieve", json=body, timeout=60)
    assert served.status_code == 200, served.text
    # The standalone server gets each question alone: another batch shape, the same answers.
    expected = [standalone.post("/retrieve", json={**body, "queries": [q]}).json()["result"][0] for q in QUESTIONS]
    got = served.json()["result"]
    assert len(got) == len(expected) == len(QUESTIONS)
    for question, mine, theirs in zip(QUESTIONS, got, expected):
        assert same_ranking(mine, theirs), question
        assert {hit["document"]["id"] for hit in mine} == {hit["document"]["id"] for hit in theirs}
        score = {hit["document"]["id"]: hit["score"] for hit in theirs}
        for hit in mine:
            assert hit["score"] == pytest.approx(score[hit["document"]["id"]], abs=SCORE_TOLERANCE)
    assert got[0][0]["document"]["contents"].startswith('"Sydney Opera House"\n')
    # /health through the proxy is the app's own: ready, with the index memory-mapped.
    health = httpx.get(f"{cluster}/health", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ready"
    assert health.json()["searcher"]["index_loaded"] == "mmap"
    # The app's own refusals pass through the proxy unchanged.
    assert httpx.post(f"{cluster}/retrieve", json={"queries": ["x"], "topk": 0}, timeout=30).status_code == 422


async def test_a_replica_killed_under_grpo_load_is_replaced_and_no_search_is_lost(config, standalone, cluster):
    from local_search_server import local_search, local_search_stats
    from search_r1_slime.http_client import close_shared_session

    deploy(config, replicas=2)
    before = replica_actor_names()
    assert len(before) == 2
    # A GRPO step: 32 prompts x 8 samples, each sample's search in flight at once, in 4 turns of
    # 64. Every search is distinct (corpus titles), so the client's coalescing and cache spare none.
    titles = [json.loads(line)["contents"].split("\n", 1)[0].strip('"') for line in demo.DEMO_CORPUS.read_text(encoding="utf-8").splitlines()]
    queries = [f"What is known about {title}?" for title in titles[:256]]
    assert len(set(queries)) == 256
    expected = {}
    for start in range(0, 256, 64):
        batch = queries[start : start + 64]
        answer = standalone.post("/retrieve", json={"queries": batch, "topk": 3, "return_scores": True}).json()["result"]
        expected.update(zip(batch, answer))

    url = f"{cluster}/retrieve"
    index_pages = await asyncio.to_thread(_index_pages_once_both_replicas_searched, url, config.index_path)
    results: dict[str, list[dict]] = {}
    victim = sorted(before)[0]
    try:
        for turn in range(4):
            turn_queries = queries[turn * 64 : (turn + 1) * 64]
            # 8 queries a request (the plugin's max_queries_per_request): 8 requests a turn, on both replicas.
            searches = [asyncio.ensure_future(local_search(url, q, top_k=3, timeout=STARTUP_TIMEOUT_S, max_queries_per_request=8))
                        for q in turn_queries]
            if turn == 1:  # in the middle of the load: this turn's requests are on their way
                await asyncio.sleep(0.05)
                ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
                killed_at = time.monotonic()
            results.update(zip(turn_queries, await asyncio.gather(*searches)))
        stats = local_search_stats()
    finally:
        await close_shared_session()

    # Serve replaced the killed replica: two running again, one of them new.
    await asyncio.to_thread(_wait_for, lambda: running_replicas() == 2 and len(replica_actor_names() - {victim}) == 2,
                            "the killed replica's replacement")
    print(f"replica replaced {time.monotonic() - killed_at:.1f} s after ray.kill; "
          f"{stats.batches} requests, {stats.http_requests} HTTP attempts")
    after = replica_actor_names()
    assert victim not in after and len(after - before) == 1
    # No search lost or wrong: each got the standalone server's passages.
    assert len(results) == 256
    for query in queries:
        assert same_ranking(results[query], expected[query]), query
    # The two replicas on this node share one copy of the index: each maps the whole file, and
    # their shares of its pages (PSS) add up to at most one file.
    file_bytes = _pages(os.path.getsize(config.index_path))
    assert len(index_pages) == 2, index_pages
    assert all(rss == file_bytes for rss, _ in index_pages.values()), index_pages
    assert sum(pss for _, pss in index_pages.values()) <= file_bytes, index_pages


def test_a_replica_that_cannot_load_its_index_fails_the_deploy_with_the_reason_the_launch_script_shows(config, cluster, tmp_path):
    """Serve tries the constructor 3 times (one replica), then reports DEPLOY_FAILED; the reason is
    the deployment's, at the end of a traceback: what the launch script prints is its last line."""
    import dataclasses
    import subprocess
    import sys

    import yaml
    from ray.serve.scripts import ServeDeploySchemaDumper, process_dict_for_yaml_dump

    missing = tmp_path / "nowhere" / "e5_Flat.index"
    broken = RetrievalDeployment.options(num_replicas=1, ray_actor_options={"num_cpus": 1})
    try:
        with pytest.raises(RuntimeError, match="Deploying application broken failed"):
            serve.run(broken.bind(server_config(config_args(dataclasses.replace(config, index_path=str(missing))))),
                      name="broken", route_prefix="/broken")
        # What `serve status` prints (ray/serve/scripts.py: the same status, dumped the same way).
        printed = yaml.dump(process_dict_for_yaml_dump(dataclasses.asdict(serve.status())), Dumper=ServeDeploySchemaDumper,
                            default_flow_style=False, sort_keys=False)
    finally:
        serve.delete("broken")
    line = subprocess.run([sys.executable, "-m", "local_dense_retriever.serve_status"], input=printed, text=True,
                          capture_output=True, check=True, cwd=REPO).stdout
    assert line.startswith("FAILED broken: DEPLOY_FAILED: Retriever: The deployment failed to start 3 times in a row.")
    assert line.endswith(f" [...] FileNotFoundError: index {missing} does not exist; pass a FAISS index file\n")
    assert line.count("\n") == 1


def _pages(size: int) -> int:
    page = os.sysconf("SC_PAGE_SIZE")
    return -(-size // page) * page


def _index_pages_once_both_replicas_searched(url: str, index_path: str) -> dict[int, tuple[int, int]]:
    """Search until each replica has scanned the whole index (a flat index is read whole by every
    search); then {replica pid: (RSS, PSS) of its mapping of the index file}."""
    import httpx

    full = _pages(os.path.getsize(index_path))

    def scanned() -> dict[int, tuple[int, int]] | None:
        with httpx.Client(timeout=60) as client:
            for _ in range(4):
                assert client.post(url, json={"queries": [demo.DEFAULT_QUERY]}).status_code == 200
        pages = _index_pages_of_replicas(index_path)
        return pages if len(pages) == 2 and all(rss == full for rss, _ in pages.values()) else None

    return _wait_for(scanned, "both replicas searching the index", timeout_s=120)


def _index_pages_of_replicas(index_path: str) -> dict[int, tuple[int, int]]:
    """{replica pid: (RSS, PSS) of its mapping of the index file}."""
    import psutil

    found = {}
    for process in psutil.process_iter(["pid", "name"]):
        if process.info["name"] and f"ServeReplica:{APP}:{DEPLOYMENT_NAME}" in process.info["name"]:
            for mapping in process.memory_maps():
                if mapping.path == os.path.realpath(index_path):
                    found[process.info["pid"]] = (mapping.rss, mapping.pss)
    return found


def test_the_repository_serve_config_is_valid_for_serve_and_for_the_server():
    import yaml
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load((REPO / "serve_retrieval.yaml").read_text()))
    (app,) = config.applications
    assert app.import_path == "local_dense_retriever.serve_app:build" and app.route_prefix == "/"
    server = server_config(app.args)
    assert (server.retriever_name, server.topk, server.faiss_gpu) == ("e5", 3, True)
    (deployment,) = app.deployments
    assert deployment.name == DEPLOYMENT_NAME


def test_a_config_round_trips_through_the_serve_args(config):
    assert server_config(config_args(config)) == config


@pytest.mark.parametrize("args, message", [
    ({"index_path": "/i", "corpus_path": "/c", "retriever_model": "intfloat/e5-base-v2", "top_k": 3},
     "unknown retrieval server setting(s) in args: top_k; known: api_key, body_timeout_s,"),
    ({"index_path": "/i", "corpus_path": "/c", "retriever_model": "intfloat/e5-base-v2", "max_connections": 10},
     "max_connections: limits of the standalone server's own HTTP front; under Serve its proxy receives the requests"),
    ({"corpus_path": "/c"}, "args needs index_path (an absolute path, the same on every node that runs a replica)"),
    ({"index_path": "/i", "corpus_path": "/c", "retriever_model": "intfloat/e5-base-v2", "topk": 0}, "--topk must be at least 1, got 0"),
])
def test_a_wrong_setting_in_the_serve_config_is_named(args, message):
    with pytest.raises(ValueError) as refused:
        server_config(args)
    assert str(refused.value).startswith(message)
