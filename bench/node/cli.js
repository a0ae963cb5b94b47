'use strict';
// Shared by echo.js and broadcast.js: where to listen and which flags are on.
//   --port N | PORT=N          port (default 9001), host 127.0.0.1
//   --listen HOST:PORT          both at once, as the Rust peers take it
//   --deflate                   (echo.js only) turn on permessage-deflate

function parseArgs(argv, allowed) {
  const opts = { host: '127.0.0.1', port: Number(process.env.PORT || 9001), deflate: false };
  for (let i = 0; i < argv.length; i++) {
    let [flag, value] = argv[i].split(/=(.*)/s);
    const next = () => (value !== undefined ? value : argv[++i]);
    if (flag === '--port' && allowed.includes('port')) {
      opts.port = Number(next());
    } else if (flag === '--listen' && allowed.includes('port')) {
      const addr = String(next());
      const colon = addr.lastIndexOf(':');
      opts.host = addr.slice(0, colon).replace(/^\[|\]$/g, '');
      opts.port = Number(addr.slice(colon + 1));
    } else if (flag === '--deflate' && allowed.includes('deflate')) {
      opts.deflate = true;
    } else {
      const flags = allowed.map((a) => (a === 'port' ? '[--port N | --listen HOST:PORT]' : `[--${a}]`));
      console.error(`unknown argument: ${argv[i]}\nusage: node ${process.argv[1]} ${flags.join(' ')}`);
      process.exit(2);
    }
  }
  if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) {
    console.error(`bad port: ${opts.port}`);
    process.exit(2);
  }
  return opts;
}

function printListening(wss) {
  const { address, port } = wss.address();
  console.log(`listening on ${address.includes(':') ? `[${address}]` : address}:${port}`);
}

module.exports = { parseArgs, printListening };
