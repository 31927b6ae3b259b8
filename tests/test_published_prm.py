"""A published PRM used as it is (Qwen2.5-Math-PRM style): steps joined by its step token in the
assistant turn, the positive class's probability read at each token. The checkpoint here is a tiny
random one saved in that layout (no download), with the step token added to its tokenizer."""

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForTokenClassification

from reasoning_trainer import models, prm
from reasoning_trainer import tokenizer as embedded_tokenizer
from reasoning_trainer.job import load_job
from reasoning_trainer.schema import RunValidationError, validate_spec

STEP_TOKEN = "<extra_0>"
SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    folder = tmp_path_factory.mktemp("published-prm")
    tokenizer = embedded_tokenizer.build_embedded_tokenizer(512, "\n\n")
    tokenizer.add_special_tokens({"additional_special_tokens": [STEP_TOKEN]})
    torch.manual_seed(0)
    model = Qwen2ForTokenClassification(Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=64, num_labels=2, pad_token_id=tokenizer.pad_token_id))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def spec_with(folder) -> dict:
    return {"models": {"rewardModel": {"name": str(folder), "dtype": "float32", "stepToken": STEP_TOKEN,
                                       "systemPrompt": SYSTEM}},
            "stages": {"select": {"enabled": False}, "sft": {"target": "generator"}}}


def test_a_published_prm_scores_each_step_at_its_token_as_its_authors_read_it(plan_file, published):
    job = load_job(plan_file(spec_with(published)))
    reward_model = models.load_reward_model(job, "eval")
    tokenizer = models.load_tokenizer(job, "rewardModel")
    steps = ["3 + 4 = 7", "7 - 2 = 5", "The answer is \\boxed{5}"]
    [scores] = prm.score(reward_model, tokenizer, [("Tom has 3 pens ...", steps)], "\n\n", 4, 4096)
    # The authors' recipe, by hand: the chat, the steps each followed by the token, softmax at the tokens.
    chat = tokenizer.apply_chat_template(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Tom has 3 pens ..."},
         {"role": "assistant", "content": "".join(step + STEP_TOKEN for step in steps)}], tokenize=True,
        return_dict=False)
    ids = torch.tensor([chat])
    logits = reward_model.model(input_ids=ids).logits[0]
    at_tokens = ids[0] == tokenizer.convert_tokens_to_ids(STEP_TOKEN)
    expected = logits.softmax(-1)[at_tokens][:, 1]
    assert scores == pytest.approx(expected.tolist(), abs=1e-6)
    assert len(scores) == len(steps)


def test_a_published_prm_is_never_trained_and_its_token_must_be_one_token(plan_file, published):
    with pytest.raises(RunValidationError, match="models.rewardModel.stepToken: a published PRM"):
        validate_spec({**spec_with(published), "preset": "tiny",
                       "stages": {"select": {"enabled": False}, "sft": {"target": "both"}}})
    wrong = spec_with(published)
    wrong["models"]["rewardModel"]["stepToken"] = "<not one token>"
    job = load_job(plan_file(wrong))
    with pytest.raises(ValueError, match="stepToken: '<not one token>' is .* tokens"):
        models.load_reward_model(job, "eval")
