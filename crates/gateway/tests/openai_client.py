"""The official OpenAI Python client against a user's instance, with an app's access token.

Usage: openai_client.py BASE_URL ACCESS_TOKEN embeddings|no-embeddings. Prints "ok" when every
check passed.
"""
import sys

import openai

base, token, embeddings = sys.argv[1], sys.argv[2], sys.argv[3] == "embeddings"
client = openai.OpenAI(base_url=f"{base}/v1/llm", api_key=token, max_retries=0)
question = [
    {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."},
    {"role": "user", "content": "What is the capital of France?"},
]

models = client.models.list()
assert [m.id for m in models.data] == ["smollm2"], models

answer = client.chat.completions.create(model="smollm2", messages=question, temperature=0, max_tokens=24)
assert "Paris" in answer.choices[0].message.content, answer
assert answer.usage.completion_tokens >= 1, answer

parts, usage = [], None
stream = client.chat.completions.create(
    model="smollm2", messages=question, temperature=0, max_tokens=24, stream=True,
    stream_options={"include_usage": True},
)
for chunk in stream:
    if chunk.choices:
        parts.append(chunk.choices[0].delta.content or "")
    if chunk.usage:
        usage = chunk.usage
assert "Paris" in "".join(parts), parts
assert len([p for p in parts if p]) > 1, parts
assert usage is not None and usage.completion_tokens >= 1, usage

try:
    openai.OpenAI(base_url=f"{base}/v1/llm", api_key="not-a-token", max_retries=0).chat.completions.create(
        model="smollm2", messages=question)
except openai.AuthenticationError:
    pass
else:
    raise AssertionError("a wrong token was accepted")

try:
    client.chat.completions.create(model="smollm2", messages=question, n=2)
except openai.BadRequestError as e:
    assert "`n`" in str(e), e
else:
    raise AssertionError("n=2 was accepted")

if embeddings:
    texts = ["When does my plane take off?", "My flight leaves at 9am.", "Buy milk and bread."]
    # Without encoding_format the client asks for base64 and decodes it itself.
    for answer in (client.embeddings.create(model="all-minilm-l6-v2", input=texts),
                   client.embeddings.create(model="all-minilm-l6-v2", input=texts, encoding_format="float")):
        v = [d.embedding for d in answer.data]
        assert [len(x) for x in v] == [384] * 3, answer
        dot = lambda a, b: sum(x * y for x, y in zip(a, b))
        assert abs(dot(v[0], v[0]) - 1) < 1e-3, v[0][:4]
        assert dot(v[0], v[1]) > dot(v[0], v[2]) + 0.2, (dot(v[0], v[1]), dot(v[0], v[2]))
        assert answer.usage.prompt_tokens > 10, answer.usage

print("ok")
