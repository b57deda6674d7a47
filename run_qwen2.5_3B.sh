#!/usr/bin/env bash
# GRPO training of Qwen2.5-3B with the Search-R1 rollout plugin on one 8-GPU node, with slime.
#
# Everything machine-specific comes from the environment (defaults are upstream's paths):
#   SLIME_DIR           slime checkout (train.py, scripts/models/)       /root/slime
#   MEGATRON_DIR        Megatron-LM checkout                             /root/Megatron-LM
#   HF_CKPT             Hugging Face checkpoint (SGLang, tokenizer)      /root/Qwen2.5-3B
#   REF_CKPT            the same weights converted to torch_dist         /root/Qwen2.5-3B_torch_dist
#   SAVE_CKPT           where --save/--load would point (commented out)  /root/Qwen2.5-3B_slime
#   DATA_DIR            train.parquet / test.parquet from search-r1-prepare-data
#                                                                        /root/Search-R1/data/nq_hotpotqa_train
#   SEARCH_R1_CONFIG    optional YAML with a `search_r1:` mapping (passed as --custom-config-path)
#   EVAL_PER_SOURCE     rows of each test data set to evaluate every EVAL_INTERVAL rollouts    0 (off)
#                       (DATA_DIR/test_<source>.parquet from search-r1-prepare-data --per-source-test)
#   EVAL_SOURCES        data sets evaluated      nq,triviaqa,popqa,hotpotqa,2wikimultihopqa,musique,bamboogle
#   EVAL_INTERVAL       rollouts between two evaluations                 25
#   NUM_GPUS            GPUs the Ray head offers                         8
#   MASTER_ADDR         address the Ray head binds                       127.0.0.1
#   RAY_DASHBOARD_PORT  Ray dashboard / job API port                     8265
#   RAY_START_TIMEOUT   seconds to wait for a Ray head this script starts 120
#   DRY_RUN             1/true/yes/on: run the checks, print the command, start and stop nothing
#                       (0/false/no/off or unset: launch)                0
#   RETRIEVAL_API_KEY, SERPER_API_KEY, JUDGE_API_KEY
#                       search and LLM-judge keys: carried to every Ray worker, never printed (DRY_RUN redacts them)
#
# Unlike upstream this script kills nothing it did not start: no `pkill -9 python` (which would
# also end your retrieval server). If a Ray cluster already answers on RAY_DASHBOARD_PORT the job
# is submitted to it and the cluster is left running; otherwise the script starts a Ray head and
# stops exactly that head (and the SGLang engines under it) when it exits, however it exits.
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"

SLIME_DIR="${SLIME_DIR:-/root/slime}"
MEGATRON_DIR="${MEGATRON_DIR:-/root/Megatron-LM}"
HF_CKPT="${HF_CKPT:-/root/Qwen2.5-3B}"
REF_CKPT="${REF_CKPT:-/root/Qwen2.5-3B_torch_dist}"
SAVE_CKPT="${SAVE_CKPT:-/root/Qwen2.5-3B_slime}"
DATA_DIR="${DATA_DIR:-/root/Search-R1/data/nq_hotpotqa_train}"
SEARCH_R1_CONFIG="${SEARCH_R1_CONFIG:-}"
EVAL_PER_SOURCE="${EVAL_PER_SOURCE:-0}"
EVAL_SOURCES="${EVAL_SOURCES:-nq,triviaqa,popqa,hotpotqa,2wikimultihopqa,musique,bamboogle}"
EVAL_INTERVAL="${EVAL_INTERVAL:-25}"
NUM_GPUS="${NUM_GPUS:-8}"
MASTER_ADDR="${MASTER_ADDR:-127.0.0.1}"
RAY_DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-8265}"
RAY_START_TIMEOUT="${RAY_START_TIMEOUT:-120}"
DRY_RUN="${DRY_RUN:-0}"
# The usual spellings of a yes/no switch; anything else is a mistake, not a launch.
case "${DRY_RUN,,}" in
   1 | true | yes | on) DRY_RUN=1 ;;
   0 | false | no | off | "") DRY_RUN=0 ;;
   *)
      echo "ERROR: DRY_RUN=${DRY_RUN} is not a yes/no value: use 1, true, yes or on for a dry run, 0, false, no or off (or unset) to launch." >&2
      exit 1
      ;;
esac

# Keeps Ray from buffering the trainer's stdout/stderr.
export PYTHONUNBUFFERED=1

