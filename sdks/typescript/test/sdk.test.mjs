// The TypeScript SDK against a real selfcloud server (the binary `./selfcloud test` built), as
// an app uses it: connect, keep records, ask for more, chat and stream, be revoked.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { App, PENDING_MAX, Session, SelfError, appNamespace, covers } from "../dist/src/index.js";

const bin = process.env.SELFCLOUD_TEST_BIN;
const model = process.env.SELFCLOUD_TEST_MODEL;
const REDIRECT = "http://127.0.0.1:9/callback";
const PASSWORD = "correct horse battery";
let server, base, home;

before(async () => {
  assert.ok(bin, "SELFCLOUD_TEST_BIN names the selfcloud binary (./selfcloud test sets it)");
  home = mkdtempSync(join(tmpdir(), "selfcloud-sdk-"));
  const args = ["up", "--addr", "127.0.0.1:0", "--home", home, "--runtime", "inproc", "--kdf-memory-kib", "8", "--kdf-iterations", "1", "--model", model ?? "none", "--embedding-model", "none", "--dev-test-users"];
  server = spawn(bin, args, { stdio: ["ignore", "pipe", "inherit"] });
  const lines = createInterface({ input: server.stdout });
  base = await new Promise((resolve, reject) => {
    server.once("exit", (code) => reject(new Error(`selfcloud exited with ${code}`)));
    lines.on("line", (line) => line.startsWith("selfcloud listening on ") && resolve(line.slice("selfcloud listening on ".length).trim()));
  });
});

after(async () => {
  // A clean stop first (it drains the audit queue into the home directory), then the directory.
  if (server && server.exitCode === null) {
    const exited = new Promise((resolve) => server.once("exit", resolve));
    server.kill("SIGTERM");
    await exited;
  }
  if (home) rmSync(home, { recursive: true, force: true });
});

