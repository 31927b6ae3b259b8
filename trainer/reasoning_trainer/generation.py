"""Sampling solutions from the generator in batches (transformers' generate)."""

from __future__ import annotations

import torch



@torch.no_grad()
def solve(model, tokenizer, questions: list[str], samples: int, max_new_tokens: int, max_prompt_tokens: int,
          temperature: float, top_p: float, batch_size: int, instruction: str = "") -> list[list[str]]:
    """``samples`` completions per question (greedy when samples is 1 and temperature 0)."""
    prompts = [prompt_ids(tokenizer, question, instruction)[-max_prompt_tokens:] for question in questions]
    return continue_prompts(model, tokenizer, prompts, samples, max_new_tokens, temperature, top_p, batch_size)


@torch.no_grad()
def continue_prompts(model, tokenizer, prompts: list[list[int]], samples: int, max_new_tokens: int,
                     temperature: float, top_p: float, batch_size: int) -> list[list[str]]:
    """``samples`` continuations of each token prompt (greedy when samples is 1 and temperature 0)."""
    device = next(model.parameters()).device
    greedy = samples == 1 and temperature == 0
    per_batch = max(1, batch_size // samples) if samples > 1 else batch_size
    outputs: list[list[str]] = []
    for start in range(0, len(prompts), per_batch):
        batch = prompts[start:start + per_batch]
        ids, mask = left_padded(batch, tokenizer.pad_token_id)
        width = ids.shape[1]
        generated = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
            do_sample=not greedy, temperature=temperature if not greedy else None,
            top_p=top_p if not greedy else None, top_k=None if not greedy else None,
            num_return_sequences=samples, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        texts = tokenizer.batch_decode(generated[:, width:], skip_special_tokens=True)
        outputs += [texts[row * samples:(row + 1) * samples] for row in range(len(batch))]
    return outputs


def left_padded(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input ids, attention mask) with prompts aligned at the right: generation continues every row."""
    width = max(len(prompt) for prompt in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    return ids, mask


def prompt_ids(tokenizer, question: str, instruction: str = "") -> list[int]:
    """The question (and the generator's instruction, when it has one) as a user turn of the chat
    template (plain Question/Answer without one)."""
    content = f"{question}\n\n{instruction}" if instruction else question
    if tokenizer.chat_template:
        return list(tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=True,
                                                  add_generation_prompt=True, return_dict=False))
    return tokenizer(f"Question: {content}\nAnswer:\n", add_special_tokens=False)["input_ids"]
