"""The `fast` preset's code path, end to end on this machine: models read from a checkpoint folder the
way hub models are (AutoTokenizer, from_pretrained, the chat template), GSM8K-format JSONL data, the
preset's stages and hyperparameters (shortened), on a small random-weight Qwen2 shape. Nothing on
this path may depend on the embedded model: a CPU-only shortcut would show here."""

import json
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from transformers import Qwen2Config, Qwen2ForCausalLM

from conftest import pod_env, resource
from reasoning_trainer import tokenizer as embedded_tokenizer
from reasoning_trainer.data import embedded
from reasoning_trainer.data.problems import solution_text

RTO = Path(sys.executable).with_name("rto")


def gsm8k_jsonl(path: Path, problems) -> None:
    path.write_text("".join(json.dumps({"question": p.question, "answer": solution_text(p.steps, p.answer, "\n")})
                            + "\n" for p in problems))


def test_the_fast_presets_path_runs_every_stage_on_a_checkpoint_folder_and_jsonl_data(tmp_path):
    checkpoint = tmp_path / "qwen2-small"
    tokenizer = embedded_tokenizer.build_embedded_tokenizer(512, "\n\n")
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=512, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, intermediate_size=128, tie_word_embeddings=True,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
                     ).save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)
    data = tmp_path / "gsm8k"
    data.mkdir()
    gsm8k_jsonl(data / "train.jsonl", embedded.problems(40, seed=0))
    gsm8k_jsonl(data / "test.jsonl", embedded.problems(8, seed=1, split="test"))
    model = {"name": str(checkpoint), "dtype": "float32", "lora": None}
    spec = {
        "preset": "fast", "device": "cpu",
        "models": {"generator": {**model, "generation": {"maxNewTokens": 24, "maxPromptTokens": 96}},
                   "rewardModel": dict(model)},
        # The preset reads GSM8K from the hub; here the same format comes from files.
        "data": {"train": {"source": "path", "path": str(data), "hubId": None, "subset": None},
                 "pool": {"source": "path", "path": str(data)},
                 "eval": [{"name": "gsm8k", "source": "path", "path": str(data)}]},
        "stages": {
            "select": {"keepFraction": 0.5, "maxPerProblem": 1, "batchSize": 8,
                       "sample": {"samplesPerProblem": 2, "maxNewTokens": 24}},
            "sft": {"target": "both", "epochs": 1, "batchSize": 4, "maxSeqLength": 192, "maxExamples": 40,
                    "monteCarlo": {"problems": 6, "samplesPerProblem": 2, "completions": 2, "maxNewTokens": 24,
                                   "epochs": 1}},
            "rl": {"iterations": 2, "problemsPerIteration": 2, "batchSize": 2, "evalProblems": 4, "evalEvery": 1,
                   "pgts": {"maxDepth": 3, "maxNodes": 4, "searchBatch": 2}},
            "eval": {"methods": ["pass@1", "rm@k", "majority@k", "pgts"], "k": 2, "batchSize": 4,
                     "maxNewTokens": 24},
        },
    }
    manifest = tmp_path / "fast.yaml"
    manifest.write_text(yaml.safe_dump(resource(spec, name="fast-path")))
    run = subprocess.run([str(RTO), "run", "-f", str(manifest), "--local", "--output", str(tmp_path / "out")],
                         capture_output=True, text=True, env=pod_env(RTO_METRICS_PORT="0"), timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    root = tmp_path / "out" / "fast-path"
    results = {stage: json.loads((root / stage / "results.json").read_text())
               for stage in ("select", "sft", "rl", "eval")}
    # No embedded base was built: every model came from the checkpoint folder or the run's trained copies.
    assert not (root / "models" / "base").exists() and not (root / "models" / "tokenizer").exists()
    assert results["select"]["metrics"]["pool"] > 0
    assert results["select"]["details"]["reward_model"]["validation"] == "montecarlo"  # no exact labels off-task
    assert results["sft"]["details"]["generator"]["source"] == "select"
    assert [point["iteration"] for point in results["rl"]["details"]["evaluations"]] == [0, 1, 2]
    for method in ("pass@1", "rm@k", "majority@k", "pgts"):
        assert 0.0 <= results["eval"]["metrics"][f"gsm8k/{method}"] <= 1.0
    assert all(result["flops"] for result in results.values())
