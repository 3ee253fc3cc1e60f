"""The one error the image pipeline raises: an image it cannot use, and why."""

from __future__ import annotations


class ImageError(ValueError):
    """An image that cannot be used: the input at fault (`body`, `files[2]`), a machine-
    readable code, and what was expected. The http layer answers it with a 422."""

    def __init__(self, field: str, code: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.code = code
        self.message = message
