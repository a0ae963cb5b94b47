'use strict';
// Echo server on ws: every message goes back as it came (text as text, binary as binary).
// ws answers pings and completes the close handshake itself. maxPayload stays at ws's
// default of 100 MiB. --deflate turns on permessage-deflate with ws's default settings.
const { WebSocketServer } = require('ws');
const { parseArgs, printListening } = require('./cli');

const { host, port, deflate } = parseArgs(process.argv.slice(2), ['port', 'deflate']);
const wss = new WebSocketServer({ host, port, perMessageDeflate: deflate });

wss.on('connection', (ws) => {
  ws.on('error', console.error);
  ws.on('message', (data, isBinary) => {
    ws.send(data, { binary: isBinary });
  });
});

wss.on('listening', () => printListening(wss));
