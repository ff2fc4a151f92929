"""Language-model plumbing shared by the scorers, the trainer, the engines and evaluation.

A lower layer: it imports no stage, and importing this package (or `render`) imports no torch.
- `render`:   (prompt [+ steering system prompt], response, finish reason) → token ids — the one rendering
              of a candidate, used by self-contrast, the trainer and the perplexity pass;
- `logprobs`: Σ log π(y_t | x, y_<t) over response tokens with the output head run on response rows only
              (`ResponseLogprobs`, `HeadLogprobs`), padded candidate batches, a no-grad scoring loop;
- `loading`:  device and compute-dtype choice, loading scoring models and trainable policies;
- `batching`: length-sorted batches and right padding.
"""