async function call(method, path, token, body) {
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  const response = await fetch(`${base}${path}`, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

async function user(name) {
  const created = await call("POST", "/v1/accounts", null, { username: name, password: PASSWORD });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  return (await call("POST", "/v1/sessions", null, { username: name, password: PASSWORD })).body.token;
}

// The user allows what `url` asks; answers the redirect the app's callback receives.
async function consent(userToken, url) {
  const form = new URLSearchParams(new URL(url).search);
  form.set("decision", "allow");
  const response = await fetch(`${base}/oauth/authorize`, {
    method: "POST",
    redirect: "manual",
    headers: { authorization: `Bearer ${userToken}`, "content-type": "application/x-www-form-urlencoded" },
    body: form.toString(),
  });
  assert.equal(response.status, 302);
  return response.headers.get("location");
}

test("an app connects, keeps its records, asks for more, chats, and is revoked", async () => {
  const dev = await user("developer");
  const registered = await call("POST", "/v1/apps", dev, { name: "Hello", redirect_uris: [REDIRECT], scopes: ["ai:chat", "storage:read", "storage:write"] });
  assert.equal(registered.status, 201, JSON.stringify(registered.body));
  const appId = registered.body.client_id;
  const ada = await user("ada");
  assert.equal((await call("PUT", "/v1/storage/diary/secret", ada, "private")).status, 200);

  // The first authorized call, as the README shows it.
  const app = new App({ appId, server: base, redirectUrl: REDIRECT });
  const url = await app.createConnectionUrl({ permissions: ["storage:read", "storage:write"] });
  const session = await app.handleCallback(await consent(ada, url));
  await session.storage.set("greeting", { text: "hello" });

  assert.deepEqual(await session.storage.get("greeting"), { text: "hello" });
  assert.equal((await session.storage.list({ prefix: "gr", limit: 10 })).length, 1);
  assert.equal(session.storage.collection, appNamespace(appId));
  assert.ok(session.hasPermission("storage:read") && session.hasPermission("storage:write") && !session.hasPermission("ai:chat"));
  await assert.rejects(session.json("GET", "/v1/storage/diary/secret"), (e) => e instanceof SelfError && e.code === "PERMISSION_DENIED");
  await assert.rejects(session.ai.chat({ message: "hi" }), (e) => e instanceof SelfError && e.code === "PERMISSION_DENIED" && e.status === 403);
  await session.storage.delete("greeting");
  assert.equal(await session.storage.get("greeting"), undefined);

  // Asking for more: one grant, merged.
  const more = await app.handleCallback(await consent(ada, await session.requestPermissions(["ai:chat"])));
  assert.ok(more.hasPermission("ai:chat") && more.hasPermission("storage:write"));
  const grants = (await call("GET", "/v1/grants", ada)).body.grants;
  assert.equal(grants.length, 1);
  if (model) {
    assert.ok((await more.ai.chat({ message: "Say hello", maxTokens: 16 })).length > 0);
    const pieces = [];
    for await (const piece of more.ai.chatStream({ message: "Count to five", maxTokens: 24 })) pieces.push(piece);
    assert.ok(pieces.length > 1, `the answer streams: ${JSON.stringify(pieces)}`);
    // The whole OpenAI call: a demanded tool call comes back as one the app can run.
    const tool = { type: "function", function: { name: "get_weather", parameters: { type: "object",
      properties: { city: { type: "string", maxLength: 40 } }, required: ["city"] } } };
    const called = await more.ai.completions({ messages: [{ role: "user", content: "Weather in Paris?" }],
      tools: [tool], tool_choice: "required", temperature: 0, max_tokens: 80 });
    assert.equal(called.choices[0].finish_reason, "tool_calls", JSON.stringify(called));
    assert.equal(typeof JSON.parse(called.choices[0].message.tool_calls[0].function.arguments).city, "string");
  } else {
    await assert.rejects(more.ai.chat({ message: "hi" }), (e) => e.status === 503);
  }
  // A refresh rotates the tokens; after a revocation nothing works, refresh included.
  const before = more.tokens.refreshToken;
  await more.refresh();
  assert.notEqual(more.tokens.refreshToken, before);
  assert.equal((await call("DELETE", `/v1/grants/${grants[0].id}`, ada)).status, 204);
  await assert.rejects(more.storage.get("greeting"), (e) => e.code === "UNAUTHENTICATED");
  await assert.rejects(more.refresh(), (e) => e instanceof SelfError && e.serverCode === "invalid_grant");
});

test("a connection may come back to another of the app's redirect URIs", async () => {
  const dev = await user("two-doors");
  const other = "http://127.0.0.1:9/elsewhere";
  const registered = await call("POST", "/v1/apps", dev, { name: "Two doors", redirect_uris: [REDIRECT, other], scopes: ["storage:write"] });
  assert.equal(registered.status, 201, JSON.stringify(registered.body));
  const app = new App({ appId: registered.body.client_id, server: base, redirectUrl: REDIRECT });
  const url = await app.createConnectionUrl({ permissions: ["storage:write"], redirectUrl: other });
  assert.equal(new URL(url).searchParams.get("redirect_uri"), other);
  const back = await consent(await user("guest"), url);
  assert.ok(back.startsWith(`${other}?`), back);
  const session = await app.handleCallback(back);
  await session.storage.set("k", 1);
});

test("a callback this app did not start, or from another server, is refused", async () => {
  const app = new App({ appId: "app_0123456789abcdef0123456789abcdef", server: base, redirectUrl: REDIRECT });
  await assert.rejects(app.handleCallback(`${REDIRECT}?code=x&state=forged`), (e) => e.code === "INVALID_REQUEST");
  const url = await app.createConnectionUrl({ permissions: ["storage:read"] });
  const state = new URL(url).searchParams.get("state");
  await assert.rejects(app.handleCallback(`${REDIRECT}?code=x&state=${state}&iss=http://evil.example`), /not http/);
  const denied = await app.createConnectionUrl({ permissions: ["storage:read"] });
  const s2 = new URL(denied).searchParams.get("state");
  await assert.rejects(app.handleCallback(`?error=access_denied&state=${s2}`), (e) => e.code === "ACCESS_DENIED");
});

test("an app's tests get a user who already allowed it, from a development server", async () => {
  const dev = await user("tester");
  const registered = await call("POST", "/v1/apps", dev, { name: "Tested", redirect_uris: [REDIRECT], scopes: ["storage:read", "storage:write"] });
  const app = new App({ appId: registered.body.client_id, server: base, redirectUrl: REDIRECT });
  const operatorToken = readFileSync(join(home, "operator.token"), "utf8").trim();
  const { username, session } = await app.createTestUser({ operatorToken, permissions: ["storage:read", "storage:write"] });
  assert.match(username, /^test-/);
  await session.storage.set("k", 1);
  assert.equal(await session.storage.get("k"), 1);
  await session.signOut();
  await assert.rejects(session.storage.get("k"), (e) => e.code === "UNAUTHENTICATED");
  await assert.rejects(app.createTestUser({ operatorToken: dev, permissions: ["storage:read"] }), (e) => e.code === "PERMISSION_DENIED");
});

// A streamed answer however it is framed: CRLF or CR line ends, `data:` without its space, a
// UTF-8 character and a line end split across chunks. And an app that stops reading early
// cancels the stream, so the server stops writing (and billing).
test("a stream is read however its lines end, and leaving it early cancels it", async () => {
  const delta = (text) => `data:${JSON.stringify({ choices: [{ delta: { content: text } }] })}`;
  const wire = new TextEncoder().encode(`${delta("Olá")}\r\n\r\n${delta(" mundo")}\r\r: a comment\n\ndata: [DONE]\n\n`);
  const cut = [3, 8, wire.indexOf(0xa1), wire.indexOf(0x0d) + 1, wire.length - 4]; // mid-"á", mid-CRLF
  let cancelled = 0;
  const stream = (parts, endless) =>
    new ReadableStream({
      pull(controller) {
        if (parts.length) controller.enqueue(parts.shift());
        else if (!endless) controller.close();
        else return new Promise(() => {}); // an answer still being written
      },
      cancel() {
        cancelled += 1;
      },
    });
  const pieces = (bytes) => [0, ...cut].map((from, i) => bytes.slice(from, [...cut, bytes.length][i]));
  const answers = [];
  const app = new App({
    appId: "app_0123456789abcdef0123456789abcdef",
    server: "http://127.0.0.1:9",
    redirectUrl: REDIRECT,
    fetch: async () => new Response(answers.shift(), { headers: { "content-type": "text/event-stream" } }),
  });
  const session = new Session(app, { accessToken: "t", expiresIn: 60, scope: "llm:chat" });

  answers.push(stream(pieces(wire), false));
  const text = [];
  for await (const piece of session.ai.chatStream({ message: "hi" })) text.push(piece);
  assert.deepEqual(text, ["Olá", " mundo"]);

  // An empty event carries nothing; the last one ends in CR CR just as the stream closes.
  answers.push(stream([new TextEncoder().encode(`data:\n\n${delta("last")}\r\r`)], false));
  const tail = [];
  for await (const piece of session.ai.chatStream({ message: "hi" })) tail.push(piece);
  assert.deepEqual(tail, ["last"]);

  cancelled = 0;
  answers.push(stream([new TextEncoder().encode(`${delta("first")}\n\n`)], true));
  for await (const piece of session.ai.chatStream({ message: "hi" })) {
    assert.equal(piece, "first");
    break;
  }
  assert.equal(cancelled, 1, "the stream still being written was cancelled when the app left it");
});

// hasPermission reads a grant as the server does: a prefix outside the app namespaces never
// reaches into one.
test("a held scope covers a wanted one by the server's rule", () => {
  const own = "storage:read:app-0123456789abcdef*";
  for (const wide of ["storage:read:*", "storage:read:ap*", "storage:read:app*"]) {
    assert.equal(covers(wide, own), false, wide);
    assert.equal(covers(wide, "storage:read:apples"), true, wide);
  }
  assert.ok(covers("storage:read:app-*", own) && covers(own, "storage:read:app-0123456789abcdef-x"));
  assert.ok(!covers("storage:write:*", "storage:read:notes") && !covers("storage:read:notes", "storage:read:notes*"));
  assert.ok(covers("llm:chat", "llm:chat") && !covers("llm:chat", "llm:embed"));
});

// A server-side app keeps its started connections in memory: each visitor who never comes back
// leaves one, so they are bounded and the oldest goes first.
test("started connections in memory are bounded, the oldest going first", async () => {
  const app = new App({ appId: "app_0123456789abcdef0123456789abcdef", server: "http://127.0.0.1:9", redirectUrl: REDIRECT });
  const stateOf = (url) => new URL(url).searchParams.get("state");
  const first = stateOf(await app.createConnectionUrl({ permissions: ["storage:read"] }));
  const second = stateOf(await app.createConnectionUrl({ permissions: ["storage:read"] }));
  for (let i = 2; i <= PENDING_MAX; i++) await app.createConnectionUrl({ permissions: ["storage:read"] });
  await assert.rejects(app.handleCallback(`?code=x&state=${first}`), /no connection this app started/);
  // The second is still waiting: its callback gets as far as the token endpoint (nothing listens there).
  await assert.rejects(app.handleCallback(`?code=x&state=${second}`), (e) => !/no connection this app started/.test(e.message));
});
