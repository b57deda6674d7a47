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
#   NUM_GPUS            GPUs the Ray head offers (at least the 4 the recipe places)  8
#   MASTER_ADDR         IP address the Ray head binds                    127.0.0.1
#   RAY_DASHBOARD_PORT  Ray dashboard / job API port                     8265
#   RAY_START_TIMEOUT   seconds to wait for a Ray head this script starts 120
#   DRY_RUN             1/true/yes/on: run the checks, print the command, start and stop nothing
#                       (0/false/no/off or unset: launch)                0
#   LLDS                1/true/yes/on: slime's policy loss plus the LLDS likelihood-preserving
#                       term (docs/llds.md; search_r1.llds.coef/gate in SEARCH_R1_CONFIG)  0 (off)
#   RETRIEVER           standalone: the retrieval servers search_r1.local.search_url names, started by you
#                       serve: deploy SERVE_CONFIG into the Ray cluster before the job, remove it after
#                       (docs/serve.md)                                  standalone
#   SERVE_CONFIG        Ray Serve config of the retrieval server         serve_retrieval.yaml (beside this script)
#   SERVE_START_TIMEOUT seconds to wait for its replicas to load and run 1800
#   RETRIEVAL_API_KEY, SERPER_API_KEY, JUDGE_API_KEY
#                       search and LLM-judge keys: carried to every Ray worker, never printed (DRY_RUN redacts them)
#
# Unlike upstream this script kills nothing it did not start: no `pkill -9 python` (which would
# also end your retrieval server). If a Ray cluster already answers on RAY_DASHBOARD_PORT the job
# is submitted to it and the cluster is left running; otherwise the script starts a Ray head and
# stops exactly that head (and the SGLang engines under it) when it exits, however it exits.
set -euo pipefail

