"""What a GPU machine gives lmmixup: embedding, the hf backend's batched generation and
scoring, and GRPO steps, each with its throughput. Run by bench/gpu_check.sh.

    bench/gpu_check.sh               # a GPU machine: 100K texts, a random ~1.3B Llama, SmolLM2 GRPO
    bench/gpu_check.sh --cpu-smoke   # anywhere: tiny sizes on the CPU (proves the script runs)

No hub: the ~1.3B Llama is randomly initialised (LlamaConfig) around the bundled SmolLM2
tokenizer, so its text is noise but its speed is a real 1.3B model's; GRPO trains the bundled
SmolLM2-135M (the CPU smoke trains a 2-layer random Llama) on synthetic MIXTURE rows with the
real reward components (MiniLM embeddings, a kNN-Bayes quality library fitted on random labels).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from common import WORDS


@dataclass(frozen=True)
class Sizes:
    """What one check runs."""

    device: str
    texts: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    prompts: int
    new_tokens: int
    batch_size: int
    grpo_model: str  # "bundled" or "tiny"
    grpo_prompts: int
    grpo_group: int
    grpo_tokens: int


GPU = Sizes("auto", 100_000, 2048, 24, 16, 5504, 128, 128, 64, "bundled", 16, 4, 128)
CPU_SMOKE = Sizes("cpu", 500, 64, 2, 4, 128, 8, 16, 8, "tiny", 2, 2, 8)


def texts(count: int, seed: int = 0) -> list[str]:
    """Pool-like texts: a question and a two-sentence answer of common words."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        words = rng.choices(WORDS, k=30)
        out.append(f"Question {i}: how do {' '.join(words[:6])} relate?\n{' '.join(words[6:])}.")
    return out


def environment() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "torch": torch.__version__,
        "cuda": cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "bf16": bool(cuda and torch.cuda.is_bf16_supported()),
        "vllm_installed": importlib.util.find_spec("vllm") is not None,
    }


def check_embedding(sizes: Sizes) -> dict:
    from lmmixup.backends.embed import SentenceEmbedder

    embedder = SentenceEmbedder("bundled:minilm", device=sizes.device)
    data = texts(sizes.texts)
    embedder.encode(data[:256], description="warm-up")
    start = time.perf_counter()
    vectors = embedder.encode(data, description="embed")
    seconds = time.perf_counter() - start
    assert vectors.shape == (sizes.texts, embedder.dim)
    return {
        "device": embedder.device,
        "texts": sizes.texts,
        "seconds": round(seconds, 2),
        "texts_per_s": round(sizes.texts / seconds),
    }


