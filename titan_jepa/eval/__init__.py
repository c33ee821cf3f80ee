"""Evaluation: greedy generation with a KV cache and the LLM-JEPA paper's scorers.

    python -m titan_jepa.eval --config X.toml --checkpoint CKPT --data test.jsonl

See eval/run.py (the command), eval/generate.py (decoding), eval/scorers.py (metrics).
"""

from titan_jepa.eval.generate import greedy_generate, next_token_logits

__all__ = ["greedy_generate", "next_token_logits"]
