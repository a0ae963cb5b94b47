// tether.v1 with the bare WebSocket API: offer the subprotocol, send JSON
// envelopes, and read the replies. A bad request gets an error envelope;
// the connection stays open.
const ws = new WebSocket(`ws://${location.host}/guide-json`, "tether.v1");
ws.onopen = () => {
  ws.send(JSON.stringify({ type: "chat", content: "Hello", id: 1 }));
  ws.send("this is not JSON");
};
ws.onmessage = (event) => {
  const msg = JSON.parse(event.data);
  console.log("got", msg.type, msg.code || JSON.stringify(msg.content ?? msg.id ?? ""));
};