def random_llama(sizes: Sizes, folder: Path) -> tuple[Path, int]:
    """A randomly initialised Llama with the bundled SmolLM2 tokenizer, saved as a checkpoint;
    returns its folder and parameter count."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from lmmixup.io.assets import smollm2_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(smollm2_checkpoint())
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=sizes.hidden,
        intermediate_size=sizes.intermediate,
        num_hidden_layers=sizes.layers,
        num_attention_heads=sizes.heads,
        num_key_value_heads=sizes.heads,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    init_on = "cuda" if sizes.device != "cpu" and torch.cuda.is_available() else "cpu"
    with torch.device(init_on):
        model = LlamaForCausalLM(config).to(torch.bfloat16 if init_on == "cuda" else torch.float32)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    count = sum(p.numel() for p in model.parameters())
    del model
    return folder, count


def check_generation(sizes: Sizes, work: Path) -> dict:
    """The hf backend on the random Llama: batched generation, then rubric scoring."""
    import torch

    from lmmixup.backends.base import GenParams
    from lmmixup.backends.hf import HFChatModel
    from lmmixup.method.rubric import build_rubric_messages

    start = time.perf_counter()
    path, parameters = random_llama(sizes, work / "llama")
    built = time.perf_counter() - start
    model = HFChatModel(str(path), batch_size=sizes.batch_size, device=sizes.device)
    pairs = [text.split("\n", 1) for text in texts(sizes.prompts, seed=1)]
    prompts = [build_rubric_messages(q, a) for q, a in pairs]
    params = GenParams(max_new_tokens=sizes.new_tokens)
    model.generate(prompts[: sizes.batch_size], GenParams(max_new_tokens=4))  # warm-up
    if model.device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    replies = model.generate(prompts, params)
    seconds = time.perf_counter() - start
    generated = sum(r.completion_tokens for r in replies)
    rendered = [model.render(p) for p in prompts]
    start = time.perf_counter()
    model.next_token_logprobs(rendered, ["1", "2"])
    scoring = time.perf_counter() - start
    return {
        "device": model.device,
        "dtype": str(model.dtype).removeprefix("torch."),
        "parameters_m": round(parameters / 1e6, 1),
        "build_and_save_s": round(built, 1),
        "prompts": len(prompts),
        "batch_size": sizes.batch_size,
        "prompt_tokens": sum(r.prompt_tokens for r in replies),
        "generated_tokens": generated,
        "seconds": round(seconds, 2),
        "generated_tokens_per_s": round(generated / seconds, 1),
        "scored_prompts_per_s": round(len(prompts) / scoring, 1),
    }


def grpo_mixture(folder: Path, count: int) -> Path:
    """A MIXTURE folder with `count` synthetic grpo_train rows (two members, a QA answer)."""
    folder.mkdir(parents=True)
    rows = []
    for i, text in enumerate(texts(count, seed=2)):
        question, answer = text.split("\n", 1)
        rows.append(
            {
                "id": f"g{i}",
                "task_type": "qa",
                "members": [
                    {"id": f"g{i}.{m}", "prompt": question, "completion": answer} for m in (0, 1)
                ],
                "answer": f"Q: {question}\nA: {answer}",
                "think": None,
                "target_ids": [f"t{i}"],
                "operators": ["truncate"],
                "cross_topic": False,
                "split": "grpo_train",
            }
        )
    (folder / "grpo_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def grpo_rewards(device: str):
    """The three reward components: MiniLM embeddings, a quality library on random labels."""
    from lmmixup.backends.embed import load_embedder
    from lmmixup.method.knn_bayes import KnnBayesScorer, ScorerLibrary
    from lmmixup.rewards.config import RewardSettings, build_reward_set

    embedder = load_embedder("bundled:minilm", device)
    vectors = embedder.encode(texts(64, seed=3))
    labels = np.random.default_rng(0).integers(0, 6, len(vectors))
    library = ScorerLibrary({"default": KnnBayesScorer.fit(vectors, labels)})
    return build_reward_set(RewardSettings(), library, embedder, embedder)


def check_grpo(sizes: Sizes, work: Path, use_vllm: bool) -> dict:
    from lmmixup.training.grpo import GRPOTrainConfig, train_grpo
    from lmmixup.training.steps import read_steps

    model = "bundled:smollm2-135m-instruct"
    if sizes.grpo_model == "tiny":
        model = str(random_llama(CPU_SMOKE, work / "tiny")[0])
    cfg = GRPOTrainConfig(
        model=model,
        mixture=str(grpo_mixture(work / "mixture", sizes.grpo_prompts * 2)),
        output_dir=str(work / "grpo"),
        max_steps=2,
        prompts_per_step=sizes.grpo_prompts,
        num_generations=sizes.grpo_group,
        max_completion_length=sizes.grpo_tokens,
        save_steps=100,
        use_vllm=use_vllm,
    )
    summary = train_grpo(cfg, grpo_rewards(sizes.device))
    steps = [line for line in read_steps(cfg.output_dir) if "step_seconds" in line]
    completions = sizes.grpo_prompts * sizes.grpo_group
    return {
        "model": model,
        "use_vllm": use_vllm,
        "steps": summary["global_step"],
        "completions_per_step": completions,
        "max_completion_tokens": sizes.grpo_tokens,
        "step_seconds": [round(line["step_seconds"], 2) for line in steps],
        "completions_per_s_last_step": round(completions / steps[-1]["step_seconds"], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="Tiny sizes on the CPU.")
    parser.add_argument("--texts", type=int, help="Texts to embed (default 100,000).")
    parser.add_argument("--grpo-vllm", action="store_true", help="GRPO samples with vLLM.")
    parser.add_argument("--only", choices=("embed", "generate", "grpo"), action="append")
    args = parser.parse_args()
    sizes = CPU_SMOKE if args.cpu_smoke else GPU
    if args.texts:
        sizes = Sizes(**{**sizes.__dict__, "texts": args.texts})
    checks = args.only or ["embed", "generate", "grpo"]
    print(json.dumps({"environment": environment(), "sizes": sizes.__dict__}), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "embed" in checks:
            print(json.dumps({"embed": check_embedding(sizes)}), flush=True)
        if "generate" in checks:
            print(json.dumps({"hf_generate": check_generation(sizes, work)}), flush=True)
        if "grpo" in checks:
            print(json.dumps({"grpo": check_grpo(sizes, work, args.grpo_vllm)}), flush=True)


if __name__ == "__main__":
    main()
