// tether.js as an ES module, with no build step: the classic script
// (tether.js) defines globalThis.TetherClient when it runs, in a browser
// (`<script type="module">import { TetherClient } from "/tether.mjs"`) and in
// Node (`import { TetherClient } from "tether-client"`) alike.
import "./tether.js";

const TetherClient = globalThis.TetherClient;

export default TetherClient;
export { TetherClient };
export const backoffDelay = TetherClient.backoffDelay;
export const reconnectHint = TetherClient.reconnectHint;
export const heartbeatStart = TetherClient.heartbeatStart;
export const heartbeatAction = TetherClient.heartbeatAction;
export const heartbeatAnswer = TetherClient.heartbeatAnswer;
export const heartbeatNextWake = TetherClient.heartbeatNextWake;
export const DEFAULTS = TetherClient.DEFAULTS;
export const mergePatch = TetherClient.mergePatch;
export const tokenExpiry = TetherClient.tokenExpiry;