# Every setting is an environment variable (above): an argument is a request for them, or a mistake.
if (( $# )); then
   if [[ $# == 1 && ( "$1" == --help || "$1" == -h ) ]]; then
      sed -n '2,/^set -euo pipefail$/{/^set -euo pipefail$/d;s/^# \{0,1\}//;p;}' "${BASH_SOURCE[0]}"
      exit 0
   fi
   echo "ERROR: run_qwen2.5_3B.sh takes no arguments, got: $*; every setting is an environment variable" \
      "(bash run_qwen2.5_3B.sh --help lists them), e.g. DRY_RUN=1 bash run_qwen2.5_3B.sh" >&2
   exit 2
fi

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
LLDS="${LLDS:-0}"
RETRIEVER="${RETRIEVER:-standalone}"
SERVE_CONFIG="${SERVE_CONFIG:-${SCRIPT_DIR}/serve_retrieval.yaml}"
SERVE_START_TIMEOUT="${SERVE_START_TIMEOUT:-1800}"
# The usual spellings of a yes/no switch; anything else is a mistake, not a launch.
# yes_no NAME WHAT_YES WHAT_NO sets the variable NAME to 1 or 0.
yes_no() {
   local name="$1"
   case "${!name,,}" in
      1 | true | yes | on) printf -v "${name}" 1 ;;
      0 | false | no | off | "") printf -v "${name}" 0 ;;
      *)
         echo "ERROR: ${name}=${!name} is not a yes/no value: use 1, true, yes or on $2, 0, false, no or off (or unset) $3." >&2
         exit 1
         ;;
   esac
}
yes_no DRY_RUN "for a dry run" "to launch"
yes_no LLDS "to add the LLDS term to the loss" "for slime's policy loss alone"

if [[ "${RETRIEVER}" != standalone && "${RETRIEVER}" != serve ]]; then
   echo "ERROR: RETRIEVER=${RETRIEVER} is not a retriever: use standalone (your own retrieval servers, the default) or serve (deployed on Ray Serve from SERVE_CONFIG)." >&2
   exit 1
fi

# Keeps Ray from buffering the trainer's stdout/stderr.
export PYTHONUNBUFFERED=1

# ---------------------------------------------------------------------------------------------
# Preflight: collect every problem first, so one run tells the user everything that is missing.
# A problem of this machine (a missing checkout, a server down) is a warning under DRY_RUN; a
# setting of this script that cannot work is refused in every mode, before anything is asked.
# ---------------------------------------------------------------------------------------------
PROBLEMS=()
problem() { PROBLEMS+=("$1"); }
SETTING_ERRORS=()
setting_error() { SETTING_ERRORS+=("$1"); }

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
for name in NUM_GPUS EVAL_INTERVAL RAY_START_TIMEOUT SERVE_START_TIMEOUT; do
   if [[ ! "${!name}" =~ ^[0-9]+$ ]] || ((10#${!name} == 0)); then
      setting_error "${name}=${!name} must be a whole number above 0."
   fi
done
if [[ ! "${RAY_DASHBOARD_PORT}" =~ ^[0-9]{1,5}$ ]] || ((10#${RAY_DASHBOARD_PORT} == 0 || 10#${RAY_DASHBOARD_PORT} > 65535)); then
   setting_error "RAY_DASHBOARD_PORT=${RAY_DASHBOARD_PORT} must be a port number from 1 to 65535."
fi
# `ray start --node-ip-address` takes an address; a host name fails only once Ray is starting.
if ! python3 -c 'import ipaddress, sys; ipaddress.ip_address(sys.argv[1])' "${MASTER_ADDR}" 2>/dev/null; then
   setting_error "MASTER_ADDR=${MASTER_ADDR} must be an IP address of this node (127.0.0.1 for one machine), not a host name."
fi
# Periodic evaluation: every data set on its own (slime logs eval/<source>, the eval-log hook adds
# eval/<source>/search_r1/exact_match), on its first EVAL_PER_SOURCE rows so it stays cheap.
EVAL_ARGS=()
if [[ ! "${EVAL_PER_SOURCE}" =~ ^[0-9]+$ ]]; then
   setting_error "EVAL_PER_SOURCE=${EVAL_PER_SOURCE} must be a number of rows per data set (0 turns evaluation off)."
elif ((EVAL_PER_SOURCE > 0)); then
   EVAL_ARGS=(--eval-interval "${EVAL_INTERVAL}" --eval-prompt-data)
   # "nq, hotpotqa" means nq and hotpotqa: the spaces around each name are dropped.
   eval_sources=()
   IFS=',' read -r -a listed <<<"${EVAL_SOURCES}"
   for source in "${listed[@]}"; do
      source="${source#"${source%%[![:space:]]*}"}"
      source="${source%"${source##*[![:space:]]}"}"
      [[ -n "${source}" ]] && eval_sources+=("${source}")
   done
   if ((${#eval_sources[@]} == 0)); then
      setting_error "EVAL_SOURCES='${EVAL_SOURCES}' names no data set: list them, comma-separated (e.g. nq,hotpotqa), or set EVAL_PER_SOURCE=0."
   fi
   EVAL_SOURCES="$(IFS=,; echo "${eval_sources[*]}")"
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
   # your SEARCH_R1_CONFIG file instead (docs/tis.md).
   # --custom-config-path "${SLIME_DIR}/examples/train_infer_mismatch_helper/mis.yaml"
   # --custom-tis-function-path examples.train_infer_mismatch_helper.mis.compute_mis_weights_with_cp
)
if [[ -n "${SEARCH_R1_CONFIG}" ]]; then
   CUSTOM_ARGS+=(--custom-config-path "${SEARCH_R1_CONFIG}")
fi
if [[ "${LLDS}" == "1" ]]; then
   # slime's own policy loss (every GRPO_ARGS option still applies) plus the LLDS term; its
   # coefficient and gate are search_r1.llds.coef/gate (defaults: the paper's 0.2, action gate).
   CUSTOM_ARGS+=(--loss-type custom_loss --custom-loss-function-path search_r1_slime.llds.policy_loss_with_llds)
   # The term is old_log_prob - log_prob, zero on a rollout's first optimizer step: with one step
   # per rollout (global batch = rollout batch x samples, as above) it would never act. Two steps,
   # as Search-R1's and the paper's GRPO scripts take (docs/llds.md): half the global batch.
   for i in "${!ROLLOUT_ARGS[@]}"; do
      if [[ "${ROLLOUT_ARGS[i]}" == --global-batch-size ]]; then
         ROLLOUT_ARGS[i + 1]=$((ROLLOUT_ARGS[i + 1] / 2))
         LLDS_NOTE="LLDS=1: --global-batch-size ${ROLLOUT_ARGS[i + 1]}, two optimizer steps per rollout (the LLDS term is zero on the first); compare with plain GRPO at the same batch size."
      fi
   done
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
colocate=0
declare -A gpu_flags=([--actor-num-nodes]=1 [--actor-num-gpus-per-node]=8 [--rollout-num-gpus]=0)  # slime's defaults
context_parallel=1
previous=""
for arg in "${TRAIN_ARGS[@]}"; do
   [[ "${arg}" == "--custom-config-path" ]] && config_paths=$((config_paths + 1))
   [[ "${arg}" == "--use-wandb" ]] && use_wandb=1
   [[ "${arg}" == "--colocate" ]] && colocate=1
   [[ -v "gpu_flags[${previous}]" ]] && gpu_flags["${previous}"]="${arg}"
   [[ "${previous}" == "--context-parallel-size" ]] && context_parallel="${arg}"
   previous="${arg}"
done
# The GPUs slime's placement group asks Ray for: the actor's, and SGLang's beside them, or on the
# same GPUs when colocated (slime/ray/placement_group.py).
actor_gpus=$((gpu_flags[--actor-num-nodes] * gpu_flags[--actor-num-gpus-per-node]))
rollout_gpus=${gpu_flags[--rollout-num-gpus]}
if ((colocate)); then
   needed_gpus=$((actor_gpus > rollout_gpus ? actor_gpus : rollout_gpus))
   placement="the actor's ${actor_gpus} and SGLang's ${rollout_gpus} on the same GPUs (--colocate)"
else
   needed_gpus=$((actor_gpus + rollout_gpus))
   placement="the actor's ${actor_gpus} beside SGLang's ${rollout_gpus}"
fi
if [[ "${NUM_GPUS}" =~ ^[0-9]+$ ]] && ((10#${NUM_GPUS} < needed_gpus)); then
   setting_error "NUM_GPUS=${NUM_GPUS} but the training command asks Ray for ${needed_gpus} GPUs (${placement}): set NUM_GPUS to at least ${needed_gpus}, or change --actor-num-gpus-per-node and --rollout-num-gpus in this script."
fi
# The LLDS term sums each action's displacement, which context parallelism splits across ranks;
# the loss refuses it too, but only once the model is loaded and the first rollout is done.
if [[ "${LLDS}" == "1" && "${context_parallel}" != "1" ]]; then
   setting_error "LLDS=1 needs --context-parallel-size 1 (PERF_ARGS has ${context_parallel}): the LLDS term gates whole actions, which context parallelism splits across ranks."
fi
if ((${#SETTING_ERRORS[@]} > 0)); then
   for e in "${SETTING_ERRORS[@]}"; do
      echo "ERROR: ${e}" >&2
   done
   exit 1
fi

if [[ -n "${SEARCH_R1_CONFIG}" && -d "${SEARCH_R1_CONFIG}" ]]; then
   problem "SEARCH_R1_CONFIG=${SEARCH_R1_CONFIG} is a folder; point it at a YAML file with a search_r1: mapping, or unset it to use the defaults."
elif [[ -n "${SEARCH_R1_CONFIG}" && ! -f "${SEARCH_R1_CONFIG}" ]]; then
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
   # A retriever deployed by this script does not run yet: its search is checked once it does.
   preflight_now=("${SEARCH_PREFLIGHT[@]}")
   [[ "${RETRIEVER}" == serve ]] && preflight_now+=(--config-only)
   if ! search_report="$(PYTHONPATH="${SCRIPT_DIR}${PYTHONPATH:+:${PYTHONPATH}}" "${preflight_now[@]}" 2>&1)"; then
      if [[ "${search_report}" == *"Traceback (most recent call last):"* ]]; then
         # It could not run at all (typically: python3 is not the environment the plugin is
         # installed in); its last line says why.
         problem "the search preflight (${preflight_now[*]}) could not run: ${search_report##*$'\n'}. Run this script where python3 has the plugin's requirements (pip install -e ${SCRIPT_DIR}), e.g. with its virtual environment activated."
      else
         while IFS= read -r line; do
            [[ -n "${line}" ]] && problem "${line}"
         done <<<"${search_report}"
      fi
   fi
fi
if ! command -v ray >/dev/null 2>&1; then
   problem "ray is not on PATH: install slime's requirements (pip install ray[default]) in this environment."
fi

# GPUs: the training's (needed_gpus, above) and, with RETRIEVER=serve, the most the retrieval
# replicas can hold (max_replicas x num_gpus of each deployment: autoscaling may reach it mid-run).
# Ray gives each GPU to one of them; both must fit in what the head offers.
TRAIN_GPUS="${needed_gpus}"
TRAIN_GPUS_WHY="${placement}"
SERVE_GPUS=0
if [[ "${RETRIEVER}" == serve ]]; then
   if [[ ! -f "${SERVE_CONFIG}" ]]; then
      problem "SERVE_CONFIG=${SERVE_CONFIG} does not exist; point it at a Ray Serve config of the retrieval server (serve_retrieval.yaml beside this script is one)."
   elif ! serve_gpus_report="$(python3 -c '
import sys, yaml
try:
    with open(sys.argv[1], encoding="utf-8") as f:
        apps = (yaml.safe_load(f) or {}).get("applications") or []
    total, parts = 0, []
    for app in apps:
        for deployment in app.get("deployments") or []:
            gpus = float((deployment.get("ray_actor_options") or {}).get("num_gpus") or 0)
            scaling = deployment.get("autoscaling_config")
            replicas, what = (int(scaling.get("max_replicas", 1)), "max_replicas") if scaling else (int(deployment.get("num_replicas", 1)), "num_replicas")
            total += replicas * gpus
            name = deployment.get("name")
            parts.append(f"{name}: {what} {replicas} x num_gpus {gpus:g}")
except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError) as exc:
    reason = " ".join(str(exc).split())
    sys.exit(f"SERVE_CONFIG={sys.argv[1]} is not a Serve config this script can read: {reason}")
if not apps:
    sys.exit(f"SERVE_CONFIG={sys.argv[1]} has no applications: list the retrieval server under applications:")
print(f"{total:g}", "; ".join(parts) or "no deployment settings")
' "${SERVE_CONFIG}" 2>&1)"; then
      problem "${serve_gpus_report}"
   else
      SERVE_GPUS="${serve_gpus_report%% *}"
      SERVE_GPUS_WHY="${serve_gpus_report#* }"
      if [[ ! "${SERVE_GPUS}" =~ ^[0-9]+$ ]]; then
         problem "SERVE_CONFIG=${SERVE_CONFIG} asks for ${SERVE_GPUS} GPUs (${SERVE_GPUS_WHY}): give the retrieval replicas whole GPUs."
         SERVE_GPUS=0
      fi
   fi
   if ! command -v serve >/dev/null 2>&1; then
      problem "serve is not on PATH: install Ray Serve (pip install -e '.[serve]', or pip install 'ray[serve]') in this environment."
   fi
fi
# (Only checked for a retriever this script deploys: the standalone default is left as it was.)
if [[ "${RETRIEVER}" == serve && "${NUM_GPUS}" =~ ^[0-9]+$ ]] && ((TRAIN_GPUS + SERVE_GPUS > 10#${NUM_GPUS})); then
   problem "the training needs ${TRAIN_GPUS} GPUs (${TRAIN_GPUS_WHY}) and the retrieval replicas up to ${SERVE_GPUS} (${SERVE_GPUS_WHY}), more than the ${NUM_GPUS} of NUM_GPUS: lower max_replicas or num_gpus in SERVE_CONFIG, or raise NUM_GPUS."
fi
gpu_arithmetic() {
   local line="GPUs: the Ray head offers ${NUM_GPUS}; the training takes ${TRAIN_GPUS} (${TRAIN_GPUS_WHY})"
   if [[ "${RETRIEVER}" == serve ]]; then
      line+="; the retrieval replicas take at most ${SERVE_GPUS} (${SERVE_GPUS_WHY:-none})"
   fi
   echo "${line}; $((10#${NUM_GPUS} - TRAIN_GPUS - SERVE_GPUS)) left over."
}

if ((config_paths > 1)); then
   problem "--custom-config-path is given ${config_paths} times but slime keeps only the last one: merge the YAML files into one (docs/tis.md) and pass it once."
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
   if [[ "${NUM_GPUS}" =~ ^[0-9]+$ ]]; then
      echo "DRY_RUN: $(gpu_arithmetic)"
   fi
   if [[ "${RETRIEVER}" == serve ]]; then
      echo "DRY_RUN: would deploy the retrieval server (serve deploy ${SERVE_CONFIG} --address ${RAY_JOB_ADDRESS}), wait up to ${SERVE_START_TIMEOUT}s for its replicas to run, check the search backend through it, and remove it when the job ends (serve shutdown --address ${RAY_JOB_ADDRESS} --yes)."
   fi
   if [[ -n "${LLDS_NOTE:-}" ]]; then
      echo "DRY_RUN: ${LLDS_NOTE}"
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
SERVE_DEPLOYED=""
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
   # The retrieval server leaves with the job, also from a cluster this script did not start.
   if [[ -n "${SERVE_DEPLOYED}" ]]; then
      echo "Removing the retrieval server this script deployed (serve shutdown)."
      serve shutdown --address "${RAY_JOB_ADDRESS}" --yes || true
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
   # PYTHONPATH: the Serve replicas of RETRIEVER=serve import the retrieval server from this folder.
   PYTHONPATH="${SCRIPT_DIR}${PYTHONPATH:+:${PYTHONPATH}}" \
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

# The applications `serve status` lists, on one line (local_dense_retriever/serve_status.py): RUNNING
# when all run; FAILED <why> when one failed, with the exception its replicas raised; otherwise
# WAITING <what>; NONE when there are none.
serve_state() {
   serve status --address "${RAY_JOB_ADDRESS}" |
      PYTHONPATH="${SCRIPT_DIR}${PYTHONPATH:+:${PYTHONPATH}}" python3 -m local_dense_retriever.serve_status
}

if [[ "${RETRIEVER}" == serve ]]; then
   # serve deploy declares every Serve application of the cluster: it would replace anyone else's.
   if [[ -z "${RAY_HEAD_PID}" ]] && ! state="$(serve_state)"; then
      echo "ERROR: cannot read the Serve applications of the Ray cluster at ${RAY_JOB_ADDRESS} (serve status failed)." >&2
      exit 1
   elif [[ -z "${RAY_HEAD_PID}" && "${state}" != NONE ]]; then
      echo "ERROR: the Ray cluster at ${RAY_JOB_ADDRESS} already runs Serve applications (${state#* }); deploying the retrieval server would replace them. Use RETRIEVER=standalone with their URL, or remove them (serve shutdown --address ${RAY_JOB_ADDRESS})." >&2
      exit 1
   fi
   echo "Deploying the retrieval server from ${SERVE_CONFIG}; waiting up to ${SERVE_START_TIMEOUT}s for its replicas to load and run."
   SERVE_DEPLOYED=1
   serve deploy "${SERVE_CONFIG}" --address "${RAY_JOB_ADDRESS}"
   waited=0
   until state="$(serve_state)" && [[ "${state}" == RUNNING* ]]; do
      if [[ "${state}" == FAILED* ]]; then
         echo "ERROR: the retrieval server failed to start: ${state#FAILED }" >&2
         exit 1
      fi
      if ((waited >= SERVE_START_TIMEOUT)); then
         echo "ERROR: the retrieval server did not run within ${SERVE_START_TIMEOUT}s (${state#* }); raise SERVE_START_TIMEOUT if its index takes longer to load, or see serve status --address ${RAY_JOB_ADDRESS}." >&2
         exit 1
      fi
      sleep 5
      waited=$((waited + 5))
   done
   echo "The retrieval server runs (${state#RUNNING }); its search, as the rollouts will send it:"
   if ! PYTHONPATH="${SCRIPT_DIR}${PYTHONPATH:+:${PYTHONPATH}}" "${SEARCH_PREFLIGHT[@]}"; then
      echo "ERROR: the deployed retrieval server does not answer the plugin's search (above): search_r1.local.search_url must be Serve's proxy, http://127.0.0.1:<http_options.port of SERVE_CONFIG>/retrieve." >&2
      exit 1
   fi
fi

RUNTIME_ENV_FILE="$(mktemp "${RUNTIME_ENV_FILE}")"
RUNTIME_ENV_MADE=1
runtime_env real >"${RUNTIME_ENV_FILE}"
submit_command
# In the background so that a signal reaches the traps at once instead of after the job ends.
"${SUBMIT[@]}" &
SUBMIT_PID=$!
wait "${SUBMIT_PID}"
