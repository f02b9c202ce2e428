/**
 * The selfcloud SDK in SELF's shape: an {@link App} asks a user for consent (OAuth 2.1
 * authorization code with PKCE, S256, through WebCrypto) and turns the callback into a
 * {@link Session}, which talks to the user's private assistant (`session.ai`) and keeps the
 * app's own records (`session.storage`). No runtime dependency: `fetch` and WebCrypto, in
 * browsers and Node 18+.
 *
 * ```ts
 * const app = new App({ appId, server: "http://127.0.0.1:8420", redirectUrl: "http://127.0.0.1:9000/callback" });
 * location.href = await app.createConnectionUrl({ permissions: ["ai:chat", "storage:read", "storage:write"] });
 * // ... on the redirect URL:
 * const session = await app.handleCallback(location.href);
 * const answer = await session.ai.chat({ message: "Hello" });
 * ```
 */

/** SELF's error names, from the server's status and JSON error. */
export type ErrorCode =
  | "PERMISSION_DENIED"
  | "RATE_LIMITED"
  | "UNAUTHENTICATED"
  | "NOT_FOUND"
  | "INVALID_REQUEST"
  | "ACCESS_DENIED"
  | "SERVER_ERROR";

/** Every failure: `code` in SELF's words, `serverCode` and `message` as the server said them. */
export class SelfError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly status = 0,
    readonly serverCode = "",
    /** Seconds to wait, when the server said (429, 503). */
    readonly retryAfter?: number,
  ) {
    super(message);
    this.name = "SelfError";
  }
}

function codeFor(status: number): ErrorCode {
  if (status === 403) return "PERMISSION_DENIED";
  if (status === 429) return "RATE_LIMITED";
  if (status === 401) return "UNAUTHENTICATED";
  if (status === 404) return "NOT_FOUND";
  if (status >= 400 && status < 500) return "INVALID_REQUEST";
  return "SERVER_ERROR";
}

/** The error an answer carries: the contract's `{"error":{"code","message"}}` or OAuth's. */
async function errorOf(response: Response): Promise<SelfError> {
  const text = await response.text();
  let serverCode = "unknown";
  let message = text.slice(0, 500);
  try {
    const body = JSON.parse(text);
    if (body && typeof body.error === "object") {
      serverCode = String(body.error.code ?? serverCode);
      message = String(body.error.message ?? "");
    } else if (body && typeof body.error === "string") {
      serverCode = body.error;
      message = String(body.error_description ?? "");
    }
  } catch {
    // not JSON: kept verbatim
  }
  const retry = Number(response.headers.get("retry-after"));
  return new SelfError(codeFor(response.status), message, response.status, serverCode, Number.isFinite(retry) && retry > 0 ? retry : undefined);
}

async function webCrypto(): Promise<Crypto> {
  if (globalThis.crypto?.subtle) return globalThis.crypto;
  // Node 18 keeps WebCrypto in its module rather than on globalThis. The specifier is a value,
  // so a bundler building for the browser leaves it alone (it never runs there).
  const nodeModule = "node:crypto";
  const nodeCrypto: { webcrypto: Crypto } = await import(/* webpackIgnore: true */ /* @vite-ignore */ nodeModule);
  return nodeCrypto.webcrypto;
}

