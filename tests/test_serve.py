"""`serve` for real: uvicorn on an ephemeral 127.0.0.1 port with the embedded model, the official openai client,
KnowLM's /generate and /extract, limits, keys, disconnects, bad input, and the openai backend on top of it."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest

from knowlm_local.runtime import LoadOptions, load_model
from knowlm_local.serve.app import ServeSettings
from knowlm_local.serve.run import Server

TEXT = "Marta Oliveira founded Tidewater Analytics in Porto in 2016."


def loader():
    return load_model("smollm2", LoadOptions(n_ctx=1024, n_threads=2, seed=0))


def start(**kw) -> Server:
    return Server(ServeSettings(host="127.0.0.1", port=0, **kw), loader).start()


@pytest.fixture(scope="module")
def server():
    srv = start(queue_size=4)
    yield srv
    srv.stop()


def post(url: str, body, headers: dict | None = None, raw: bytes | None = None) -> tuple[int, dict, dict]:
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read()), {k.lower(): v for k, v in r.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}"), {k.lower(): v for k, v in exc.headers.items()}


def client(srv: Server, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0)


def test_openai_client_chat_stream_models_completions_and_json_schema(server):
    c = client(server)
    [model] = c.models.list().data
    assert model.id == "smollm2-135m-instruct"
    msgs = [{"role": "user", "content": "Name a color."}]
    whole = c.chat.completions.create(model=model.id, messages=msgs, temperature=0, max_tokens=16)
    text = whole.choices[0].message.content
    assert text and whole.usage.prompt_tokens > 5 and 0 < whole.usage.completion_tokens <= 16
    assert whole.choices[0].finish_reason in ("stop", "length")
    pieces = [ev.choices[0].delta.content or "" for ev in
              c.chat.completions.create(model=model.id, messages=msgs, temperature=0, max_tokens=16, stream=True)
              if ev.choices]
    # greedy: the stream is the same answer, in pieces, as a plain request made from the same KV cache. The
    # first request evaluated the whole prompt in one batch; a repeat reuses it and evaluates only the last
    # prompt token again, and on some CPUs (AVX2 builds) that alone flips a near-tie, in stock llama-cpp-python
    # too. So the stream is compared with a third request, which starts from the same cache state as it.
    again = c.chat.completions.create(model=model.id, messages=msgs, temperature=0, max_tokens=16)
    assert len(pieces) > 2 and "".join(pieces) == again.choices[0].message.content
    done = c.completions.create(model=model.id, prompt="The capital of France is", max_tokens=8, temperature=0)
    assert done.choices[0].text and done.usage.completion_tokens <= 8
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "year": {"type": "integer"}},
              "required": ["city", "year"], "additionalProperties": False}
    answer = c.chat.completions.create(model=model.id, messages=[{"role": "user", "content": "Where and when?"}],
                                       temperature=0, max_tokens=40,
                                       response_format={"type": "json_schema",
                                                        "json_schema": {"name": "place", "schema": schema}})
    value = json.loads(answer.choices[0].message.content)
    assert set(value) == {"city", "year"} and isinstance(value["city"], str) and isinstance(value["year"], int)
    obj = c.chat.completions.create(model=model.id, messages=msgs, temperature=0, max_tokens=24,
                                    response_format={"type": "json_object"})
    assert isinstance(json.loads(obj.choices[0].message.content), dict)


def test_knowlm_generate_has_exactly_knowlms_fields(server):
    status, body, _ = post(server.url + "/generate", {"instruction": "Say hello.", "input": "",
                                                      "parameters": {"temperature": 0, "max_tokens": 8}})
    assert status == 200 and set(body) == {"generated_text", "num_output_tokens_cf", "error"}
    assert body["error"] is None and body["generated_text"] and 0 < body["num_output_tokens_cf"] <= 8
    status, body, _ = post(server.url + "/generate", {"input": "no instruction"})
    assert status == 400 and body["generated_text"] is None and "instruction" in body["error"]


def test_extract_route_returns_what_the_extract_command_writes(server, cli_env, tmp_path):
    import subprocess

    from conftest import knowlm_exe

    status, body, _ = post(server.url + "/extract", {"task": "ner", "text": TEXT})
    assert status == 200
    [rec] = body["records"]
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "1", "text": TEXT}) + "\n")
    out = subprocess.run([knowlm_exe(), "extract", str(src), "-m", "smollm2", "--ctx", "1024", "--threads", "2"],
                         env=cli_env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    cli = json.loads(out.stdout.splitlines()[-1])
    assert {k: rec[k] for k in ("task", "schema", "result", "spans")} == {k: cli[k] for k in
                                                                          ("task", "schema", "result", "spans")}
    status, body, _ = post(server.url + "/extract", {"task": "xyz", "text": TEXT})
    assert status == 400 and "unknown task" in body["error"]["message"]
    status, body, _ = post(server.url + "/extract", {"task": "ner", "text": TEXT, "multi_label": "sometimes"})
    assert status == 400 and "multi_label" in json.dumps(body)
    status, body, _ = post(server.url + "/extract", {"task": "ner", "text": TEXT, "multi_label": True})
    assert status == 200 and set(body["records"][0]["result"]) == set(rec["result"])
    status, body, _ = post(server.url + "/extract", {"task": "ee", "schema": "acquisition", "text": TEXT})
    assert status == 400 and "TYPE: name" in body["error"]["message"]


@pytest.mark.parametrize("case", ["malformed", "types", "unknown-field", "huge", "max-tokens", "model", "schema",
                                  "empty-messages", "role"])
def test_bad_requests_get_the_right_status_and_the_server_keeps_serving(server, case):
    url = server.url + "/v1/chat/completions"
    msg = [{"role": "user", "content": "hi"}]
    requests = {
        "malformed": (None, b'{"messages": [', 400),
        "types": ({"messages": msg, "temperature": "hot"}, None, 400),
        "unknown-field": ({"messages": msg, "max_tokens": 2, "frobnicate": True}, None, 200),
        "huge": (None, b'{"messages": [{"role": "user", "content": "' + b"x" * (5 << 20) + b'"}]}', 413),
        "max-tokens": ({"messages": msg, "max_tokens": 10**6}, None, 400),
        "model": ({"model": "gpt-9", "messages": msg}, None, 404),
        "schema": ({"messages": msg, "response_format": {"type": "json_schema",
                                                        "json_schema": {"name": "x", "schema": {"type": 5}}}}, None, 400),
        "empty-messages": ({"messages": []}, None, 400),
        "role": ({"messages": [{"role": "wizard", "content": "x"}]}, None, 400),
    }
    body, raw, want = requests[case]
    status, answer, _ = post(url, body, raw=raw)
    assert status == want, answer
    if want != 200:
        assert set(answer["error"]) == {"message", "type", "param", "code"} and answer["error"]["message"]
    ok, again, _ = post(url, {"messages": msg, "max_tokens": 2, "temperature": 0})
    assert ok == 200 and again["choices"][0]["message"]["content"] is not None


def _stream_some(srv: Server, max_tokens: int = 600) -> socket.socket:
    """Open a streaming request by hand, read until the first token arrives, and return the socket (still open)."""
    body = json.dumps({"messages": [{"role": "user", "content": "Write a very long story."}], "stream": True,
                       "max_tokens": max_tokens, "temperature": 0.7, "seed": 1}).encode()
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=60)
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    got = b""
    while b"data: {" not in got:
        data = s.recv(4096)
        assert data, f"the server closed the stream before a token: {got[:300]!r}"
        got += data
    return s


def test_a_client_that_disconnects_mid_stream_frees_the_model(server):
    served = server.engine.served
    s = _stream_some(server)
    s.close()  # the client goes away after the first tokens
    deadline = time.time() + 60
    while server.engine.running and time.time() < deadline:
        time.sleep(0.05)
    assert not server.engine.running and server.engine.served == served + 1  # cancelled, not run to the end
    t0 = time.time()
    status, _, _ = post(server.url + "/v1/chat/completions",
                        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert status == 200 and time.time() - t0 < 30


def test_a_full_queue_answers_429_with_retry_after():
    srv = start(queue_size=1)
    try:
        busy = _stream_some(srv, max_tokens=800)  # running
        results: dict = {}

        def queued():
            results["second"] = post(srv.url + "/v1/chat/completions",
                                     {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})

        t = threading.Thread(target=queued)
        t.start()
        deadline = time.time() + 30
        while srv.engine.waiting < 1 and time.time() < deadline:
            time.sleep(0.02)
        status, body, headers = post(srv.url + "/v1/chat/completions",
                                     {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert status == 429 and int(headers["retry-after"]) >= 1 and body["error"]["code"] == "queue_full"
        busy.close()
        t.join(timeout=120)
        assert results["second"][0] == 200  # the queued one was served once the slot freed
    finally:
        srv.stop()


def test_api_key_missing_wrong_and_right():
    srv = start(api_key="s3cret-key")
    try:
        for key, want in ((None, 401), ("wrong", 401), ("s3cret-key", 200)):
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            status, body, _ = post(srv.url + "/v1/chat/completions",
                                   {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, headers)
            assert status == want, body
            if want == 401:
                assert body["error"]["type"] == "authentication_error" and "s3cret" not in json.dumps(body)
        with pytest.raises(openai.AuthenticationError):
            client(srv, "wrong").models.list()
        assert client(srv, "s3cret-key").models.list().data
        with urllib.request.urlopen(srv.url + "/health", timeout=30) as r:  # health and the page need no key
            assert json.loads(r.read())["auth"] is True
    finally:
        srv.stop()


def test_health_is_503_while_loading_then_200():
    gate = threading.Event()

    def slow():
        gate.wait(60)
        return loader()

    srv = Server(ServeSettings(port=0), slow).start(wait_model=False)
    try:
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(srv.url + "/health", timeout=30)
        assert err.value.code == 503
        status, body, headers = post(srv.url + "/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]})
        assert status == 503 and "loading" in body["error"]["message"]
        gate.set()
        srv.engine.ready.wait(120)
        with urllib.request.urlopen(srv.url + "/health", timeout=30) as r:
            assert r.status == 200 and json.loads(r.read())["status"] == "ok"
    finally:
        srv.stop()


def test_extract_through_the_openai_backend_equals_local_extraction(tmp_path):
    """`extract --upstream` against our own server gives the local answers (same prompts, same grammar)."""
    from knowlm_local.ie.run import run_extract

    srv = Server(ServeSettings(host="127.0.0.1", port=0, queue_size=4),
                 lambda: load_model("smollm2-ie", LoadOptions(n_ctx=1024, n_threads=2, seed=0))).start()
    src = tmp_path / "in.jsonl"
    texts = [TEXT, "Kenji Watanabe was born in Sapporo.", "陈思远在成都创立了云杉科技。"]
    src.write_text("".join(json.dumps({"id": str(i), "text": t}, ensure_ascii=False) + "\n" for i, t in enumerate(texts)),
                   encoding="utf-8")
    remote, local = tmp_path / "remote.jsonl", tmp_path / "local.jsonl"
    try:
        run_extract(str(src), "ner", output=str(remote), copy="off", concurrency=2, model="smollm2-ie",
                    options=LoadOptions(upstream=srv.url + "/v1"), overrides={"max_tokens": 96})
    finally:
        srv.stop()
    run_extract(str(src), "ner", output=str(local), copy="off", model="smollm2-ie",
                options=LoadOptions(n_ctx=1024, n_threads=2), overrides={"max_tokens": 96})
    a = [json.loads(x) for x in remote.read_text(encoding="utf-8").splitlines()]
    b = [json.loads(x) for x in local.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in a] == ["0", "1", "2"]  # input order, although two were in flight at once
    assert not [e for r in a for e in r["errors"] if e["kind"] == "unparseable"]  # the schema was enforced upstream
    assert [r["result"] for r in a] == [r["result"] for r in b]
    assert a[0]["result"]["person"] == ["Marta Oliveira"]  # real answers, not two empty ones agreeing


def test_vllm_command_and_the_chat_templates_it_is_given(tmp_path):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    from knowlm_local.errors import KnowLMError
    from knowlm_local.prompts import get_template
    from knowlm_local.serve.vllm import JINJA, start_vllm, vllm_command

    cmd = vllm_command(tmp_path / "oneke", "oneke", 8123, "k", tensor_parallel=2, dtype="float16",
                       max_model_len=4096, chat_template=tmp_path / "t.jinja")
    assert cmd == ["vllm", "serve", str(tmp_path / "oneke"), "--host", "127.0.0.1", "--port", "8123",
                   "--served-model-name", "oneke", "--tensor-parallel-size", "2", "--dtype", "float16",
                   "--api-key", "k", "--max-model-len", "4096", "--chat-template", str(tmp_path / "t.jinja")]
    env = ImmutableSandboxedEnvironment()
    convos = [[{"role": "user", "content": "抽取实体"}],
              [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"},
               {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]]
    for name, source in JINJA.items():
        for msgs in convos:
            assert env.from_string(source).render(messages=msgs) == get_template(name).render(msgs), (name, msgs)
    import shutil

    if shutil.which("vllm") is None:
        with pytest.raises(KnowLMError, match="needs vLLM"):
            start_vllm("oneke", {})
