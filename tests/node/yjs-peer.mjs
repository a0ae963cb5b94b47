// What the Yjs tests share: a real `yjs` document synced by the real
// `y-websocket` provider (BroadcastChannel off, so only the server can carry
// an update), and a wait for a condition.
import WebSocket from "ws";
import * as Y from "yjs";
import { WebsocketProvider } from "y-websocket";

/** A Y.Doc synced through `url` under document `name` (`opts` go to the provider). */
export function peer(url, name, opts = {}) {
  const doc = new Y.Doc();
  const provider = new WebsocketProvider(url, name, doc, { WebSocketPolyfill: WebSocket, disableBc: true, ...opts });
  return { doc, provider, text: doc.getText("t"), close: () => { provider.destroy(); doc.destroy(); } };
}

/** Resolves once `pred()` holds (checked every 50 ms); rejects after `ms`. */
export function until(pred, what, ms = 15000) {
  return new Promise((resolve, reject) => {
    const timer = setInterval(() => {
      if (pred()) {
        clearInterval(timer);
        clearTimeout(deadline);
        resolve();
      }
    }, 50);
    const deadline = setTimeout(() => {
      clearInterval(timer);
      reject(new Error(`not within ${ms} ms: ${what}`));
    }, ms);
  });
}

/** lib0's variable-length unsigned integer (the y-websocket framing). */
export function varuint(n) {
  const out = [];
  while (n >= 0x80) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return out;
}
