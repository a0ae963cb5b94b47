// Two plain WebSockets in one room (the URL path): every text message is
// broadcast to everyone in the room, the sender included. The server's
// first message to a client (its welcome line) means the client is in the
// room, so alice speaks once she is open and bob has been greeted.
const room = `ws://${location.host}/guide-broadcast`;
const alice = new WebSocket(room);
const bob = new WebSocket(room);
let ready = 0;
const speak = () => {
  if (++ready === 2) alice.send("hello, room");
};
alice.onopen = speak;
let greeted = false;
bob.onmessage = (event) => {
  console.log("bob got:", event.data);
  if (!greeted) {
    greeted = true;
    speak();
  }
};
