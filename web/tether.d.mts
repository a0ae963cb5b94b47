// Type declarations for tether.mjs (the ES module view of tether.js).
import TetherClient from "./tether.js";

export default TetherClient;
export { TetherClient };
export type Options = TetherClient.Options;
export type State = TetherClient.State;
export type Transport = TetherClient.Transport;
export type TransportEvent = TetherClient.TransportEvent;
export type Envelope = TetherClient.Envelope;
export type EventMap = TetherClient.EventMap;
export type Json = TetherClient.Json;
export type SubscribeOptions = TetherClient.SubscribeOptions;
export type PublishOptions = TetherClient.PublishOptions;
export type TokenSource = TetherClient.TokenSource;
export type Authenticated = TetherClient.Authenticated;
export declare const backoffDelay: typeof TetherClient.backoffDelay;
export declare const reconnectHint: typeof TetherClient.reconnectHint;
export declare const heartbeatStart: typeof TetherClient.heartbeatStart;
export declare const heartbeatAction: typeof TetherClient.heartbeatAction;
export declare const heartbeatAnswer: typeof TetherClient.heartbeatAnswer;
export declare const heartbeatNextWake: typeof TetherClient.heartbeatNextWake;
export declare const DEFAULTS: typeof TetherClient.DEFAULTS;
export declare const mergePatch: typeof TetherClient.mergePatch;
export declare const tokenExpiry: typeof TetherClient.tokenExpiry;
