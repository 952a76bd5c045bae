"""Error classes for bad input that the command line reports as one line, never a traceback.

Kept free of heavy imports so that `tbps.cli` can name them without loading torch.
"""
from __future__ import annotations


class ImageReadError(OSError):
    """An image file that cannot be decoded (corrupt, empty, not an image): the message names it.

    Raised inside a DataLoader worker, torch re-raises it in the main process with the worker's
    traceback text as the message; the constructor keeps only the final line, our own message.
    """

    def __init__(self, message: str) -> None:
        if "Original Traceback" in message:
            last = [line for line in message.strip().splitlines() if line.strip()][-1]
            message = last.split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


class ImageNotFoundError(ImageReadError, FileNotFoundError):
    """An image file that is not there (moved or deleted after the dataset was checked)."""
