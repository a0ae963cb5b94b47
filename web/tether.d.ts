// Type declarations for tether.js (the CommonJS / classic-script view).
// The ES module view is tether.d.mts. Checked by tests/node (tsc --noEmit).

export = TetherClient;
/** The classic script (`<script src="/tether.js">`) defines this global. */
export as namespace TetherClient;

declare class TetherClient {
  constructor(url: string, options?: TetherClient.Options);

  readonly url: string;
  readonly options: Required<Omit<TetherClient.Options, TetherClient.Constructors | "token">> & Pick<TetherClient.Options, TetherClient.Constructors | "token">;
  /** The connection's state; every change is also a "state" event. */
  readonly state: TetherClient.State;
  /** The transport of the current (or last) attempt; every change is also a "transport" event. */
  readonly transport: TetherClient.Transport | null;
  /** tether.v1: this connection's session, from the welcome envelope. */
  readonly session: string | null;
  /** Topics kept across reconnects (subscribe adds, unsubscribe removes). */
  readonly topics: Set<string>;

  on<K extends keyof TetherClient.EventMap>(event: K, fn: (payload: TetherClient.EventMap[K]) => void): this;
  off<K extends keyof TetherClient.EventMap>(event: K, fn: (payload: TetherClient.EventMap[K]) => void): this;

  /** Send raw data. Queued while disconnected; false when the queue is full and queueFull is "reject". */
  send(data: string | ArrayBuffer | ArrayBufferView | Blob): boolean;
  /** tether.v1: subscribe to a topic (kept across reconnects). Resolves on ack.
   * With `delta`, JSON Merge Patches are applied here (messages carry their full content);
   * with `resume`, a reconnect asks for what was missed since the last message seen. */
  subscribe(topic: string, options?: TetherClient.SubscribeOptions): Promise<TetherClient.Ack>;
  /** tether.v1: stop receiving a topic. */
  unsubscribe(topic: string): Promise<TetherClient.Ack>;
  /** tether.v1: publish content (any JSON) to a topic. Resolves with the ack (epoch, seq).
   * With `key`, a slow subscriber gets the newest message of each key (conflation). */
  publish(topic: string, content: TetherClient.Json, options?: TetherClient.PublishOptions): Promise<TetherClient.Ack>;
  /** tether.v1: send a chat message to this connection's room. */
  chat(content: TetherClient.Json): Promise<TetherClient.Ack>;
  /** tether.v1: call `method` on the application's backend (the server's RPC
   * hook). Resolves with the backend's answer; rejects with an Error whose
   * `code` is the backend's error code, `timeout` or `unavailable`. */
  rpc<T extends TetherClient.Json = TetherClient.Json>(method: string, data?: TetherClient.Json): Promise<T>;
  /** tether.v1: fetch a new token (options.token must be a function) and send
   * it in a `refresh` request. Done by itself `refreshAhead` ms before the
   * token's exp and when the server warns (`token_expiring`). */
  refresh(): Promise<TetherClient.Authenticated>;
  /** Close for good (no reconnect). */
  close(code?: number, reason?: string): void;

  /** The reconnect delay (ms) that a close asks for: `reconnect_after_ms`
   * of a 1012 (service restart) from a draining server, capped at 300000;
   * null for any other close. The client waits it instead of its backoff. */
  static reconnectHint(code: number, reason: string): number | null;
  /** The delay before reconnect attempt `attempt` (1-based), in ms. */
  static backoffDelay(attempt: number, opts?: TetherClient.BackoffOptions): number;
  /** The heartbeat state of a connection opened at `now` (ms). */
  static heartbeatStart(now: number, opts: TetherClient.HeartbeatOptions): TetherClient.HeartbeatState;
  /** Advance `state` to `now` (ms). */
  static heartbeatAction(state: TetherClient.HeartbeatState, now: number, opts: TetherClient.HeartbeatOptions): TetherClient.HeartbeatAction;
  /** An answer arrived: stop waiting. */
  static heartbeatAnswer(state: TetherClient.HeartbeatState): void;
  /** When heartbeatAction next has something to do (ms). */
  static heartbeatNextWake(state: TetherClient.HeartbeatState): number;
  /** RFC 7396 MergePatch: `patch` applied to `target` (which it may modify); returns the result. */
  static mergePatch(target: TetherClient.Json | undefined, patch: TetherClient.Json): TetherClient.Json;
  static readonly DEFAULTS: Readonly<Required<Omit<TetherClient.Options, TetherClient.Constructors | "token">>> & { readonly WebSocket: null; readonly EventSource: null; readonly fetch: null; readonly token: null };
  /** The `exp` claim of a JWT (Unix seconds), or null if it has none or is not a JWT. */
  static tokenExpiry(token: string): number | null;
}