# ---------------------------------------------------------------------------------------------
# Preflight: collect every problem first, so one run tells the user everything that is missing.
# ---------------------------------------------------------------------------------------------
PROBLEMS=()
problem() { PROBLEMS+=("$1"); }

MODEL_CONFIG="${SLIME_DIR}/scripts/models/qwen2.5-3B.sh"
if [[ ! -f "${SLIME_DIR}/train.py" ]]; then
   problem "slime not found: ${SLIME_DIR}/train.py does not exist. Clone https://github.com/THUDM/slime there (and pip install -e it) or set SLIME_DIR."
elif [[ ! -f "${MODEL_CONFIG}" ]]; then
   problem "slime checkout has no ${MODEL_CONFIG} (the Qwen2.5-3B architecture flags); update the checkout in SLIME_DIR."
fi
if [[ ! -d "${MEGATRON_DIR}/megatron/core" ]]; then
   problem "Megatron-LM not found: ${MEGATRON_DIR}/megatron/core does not exist. Clone https://github.com/NVIDIA/Megatron-LM there or set MEGATRON_DIR."
fi
if [[ ! -f "${HF_CKPT}/config.json" ]]; then
   problem "Hugging Face checkpoint not found: ${HF_CKPT}/config.json does not exist. Download it with: hf download Qwen/Qwen2.5-3B --local-dir ${HF_CKPT} (or set HF_CKPT)."
fi
if [[ ! -f "${REF_CKPT}/latest_checkpointed_iteration.txt" ]]; then
   problem "torch_dist checkpoint not found: ${REF_CKPT}/latest_checkpointed_iteration.txt does not exist. Convert the HF checkpoint with: cd ${SLIME_DIR} && source scripts/models/qwen2.5-3B.sh && PYTHONPATH=${MEGATRON_DIR} python tools/convert_hf_to_torch_dist.py \${MODEL_ARGS[@]} --hf-checkpoint ${HF_CKPT} --save ${REF_CKPT} (or set REF_CKPT)."
fi
TRAIN_DATA="${DATA_DIR}/train.parquet"
if [[ ! -f "${TRAIN_DATA}" ]]; then
   problem "training data not found: ${TRAIN_DATA} does not exist. Build it with: PYTHONPATH=${SCRIPT_DIR} python -m search_r1_slime.prepare_data --local-dir ${DATA_DIR} (or set DATA_DIR)."
