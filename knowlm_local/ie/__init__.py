"""Information extraction with the KnowLM family: `knowlm-local extract` and `knowlm-local score`.

Map: ``tasks`` (instructions, schema shapes, groups) -> ``schema_io`` (schemas
from flags and files) -> ``prompt`` (OneKE / Alpaca / chat forms) ->
``constrain`` (the answer's JSON schema) -> ``extract`` (chunks from ``chunk``,
answers read by ``parse``, merged by ``results``, located by ``spans``) ->
``run`` (files via ``records``, progress via ``report``). ``score`` grades the
output; ``speculate`` drafts tokens for speculative decoding. Nothing here
imports llama_cpp: models are reached through the backend contract.
"""
