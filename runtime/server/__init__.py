"""HTTP serving of an AnytimeSession: KServe v2 / Open Inference Protocol (``sdedge serve``).

Modules: :mod:`.config` (``ServerConfig``), :mod:`.protocol` (v2 messages, JSON and binary tensors),
:mod:`.worker` (inference threads and their queue), :mod:`.metrics` (Prometheus), :mod:`.app`
(``InferenceServer``: one method per endpoint, and its Starlette app; ``build_app``), :mod:`.runner`
(uvicorn: ``serve``, ``BackgroundServer``). How each session is opened is a
:class:`~sdedge.runtime.options.SessionOptions` (re-exported here), embedded in ``ServerConfig``.

The web stack (starlette, uvicorn, prometheus-client) is the ``serve`` extra and is imported only
when an app is built or run, so importing this package needs numpy alone:
``pip install 'sdedge[serve]'``. Nothing here imports torch.
"""
from __future__ import annotations

from ..options import SessionOptions
from .app import InferenceServer, ServerState, build_app, build_state
from .config import ServerConfig, ServerConfigError
from .runner import BackgroundServer, serve

__all__ = ["BackgroundServer", "InferenceServer", "ServerConfig", "ServerConfigError", "ServerState", "SessionOptions",
           "build_app", "build_state", "serve"]