declare namespace TetherClient {
  type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

  type State = "connecting" | "open" | "reconnecting" | "closed";

  /** "websocket", or "http": Server-Sent Events down, POSTed batches up (docs/protocol.md, "HTTP transport"). */
  type Transport = "websocket" | "http";

  /** The options that take a constructor or function (null by default: the global one). */
  type Constructors = "WebSocket" | "EventSource" | "fetch";

  interface BackoffOptions {
    /** First reconnect delay, ms (500). */
    minDelay?: number;
    /** Cap on the reconnect delay, ms (30000). */
    maxDelay?: number;
    /** Backoff growth per attempt (2). */
    factor?: number;
    /** +-randomisation, 0..1 (0.5). */
    jitter?: number;
  }

  interface HeartbeatOptions {
    /** tether.v1: send {"type":"ping"} this often, ms (25000; 0 turns it off). */
    heartbeatInterval: number;
    /** No traffic this long after a ping: reconnect, ms (10000). */
    heartbeatTimeout: number;
  }

  /** Anything with the browser WebSocket's constructor and on* handlers (the `ws` package qualifies). */
  interface WebSocketConstructor {
    new (url: string, protocols?: string | string[]): any;
  }

  /** Anything with the browser EventSource's constructor and events. */
  interface EventSourceConstructor {
    new (url: string): any;
  }

  /** What the HTTP transport POSTs with (the global fetch qualifies). */
  type FetchFunction = (url: string, init: { method: "POST"; body: string; headers: Record<string, string>; cache: "no-store"; signal?: any; keepalive?: boolean }) => Promise<{ ok: boolean; status: number; text(): Promise<string> }>;

  interface Options extends BackoffOptions, Partial<HeartbeatOptions> {
    /** Subprotocols to offer; json adds "tether.v1". */
    protocols?: string[];
    /** Speak tether.v1 (JSON envelopes): messages are parsed, subscribe/publish/chat resolve on ack. */
    json?: boolean;
    /** Give up after this many failed attempts in a row (Infinity). */
    maxAttempts?: number;
    /** A connection open this long resets the attempt counter, ms (5000). */
    stableAfter?: number;
    /** Reconnect after a close that close() did not ask for (true). */
    reconnect?: boolean;
    /** Messages kept while disconnected (1000). */
    queueLimit?: number;
    /** What send does when the queue is full ("reject"). */
    queueFull?: "reject" | "drop-oldest";
    /** Reject an ack promise after this long, ms (10000). */
    ackTimeout?: number;
    /** The WebSocket constructor; default: globalThis.WebSocket. */
    WebSocket?: WebSocketConstructor | null;
    /** "auto" (default): WebSocket first, switching to HTTP at once when WebSocket is
     * missing, the upgrade fails or no welcome comes within welcomeTimeout, and staying
     * on a transport once it has worked. Or always "websocket", or always "http". */
    transport?: "auto" | Transport;
    /** auto: a WebSocket that never worked and has no welcome (json; open in plain mode) this long switches to HTTP, ms (4000). */
    welcomeTimeout?: number;
    /** HTTP transport: a broken stream not resumed this long opens a new session, ms (15000). */
    resumeTimeout?: number;
    /** HTTP transport: the EventSource constructor; default: globalThis.EventSource. */
    EventSource?: EventSourceConstructor | null;
    /** HTTP transport: the fetch function for POSTs; default: globalThis.fetch. */
    fetch?: FetchFunction | null;
    /** tether.v1: a JWT, or a function that fetches one (called for every
     * connection and refresh), sent in a first `auth` message. */
    token?: TokenSource | null;
    /** With a token function: refresh this long before the token's exp, ms (30000). */
    refreshAhead?: number;
  }