fi
for name in NUM_GPUS EVAL_INTERVAL RAY_DASHBOARD_PORT RAY_START_TIMEOUT; do
   if [[ ! "${!name}" =~ ^[0-9]+$ ]] || ((10#${!name} == 0)); then
      problem "${name}=${!name} must be a whole number above 0."
   fi
done
# Periodic evaluation: every data set on its own (slime logs eval/<source>, the eval-log hook adds
# eval/<source>/search_r1/exact_match), on its first EVAL_PER_SOURCE rows so it stays cheap.
EVAL_ARGS=()
if [[ ! "${EVAL_PER_SOURCE}" =~ ^[0-9]+$ ]]; then
   problem "EVAL_PER_SOURCE=${EVAL_PER_SOURCE} must be a number of rows per data set (0 turns evaluation off)."
elif ((EVAL_PER_SOURCE > 0)); then
   EVAL_ARGS=(--eval-interval "${EVAL_INTERVAL}" --eval-prompt-data)
   IFS=',' read -r -a eval_sources <<<"${EVAL_SOURCES}"
   for source in "${eval_sources[@]}"; do
      eval_file="${DATA_DIR}/test_${source}.parquet"
      if [[ ! -f "${eval_file}" ]]; then
         problem "evaluation data not found: ${eval_file} does not exist. Build it with: PYTHONPATH=${SCRIPT_DIR} python -m search_r1_slime.prepare_data --local-dir ${DATA_DIR} --train-sources '' --test-sources ${EVAL_SOURCES} --per-source-test (or set EVAL_SOURCES, or EVAL_PER_SOURCE=0)."
      fi
      EVAL_ARGS+=("${source}" "${eval_file}@[0:${EVAL_PER_SOURCE}]")
   done
   # Greedy, one sample per question, as Search-R1 validated.
   EVAL_ARGS+=(
      --eval-input-key prompt
      --eval-label-key reward_model
      --n-samples-per-eval-prompt 1
      --eval-temperature 0
      --custom-eval-rollout-log-function-path search_r1_slime.rollout_metrics.log_eval_rollout_data
   )
fi

# ---------------------------------------------------------------------------------------------
# The recipe (upstream's GRPO settings for Qwen2.5-3B).
# ---------------------------------------------------------------------------------------------
MODEL_ARGS=()
if [[ -f "${MODEL_CONFIG}" ]]; then
   # shellcheck source=/dev/null
   source "${MODEL_CONFIG}"
fi

CKPT_ARGS=(
   --hf-checkpoint "${HF_CKPT}"
   --ref-load "${REF_CKPT}"
   # --load "${SAVE_CKPT}"
   # --save "${SAVE_CKPT}"
   # --save-interval 20
)

ROLLOUT_ARGS=(
   --prompt-data "${TRAIN_DATA}"
   --input-key prompt
   --label-key reward_model
   --apply-chat-template
   --rollout-shuffle
   --num-rollout 3000
   --rollout-batch-size 32
   --n-samples-per-prompt 8
   --rollout-max-response-len 512
   --rollout-temperature 1

   # Evaluation during training: set EVAL_PER_SOURCE (EVAL_ARGS above).

   --global-batch-size 256
   --balance-data
)

PERF_ARGS=(
   --tensor-model-parallel-size 2
   --sequence-parallel
   --pipeline-model-parallel-size 1
   --context-parallel-size 1
   --expert-model-parallel-size 1
   --expert-tensor-parallel-size 1

   --recompute-granularity full
   --recompute-method uniform
   --recompute-num-layers 1

   # --micro-batch-size 1
   --use-dynamic-batch-size
   --max-tokens-per-gpu 9216
)

GRPO_ARGS=(
   --advantage-estimator grpo
   --use-kl-loss
   --kl-loss-coef 0.001
   --kl-loss-type low_var_kl
   --entropy-coef 0.00
   --eps-clip 0.2
   --eps-clip-high 0.28

   # TIS (truncated importance sampling): uncomment, together with the TIS lines in CUSTOM_ARGS.
   # --use-tis
)

OPTIMIZER_ARGS=(
   --optimizer adam
   --lr 1e-6
   --lr-decay-style constant
   --weight-decay 0.01
   --adam-beta1 0.9
   --adam-beta2 0.98
)

WANDB_ARGS=(
   # --use-wandb
   # --wandb-project slime-dev
   # --wandb-group search-r1_qwen2.5-3B-test
   # --wandb-key "${WANDB_KEY:?export WANDB_KEY first}"
)

SGLANG_ARGS=(
   --rollout-num-gpus-per-engine 2
   --sglang-mem-fraction-static 0.7
)

MISC_ARGS=(
   # Megatron's default dropout is 0.1; RL fine-tuning runs without it.
   --attention-dropout 0.0
   --hidden-dropout 0.0
   # Numerically safer reductions for a small learning rate.
   --accumulate-allreduce-grads-in-fp32
   --attention-softmax-in-fp32
   # Comment this out for models with MLA.
   --attention-backend flash
)

CUSTOM_ARGS=(
   --custom-generate-function-path generate_with_search.generate
   --custom-rm-path generate_with_search.reward_func
   # search_r1/* metrics (searches, failures, valid actions, EM, ...) beside slime's rollout/*.
   --custom-rollout-log-function-path search_r1_slime.rollout_metrics.log_rollout_data

   # TIS: uncomment both lines (and --use-tis above). slime reads ONE --custom-config-path: if
   # you also use SEARCH_R1_CONFIG, leave the first line commented and put mis.yaml's keys into
   # your SEARCH_R1_CONFIG file instead (README, "TIS").
   # --custom-config-path "${SLIME_DIR}/examples/train_infer_mismatch_helper/mis.yaml"
   # --custom-tis-function-path examples.train_infer_mismatch_helper.mis.compute_mis_weights_with_cp
)
if [[ -n "${SEARCH_R1_CONFIG}" ]]; then
   CUSTOM_ARGS+=(--custom-config-path "${SEARCH_R1_CONFIG}")
fi

TRAIN_ARGS=(
   --actor-num-nodes 1
   --actor-num-gpus-per-node 4
   --rollout-num-gpus 4
   --colocate
   "${MODEL_ARGS[@]}"
   "${CKPT_ARGS[@]}"
   "${ROLLOUT_ARGS[@]}"
   "${EVAL_ARGS[@]}"
   "${OPTIMIZER_ARGS[@]}"
   "${GRPO_ARGS[@]}"
   "${WANDB_ARGS[@]}"
   "${PERF_ARGS[@]}"
   "${SGLANG_ARGS[@]}"
   "${MISC_ARGS[@]}"
   "${CUSTOM_ARGS[@]}"
)

config_paths=0
use_wandb=0
for arg in "${TRAIN_ARGS[@]}"; do
   [[ "${arg}" == "--custom-config-path" ]] && config_paths=$((config_paths + 1))
   [[ "${arg}" == "--use-wandb" ]] && use_wandb=1
done
if [[ -n "${SEARCH_R1_CONFIG}" && ! -f "${SEARCH_R1_CONFIG}" ]]; then
   problem "SEARCH_R1_CONFIG=${SEARCH_R1_CONFIG} does not exist; point it at a YAML file with a search_r1: mapping, or unset it to use the defaults."
else
   # The plugin's own defaults plus the YAML decide the backend: the local retriever must answer
   # /health, Google needs a serper.dev key. search_r1_slime.preflight prints one problem per line.
   SEARCH_PREFLIGHT=(python3 -m search_r1_slime.preflight)
   if [[ -n "${SEARCH_R1_CONFIG}" ]]; then
      SEARCH_PREFLIGHT+=(--config "${SEARCH_R1_CONFIG}")
   fi
   # slime uploads its args, the YAML's search_r1 mapping included, to W&B: no key may be written there.
   if ((use_wandb)); then
      SEARCH_PREFLIGHT+=(--use-wandb)
   fi
   if ! search_report="$(PYTHONPATH="${SCRIPT_DIR}${PYTHONPATH:+:${PYTHONPATH}}" "${SEARCH_PREFLIGHT[@]}" 2>&1)"; then
      while IFS= read -r line; do
         [[ -n "${line}" ]] && problem "${line}"
      done <<<"${search_report}"
   fi
fi
if ! command -v ray >/dev/null 2>&1; then
   problem "ray is not on PATH: install slime's requirements (pip install ray[default]) in this environment."
fi

if ((config_paths > 1)); then
   problem "--custom-config-path is given ${config_paths} times but slime keeps only the last one: merge the YAML files into one (README, 'TIS') and pass it once."
fi

# The environment of every Ray worker: this folder (the plugin), slime (for examples.* hooks such
# as TIS) and Megatron on the PYTHONPATH, and the search and judge keys of this shell (RETRIEVAL_API_KEY,
# SERPER_API_KEY, JUDGE_API_KEY), which a worker on another node or in an already running cluster would not
# have otherwise. Ray reads it from a file only this user can read (mktemp's mode 0600), never
# from the command line, which `ps` shows to everyone; DRY_RUN prints it with the keys redacted.
runtime_env() {
   python3 -c '
import json, os, sys
env_vars = {"PYTHONPATH": sys.argv[1], "CUDA_DEVICE_MAX_CONNECTIONS": "1"}
for key in ("RETRIEVAL_API_KEY", "SERPER_API_KEY", "JUDGE_API_KEY"):
    if os.environ.get(key):
        env_vars[key] = "<redacted>" if sys.argv[2] == "redacted" else os.environ[key]
print(json.dumps({"env_vars": env_vars}))
' "${MEGATRON_DIR}:${SCRIPT_DIR}:${SLIME_DIR}" "$1"
}
RUNTIME_ENV_FILE="${TMPDIR:-/tmp}/search_r1_runtime_env.XXXXXX"  # made by mktemp at launch
RAY_JOB_ADDRESS="http://127.0.0.1:${RAY_DASHBOARD_PORT}"
submit_command() {
   SUBMIT=(
      ray job submit --address="${RAY_JOB_ADDRESS}"
      --runtime-env="${RUNTIME_ENV_FILE}"
      -- python3 "${SLIME_DIR}/train.py" "${TRAIN_ARGS[@]}"
   )
}

# Any HTTP answer from the dashboard means a Ray cluster is there.
ray_dashboard_up() {
   python3 -c '
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=2)
except urllib.error.HTTPError:
    pass
except OSError:
    sys.exit(1)
' "${RAY_JOB_ADDRESS}/api/version"
}

if [[ "${DRY_RUN}" == "1" ]]; then
   for p in "${PROBLEMS[@]}"; do
      echo "WARNING: ${p}" >&2
   done
   if ray_dashboard_up; then
      echo "DRY_RUN: a Ray cluster answers at ${RAY_JOB_ADDRESS}; the job would be submitted to it and the cluster left running."
   else
      echo "DRY_RUN: would start a Ray head (ray start --head --node-ip-address ${MASTER_ADDR} --num-gpus ${NUM_GPUS} --dashboard-port ${RAY_DASHBOARD_PORT}) and stop it on exit."
   fi
   echo "DRY_RUN: the Ray workers' environment (written at launch to a file only you can read): $(runtime_env redacted)"
   echo "DRY_RUN: would run:"
   submit_command
   printf '%q ' "${SUBMIT[@]}"
   echo
   exit 0
fi

if ((${#PROBLEMS[@]} > 0)); then
   echo "Not launching; fix these first (DRY_RUN=1 shows the command anyway):" >&2
   for p in "${PROBLEMS[@]}"; do
      echo "ERROR: ${p}" >&2
   done
   exit 1
fi

# ---------------------------------------------------------------------------------------------
# Launch: reuse a running Ray cluster, or start one and stop exactly that one on exit.
# ---------------------------------------------------------------------------------------------
RAY_HEAD_PID=""
SUBMIT_PID=""
RUNTIME_ENV_MADE=""
cleanup() {
   # A second Ctrl-C must not cut the teardown short and leave a half-stopped head behind.
   trap '' INT TERM
   if [[ -n "${RUNTIME_ENV_MADE}" ]]; then
      rm -f "${RUNTIME_ENV_FILE}"
   fi
   if [[ -n "${SUBMIT_PID}" ]] && kill -0 "${SUBMIT_PID}" 2>/dev/null; then
      kill -TERM "${SUBMIT_PID}" 2>/dev/null || true
      if [[ -z "${RAY_HEAD_PID}" ]]; then
         echo "Stopped following the job; it keeps running on the Ray cluster at ${RAY_JOB_ADDRESS} (ray job list / ray job stop --address ${RAY_JOB_ADDRESS})." >&2
      fi
   fi
   if [[ -n "${RAY_HEAD_PID}" ]] && kill -0 "${RAY_HEAD_PID}" 2>/dev/null; then
      echo "Stopping the Ray head this script started (pid ${RAY_HEAD_PID}); Ray drains for up to 30 s."
      kill -TERM "${RAY_HEAD_PID}"
      wait "${RAY_HEAD_PID}" || true
   fi
}
trap cleanup EXIT
# Turn signals into an exit so the EXIT trap runs; `wait` below returns at once on a signal.
trap 'exit 130' INT
trap 'exit 143' TERM

cd "${SLIME_DIR}"
if ray_dashboard_up; then
   echo "Submitting to the Ray cluster already running at ${RAY_JOB_ADDRESS}; it is left running afterwards."
else
   # --block keeps `ray start` running as one process; on SIGTERM it drains and tears down the
   # processes of this head only (GCS, raylet, workers, the job). setsid gives it a session of its
   # own, so a signal sent to this script's process group (Ctrl-C, timeout, a scheduler) reaches
   # the head only through cleanup's orderly SIGTERM, never its raylet directly. The subreaper
   # setting makes the raylet also end what workers spawned (the SGLang servers), which upstream
   # cleaned up with pkill.
   RAY_kill_child_processes_on_worker_exit_with_raylet_subreaper=true \
      setsid ray start --head --node-ip-address "${MASTER_ADDR}" --num-gpus "${NUM_GPUS}" \
      --dashboard-port "${RAY_DASHBOARD_PORT}" --disable-usage-stats --block &
   RAY_HEAD_PID=$!
   waited=0
   until ray_dashboard_up; do
      if ! kill -0 "${RAY_HEAD_PID}" 2>/dev/null; then
         echo "ERROR: ray start exited before its dashboard answered at ${RAY_JOB_ADDRESS}; see its output above (is another Ray cluster using the ports?)." >&2
         exit 1
      fi
      if ((waited >= RAY_START_TIMEOUT)); then
         echo "ERROR: the Ray head did not answer at ${RAY_JOB_ADDRESS} within ${RAY_START_TIMEOUT}s (raise RAY_START_TIMEOUT?)." >&2
         exit 1
      fi
      sleep 1
      waited=$((waited + 1))
   done
fi

RUNTIME_ENV_FILE="$(mktemp "${RUNTIME_ENV_FILE}")"
RUNTIME_ENV_MADE=1
runtime_env real >"${RUNTIME_ENV_FILE}"
submit_command
# In the background so that a signal reaches the traps at once instead of after the job ends.
"${SUBMIT[@]}" &
SUBMIT_PID=$!
wait "${SUBMIT_PID}"