function base64url(bytes: Uint8Array): string {
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** 32 random bytes as 43 unreserved characters: a PKCE verifier, or an unguessable state. */
async function randomToken(): Promise<string> {
  const bytes = new Uint8Array(32);
  (await webCrypto()).getRandomValues(bytes);
  return base64url(bytes);
}

/** base64url(SHA-256(verifier)), RFC 7636 S256. */
export async function codeChallenge(verifier: string): Promise<string> {
  const digest = await (await webCrypto()).subtle.digest("SHA-256", new TextEncoder().encode(verifier));
  return base64url(new Uint8Array(digest));
}

/** The collections an app owns in each user's store, as the server derives them from its id. */
export function appNamespace(appId: string): string {
  const hex = appId.startsWith("app_") ? appId.slice(4) : "";
  if (!/^[0-9a-f]{32}$/.test(hex)) throw new SelfError("INVALID_REQUEST", `not a selfcloud client id: ${appId}`);
  return `app-${hex.slice(0, 16)}`;
}

/** Where a pending connection waits for its callback (sessionStorage in a browser): under its
 * `state`, one opaque string (its PKCE verifier and redirect URI) to hand back as it was. */
export interface PendingStore {
  get(state: string): string | null | undefined | Promise<string | null | undefined>;
  set(state: string, value: string): void | Promise<void>;
  delete(state: string): void | Promise<void>;
}

/** How many started connections the in-memory store keeps at once. */
export const PENDING_MAX = 4096;

function defaultStore(): PendingStore {
  const storage = (globalThis as { sessionStorage?: Storage }).sessionStorage;
  if (storage) {
    const key = (s: string) => `selfcloud.pending.${s}`;
    return { get: (s) => storage.getItem(key(s)), set: (s, v) => storage.setItem(key(s), v), delete: (s) => storage.removeItem(key(s)) };
  }
  // In memory (a server-side app): bounded, since each visitor who never comes back leaves one;
  // past the bound the oldest goes (a Map keeps insertion order).
  const map = new Map<string, string>();
  const set = (s: string, v: string) => {
    if (map.size >= PENDING_MAX) map.delete(map.keys().next().value as string);
    map.set(s, v);
  };
  return { get: (s) => map.get(s), set, delete: (s) => void map.delete(s) };
}

export interface AppOptions {
  /** The client id selfcloud gave at registration. */
  appId: string;
  /** The selfcloud server's base URL. */
  server: string;
  /** One of the app's registered redirect URIs, exactly as registered. */
  redirectUrl: string;
  /** A confidential client's secret (server-side apps only: never ship it to a browser). */
  clientSecret?: string;
  pending?: PendingStore;
  fetch?: typeof fetch;
}

export interface Tokens {
  accessToken: string;
  refreshToken?: string;
  expiresIn: number;
  scope: string;
}

/** A pending connection as stored: JSON of its verifier and redirect URI. */
function readPending(stored: string): { verifier: string; redirectUrl: string } {
  try {
    const { verifier, redirectUrl } = JSON.parse(stored);
    if (typeof verifier === "string" && typeof redirectUrl === "string") return { verifier, redirectUrl };
  } catch {
    // falls through to the error below
  }
  throw new SelfError("INVALID_REQUEST", "the pending connection's record is unreadable; connect again");
}

/** An app registered with a selfcloud server. */
export class App {
  readonly appId: string;
  readonly server: string;
  readonly redirectUrl: string;
  private readonly pending: PendingStore;
  private readonly clientSecret?: string;
  readonly fetch: typeof fetch;

  constructor(options: AppOptions) {
    this.appId = options.appId;
    this.server = options.server.replace(/\/+$/, "");
    this.redirectUrl = options.redirectUrl;
    this.pending = options.pending ?? defaultStore();
    this.clientSecret = options.clientSecret;
    this.fetch = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  /** Where to send the user to ask for `permissions` (SELF's words or ours); `redirectUrl`, another
   * of the app's registered redirect URIs, overrides the app's for this connection. */
  async createConnectionUrl(options: { permissions: string[]; redirectUrl?: string }): Promise<string> {
    const redirectUrl = options.redirectUrl ?? this.redirectUrl;
    const [verifier, state] = [await randomToken(), await randomToken()];
    await this.pending.set(state, JSON.stringify({ verifier, redirectUrl }));
    const url = new URL(`${this.server}/oauth/authorize`);
    const params: Record<string, string> = {
      response_type: "code",
      client_id: this.appId,
      redirect_uri: redirectUrl,
      scope: options.permissions.join(" "),
      state,
      code_challenge: await codeChallenge(verifier),
      code_challenge_method: "S256",
    };
    for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
    return url.toString();
  }

  /** The user came back: `callback` is the redirect's URL (or its query). */
  async handleCallback(callback: string): Promise<Session> {
    const query = callback.includes("?") ? callback.slice(callback.indexOf("?") + 1) : callback;
    const params = new URLSearchParams(query);
    const state = params.get("state") ?? "";
    const pending = state ? await this.pending.get(state) : undefined;
    if (!pending) throw new SelfError("INVALID_REQUEST", "the callback answers no connection this app started");
    await this.pending.delete(state);
    const { verifier, redirectUrl } = readPending(pending);
    // RFC 9207: the answer must come from this server.
    const iss = params.get("iss");
    if (iss !== null && iss !== this.server) throw new SelfError("INVALID_REQUEST", `the callback came from ${iss}, not ${this.server}`);
    const denied = params.get("error");
    if (denied) throw new SelfError(denied === "access_denied" ? "ACCESS_DENIED" : "INVALID_REQUEST", params.get("error_description") ?? denied, 0, denied);
    const code = params.get("code");
    if (!code) throw new SelfError("INVALID_REQUEST", "the callback has no code");
    const tokens = await this.token({
      grant_type: "authorization_code",
      code,
      redirect_uri: redirectUrl,
      client_id: this.appId,
      code_verifier: verifier,
    });
    return new Session(this, tokens);
  }

  /**
   * A new user who has allowed this app `permissions`, and their session: for an app's own
   * tests, against a development server (`selfcloud up --dev-test-users`; the operator token is
   * `<home>/operator.token`). Any other server answers 404.
   */
  async createTestUser(options: { operatorToken: string; permissions: string[] }): Promise<{ username: string; password: string; session: Session }> {
    const response = await this.fetch(`${this.server}/v1/admin/test-users`, {
      method: "POST",
      headers: { "content-type": "application/json", authorization: `Bearer ${options.operatorToken}` },
      body: JSON.stringify({ client_id: this.appId, scopes: options.permissions }),
    });
    if (!response.ok) throw await errorOf(response);
    const made = await response.json();
    const tokens = { accessToken: made.access_token, refreshToken: made.refresh_token, expiresIn: made.expires_in, scope: made.scope };
    return { username: made.username, password: made.password, session: new Session(this, tokens) };
  }

  /** A form to an OAuth endpoint (`token`, `revoke`), with the client's secret when it has one. */
  async oauthPost(endpoint: "token" | "revoke", form: Record<string, string>): Promise<Response> {
    const headers: Record<string, string> = { "content-type": "application/x-www-form-urlencoded" };
    // client_secret_basic; ids and secrets are URL-safe, so their form-encoding is themselves.
    if (this.clientSecret) headers.authorization = `Basic ${btoa(`${this.appId}:${this.clientSecret}`)}`;
    const response = await this.fetch(`${this.server}/oauth/${endpoint}`, { method: "POST", headers, body: new URLSearchParams(form).toString() });
    if (!response.ok) throw await errorOf(response);
    return response;
  }

  /** The token endpoint (codes and refreshes). */
  async token(form: Record<string, string>): Promise<Tokens> {
    const response = await this.oauthPost("token", form);
    const t = await response.json();
    return { accessToken: t.access_token, refreshToken: t.refresh_token, expiresIn: t.expires_in, scope: t.scope ?? "" };
  }
}

/** SELF's words in ours. */
function canonical(permission: string, appId: string): string {
  switch (permission) {
    case "ai:chat":
      return "llm:chat";
    case "blockchain:read":
      return "chain:read";
    case "storage:read":
    case "storage:write":
      return `${permission}:${appNamespace(appId)}*`;
    default:
      return permission;
  }
}

/** Whether a held scope reaches all a wanted one does, by the server's rule: a storage prefix
 * reaches what starts with it, but an app's namespace (`app-...`) only if the prefix is in one. */
export function covers(held: string, wanted: string): boolean {
  const storage = /^storage:(read|write):(.*)$/;
  const [h, w] = [storage.exec(held), storage.exec(wanted)];
  if (!h || !w || h[1] !== w[1]) return held === wanted;
  const [heldPattern, wantedPattern] = [h[2], w[2]];
  if (!heldPattern.endsWith("*")) return heldPattern === wantedPattern;
  const prefix = heldPattern.slice(0, -1);
  const name = wantedPattern.replace(/\*$/, "");
  return name.startsWith(prefix) && (prefix.startsWith("app-") || !name.startsWith("app-"));
}

/** One user's connection: their tokens, refreshed as they expire. */
export class Session {
  tokens: Tokens;
  readonly ai: Ai;
  readonly storage: AppStorage;
  private refreshing?: Promise<Tokens>;

  constructor(readonly app: App, tokens: Tokens) {
    this.tokens = tokens;
    this.ai = new Ai(this);
    this.storage = new AppStorage(this, appNamespace(app.appId));
  }

  /** What the user allowed, as the server wrote it. */
  get permissions(): string[] {
    return this.tokens.scope.split(" ").filter(Boolean);
  }

  hasPermission(permission: string): boolean {
    const wanted = canonical(permission, this.app.appId);
    return this.permissions.some((held) => covers(held, wanted));
  }

  /** A connection URL asking for `more`: the consent shows only what the app lacks. */
  requestPermissions(more: string[]): Promise<string> {
    const missing = more.filter((p) => !this.hasPermission(p));
    return this.app.createConnectionUrl({ permissions: [...this.permissions, ...missing] });
  }

  /** Any API call with the access token (`/v1/...`), refreshing once on a 401. */
  async fetch(path: string, init: RequestInit = {}): Promise<Response> {
    const send = (token: string) => {
      // Headers as an object, an array or a Headers: all kept.
      const headers = new Headers(init.headers);
      headers.set("authorization", `Bearer ${token}`);
      return this.app.fetch(`${this.app.server}${path}`, { ...init, headers });
    };
    const sent = this.tokens.accessToken;
    let response = await send(sent);
    if (response.status === 401 && this.tokens.refreshToken) {
      try {
        response = await send((await this.refresh(sent)).accessToken);
      } catch (e) {
        if (!(e instanceof SelfError)) throw e;
      }
    }
    if (!response.ok) throw await errorOf(response);
    return response;
  }

  /** JSON in, JSON out; `null` for an empty answer. */
  async json(method: string, path: string, body?: unknown): Promise<any> {
    const init: RequestInit = { method };
    if (body !== undefined) {
      init.body = JSON.stringify(body);
      init.headers = { "content-type": "application/json" };
    }
    const text = await (await this.fetch(path, init)).text();
    return text ? JSON.parse(text) : null;
  }

  /** Signs this session out (RFC 7009): its refresh token and access token end. The user's
   * grant stays; they revoke the app itself from their dashboard. */
  async signOut(): Promise<void> {
    for (const token of [this.tokens.refreshToken, this.tokens.accessToken]) {
      if (token) await this.app.oauthPost("revoke", { token, client_id: this.app.appId });
    }
  }

  /** Rotates the refresh token (single use): concurrent calls share one refresh. */
  refresh(rejected?: string): Promise<Tokens> {
    if (rejected !== undefined && this.tokens.accessToken !== rejected) return Promise.resolve(this.tokens);
    this.refreshing ??= this.app
      .token({ grant_type: "refresh_token", refresh_token: this.tokens.refreshToken ?? "", client_id: this.app.appId })
      .then((t) => (this.tokens = t))
      .finally(() => (this.refreshing = undefined));
    return this.refreshing;
  }
}

/** Reads the `data` of each event of a server-sent event stream (lines end in CRLF, LF or CR; the
 * space after `data:` is optional). Leaving early cancels the stream, so the server stops. */
async function* events(response: Response): AsyncGenerator<any> {
  const reader = response.body!.getReader();
  const decoder = new TextDecoder();
  let buffered = "";
  let data: string[] = [];
  // A CR last in the buffer may be half of a CRLF: it waits for the next chunk.
  const lineEnd = /\r\n|\n|\r(?!$)/;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      buffered += done ? decoder.decode() : decoder.decode(value, { stream: true });
      // At the end, a last CR ends its line: it can no longer be half of a CRLF.
      if (done && buffered.endsWith("\r")) buffered += "\n";
      let end: RegExpExecArray | null;
      while ((end = lineEnd.exec(buffered))) {
        const line = buffered.slice(0, end.index);
        buffered = buffered.slice(end.index + end[0].length);
        if (line.startsWith("data:")) {
          data.push(line.slice(line.startsWith("data: ") ? 6 : 5));
        } else if (line === "") {
          // A blank line ends an event; one with no data (or empty data) carries nothing of ours.
          const event = data.join("\n");
          data = [];
          if (event === "") continue;
          if (event === "[DONE]") return;
          yield JSON.parse(event);
        }
      }
      if (done) return; // an event without its blank line is not one
    }
  } finally {
    await reader.cancel().catch(() => undefined);
  }
}

