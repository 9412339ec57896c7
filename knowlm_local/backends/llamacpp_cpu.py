"""Keep llama.cpp's weights off the AMX buffer type, where its AMX kernels crash.

llama-cpp-python builds llama.cpp for the CPU it is installed on. On an Intel
CPU with AMX (Sapphire Rapids and later, common in clouds) the build then
moves quantized weights into an "AMX" buffer and multiplies prompt batches
with AMX tiles, and on some of these machines that kernel segfaults on the
first prompt of more than one token: the whole process dies, with no error a
user could act on (llama.cpp issue #20824, reported "works fine on another
machine"; dspy removed AMX from its CI for the same crash). The embedded
model crashed this way on one of this project's development machines, in
every ``extract`` call.

The llama.cpp switch for this is the model parameter ``use_extra_bufts``
(``llama-cli --no-repack``): off, the weights stay in plain CPU buffers and
the ordinary AVX-512/AVX2 kernels compute the same model. llama-cpp-python
does not expose it, so :func:`guard` makes its default model parameters
carry it, for every model loaded in this process after the call (our
loader and everything else here that loads through ``llama_class``, and
tests and benchmarks that build ``Llama`` themselves). Only builds that report ``AMX_INT8 = 1`` are touched;
``KNOWLM_LLAMA_AMX=1`` keeps AMX for a machine where it is known to work.
"""

from __future__ import annotations

import os
from typing import Any

_guarded = False


def amx_build() -> bool:
    """Whether this llama.cpp build multiplies with AMX (it then says ``AMX_INT8 = 1`` in its system info)."""
    import llama_cpp

    return b"AMX_INT8 = 1" in llama_cpp.llama_print_system_info()


def amx_setting() -> str:
    """What becomes of llama.cpp's AMX kernels here: "not built", "kept" (``KNOWLM_LLAMA_AMX=1``) or "off"."""
    if not amx_build():
        return "not built"
    return "kept" if os.environ.get("KNOWLM_LLAMA_AMX") == "1" else "off"


def guard() -> bool:
    """Load every later llama.cpp model without extra buffer types on an AMX build; whether that is in force."""
    global _guarded
    if _guarded:
        return True
    if amx_setting() != "off":
        return False
    import llama_cpp.llama_cpp as lib

    default = lib.llama_model_default_params

    def params_without_extra_bufts() -> Any:
        params = default()
        params.use_extra_bufts = False
        return params

    lib.llama_model_default_params = params_without_extra_bufts
    _guarded = True
    return True
