"""Offline stand-ins for Qwen2.5's and Qwen3's tokenizers, saved to disk like real checkpoints.

The plugin loads its tokenizer with ``AutoTokenizer.from_pretrained(args.hf_checkpoint)``; the
hub is out of reach here, so ``build_qwen_like_tokenizer(path)`` trains a small byte-level BPE
(the same model family as Qwen2.5's) on Search-R1 style text and saves a real
``PreTrainedTokenizerFast`` with Qwen2.5's special tokens (``<|endoftext|>``, ``<|im_start|>``,
``<|im_end|>`` as EOS) and its ChatML chat template. Training is deterministic, so token ids are
stable across runs; tests still compute expected ids with the tokenizer instead of hard-coding
them. Handy property of the trained merges: ``"</answer>."`` ends in the single token ``">."``,
so a stop string can end in the middle of a token, as it does with real BPE vocabularies.

``build_qwen3_like_tokenizer(path)`` adds what sets Qwen3 apart: ``<think>`` and ``</think>`` are
single added tokens that are not special (so ``skip_special_tokens`` keeps them in the text), its
chat template has no default system prompt, and with ``enable_thinking=False`` (slime's
``--apply-chat-template-kwargs``) the generation prompt ends with an empty thinking block.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."

# Qwen2.5's ChatML template without its tool-calling branches.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\n" + DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_TRAINING_TEXT = [
    "Answer the given question. You must conduct reasoning inside <think> and </think> first every "
    "time you get new information. After reasoning, if you find you lack some knowledge, you can call "
    "a search engine by <search> query </search> and it will return the top searched results between "
    "<information> and </information>. You can search as many times as your want. If you find no "
    "further external knowledge needed, you can directly provide the answer inside <answer> and "
    "</answer>, without detailed illustrations. For example, <answer> Beijing </answer>. Question: ",
    "<think> I need to find the capital of France. </think>\n<search> capital of France </search>",
    "\n\n<information>Doc 1(Title: Paris) Paris is the capital and largest city of France.\n"
    "Doc 2(Title: France) France is a country.</information>\n\n",
    "<think> The documents say Paris. </think>\n<answer> Paris </answer>",
    "\nMy previous action is invalid. If I want to search, I should put the query between <search> and "
    "</search>. If I want to give the final answer, I should put the answer between <answer> and "
    "</answer>. Let me try again.\n",
    DEFAULT_SYSTEM,
    "who wrote hamlet? William Shakespeare wrote the play Hamlet. Search failed.",
]


# Qwen3's template for a plain conversation (no tools, no earlier reasoning to strip).
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\n\n</think>\n\n' }}{%- endif %}"
    "{%- endif %}"
)


def build_qwen_like_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """Train the tokenizer, save it (with its chat template) under ``path`` and return it."""
    model = Tokenizer(models.BPE())
    model.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    model.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    model.train_from_iterator(_TRAINING_TEXT * 5, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=model,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(str(path))
    return tokenizer


def build_qwen3_like_tokenizer(path: str | Path) -> PreTrainedTokenizerFast:
    """The same vocabulary with Qwen3's thinking tokens and chat template, saved under ``path``."""
    tokenizer = build_qwen_like_tokenizer(path)
    tokenizer.add_tokens([AddedToken("<think>", special=False), AddedToken("</think>", special=False)])
    tokenizer.chat_template = QWEN3_CHAT_TEMPLATE
    tokenizer.save_pretrained(str(path))
    return tokenizer