  /** A token, or what fetches one. */
  type TokenSource = string | (() => string | Promise<string>);

  /** The answer to an `auth` or `refresh`. */
  interface Authenticated {
    type: "authenticated";
    user: string;
    /** The token's exp (Unix seconds), or null. */
    expires_at: number | null;
    id?: string | number | null;
  }

  /** The token expires at `expires_at`; the server closes at `close_at` unless it is refreshed. */
  interface TokenExpiring {
    type: "token_expiring";
    expires_at: number;
    close_at: number;
  }

  interface HeartbeatState {
    nextPing: number;
    deadline: number | null;
  }

  type HeartbeatAction = "send_ping" | "peer_dead" | null;

  interface OpenEvent {
    /** The negotiated subprotocol ("tether.v1" or ""). */
    protocol: string;
    attempt: number;
    transport: Transport;
  }

  interface TransportEvent {
    transport: Transport;
    /** null for the first attempt. */
    previous: Transport | null;
    /** Why: "websocket_first", "no_websocket", "websocket_failed", "no_welcome", "worked" or "option". */
    reason: "websocket_first" | "no_websocket" | "websocket_failed" | "no_welcome" | "worked" | "option";
  }

  interface CloseEvent {
    wasClean: boolean;
    code: number;
    reason: string;
    /** An error event came before this close. */
    failed: boolean;
  }

  interface ReconnectingEvent {
    attempt: number;
    /** ms until the attempt: the backoff, or a draining server's hint. */
    delay: number;
  }

  interface GiveupEvent {
    attempts: number;
  }

  interface Welcome {
    type: "welcome";
    session: string;
    room: string;
    protocol: "tether.v1";
  }

  interface Message {
    type: "message";
    topic: string;
    epoch: string;
    seq: number;
    sender: string;
    ts: number;
    /** The conflation key the message was published with. */
    key?: string;
    content: Json;
  }

  interface SubscribeOptions {
    /** Receive JSON Merge Patch deltas (applied transparently). */
    delta?: boolean;
    /** After a reconnect, resume from the last message seen (`since`/`epoch`). */
    resume?: boolean;
  }

  interface PublishOptions {
    /** Conflation key: a newer message with the same topic and key replaces an unsent older one. */
    key?: string;
  }

  interface Ack {
    type: "ack";
    id?: string | number;
    topic?: string;
    epoch?: string;
    seq?: number;
  }

  type ErrorCode =
    | "bad_json" | "not_an_object" | "missing_type" | "unknown_type" | "missing_field" | "invalid_field"
    | "not_subscribed" | "too_many_subscriptions" | "binary_not_supported" | "history_gap" | "lagged"
    | "rate_limited" | "unavailable" | "reserved_topic" | "forbidden" | "room_refused"
    | "unauthorized" | "expired" | "bad_signature" | "invalid_token" | "unknown_key";

  interface ErrorEnvelope {
    type: "error";
    code: ErrorCode | (string & {});
    message: string;
    id?: string | number;
    topic?: string;
    epoch?: string;
    first_seq?: number;
  }

  interface Presence {
    type: "presence";
    topic: string;
    event: "join" | "leave";
    session: string;
    /** The session's user (a token's sub), when it is authenticated. */
    user?: string;
    count: number;
  }

  /** A tether.v1 server envelope (what "message" carries when json is set). */
  type Envelope = Welcome | Message | Ack | ErrorEnvelope | Presence | Authenticated | TokenExpiring;

  /** A rejected ack promise: an error envelope's message and code. */
  interface RequestError extends Error {
    code?: ErrorCode | (string & {});
  }

  interface EventMap {
    open: OpenEvent;
    /** A parsed Envelope when json is set; otherwise the raw data (string, Blob, ArrayBuffer, Buffer). */
    message: any;
    close: CloseEvent;
    error: unknown;
    reconnecting: ReconnectingEvent;
    state: State;
    /** The transport changed (auto switching, or back to WebSocket after a backoff while none has worked). */
    transport: TransportEvent;
    giveup: GiveupEvent;
    /** An `auth` or `refresh` was accepted. */
    authenticated: Authenticated;
  }
}
