// Two plain WebSockets in one room (the URL path): every text message is
// broadcast to everyone in the room, the sender included.
const room = `ws://${location.host}/guide-broadcast`;
const alice = new WebSocket(room);
const bob = new WebSocket(room);
let open = 0;
for (const ws of [alice, bob]) {
  ws.onopen = () => {
    if (++open === 2) alice.send("hello, room");
  };
}
bob.onmessage = (event) => console.log("bob got:", event.data);
