"""The retrieval server as a Ray Serve application: the same FastAPI app (``app.create_app``), the
same retriever, in as many Ray actors ("replicas") as the Serve config asks for.

    serve run serve_retrieval.yaml          (one command, in the foreground)
    serve deploy serve_retrieval.yaml       (into a running Ray cluster; RETRIEVER=serve bash run_qwen2.5_3B.sh)

``build(args)`` is the application builder the YAML's ``import_path`` names; ``args`` are the
server's settings under the names of ``retrieval_server.py``'s flags (``index_path``,
``corpus_path``, ``retriever_model``, ``topk``, ``max_batch_size``...). How many replicas, with
how many CPUs or GPUs each, and the autoscaling bounds are Serve's own deployment settings in the
same YAML (docs/serve.md).

What Serve adds (https://docs.ray.io/en/latest/serve/): it places each replica on a node with the
resources it asks for, routes every request of its HTTP proxy to a replica that is running,
replaces a replica whose actor dies or whose health check fails, and changes the replica count
with the load. A replica counts as started only once its retriever is loaded: the index,
corpus and encoder load in the replica's constructor, and Serve routes nothing to a replica
before its constructor and a first health check have succeeded (``ReplicaActor.initialize`` in
``ray/serve/_private/replica.py``). A load that fails (a wrong path, a model that does not fit)
fails the constructor: Serve retries it a few times and then reports the deployment as failed,
with the reason, in ``serve status``.

Replicas on one node share the index's memory: ``dense.read_index`` maps the file read-only, so
its pages live once in the page cache whichever process touches them (bench/serve.py shows each
replica's share, PSS, against what it maps, RSS).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI
from ray import serve
from ray.serve import Application

from local_dense_retriever.app import create_app
from local_dense_retriever.retrieval_server import API_KEY_ENV
from local_dense_retriever.retriever import Retriever, load_retriever
from local_dense_retriever.server_config import ServerConfig

# Settings of the standalone server's own HTTP front (local_dense_retriever/http_limits.py, in
# uvicorn): under Serve, requests arrive through Serve's proxy instead, which has its own limits.
_PROXY_SETTINGS = ("max_header_bytes", "max_headers", "header_timeout_s", "max_connections")
DEPLOYMENT_NAME = "Retriever"


def server_config(args: dict[str, Any]) -> ServerConfig:
    """The ServerConfig ``args`` (the YAML's ``args:`` mapping) name; ValueError for a wrong one.

    ``retriever_name`` may be left out when the model's name shows its family, as on the command
    line; the access token comes from ``RETRIEVAL_API_KEY`` when ``api_key`` is not given.
    """
    from local_dense_retriever.encoder_config import resolve_retriever_name

    args = dict(args)
    fields = set(ServerConfig.__dataclass_fields__)
    unknown = sorted(set(args) - fields)
    if unknown:
        raise ValueError(f"unknown retrieval server setting(s) in args: {', '.join(unknown)}; known: {', '.join(sorted(fields - set(_PROXY_SETTINGS)))}")
    proxied = sorted(set(args) & set(_PROXY_SETTINGS))
    if proxied:
        raise ValueError(f"{', '.join(proxied)}: limits of the standalone server's own HTTP front; under Serve its "
                         "proxy receives the requests (set its http_options in the Serve config instead)")
    for name in ("index_path", "corpus_path"):
        if name not in args:
            raise ValueError(f"args needs {name} (an absolute path, the same on every node that runs a replica)")
    args["retriever_name"] = resolve_retriever_name(args.get("retriever_name"), args.get("retriever_model", ServerConfig.retriever_model))
    args.setdefault("api_key", os.environ.get(API_KEY_ENV) or None)
    return ServerConfig(**args)


@serve.deployment(
    name=DEPLOYMENT_NAME,
    # The app batches concurrent requests itself (batcher.py), so a replica takes many at once;
    # Serve's default of 5 would queue them in the proxy instead, where they cannot be batched.
    max_ongoing_requests=64,
    # A replica's health is its load's outcome; a load of wiki-18 takes minutes, the check does not.
    health_check_period_s=10,
)
@serve.ingress()
class RetrievalDeployment:
    """One replica: the retriever, loaded before Serve sends it anything, behind ``create_app``'s app."""

    async def __init__(self, config: ServerConfig) -> None:
        self._config = config
        # In a thread: the replica's event loop keeps answering Serve's calls meanwhile.
        self._retriever: Retriever = await asyncio.to_thread(load_retriever, config)
        self._app: FastAPI | None = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        # The app's lifespan (run by Serve next) takes the retriever loaded above.
        self._app = create_app(self._config, load=lambda _config: self._retriever)
        return self._app

    async def check_health(self) -> None:
        """Healthy once the app's retriever is ready (a matter of milliseconds after the constructor:
        the app's lifespan hands it over); raising tells Serve to replace this replica."""
        assert self._app is not None
        state = self._app.state.retrieval
        await state.settled.wait()
        if state.status != "ready":
            raise RuntimeError(f"the retriever is {state.status}: {state.error}")


def build(args: dict[str, Any]) -> Application:
    """The application builder of ``import_path: local_dense_retriever.serve_app:build``."""
    return RetrievalDeployment.bind(server_config(args))


def config_args(config: ServerConfig) -> dict[str, Any]:
    """The ``args:`` mapping that ``server_config`` turns back into ``config`` (unset values left out)."""
    return {name: value for name, value in asdict(config).items() if value is not None and name not in _PROXY_SETTINGS}


def running_replicas(app_name: str) -> int:
    """How many replicas of the application's retrieval deployment run (Serve's own count)."""
    app = serve.status().applications.get(app_name)
    if app is None or DEPLOYMENT_NAME not in app.deployments:
        return 0
    return app.deployments[DEPLOYMENT_NAME].replica_states.get("RUNNING", 0)


def replica_actor_names(app_name: str) -> set[str]:
    """The Ray actor names of the deployment's replicas (namespace "serve"), e.g. for ``ray.kill``."""
    import ray

    prefix = f"SERVE_REPLICA::{app_name}#{DEPLOYMENT_NAME}#"
    return {actor["name"] for actor in ray.util.list_named_actors(all_namespaces=True) if actor["name"].startswith(prefix)}
