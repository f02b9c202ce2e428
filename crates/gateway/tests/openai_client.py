"""The official OpenAI Python client against a user's instance, with an app's access token: chat
(JSON and streamed), tool calls (demanded, streamed, and the answer after the tool's result),
structured outputs (a JSON schema, and the client's own Pydantic `parse`), errors, embeddings.

Usage: openai_client.py BASE_URL ACCESS_TOKEN embeddings|no-embeddings. Prints "ok" when every
check passed.
"""
import json
import sys

import openai
import pydantic

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

# Tool calls: a demanded call is always one the client can run, JSON and streamed alike.
weather_tool = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False}}}
weather_question = [{"role": "user", "content": "What is the weather like in Paris today?"}]
demanded = dict(model="smollm2", tools=[weather_tool], temperature=0, max_tokens=60,
                tool_choice={"type": "function", "function": {"name": "get_weather"}})
answer = client.chat.completions.create(messages=weather_question, **demanded)
choice = answer.choices[0]
assert choice.finish_reason == "tool_calls", answer
assert choice.message.content is None and len(choice.message.tool_calls) == 1, answer
call = choice.message.tool_calls[0]
assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_"), call
arguments = json.loads(call.function.arguments)
assert isinstance(arguments["city"], str) and arguments["city"], arguments

calls, finish = {}, None
for chunk in client.chat.completions.create(messages=weather_question, stream=True, **demanded):
    if not chunk.choices:
        continue
    for part in chunk.choices[0].delta.tool_calls or []:
        got = calls.setdefault(part.index, {"id": None, "name": "", "arguments": ""})
        got["id"] = part.id or got["id"]
        got["name"] += (part.function.name or "") if part.function else ""
        got["arguments"] += (part.function.arguments or "") if part.function else ""
    finish = chunk.choices[0].finish_reason or finish
assert finish == "tool_calls" and len(calls) == 1, (finish, calls)
assert calls[0]["name"] == "get_weather" and json.loads(calls[0]["arguments"]) == arguments, calls

# The call and its result go back as the conversation's next turns; the model answers in words.
follow_up = weather_question + [
    choice.message.model_dump(exclude_none=True),
    {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"sky": "sunny", "celsius": 21})},
]
answer = client.chat.completions.create(model="smollm2", messages=follow_up, tools=[weather_tool],
                                        temperature=0, max_tokens=40)
assert answer.choices[0].message.content, answer
assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls"), answer

# Structured outputs: the answer is a value of the schema.
capital_schema = {"type": "object", "properties": {"country": {"type": "string"}, "capital": {"type": "string"}},
                  "required": ["country", "capital"], "additionalProperties": False}
answer = client.chat.completions.create(
    model="smollm2", messages=question, temperature=0, max_tokens=40,
    response_format={"type": "json_schema", "json_schema": {"name": "capital", "schema": capital_schema, "strict": True}})
value = json.loads(answer.choices[0].message.content)
assert set(value) == {"country", "capital"} and all(isinstance(v, str) for v in value.values()), value


class Capital(pydantic.BaseModel):
    country: str
    capital: str


parsed = client.chat.completions.parse(model="smollm2", messages=question, temperature=0, max_tokens=40,
                                       response_format=Capital)
assert isinstance(parsed.choices[0].message.parsed, Capital), parsed

try:
    client.chat.completions.create(model="smollm2", messages=question, tools=[weather_tool],
                                   tool_choice={"type": "function", "function": {"name": "launch_rockets"}})
except openai.BadRequestError as e:
    assert "launch_rockets" in str(e), e
else:
    raise AssertionError("a tool_choice naming no offered function was accepted")

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