export interface ChatOptions {
  message: string;
  /** Earlier turns, OpenAI-shaped. */
  history?: { role: "system" | "user" | "assistant"; content: string }[];
  maxTokens?: number;
}

/** The user's private assistant (`llm:chat`, SELF's `ai:chat`), OpenAI-shaped underneath. */
export class Ai {
  constructor(private readonly session: Session) {}

  private body(o: ChatOptions, stream: boolean) {
    return { messages: [...(o.history ?? []), { role: "user", content: o.message }], max_tokens: o.maxTokens, stream };
  }

  async chat(options: ChatOptions): Promise<string> {
    const answer = await this.session.json("POST", "/v1/llm/chat/completions", this.body(options, false));
    return answer.choices?.[0]?.message?.content ?? "";
  }

  /** The answer as it is written: each item is more text. */
  async *chatStream(options: ChatOptions): AsyncGenerator<string> {
    const response = await this.session.fetch("/v1/llm/chat/completions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(this.body(options, true)),
    });
    for await (const event of events(response)) {
      if (event.error) throw new SelfError("SERVER_ERROR", event.error.message ?? "the answer broke off", 0, event.error.code ?? "");
      const text = event.choices?.[0]?.delta?.content;
      if (text) yield text;
    }
  }

  /** The full OpenAI-shaped chat completions call. */
  completions(body: Record<string, unknown>): Promise<any> {
    return this.session.json("POST", "/v1/llm/chat/completions", body);
  }
}

