"""Loss terms and training methods (registered, weighted components; torchdistill-style).

``terms`` holds the registry of loss terms (``ce``, ``kl``, ``hint``, ``partial_l2``, ``logit_l2``,
``tfkd_reg``); ``methods`` composes them into the named methods the trainer's ``--method`` picks.
"""
from .methods import (METHODS, PARAM_NAMES, Component, MethodLoss, MethodSpec, build_method_loss, get_method,
                      list_methods, register_method)
from .terms import LossBatch, Term, TermContext, build_term, list_terms, register_term

__all__ = ["METHODS", "PARAM_NAMES", "Component", "LossBatch", "MethodLoss", "MethodSpec", "Term", "TermContext",
           "build_method_loss", "build_term", "get_method", "list_methods", "list_terms", "register_method",
           "register_term"]
