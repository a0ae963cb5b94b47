// The heartbeat rule as a function of time (the same cases as the Rust
// tether::v1::Heartbeat): a ping is due every interval; a ping unanswered
// for the timeout means the server is gone.
const opts = { heartbeatInterval: 1000, heartbeatTimeout: 500 };
const hb = TetherClient.heartbeatStart(0, opts);
console.log("t=1000:", TetherClient.heartbeatAction(hb, 1000, opts)); // send_ping
console.log("t=1600:", TetherClient.heartbeatAction(hb, 1600, opts)); // peer_dead

// A live tether.v1 client with a short heartbeat: it pings every second;
// any traffic answers. A healthy server keeps it open.
const client = new TetherClient(`ws://${location.host}/guide-heartbeat`, { json: true, ...opts });
client.on("state", (state) => console.log("state:", state));
