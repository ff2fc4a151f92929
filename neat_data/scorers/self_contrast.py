"""Contrastive self-reward (no reward model): how much more likely a response is under the positive system
prompt than under the negative one, under a fixed reference model (default: the model that generated it).

    s(y | x) = (1/|y|) [ log π_ref(y | pos, x) − log π_ref(y | neg, x) ]

Both log-probs are sums over the response tokens only (prompt tokens masked), computed in length-sorted
batches with attention masks; the response is tokenized on its own and appended to the rendered prompt
(the template's generation prompt included), exactly as it was sampled.
"""

from __future__ import annotations


from neat_data.messages import build_messages, template_accepts_system
from neat_data.scorers.base import ScoreItem, ScoreResult
from neat_data.scorers.torch_common import length_sorted_batches, load_scoring_model, pad_batch


class SelfContrastScorer:
    def __init__(self, model: str, *, batch_size: int = 8, device: str = "auto", max_length: int | None = None):
        self.name = f"self-contrast:{model}"
        self.tokenizer, self.model, self.device, self.pad_id, longest = load_scoring_model(model, "AutoModelForCausalLM", device)
        self.batch_size = batch_size
        self.max_length = max_length or longest
        self.system_mode = "system" if template_accepts_system(self.tokenizer) else "merged"

    def sequence(self, prompt: list[dict[str, str]], system: str | None, response: str) -> tuple[list[int], int]:
        """(token ids of prompt + response, number of prompt tokens)."""
        messages = build_messages(prompt, system, self.system_mode)
        prompt_ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(prompt_ids, "keys"):
            prompt_ids = prompt_ids["input_ids"]
        response_ids = self.tokenizer(response, add_special_tokens=False)["input_ids"]
        return list(prompt_ids) + list(response_ids), len(prompt_ids)

    def response_logprobs(self, sequences: list[tuple[list[int], int]]) -> list[float]:
        """Sum of log π(token) over the response tokens of each sequence."""
        import torch

        totals = [0.0] * len(sequences)
        for batch in length_sorted_batches([len(ids) for ids, _ in sequences], self.batch_size):
            ids, mask = pad_batch([sequences[i][0] for i in batch], self.pad_id, self.device)
            with torch.no_grad():  # local: a process-wide switch would leak into a trainer in the same process
                logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            token_logprobs = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
            positions = torch.arange(ids.shape[1] - 1, device=ids.device).unsqueeze(0)
            starts = torch.tensor([sequences[i][1] - 1 for i in batch], device=ids.device).unsqueeze(1)
            response_mask = (positions >= starts) & mask[:, 1:].bool()
            sums = (token_logprobs * response_mask).sum(dim=1)
            for row, index in enumerate(batch):
                totals[index] = float(sums[row])
        return totals

    def score(self, items: list[ScoreItem]) -> list[ScoreResult]:
        results: list[ScoreResult | None] = [None] * len(items)
        sequences: list[tuple[list[int], int]] = []
        owners: list[tuple[int, int]] = []  # (item index, number of response tokens)
        for index, item in enumerate(items):
            if not item.positive_system or not item.negative_system:
                results[index] = ScoreResult(None, "self-contrast needs the pair's positive and negative system prompts")
                continue
            positive = self.sequence(item.prompt, item.positive_system, item.response)
            negative = self.sequence(item.prompt, item.negative_system, item.response)
            response_tokens = len(positive[0]) - positive[1]
            if response_tokens == 0:
                results[index] = ScoreResult(None, "empty response")
                continue
            if max(len(positive[0]), len(negative[0])) > self.max_length:
                results[index] = ScoreResult(None, f"sequence longer than {self.max_length} tokens")
                continue
            sequences += [positive, negative]
            owners.append((index, response_tokens))
        logprobs = self.response_logprobs(sequences)
        for position, (index, response_tokens) in enumerate(owners):
            results[index] = ScoreResult((logprobs[2 * position] - logprobs[2 * position + 1]) / response_tokens)
        return [r for r in results if r is not None]
