"""Preview frames as Tk photo images, with no imaging library: Tk 8.6 reads binary PPM/PGM data natively."""

from __future__ import annotations

import math
import tkinter as tk
from tkinter import ttk
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from callbacks.preview import Frame

__all__ = ["ImageView", "netpbm"]


def netpbm(frame: Frame) -> bytes:
    """``frame`` as a binary PPM (colour) or PGM (grey) file; an alpha channel is dropped."""
    pixels, channels = frame.pixels, frame.channels
    if channels in (1, 2):
        kind, data = b"P5", pixels[::channels]
    elif channels == 3:
        kind, data = b"P6", pixels
    else:  # RGBA: keep the first three of every four bytes
        rgb = bytearray(frame.width * frame.height * 3)
        for channel in range(3):
            rgb[channel::3] = pixels[channel::4]
        kind, data = b"P6", bytes(rgb)
    return b"%s\n%d %d\n255\n" % (kind, frame.width, frame.height) + data


class ImageView:
    """A captioned picture that fits a ``size`` x ``size`` box (integer zoom up, subsample down)."""

    def __init__(self, parent: tk.Misc, *, size: int, caption: str) -> None:
        self.size = size
        self.widget = ttk.Frame(parent)
        self._blank = tk.PhotoImage(master=parent, width=size, height=size)
        self._label = ttk.Label(self.widget, image=self._blank, anchor="center")
        self._label.pack()
        self._caption = ttk.Label(self.widget, text=caption, anchor="center")
        self._caption.pack(fill="x")
        self.photo: tk.PhotoImage = self._blank  #: what is shown (kept referenced: Tk forgets unreferenced images)
        self.shown: Frame | None = None

    def show(self, frame: Frame | None, caption: str | None = None) -> None:
        if caption is not None:
            self._caption.configure(text=caption)
        if frame is None or frame is self.shown:
            return
        photo = tk.PhotoImage(master=self.widget, data=netpbm(frame))
        longest = max(frame.width, frame.height)
        if longest * 2 <= self.size:
            photo = photo.zoom(self.size // longest)
        elif longest > self.size:
            photo = photo.subsample(math.ceil(longest / self.size))
        self._label.configure(image=photo)
        self.photo, self.shown = photo, frame