/** The app's own records in the user's instance: SELF's key-value storage. */
export class AppStorage {
  constructor(private readonly session: Session, readonly collection: string) {}

  private path(key?: string): string {
    const base = `/v1/storage/${encodeURIComponent(this.collection)}`;
    return key === undefined ? base : `${base}/${encodeURIComponent(key)}`;
  }

  /** Stores `value` under `key`; answers its revision. */
  async set(key: string, value: unknown): Promise<string> {
    return (await this.session.json("PUT", this.path(key), value)).rev;
  }

  async get(key: string): Promise<unknown | undefined> {
    try {
      return await this.session.json("GET", this.path(key));
    } catch (e) {
      if (e instanceof SelfError && e.code === "NOT_FOUND") return undefined;
      throw e;
    }
  }

  async list(options: { prefix?: string; limit?: number } = {}): Promise<{ key: string; value: unknown }[]> {
    const q = new URLSearchParams();
    if (options.prefix) q.set("prefix", options.prefix);
    if (options.limit) q.set("limit", String(options.limit));
    const page = await this.session.json("GET", `${this.path()}?${q}`);
    return page.records.map((r: { key: string; value: unknown }) => ({ key: r.key, value: r.value }));
  }

  async delete(key: string): Promise<void> {
    await this.session.json("DELETE", this.path(key));
  }
}
