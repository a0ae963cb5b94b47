'use strict';
// Broadcast server on ws: every message from any client goes to every open client,
// the sender included, with the loop from ws's README.
const { WebSocketServer, WebSocket } = require('ws');
const { parseArgs, printListening } = require('./cli');

const { host, port } = parseArgs(process.argv.slice(2), ['port']);
const wss = new WebSocketServer({ host, port });

wss.on('connection', (ws) => {
  ws.on('error', console.error);
  ws.on('message', (data, isBinary) => {
    wss.clients.forEach((client) => {
      if (client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: isBinary });
      }
    });
  });
});

wss.on('listening', () => printListening(wss));
