"""HTTP serving of an AnytimeSession: KServe v2 / Open Inference Protocol (``sdedge serve``).

Modules: :mod:`.config` (``ServerConfig``), :mod:`.protocol` (v2 messages, JSON and binary tensors),
:mod:`.worker` (inference threads and their queue), :mod:`.metrics` (Prometheus), :mod:`.app`
(``build_app``: the Starlette app), :mod:`.runner` (uvicorn: ``serve``, ``BackgroundServer``).

The web stack (starlette, uvicorn, prometheus-client) is the ``serve`` extra and is imported only
when an app is built or run, so importing this package needs numpy alone:
``pip install 'sdedge[serve]'``. Nothing here imports torch.
"""
from __future__ import annotations

from .app import ServerState, build_app, build_state
from .config import ServerConfig, ServerConfigError
from .runner import BackgroundServer, serve

__all__ = ["BackgroundServer", "ServerConfig", "ServerConfigError", "ServerState", "build_app", "build_state", "serve"]
