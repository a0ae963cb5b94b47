/*! tether.js: a small, dependency-free WebSocket client for tether serve.
 *
 * Wraps the browser's WebSocket with the events of the classic tutorial
 * (open, message, close {wasClean, code, reason}, error) plus what real clients
 * need: reconnect with exponential backoff and jitter, sends queued while
 * disconnected (bounded), a heartbeat that notices a dead server, and helpers
 * for the tether.v1 JSON envelope (subscribe, publish and chat, with acks as
 * promises; topics are re-subscribed after a reconnect).
 *
 *   const client = new TetherClient("ws://localhost:8080/lobby", { json: true });
 *   client.on("open", () => console.log("connected"));
 *   client.on("message", (msg) => console.log(msg));     // parsed envelope when json
 *   client.on("close", ({ wasClean, code, reason }) => {});
 *   client.on("reconnecting", ({ attempt, delay }) => {});
 *   await client.subscribe("news");
 *   const { seq } = await client.publish("news", { headline: "hi" });
 *   // A ticker: conflated by key, delivered as JSON Merge Patches that
 *   // tether.js applies (messages arrive with their full content), resumed
 *   // from the last message seen after a reconnect.
 *   await client.subscribe("prices", { delta: true, resume: true });
 *   await client.publish("prices", { symbol: "TTR", price: 42 }, { key: "TTR" });
 *
 * The same file is the classic script (`<script src="/tether.js">`, which
 * defines window.TetherClient), a CommonJS module (`require("tether-client")`)
 * and, through tether.mjs, an ES module. In Node (before 22) give it a
 * WebSocket: `new TetherClient(url, { WebSocket: require("ws") })`.
 *
 * Event order per connection: (reconnecting) -> open -> message* -> close
 * [-> error before close when the connection failed].
 *
 * Two transports behind the same API and events: WebSocket, and for
 * networks whose proxies strip `Upgrade` the HTTP transport (Server-Sent
 * Events down, POSTed batches up; docs/protocol.md, "HTTP transport").
 * With transport "auto" (the default) the client tries WebSocket first and
 * switches to HTTP at once when `WebSocket` is missing, when the upgrade
 * fails or when no welcome arrives within welcomeTimeout; once a transport
 * has worked it stays on it. `client.transport` says which one is in use,
 * and a "transport" event tells each change.
 */
