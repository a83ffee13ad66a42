"""Callbacks: independent behaviours that subscribe to lifecycle events. One module per callback."""

from callbacks.base import Callback, HandlerSpec

__all__ = ["Callback", "HandlerSpec"]
