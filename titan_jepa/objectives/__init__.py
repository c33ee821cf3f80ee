"""The training objectives, each a plugin of objectives/base.py's protocol: next-token,
LLM-JEPA and Semantic Tube Prediction, chosen by the config (``build_objectives``). A run
may add its own (``train(cfg, objectives=build_objectives(cfg) + [Mine()])``)."""

from __future__ import annotations

from titan_jepa.objectives.base import DataContext, Objective, Objectives, Result, Term  # noqa: F401
from titan_jepa.objectives.jepa import Jepa
from titan_jepa.objectives.next_token import NextToken
from titan_jepa.objectives.stp import Stp


def build_objectives(cfg) -> list[Objective]:
    """The objectives JobConfig ``cfg`` enables, in the order their terms add up: next-token
    (always; weight jepa.gamma when LLM-JEPA is on), LLM-JEPA, STP."""
    out: list[Objective] = [NextToken(cfg.jepa.gamma if cfg.jepa.enable else 1.0)]
    if cfg.jepa.enable:
        out.append(Jepa(cfg.jepa))
    if cfg.stp.enable:
        out.append(Stp(cfg.stp))
    return out


def special_tokens(objectives: list[Objective]) -> list[str]:
    """The special tokens the objectives' samples carry, in order, each once."""
    return list(dict.fromkeys(t for o in objectives for t in o.special_tokens()))
