// The HTTP transport: the same client and the same events over Server-Sent
// Events and POST. Alice is put on HTTP (as a proxy that strips Upgrade
// would do by itself); bob stays on WebSocket; they share a room.
const room = `ws://${location.host}/guide-http`;
const alice = new TetherClient(room, { json: true, transport: "http" });
const bob = new TetherClient(room, { json: true });
let welcomed = 0;
for (const [name, client] of [["alice", alice], ["bob", bob]]) {
  client.on("open", ({ transport }) => console.log(`${name} open over ${transport}`));
  client.on("message", (msg) => {
    if (msg.type === "welcome" && ++welcomed === 2) alice.chat("hello from the HTTP side");
    if (msg.type === "message" && name === "bob") console.log(`bob got: ${msg.content}`);
  });
}

// A listener with no SDK at all: an EventSource on a topic's feed.
const feed = new EventSource("/feed?topic=guide-prices");
feed.onmessage = (ev) => {
  const msg = JSON.parse(ev.data);
  if (msg.type === "welcome") alice.publish("guide-prices", { symbol: "TTR", price: 42 });
  if (msg.type === "message") console.log(`feed got: ${JSON.stringify(msg.content)}`);
};
