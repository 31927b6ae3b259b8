"""The embedded tokenizer: byte-level BPE trained locally on the embedded problems.

Digits are split one per token (arithmetic works digit by digit) and the chat template is
Qwen's, so the embedded model is driven exactly like a hub Qwen2.5-Instruct model.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .data import embedded
from .data.problems import solution_text

END_OF_TEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_embedded_tokenizer(vocab_size: int, separator: str) -> PreTrainedTokenizerFast:
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[END_OF_TEXT, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    bpe.train_from_iterator(_corpus(separator), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token=IM_END, pad_token=END_OF_TEXT, bos_token=None,
        additional_special_tokens=[IM_START],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def _corpus(separator: str):
    for problem in embedded.problems(3000, seed=12345):
        yield problem.question
        yield solution_text(problem.steps, problem.answer, separator)


def load_or_build(folder: Path, vocab_size: int, separator: str) -> PreTrainedTokenizerFast:
    """Every stage of a run shares the tokenizer built by the first one."""
    from .checkpoints import atomic_dir

    if (folder / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(folder)
    tokenizer = build_embedded_tokenizer(vocab_size, separator)
    with atomic_dir(folder) as staging:
        tokenizer.save_pretrained(staging)
    return PreTrainedTokenizerFast.from_pretrained(folder)
