// The libraries of the collaborative editor demo (web/editor.html), exposed
// as one global, `TetherEditor`, so that the page itself stays a short,
// readable example. Bundled by build.mjs into web/vendor/editor.bundle.js.
export * as Y from "yjs";
export { WebsocketProvider } from "y-websocket";
export { yCollab } from "y-codemirror.next";
export { basicSetup } from "codemirror";
export { EditorView, keymap } from "@codemirror/view";
export { EditorState } from "@codemirror/state";
