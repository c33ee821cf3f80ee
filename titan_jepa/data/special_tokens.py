"""The special tokens the method puts into samples, and where a Llama-3 vocabulary keeps them.

``<|predictor_1..k|>`` (LLM-JEPA's predictor tokens) and ``<|mask|>`` (STP's mask ablation)
reuse Llama-3's reserved special tokens, so a pretrained Llama-3 checkpoint needs no
embedding resize; on other vocabularies the tokenizer appends them (data/tokenizer.py).
``<|pad|>`` is appended when a model's own pad token occurs in text.
"""

from __future__ import annotations

MAX_PREDICTORS = 16
PAD_TOKEN = "<|pad|>"
MASK_TOKEN = "<|mask|>"


def predictor_names(k: int) -> list[str]:
    """``<|predictor_1|>`` .. ``<|predictor_k|>``."""
    return [f"<|predictor_{i}|>" for i in range(1, k + 1)]


def jepa_aliases() -> dict[str, str]:
    """Token name -> the Llama-3 reserved special token it is stored as::

        <|predictor_k|>  = <|reserved_special_token_{k+1}|>   k = 1..16  (reserved 2..17)
        <|mask|>         = <|reserved_special_token_18|>
    """
    alias = {name: f"<|reserved_special_token_{k + 1}|>"
             for k, name in enumerate(predictor_names(MAX_PREDICTORS), start=1)}
    alias[MASK_TOKEN] = f"<|reserved_special_token_{MAX_PREDICTORS + 2}|>"
    return alias
