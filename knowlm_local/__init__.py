"""knowlm-local: run, convert and extract with the KnowLM model family on one machine.

Importing the package is cheap on purpose: heavy libraries (torch, llama_cpp,
transformers) are imported inside the functions that need them.
"""

__version__ = "0.1.0"

from knowlm_local.errors import KnowLMError

__all__ = ["KnowLMError", "__version__"]
