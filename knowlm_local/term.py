"""The terminal: one stderr console for notices and errors, configured once.

Notices and errors are not wrapped at the terminal width (``soft_wrap``): a
one-line error stays one line in logs and pipes, and the terminal wraps it
for the eye.
"""

from __future__ import annotations


def stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)
