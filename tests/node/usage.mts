// Type-checked (not run) by `npm run typecheck`: the public API of
// tether-client as an ES module, with the ws package as the WebSocket.
import WebSocket from "ws";
import TetherClient, { backoffDelay, heartbeatAction, heartbeatStart, heartbeatNextWake, heartbeatAnswer, DEFAULTS, mergePatch, tokenExpiry } from "tether-client";
import type { Envelope, Options, State, SubscribeOptions, PublishOptions, Transport, TransportEvent } from "tether-client";

const options: Options = { json: true, minDelay: 100, maxDelay: 2000, queueFull: "drop-oldest", WebSocket };
const client = new TetherClient("ws://127.0.0.1:8080/lobby", options);

client.on("open", ({ protocol, attempt }) => console.log(protocol.toUpperCase(), attempt + 1));
client.on("close", ({ wasClean, code, reason, failed }) => console.log(wasClean, code.toFixed(0), reason, failed));
client.on("reconnecting", ({ attempt, delay }) => console.log(attempt, delay));
client.on("state", (s: State) => console.log(s));
client.on("giveup", ({ attempts }) => console.log(attempts));
client.on("message", (m: Envelope) => {
  switch (m.type) {
    case "welcome": console.log(m.session, m.room); break;
    case "message": console.log(m.topic, m.epoch, m.seq.toFixed(0), m.content); break;
    case "presence": console.log(m.event, m.count); break;
    case "error": console.log(m.code, m.message, m.first_seq); break;
    case "ack": console.log(m.id, m.seq); break;
  }
});

async function main(): Promise<void> {
  const sub = await client.subscribe("news");
  const pub = await client.publish("news", { headline: "hi", tags: ["a", 1, null] });
  await client.chat("hello");
  const sum = await client.rpc<{ sum: number }>("add", { a: 1, b: 2 });
  void sum.sum;
  const live: SubscribeOptions = { delta: true, resume: true };
  await client.subscribe("prices", live);
  const keyed: PublishOptions = { key: "TTR" };
  await client.publish("prices", { symbol: "TTR", price: 42 }, keyed);
  console.log(mergePatch({ a: 1 }, { a: null, b: [2] }));
  await client.unsubscribe("news");
  const sent: boolean = client.send("raw text");
  console.log(sub.seq, pub.epoch, sent, client.session, client.state, [...client.topics]);
  client.close(1000, "bye");
}
void main();

const delay: number = backoffDelay(3, { minDelay: 100, maxDelay: 1000 });
const hb = heartbeatStart(0, DEFAULTS);
const action: "send_ping" | "peer_dead" | null = heartbeatAction(hb, 25_000, DEFAULTS);
heartbeatAnswer(hb);
const wake: number = heartbeatNextWake(hb) + delay;
console.log(action, wake, TetherClient.backoffDelay(1));

// @ts-expect-error queueFull takes "reject" or "drop-oldest"
new TetherClient("ws://x/", { queueFull: "block" });
// @ts-expect-error publish needs a topic and JSON content
client.publish("news", () => 1);

// Tokens: a string, or a function that fetches one (refreshed before exp).
const authed = new TetherClient("ws://127.0.0.1:8080/", { json: true, WebSocket, token: async () => "a.b.c", refreshAhead: 10_000 });
authed.on("authenticated", ({ user, expires_at }) => console.log(user.toUpperCase(), expires_at ?? 0));
void authed.refresh().then((a) => a.user);
new TetherClient("ws://x/", { json: true, token: "a.b.c" });
const exp: number | null = tokenExpiry("a.b.c");
console.log(exp);
// @ts-expect-error a token is a string or a function returning one
new TetherClient("ws://x/", { token: 42 });

// Transports: auto (WebSocket first, HTTP when that fails), or one of them.
const http = new TetherClient("http://127.0.0.1:8080/lobby", { json: true, transport: "http", resumeTimeout: 5_000, fetch: globalThis.fetch });
http.on("transport", ({ transport, previous, reason }: TransportEvent) => console.log(transport, previous ?? "none", reason));
http.on("open", ({ transport }) => console.log(transport === "http"));
const now: Transport | null = http.transport;
console.log(now, new TetherClient("ws://x/", { welcomeTimeout: 2_000 }).transport);
// @ts-expect-error transport is "auto", "websocket" or "http"
new TetherClient("ws://x/", { transport: "long-polling" });