(function (global) {
  "use strict";

  var DEFAULTS = {
    protocols: [],
    json: false,              // speak tether.v1 (JSON envelopes)
    minDelay: 500,            // first reconnect delay, ms
    maxDelay: 30000,          // cap on the reconnect delay, ms
    factor: 2,                // backoff growth per attempt
    jitter: 0.5,              // +-50% randomisation, so restarts are not stampeded
    maxAttempts: Infinity,    // give up after this many failed attempts in a row
    stableAfter: 5000,        // a connection open this long resets the attempt counter
    reconnect: true,
    queueLimit: 1000,         // messages kept while disconnected
    queueFull: "reject",      // "reject" (send returns false) or "drop-oldest"
    heartbeatInterval: 25000, // tether.v1: send {"type":"ping"} this often
    heartbeatTimeout: 10000,  // no traffic this long after a ping: reconnect
    ackTimeout: 10000,        // reject an ack promise after this long
    token: null,              // tether.v1: a JWT, or a function returning one (or a Promise of one), sent in a first auth message
    refreshAhead: 30000,      // with a token function: fetch a new token and refresh this long before the token's exp, ms
    WebSocket: null,          // a WebSocket constructor (e.g. the ws package in Node); default: the global one
    transport: "auto",        // "auto" (WebSocket first, the HTTP transport when that fails), "websocket" or "http"
    welcomeTimeout: 4000,     // auto: a WebSocket that never worked and has no welcome (json) or open (plain) this long: switch to HTTP
    resumeTimeout: 15000,     // HTTP transport: a broken stream not resumed this long: open a new session
    EventSource: null,        // HTTP transport: an EventSource constructor; default: the global one
    fetch: null               // HTTP transport: a fetch function; default: the global one
  };

  // The tether.v1 rules, shared with the hub and the Rust client
  // (crates/tether/src/v1) and checked against the same cases
  // (crates/tether/tests/v1_cases.json, by tests/browser/v1_cases.test.mjs).

  /** The delay before reconnect attempt `attempt` (1-based), in ms:
   * min(maxDelay, minDelay * factor^(attempt-1)), spread by +-jitter of
   * itself, never above maxDelay. A factor below 1 counts as 1, jitter is
   * clamped to 0..1, a maxDelay below minDelay means minDelay. */
  function backoffDelay(attempt, opts) {
    var o = Object.assign({}, DEFAULTS, opts || {});
    var factor = isFinite(o.factor) ? Math.max(1, o.factor) : 1;
    var max = Math.max(o.maxDelay, o.minDelay);
    var base = o.minDelay * Math.pow(factor, Math.min(1024, Math.max(0, attempt - 1)));
    base = isFinite(base) ? Math.min(max, base) : max;
    var jitter = isFinite(o.jitter) ? Math.min(1, Math.max(0, o.jitter)) : 0;
    var spread = base * jitter;
    var unit = Math.min(1, Math.max(0, Math.random()));
    return Math.round(Math.min(max, Math.max(0, base - spread + unit * 2 * spread)));
  }

  /** The reconnect delay (ms) a close asks for: a draining server closes
   * with 1012 (service restart) and the reason
   * "service restart; reconnect_after_ms=N" (docs/protocol.md, "Drain").
   * null for any other close; capped at 300000 (5 minutes). */
  function reconnectHint(code, reason) {
    if (code !== 1012 || typeof reason !== "string") return null;
    var m = /reconnect_after_ms=(\d{1,10})(?!\d)/.exec(reason);
    if (!m) return null;
    return Math.min(300000, parseInt(m[1], 10));
  }

  /** The heartbeat rule: a ping every heartbeatInterval unless the previous
   * one is unanswered; an answer (here: any traffic) clears the wait; a ping
   * unanswered for heartbeatTimeout means the server is gone. The state of a
   * connection opened at `now` (ms). */
  function heartbeatStart(now, opts) {
    return { nextPing: now + opts.heartbeatInterval, deadline: null };
  }

  /** Advance `state` to `now` (ms): "send_ping", "peer_dead" or null. A
   * "send_ping" starts the wait for an answer; a due ping that is skipped or
   * late moves the next one to now + heartbeatInterval. */
  function heartbeatAction(state, now, opts) {
    var action = null;
    if (state.deadline !== null) {
      if (now >= state.deadline) action = "peer_dead";
    } else if (now >= state.nextPing) {
      action = "send_ping";
    }
    if (now >= state.nextPing) state.nextPing = now + opts.heartbeatInterval;
    if (action === "send_ping") state.deadline = now + opts.heartbeatTimeout;
    return action;
  }

  /** An answer arrived: stop waiting. */
  function heartbeatAnswer(state) {
    state.deadline = null;
  }

  /** RFC 7396 MergePatch: `patch` applied to `target` (which it may modify). */
  function mergePatch(target, patch) {
    if (patch === null || typeof patch !== "object" || Array.isArray(patch)) return patch;
    if (target === null || typeof target !== "object" || Array.isArray(target)) target = {};
    Object.keys(patch).forEach(function (k) {
      if (patch[k] === null) delete target[k];
      else target[k] = mergePatch(target[k], patch[k]);
    });
    return target;
  }

  function cloneJson(v) {
    return v === undefined ? v : JSON.parse(JSON.stringify(v));
  }

  /** Most (topic, key) contents held to apply delta patches to. */
  var MAX_HELD = 10000;

  /** When heartbeatAction next has something to do (ms). */
  function heartbeatNextWake(state) {
    return state.deadline === null ? state.nextPing : Math.min(state.deadline, state.nextPing);
  }

  var clock = (typeof performance !== "undefined" && performance.now) ? function () { return performance.now(); } : Date.now;

  // The HTTP transport (docs/protocol.md, "HTTP transport"): a session's
  // events arrive as Server-Sent Events; what the client sends goes in
  // POSTed batches, one POST in flight, each with the next sequence number
  // (a retry is applied once). HttpSocket looks like a WebSocket to the
  // client (readyState, send, close, on* handlers), plus onstall/onresume
  // while EventSource resumes a broken stream by itself (Last-Event-ID) and
  // onping for the server's envelope-level pings.

  /** The http(s) URL of a ws(s) one, and the other way round. */
  function httpUrl(url) { return String(url).replace(/^ws(s?):\/\//i, "http$1://"); }
  function wsUrl(url) { return String(url).replace(/^http(s?):\/\//i, "ws$1://"); }

  function withParams(url, params) {
    var u = new URL(url, typeof location !== "undefined" ? location.href : undefined);
    Object.keys(params).forEach(function (k) { u.searchParams.set(k, params[k]); });
    return u.toString();
  }

  /** The server's bounds on one POST: 64 messages (413 beyond), and a body of
   * at most --max-message-size (1 MiB by default); batches stay well below. */
  var POST_MESSAGES = 64;
  var POST_BYTES = 64 * 1024;
  /** Failed POSTs in a row before the session is given up. */
  var POST_RETRIES = 8;

  function HttpSocket(url, protocols, options) {
    var self = this;
    var ES = options.EventSource || globalThis.EventSource;
    this._fetch = options.fetch || globalThis.fetch;
    if (!ES || !this._fetch) throw new Error("no EventSource or fetch for the HTTP transport: pass options.EventSource and options.fetch");
    this.url = httpUrl(url);
    this.protocol = protocols.indexOf("tether.v1") >= 0 ? "tether.v1" : "";
    this.readyState = 0;
    this.key = null;
    this.onopen = this.onmessage = this.onerror = this.onclose = null;
    this.onstall = this.onresume = this.onping = null;
    this._limit = options.queueLimit;
    this._seq = 0;
    this._outbox = [];
    this._inflight = null;
    this._failures = 0;
    this._stalled = false;
    this._done = false;
    this._timers = {};
    var es = this._es = new ES(withParams(this.url, this.protocol ? { protocol: "tether.v1" } : {}));
    es.addEventListener("session", function (ev) {
      self.key = ev.data;
      self.readyState = 1;
      if (self.onopen) self.onopen({});
    });
    // The stream (re)attached: after a resume, sending goes on.
    es.addEventListener("open", function () {
      if (!self._stalled || self._done) return;
      self._stalled = false;
      clearTimeout(self._timers.resume);
      self.readyState = 1;
      if (self.onresume) self.onresume();
      self._flush();
    });
    es.onmessage = function (ev) { if (!self._done && self.onmessage) self.onmessage({ data: ev.data }); };
    es.addEventListener("ping", function (ev) { if (!self._done && self.onping) self.onping(ev.data); });
    es.addEventListener("close", function (ev) {
      var c = {};
      try { c = JSON.parse(ev.data); } catch (e) { /* a close all the same */ }
      self._finish(typeof c.code === "number" ? c.code : 1006, typeof c.reason === "string" ? c.reason : "", true);
    });
    es.onerror = function () {
      if (self._done) return;
      // Never opened, or an HTTP error (EventSource gives up by itself on
      // one: 404 for a session this server does not know, 403, 503...).
      if (self.readyState === 0 && !self._stalled || es.readyState === 2) return self._fail("the event stream failed");
      // A network error: EventSource reconnects with Last-Event-ID.
      if (self._stalled) return;
      self._stalled = true;
      self.readyState = 0;
      if (self.onstall) self.onstall();
      self._timers.resume = setTimeout(function () { self._fail("the event stream was not resumed within " + options.resumeTimeout + " ms"); }, options.resumeTimeout);
    };
  }

  /** Queue text for the next POST; false if the queue is full (or closed). */
  HttpSocket.prototype.send = function (data) {
    if (this._done) return false;
    if (typeof data !== "string") {
      this._error("the HTTP transport sends text only (a " + Object.prototype.toString.call(data) + " was not sent)");
      return false;
    }
    if (this._outbox.length >= this._limit) return false;
    this._outbox.push(data);
    this._flush();
    return true;
  };

  /** Ends the session: the server is told (`&close=1`, as a close frame
   * would), so the room hears the leave at once. */
  HttpSocket.prototype.close = function (code, reason) {
    if (!this._done && this.key !== null) {
      var done = function () {};
      try {
        // keepalive: the request outlives a page that is being closed.
        this._fetch.call(globalThis, withParams(this.url, { session: this.key, close: "1" }), {
          method: "POST", body: "", headers: { "Content-Type": "text/plain;charset=UTF-8" }, cache: "no-store", keepalive: true
        }).then(done, done);
      } catch (e) { /* best effort: the session expires by itself */ }
    }
    this._finish(code || 1000, reason || "", true);
  };

  /** POST the next batch, unless one is in flight. */
  HttpSocket.prototype._flush = function () {
    if (this._done || this._inflight || this.key === null || !this._outbox.length) return;
    var n = 0;
    var bytes = 2;
    while (n < this._outbox.length && n < POST_MESSAGES) {
      var size = this._outbox[n].length * 2 + 3; // an upper bound on its JSON string
      if (n > 0 && bytes + size > POST_BYTES) break;
      bytes += size;
      n += 1;
    }
    this._inflight = { seq: ++this._seq, body: JSON.stringify(this._outbox.splice(0, n)) };
    this._post();
  };

  HttpSocket.prototype._post = function () {
    var self = this;
    var batch = this._inflight;
    var abort = typeof AbortController !== "undefined" ? new AbortController() : null;
    this._abort = abort;
    var url = withParams(this.url, { session: this.key, seq: String(batch.seq) });
    // text/plain keeps a cross-origin POST a simple request (no preflight).
    this._fetch.call(globalThis, url, {
      method: "POST",
      body: batch.body,
      headers: { "Content-Type": "text/plain;charset=UTF-8" },
      cache: "no-store",
      signal: abort ? abort.signal : undefined
    }).then(function (res) {
      if (self._done) return;
      if (res.ok) {
        self._inflight = null;
        self._failures = 0;
        return self._flush();
      }
      if (res.status >= 500 || res.status === 429) return self._retry();
      return res.text().then(function (text) {
        // 404: the session is gone (expired, or the server restarted): the
        // client opens a new one. 413: a message too large, as a 1009 close.
        var code = res.status === 404 ? 1006 : res.status === 413 ? 1009 : res.status === 409 ? 1002 : 1008;
        self._fail("POST answered " + res.status + ": " + text.trim(), code, text.trim());
      });
    }, function () {
      if (!self._done) self._retry();
    });
  };

  /** No answer: the same batch again (the server applies a sequence number once). */
  HttpSocket.prototype._retry = function () {
    var self = this;
    this._failures += 1;
    if (this._failures > POST_RETRIES) return this._fail("POST failed " + POST_RETRIES + " times in a row");
    this._timers.retry = setTimeout(function () { self._post(); }, Math.min(4000, 125 * Math.pow(2, this._failures)));
  };

  HttpSocket.prototype._error = function (message) {
    if (this.onerror) this.onerror(new Error("HTTP transport: " + message));
  };

  HttpSocket.prototype._fail = function (message, code, reason) {
    if (this._done) return;
    this._error(message);
    this._finish(code || 1006, reason || "", false);
  };

  HttpSocket.prototype._finish = function (code, reason, wasClean) {
    var self = this;
    if (this._done) return;
    this._done = true;
    this.readyState = 3;
    this._es.close();
    clearTimeout(this._timers.resume);
    clearTimeout(this._timers.retry);
    if (this._abort) this._abort.abort();
    // As a WebSocket's, the close event comes after the call that caused it.
    setTimeout(function () {
      if (self.onclose) self.onclose({ code: code, reason: reason, wasClean: wasClean });
    }, 0);
  };

  function TetherClient(url, options) {
    this.url = url;
    this.options = Object.assign({}, DEFAULTS, options || {});
    if (this.options.json && this.options.protocols.indexOf("tether.v1") < 0) {
      this.options.protocols = this.options.protocols.concat(["tether.v1"]);
    }
    this.handlers = {};
    this.queue = [];
    this.attempt = 0;
    this.topics = new Set();
    this.topicOptions = new Map(); // topic -> { delta, resume }
    this.positions = new Map();    // topic -> { epoch, seq }: where a resume starts
    this.held = new Map();         // topic \0 key -> { epoch, seq, content }: what patches apply to
    this.pending = new Map();
    this.nextId = 1;
    this.session = null;
    this.closedByUser = false;
    this.ws = null;
    this.timers = {};
    this.heartbeat = null;
    this.state = "connecting";
    this.transport = null;   // "websocket" or "http": the transport of the current attempt
    this._worked = null;     // the transport that has worked (auto stays on it)
    this._fallback = null;   // why the next attempt uses HTTP at once
    this._connect();
  }

  TetherClient.backoffDelay = backoffDelay;
  TetherClient.reconnectHint = reconnectHint;
  TetherClient.heartbeatStart = heartbeatStart;
  TetherClient.heartbeatAction = heartbeatAction;
  TetherClient.heartbeatAnswer = heartbeatAnswer;
  TetherClient.heartbeatNextWake = heartbeatNextWake;
  TetherClient.mergePatch = mergePatch;
  TetherClient.DEFAULTS = DEFAULTS;

  TetherClient.prototype.on = function (event, fn) {
    (this.handlers[event] = this.handlers[event] || []).push(fn);
    return this;
  };

  TetherClient.prototype.off = function (event, fn) {
    var list = this.handlers[event] || [];
    var i = list.indexOf(fn);
    if (i >= 0) list.splice(i, 1);
    return this;
  };

  TetherClient.prototype._emit = function (event, payload) {
    (this.handlers[event] || []).slice().forEach(function (fn) {
      try { fn(payload); } catch (e) { setTimeout(function () { throw e; }); }
    });
  };

  TetherClient.prototype._setState = function (state) {
    if (this.state !== state) {
      this.state = state;
      this._emit("state", state);
    }
  };

  /** The JWT's exp claim (Unix seconds), or null if it cannot be read. */
  function tokenExpiry(token) {
    try {
      var part = String(token).split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      while (part.length % 4) part += "=";
      var exp = JSON.parse(atob(part)).exp;
      return typeof exp === "number" ? exp : null;
    } catch (e) {
      return null;
    }
  }
  TetherClient.tokenExpiry = tokenExpiry;

  /** The current token: options.token, called if it is a function. */
  TetherClient.prototype._fetchToken = function () {
    var t = this.options.token;
    try {
      return Promise.resolve(typeof t === "function" ? t() : t);
    } catch (e) {
      return Promise.reject(e);
    }
  };

  /** With a token function: refresh refreshAhead ms before the token expires. */
  TetherClient.prototype._scheduleRefresh = function (token) {
    var self = this;
    clearTimeout(this.timers.refresh);
    var exp = tokenExpiry(token);
    if (typeof this.options.token !== "function" || exp === null) return;
    var delay = Math.max(1000, exp * 1000 - Date.now() - this.options.refreshAhead);
    this.timers.refresh = setTimeout(function () {
      self.refresh().catch(function (e) { self._emit("error", e); });
    }, delay);
  };

  /** tether.v1: fetch a new token (options.token must be a function) and
   * send it in a refresh request; resolves with the authenticated envelope. */
  TetherClient.prototype.refresh = function () {
    var self = this;
    if (typeof this.options.token !== "function") return Promise.reject(new Error("refresh needs options.token to be a function"));
    if (this._refreshing) return this._refreshing;
    var p = this._fetchToken().then(function (token) {
      self._token = token;
      return self._request({ type: "refresh", token: token }).then(function (msg) {
        self._scheduleRefresh(token);
        self._emit("authenticated", msg);
        return msg;
      });
    });
    this._refreshing = p;
    var done = function () { self._refreshing = null; };
    p.then(done, done);
    return p;
  };

  TetherClient.prototype._connect = function () {
    var self = this;
    this._setState(this.attempt === 0 ? "connecting" : "reconnecting");
    if (this.options.token === null || this.options.token === undefined) return this._open();
    // A token (fetched anew for every connection) goes in the first message.
    this._fetchToken().then(function (token) {
      if (self.closedByUser) return;
      self._token = token;
      self._open();
    }, function (e) {
      self._emit("error", e);
      self._scheduleReconnect();
    });
  };

  /** Whether auto may switch to the HTTP transport here. */
  TetherClient.prototype._canSwitch = function () {
    var o = this.options;
    return o.transport === "auto" && !!(o.EventSource || globalThis.EventSource) && !!(o.fetch || globalThis.fetch);
  };

  /** The transport of the next attempt (and a "transport" event if it changes). */
  TetherClient.prototype._chooseTransport = function () {
    var o = this.options;
    var kind = "websocket";
    var reason = "websocket_first";
    if (o.transport === "websocket" || o.transport === "http") {
      kind = o.transport;
      reason = "option";
    } else if (this._worked) {
      kind = this._worked;
      reason = "worked";
    } else if (!(o.WebSocket || globalThis.WebSocket) && this._canSwitch()) {
      kind = "http";
      reason = "no_websocket";
    } else if (this._fallback) {
      kind = "http";
      reason = this._fallback;
    }
    this._fallback = null;
    if (this.transport !== kind) {
      var previous = this.transport;
      this.transport = kind;
      this._emit("transport", { transport: kind, previous: previous, reason: reason });
    }
    return kind;
  };

  /** Send what was queued while down. */
  TetherClient.prototype._flushQueue = function () {
    var ws = this.ws;
    var queued = this.queue;
    this.queue = [];
    queued.forEach(function (data) { ws.send(data); });
  };

  TetherClient.prototype._open = function () {
    var self = this;
    var kind = this._chooseTransport();
    var ws;
    try {
      if (kind === "http") {
        ws = new HttpSocket(this.url, this.options.protocols, this.options);
      } else {
        var Ctor = this.options.WebSocket || globalThis.WebSocket;
        if (!Ctor) throw new Error("no WebSocket: pass options.WebSocket (e.g. require(\"ws\")) or set globalThis.WebSocket");
        ws = new Ctor(wsUrl(this.url), this.options.protocols);
      }
    } catch (e) {
      this._emit("error", e);
      this._scheduleReconnect();
      return;
    }
    this.ws = ws;
    var failed = false;
    var ended = false;
    // auto: a WebSocket that never worked switches to HTTP at once when it
    // fails or has no welcome (json; open in plain mode) within welcomeTimeout.
    var mayFall = kind === "websocket" && !this._worked && this._canSwitch();
    if (mayFall) {
      clearTimeout(this.timers.welcome);
      this.timers.welcome = setTimeout(function () {
        if (self.ws !== ws || self._worked || ended) return;
        self._fallback = "no_welcome";
        // Do not wait for a closing handshake a middlebox may never answer.
        ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
        try { ws.close(4000, "no welcome"); } catch (e) { /* already closing */ }
        closed({ wasClean: false, code: 1006, reason: "no welcome within " + self.options.welcomeTimeout + " ms" });
      }, this.options.welcomeTimeout);
    }
    ws.onopen = function () {
      self._setState("open");
      clearTimeout(self.timers.stable);
      self.timers.stable = setTimeout(function () { self.attempt = 0; }, self.options.stableAfter);
      if (!self.options.json) self._worked = kind;
      self._emit("open", { protocol: ws.protocol, attempt: self.attempt, transport: kind });
      // The token first: the server handles messages in order, so what
      // follows is already authenticated.
      if (self._token !== undefined && self._token !== null) {
        var authId = "auth-" + self.nextId++;
        self.pending.set(authId, {
          resolve: function (msg) { self._emit("authenticated", msg); },
          reject: function (e) { self._emit("error", e); },
          timer: null
        });
        ws.send(JSON.stringify({ type: "auth", token: self._token, id: authId }));
        self._scheduleRefresh(self._token);
      }
      // Re-subscribe, then flush what was queued while down.
      if (self.options.json) {
        self.topics.forEach(function (topic) { self._request(self._subscribeEnvelope(topic, true), true); });
      }
      self._flushQueue();
      self._startHeartbeat();
    };
    if (kind === "http") {
      // The stream broke and EventSource resumes it (Last-Event-ID): sends
      // wait in the queue meanwhile. Server pings count as traffic.
      ws.onstall = function () { self._setState("reconnecting"); };
      ws.onresume = function () {
        self._setState("open");
        self._flushQueue();
      };
      ws.onping = function () { self._sawTraffic(); };
    }
    ws.onmessage = function (ev) {
      self._sawTraffic();
      var data = ev.data;
      if (self.options.json && typeof data === "string") {
        var msg;
        try { msg = JSON.parse(data); } catch (e) { self._emit("error", e); return; }
        if (msg.type === "welcome") {
          self._worked = kind;
          clearTimeout(self.timers.welcome);
        }
        if (msg.type === "message" && !self._applyDelta(msg)) return;
        self._handleEnvelope(msg);
        if (msg.type === "ack" && msg.id !== undefined && msg.id !== null && String(msg.id).indexOf("hb-") === 0) return;
        self._emit("message", msg);
      } else {
        self._emit("message", data);
      }
    };
    ws.onerror = function (ev) {
      failed = true;
      self._emit("error", ev);
    };
    function closed(ev) {
      if (ended) return;
      ended = true;
      self._stopHeartbeat();
      clearTimeout(self.timers.stable);
      clearTimeout(self.timers.refresh);
      if (self.ws === ws) {
        self.ws = null;
        clearTimeout(self.timers.welcome);
      }
      self._emit("close", { wasClean: ev.wasClean, code: ev.code, reason: ev.reason, failed: failed });
      self._failPending(new Error("connection closed (" + ev.code + ")"));
      if (self.closedByUser || !self.options.reconnect) {
        self._setState("closed");
      } else if (mayFall && !self._worked) {
        // The upgrade failed (refused, stripped, or no welcome): HTTP now, not after a backoff.
        if (!self._fallback) self._fallback = "websocket_failed";
        self._connect();
      } else {
        // A draining server's hint replaces the backoff: its clients
        // arrive at the other nodes spread over its drain window.
        self._scheduleReconnect(reconnectHint(ev.code, ev.reason));
      }
    }
    ws.onclose = closed;
  };

  TetherClient.prototype._scheduleReconnect = function (hint) {
    var self = this;
    this.attempt += 1;
    if (this.attempt > this.options.maxAttempts) {
      this._setState("closed");
      this._emit("giveup", { attempts: this.attempt - 1 });
      return;
    }
    var delay = typeof hint === "number" ? hint : backoffDelay(this.attempt, this.options);
    this._setState("reconnecting");
    this._emit("reconnecting", { attempt: this.attempt, delay: delay });
    this.timers.reconnect = setTimeout(function () { self._connect(); }, delay);
  };

  TetherClient.prototype._startHeartbeat = function () {
    var self = this;
    this._stopHeartbeat();
    if (!this.options.heartbeatInterval) return;
    // Only tether.v1 has a ping a page can send (and an ack to time): the
    // browser answers the server's WebSocket pings itself and never shows
    // them to JavaScript. In plain mode a quiet room has no traffic at all,
    // so arming the timer there would close healthy connections; plain mode
    // relies on the server's heartbeat and on TCP instead.
    if (!this.options.json) return;
    var opts = this.options;
    var hb = this.heartbeat = heartbeatStart(clock(), opts);
    function arm() {
      self.timers.heartbeat = setTimeout(fire, Math.max(0, heartbeatNextWake(hb) - clock()));
    }
    function fire() {
      if (self.heartbeat !== hb) return;
      var action = heartbeatAction(hb, clock(), opts);
      if (action === "send_ping") {
        if (self.ws && self.ws.readyState === 1) self.ws.send(JSON.stringify({ type: "ping", id: "hb-" + self.nextId++ }));
        else heartbeatAnswer(hb); // not sent: nothing to wait for
      } else if (action === "peer_dead") {
        // No traffic since the ping: the server (or the path to it) is gone.
        self._emit("error", new Error("heartbeat timeout"));
        if (self.ws) self.ws.close(4000, "heartbeat timeout");
        return;
      }
      arm();
    }
    arm();
  };

  TetherClient.prototype._sawTraffic = function () {
    if (this.heartbeat) heartbeatAnswer(this.heartbeat);
  };

  TetherClient.prototype._stopHeartbeat = function () {
    clearTimeout(this.timers.heartbeat);
    this.heartbeat = null;
  };

  TetherClient.prototype._handleEnvelope = function (msg) {
    var self = this;
    if (msg.type === "welcome") this.session = msg.session;
    if (msg.type === "token_expiring" && typeof this.options.token === "function") {
      // The server closes at close_at unless a new token comes first.
      this.refresh().catch(function (e) { self._emit("error", e); });
    }
    if ((msg.type === "ack" || msg.type === "error" || msg.type === "authenticated" || msg.type === "rpc_result") && msg.id !== undefined && msg.id !== null) {
      var p = this.pending.get(msg.id);
      if (p) {
        this.pending.delete(msg.id);
        clearTimeout(p.timer);
        if (msg.type !== "error") p.resolve(msg);
        else p.reject(Object.assign(new Error(msg.message), { code: msg.code }));
      }
    }
  };

  /** A message of a delta or resumed topic: a patch becomes the full
   * content again (RFC 7396, on the content held for its key), and the
   * position is kept for a resume. False if it cannot be applied (reported
   * as an error event, the message is not delivered). */
  TetherClient.prototype._applyDelta = function (msg) {
    var opts = this.topicOptions.get(msg.topic);
    if (!opts) return true;
    var pos = this.positions.get(msg.topic);
    if (!pos || pos.epoch !== msg.epoch || msg.seq > pos.seq) this.positions.set(msg.topic, { epoch: msg.epoch, seq: msg.seq });
    if (!opts.delta) return true;
    var slot = msg.topic + "\u0000" + (msg.key || "");
    var content;
    if (Object.prototype.hasOwnProperty.call(msg, "patch")) {
      var held = this.held.get(slot);
      if (!held || held.seq !== msg.base || held.epoch !== msg.epoch) {
        this._emit("error", Object.assign(new Error("delta for " + msg.topic + " (key " + JSON.stringify(msg.key || "") + ") against seq " + msg.base + ", which this client does not hold"), { code: "delta_base" }));
        return false;
      }
      content = mergePatch(cloneJson(held.content), msg.patch);
      delete msg.patch;
      delete msg.base;
      msg.content = cloneJson(content);
    } else {
      content = cloneJson(msg.content);
    }
    if (this.held.size >= MAX_HELD && !this.held.has(slot)) this.held.delete(this.held.keys().next().value);
    this.held.set(slot, { epoch: msg.epoch, seq: msg.seq, content: content });
    return true;
  };

  TetherClient.prototype._subscribeEnvelope = function (topic, resuming) {
    var env = { type: "subscribe", topic: topic };
    var opts = this.topicOptions.get(topic);
    if (opts && opts.delta) env.delta = "merge-patch";
    var pos = this.positions.get(topic);
    if (resuming && opts && opts.resume && pos) {
      env.since = pos.seq;
      if (pos.epoch !== undefined) env.epoch = pos.epoch;
    }
    return env;
  };

  TetherClient.prototype._failPending = function (err) {
    this.pending.forEach(function (p) { clearTimeout(p.timer); p.reject(err); });
    this.pending.clear();
  };

  /** Send raw data (string, Blob, ArrayBuffer). Queued while disconnected;
   * returns false when the queue is full and queueFull is "reject". */
  TetherClient.prototype.send = function (data) {
    if (this.ws && this.ws.readyState === 1) {
      // The HTTP transport says false when its own bound is reached.
      return this.ws.send(data) !== false;
    }
    if (this.closedByUser) return false;
    if (this.queue.length >= this.options.queueLimit) {
      if (this.options.queueFull !== "drop-oldest") return false;
      this.queue.shift();
    }
    this.queue.push(data);
    return true;
  };

  TetherClient.prototype._request = function (envelope, fireAndForget) {
    var self = this;
    var id = "r" + this.nextId++;
    envelope.id = id;
    var text = JSON.stringify(envelope);
    if (fireAndForget) {
      if (this.ws && this.ws.readyState === 1) this.ws.send(text);
      return Promise.resolve();
    }
    return new Promise(function (resolve, reject) {
      var timer = setTimeout(function () {
        self.pending.delete(id);
        reject(new Error("no ack within " + self.options.ackTimeout + " ms"));
      }, self.options.ackTimeout);
      self.pending.set(id, { resolve: resolve, reject: reject, timer: timer });
      if (!self.send(text)) {
        clearTimeout(timer);
        self.pending.delete(id);
        reject(new Error("send queue full"));
      }
    });
  };

  /** tether.v1: subscribe to a topic (kept across reconnects). Resolves on ack.
   * options.delta: receive JSON Merge Patches, applied here (messages still
   * carry their full content). options.resume: after a reconnect, ask for
   * what was missed since the last message seen. */
  TetherClient.prototype.subscribe = function (topic, options) {
    var self = this;
    this.topics.add(topic);
    if (options && (options.delta || options.resume)) {
      this.topicOptions.set(topic, { delta: !!options.delta, resume: !!options.resume });
    }
    var request = this._request(this._subscribeEnvelope(topic, false));
    if (!this.topicOptions.has(topic)) return request;
    return request.then(function (ack) {
      // An ack without a position: the topic had no messages yet, so a
      // resume asks for everything it keeps (since 0, current epoch).
      if (ack && !self.positions.has(topic)) self.positions.set(topic, ack.epoch !== undefined ? { epoch: ack.epoch, seq: ack.seq } : { epoch: undefined, seq: 0 });
      return ack;
    });
  };

  /** tether.v1: stop receiving a topic. */
  TetherClient.prototype.unsubscribe = function (topic) {
    var self = this;
    this.topics.delete(topic);
    this.topicOptions.delete(topic);
    this.positions.delete(topic);
    this.held.forEach(function (_, slot) { if (slot.indexOf(topic + "\u0000") === 0) self.held.delete(slot); });
    return this._request({ type: "unsubscribe", topic: topic });
  };

  /** tether.v1: publish content (any JSON) to a topic. Resolves with the ack ({seq}).
   * options.key: a conflation key (e.g. a symbol): a slow subscriber gets the
   * newest message of each key instead of every one. */
  TetherClient.prototype.publish = function (topic, content, options) {
    var env = { type: "publish", topic: topic, content: content };
    if (options && options.key !== undefined) env.key = options.key;
    return this._request(env);
  };

  /** tether.v1: send a chat message to this connection's room. */
  TetherClient.prototype.chat = function (content) {
    return this._request({ type: "chat", content: content });
  };

  /** tether.v1: call a method of the application's backend (the server's
   * RPC hook, tether serve --hook-rpc). Resolves with the backend's answer
   * (its data); rejects with an Error whose code is the backend's error
   * code, "timeout" or "unavailable". */
  TetherClient.prototype.rpc = function (method, data) {
    return this._request({ type: "rpc", method: method, data: data === undefined ? null : data }).then(function (msg) { return msg.data; });
  };

  /** Close for good (no reconnect). */
  TetherClient.prototype.close = function (code, reason) {
    this.closedByUser = true;
    clearTimeout(this.timers.reconnect);
    clearTimeout(this.timers.refresh);
    if (this.ws) this.ws.close(code || 1000, reason || "");
    else this._setState("closed");
  };

  global.TetherClient = TetherClient;
  if (typeof module !== "undefined" && module.exports) module.exports = TetherClient;
})(typeof window !== "undefined" ? window : globalThis);
