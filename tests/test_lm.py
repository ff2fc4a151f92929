"""The shared lm layer on a tiny model: one rendering (end-of-turn token only after finished responses, from
the chat template) and one log-prob path (the trainer's p_i = self-contrast's log-prob = perplexity's, = plain
model(ids).logits.log_softmax over the same token ids)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_trainer import BAD, GOOD, MIDDLE, plain_logprob, toy_rows


def test_end_of_turn_token_only_after_finished_responses(tiny_model: Path):
    from transformers import AutoTokenizer

    from neat_data.train.data import tokenize_ranked

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    rows = [{**toy_rows()[0], "finish_reason": ["stop", "length", None]}]
    examples, stats = tokenize_ranked(rows, tokenizer, max_length=256)
    responses = [seq[start:] for seq, start in zip(examples[0].sequences, examples[0].prompt_lengths)]
    assert responses[0].count(end) == 1 and responses[0][-1] == end and tokenizer.decode(responses[0]) == GOOD + "<|im_end|>"
    assert end not in responses[1] and tokenizer.decode(responses[1]) == MIDDLE  # truncated: no end token
    assert responses[2][-1] == end and responses[2].count(end) == 1  # no finish reason: taken as finished
    assert stats.unfinished_candidates == 1 and stats.unknown_finish_candidates == 1
    # the prompt carries no end token of the answer: the only <|im_end|> tokens before the response close the user turn
    assert examples[0].sequences[1][: examples[0].prompt_lengths[1]].count(end) == 1


def test_trainer_scores_are_the_self_contrast_log_probs_of_the_same_sequences(tiny_model: Path):
    """p_i of the training forward (train mode, gradients on, prompts × candidates batch) equals the
    self-contrast scorer's log-prob of the same rendering (its own length-sorted batches) and plain logits."""
    from neat_data.lm.loading import load_policy
    from neat_data.lm.logprobs import ResponseLogprobs
    from neat_data.scorers.self_contrast import SelfContrastScorer
    from neat_data.train.data import make_batch, tokenize_ranked
    from neat_data.train.trainer import scatter_to_slots

    rows = [{**row, "finish_reason": ["stop", "length", "stop"]} for row in toy_rows()[:3]]
    tokenizer, model, _ = load_policy(str(tiny_model), "cpu")
    model.train()
    examples, _ = tokenize_ranked(rows, tokenizer, max_length=256)
    batch = make_batch(examples, tokenizer.pad_token_id)
    sums, counts = ResponseLogprobs(model, head_chunk=7)(batch.input_ids, batch.attention_mask, batch.response_mask)
    assert sums.requires_grad
    trainer_p = scatter_to_slots(sums / counts, batch, "cpu").detach()

    scorer = SelfContrastScorer(str(tiny_model), batch_size=2, device="cpu")
    for b, row in enumerate(rows):
        candidates = [scorer.renderer.render(row["prompt"], text, reason) for text, reason in zip(row["responses"], row["finish_reason"])]
        assert [c.ids for c in candidates] == list(examples[b].sequences)  # the same token ids
        totals = scorer.response_logprobs(candidates)
        for c, (candidate, total) in enumerate(zip(candidates, totals)):
            assert float(trainer_p[b, c]) == pytest.approx(total / candidate.response_length, abs=1e-5)
            with torch.no_grad():
                logprobs = scorer.model(torch.tensor([candidate.ids])).logits.log_softmax(-1)[0]
            plain = sum(float(logprobs[t - 1, candidate.ids[t]]) for t in range(candidate.prompt_length, len(candidate.ids)))
            assert total == pytest.approx(plain, abs=1e-4)


def test_perplexity_renders_and_scores_like_the_trainer(tiny_model: Path):
    """exp(mean NLL per response token) over the trainer's rendering: the end token only after a finished response."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from neat_data.stages.evaluate import perplexity

    prompt = [{"role": "user", "content": "How do I boil an egg?"}]
    rows = [
        {"prompt": prompt, "prompt_id": "0", "responses": [GOOD], "scores": [0.0], "finish_reason": ["stop"]},
        {"prompt": prompt, "prompt_id": "1", "responses": [BAD], "scores": [0.0], "finish_reason": ["length"]},
        {"prompt": prompt, "prompt_id": "2", "responses": [MIDDLE], "scores": [0.0]},
    ]
    value, tokens = perplexity(str(tiny_model), rows, max_length=256, device="cpu", batch_prompts=2)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).eval()
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    total, count = 0.0, 0
    with torch.no_grad():
        for text, finished in ((GOOD, True), (BAD, False), (MIDDLE, True)):
            answer = tokenizer(text, add_special_tokens=False)["input_ids"] + ([end] if finished else [])
            total += float(plain_logprob(model, tuple(prompt_ids + answer), len(prompt_ids)))
            count += len(answer)
    assert tokens == count and value == pytest.approx(math.exp(-total / count), rel=1e-5)


def test_end_of_turn_token_comes_from_the_chat_template(tiny_model: Path):
    """Gemma-style tokenizers close a turn with a token other than eos: the template's token is used."""
    from transformers import AutoTokenizer

    from neat_data.lm.render import CandidateRenderer, end_of_turn_id

    tokenizer = AutoTokenizer.from_pretrained(tiny_model, eos_token="<|endoftext|>")  # eos ≠ the turn's end
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token_id != im_end and end_of_turn_id(tokenizer) == im_end
    plain = AutoTokenizer.from_pretrained(tiny_model)
    plain.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"  # shows no end-of-turn token
    assert end_of_turn_id(plain) == plain.eos_token_id
    candidate = CandidateRenderer(tokenizer).render([{"role": "user", "content": "Hi"}], "Hello.", "stop", system="Be kind.")
    assert (
        tokenizer.decode(candidate.ids)
        == "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello.<|im_end|>"
    )
    assert candidate.ends_turn and candidate.response_length == len(tokenizer("Hello.", add_special_tokens=False)["input_ids"]) + 1
    from tinymodel import build_tokenizer

    merged = CandidateRenderer(build_tokenizer(no_system_template=True))  # a template that rejects the system role
    steered = merged.render([{"role": "user", "content": "Hi"}], "Hello.", "length", system="Be kind.")
    assert merged.system_mode == "merged" and not steered.ends_turn
    assert merged.tokenizer.decode(steered.ids) == "<|im_start|>user\nBe kind.\n\nHi<|im_end|>\n<|im_start|>assistant\nHello."
