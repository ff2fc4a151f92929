"""Reward-model scorer: `AutoModelForSequenceClassification` models, each through its own chat template.

The conversation scored is the neutral prompt + the response as the assistant turn (steering removed).
Batches are sorted by length and right-padded with attention masks; the model reads its value at the last
real token (transformers finds it from pad_token_id), so batching and padding do not change scores.
bf16 on CUDA, float32 on CPU. The score is logit 0.
"""

from __future__ import annotations

from neat_data.models import resolve_model
from neat_data.scorers import ScoreItem, ScoreResult
from neat_data.scorers.torch_common import compute_dtype, length_sorted_batches, pad_batch, pick_device


class RewardModelScorer:
    def __init__(self, model: str, *, batch_size: int = 8, device: str = "auto", max_length: int | None = None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.name = f"reward-model:{model}"
        path = resolve_model(model)
        self.device = pick_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path, dtype=compute_dtype(self.device)).to(self.device).eval()
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.pad_id
        self.batch_size = batch_size
        self.max_length = max_length or getattr(self.model.config, "max_position_embeddings", None) or 4096

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
