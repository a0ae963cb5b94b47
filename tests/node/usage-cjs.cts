// Type-checked (not run): tether-client through require().
import TetherClient = require("tether-client");
import WebSocket = require("ws");

const client = new TetherClient("ws://127.0.0.1:8080/lobby", { json: true, WebSocket });
client.on("message", (m: TetherClient.Envelope) => console.log(m.type));
const d: number = TetherClient.backoffDelay(2);
console.log(d);
