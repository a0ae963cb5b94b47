// A client that survives the network: reconnect with backoff and jitter,
// topics re-subscribed, sends queued while down.
const client = new TetherClient(`ws://${location.host}/guide-reconnect`, { json: true, minDelay: 200, maxDelay: 2000 });
client.on("open", () => console.log("open"));
client.on("reconnecting", ({ attempt, delay }) => console.log(`reconnecting: attempt ${attempt} in ${delay} ms`));
client.on("message", (msg) => {
  if (msg.type === "message") console.log("news:", msg.content);
});
client.subscribe("news"); // kept across reconnects
window.publish = (text) => client.publish("news", text);
