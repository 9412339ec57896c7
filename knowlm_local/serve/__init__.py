"""`knowlm-local serve`: one model over HTTP (OpenAI-compatible, KnowLM's /generate and /extract, a web page).

FastAPI + uvicorn run the HTTP side; :mod:`.engine` owns the model and its
queue. For more than one machine's worth of traffic, ``--engine vllm`` runs
vLLM's OpenAI server and these routes front it (:mod:`.vllm`).
"""
