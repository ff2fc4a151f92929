"""Reward-model scorer: `AutoModelForSequenceClassification` models, each through its own chat template.

The conversation scored is the neutral prompt + the response as the assistant turn (steering removed).
Batches are sorted by length and right-padded with attention masks; the model reads its value at the last
real token (transformers finds it from pad_token_id), so batching and padding do not change scores.
bf16 on CUDA, float32 on CPU. The score is logit 0.
"""

from __future__ import annotations

from neat_data.core.errors import NeatError
from neat_data.core.models import resolve_model
from neat_data.engines.vllm_backend import VLLMOptions
from neat_data.lm.batching import length_sorted_batches, pad_batch
from neat_data.lm.loading import load_scoring_model
from neat_data.scorers.base import ScoreItem, ScoreResult


class RewardModelScorer:
    def __init__(self, model: str, *, batch_size: int = 8, device: str = "auto", max_length: int | None = None):
        self.name = f"reward-model:{model}"
        self.tokenizer, self.model, self.device, self.pad_id, longest = load_scoring_model(
            model, "AutoModelForSequenceClassification", device
        )
        if self.model.config.pad_token_id is None:  # the model finds the last real token through it
            self.model.config.pad_token_id = self.pad_id
        self.batch_size = batch_size
        self.max_length = max_length or longest

    def token_ids(self, prompt: list[dict[str, str]], response: str) -> list[int]:
        conversation = [*prompt, {"role": "assistant", "content": response}]
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(conversation, tokenize=False)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        text = "\n\n".join(f"{m['role']}: {m['content']}" for m in conversation)
        return self.tokenizer(text)["input_ids"]

    def score(self, items: list[ScoreItem]) -> list[ScoreResult]:
        import torch

        sequences = [self.token_ids(item.prompt, item.response) for item in items]
        results: list[ScoreResult] = [ScoreResult(None, f"sequence longer than {self.max_length} tokens")] * len(items)
        fits = [i for i, s in enumerate(sequences) if len(s) <= self.max_length]
        with torch.no_grad():
            for batch in length_sorted_batches([len(sequences[i]) for i in fits], self.batch_size):
                indices = [fits[i] for i in batch]
                ids, mask = pad_batch([sequences[i] for i in indices], self.pad_id, self.device)
                values = self.model(input_ids=ids, attention_mask=mask).logits[:, 0].float().tolist()
                for index, value in zip(indices, values):
                    results[index] = ScoreResult(value)
        return results


class VLLMRewardScorer(RewardModelScorer):
    """The same scores through vLLM's pooling API (`LLM.classify`, activation off = raw logit 0): the fast
    path for large runs on GPUs. Conversations are rendered and tokenized exactly as in RewardModelScorer."""

    def __init__(self, model: str, *, max_length: int | None = None, options: VLLMOptions | None = None):
        """`options`: the engine's settings, as for every vLLM engine (`VLLMOptions.engine_args`); a scorer's
        --max-length is the engine's context."""
        import vllm
        from transformers import AutoTokenizer
        from vllm.platforms import current_platform

        self.name = f"reward-model:{model}"
        path = resolve_model(model)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        options = options or VLLMOptions()
        if options.kv_cache_gb is None:  # a pooling pass keeps no sequences: a small KV cache unless one is asked for
            options = options.model_copy(update={"kv_cache_gb": 0.25})
        if max_length:
            options = options.model_copy(update={"max_model_len": max_length})
        args = options.engine_args(path, seed=0, on_cpu=current_platform.is_cpu())
        args.pop("enable_prefix_caching")  # a pooling pass reuses no prefix: vLLM's default for pooling models
        try:
            self.llm = vllm.LLM(**args, runner="pooling")
        except Exception as error:
            raise NeatError(f"vLLM could not load the reward model: {type(error).__name__}: {error}", file=path, field="model") from None
        self.max_length = self.llm.llm_engine.model_config.max_model_len

    def score(self, items: list[ScoreItem]) -> list[ScoreResult]:
        from vllm import PoolingParams
        from vllm.inputs import TokensPrompt

        sequences = [self.token_ids(item.prompt, item.response) for item in items]
        results: list[ScoreResult] = [ScoreResult(None, f"sequence longer than {self.max_length} tokens")] * len(items)
        fits = [i for i, s in enumerate(sequences) if len(s) <= self.max_length]
        if fits:
            outputs = self.llm.classify(
                [TokensPrompt(prompt_token_ids=sequences[i]) for i in fits],
                pooling_params=PoolingParams(use_activation=False),
                use_tqdm=False,
            )
            for index, output in zip(fits, outputs):
                results[index] = ScoreResult(float(output.outputs.probs[0]))
        return results
