// The shared tether.v1 cases (crates/tether/tests/v1_cases.json) against
// web/tether.js, loaded into a vm context: no browser, no server. The Rust
// implementation is checked against the same file by
// crates/tether/tests/v1_cases.rs.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import vm from "node:vm";

const root = new URL("../../", import.meta.url);
const cases = JSON.parse(readFileSync(new URL("crates/tether/tests/v1_cases.json", root), "utf8"));

function load() {
  const context = vm.createContext({ setTimeout, clearTimeout, console });
  context.window = context;
  vm.runInContext(readFileSync(new URL("web/tether.js", root), "utf8"), context, { filename: "web/tether.js" });
  return context;
}

test("the protocol name", () => {
  assert.equal(cases.protocol, "tether.v1");
  const src = readFileSync(new URL("web/tether.js", root), "utf8");
  assert.ok(src.includes(`"${cases.protocol}"`));
});

test("backoffDelay follows the shared backoff cases", () => {
  const context = load();
  const { TetherClient } = context;
  const math = vm.runInContext("Math", context);
  const random = math.random;
  assert.ok(cases.backoff.length > 0);
  for (const c of cases.backoff) {
    const opts = { minDelay: c.min_delay_ms, maxDelay: c.max_delay_ms, factor: c.factor, jitter: c.jitter };
    const [lo, hi] = c.delay_ms;
    for (const [draw, want] of [[0, lo], [1 - Number.EPSILON, hi], [1, hi]]) {
      math.random = () => draw;
      assert.equal(TetherClient.backoffDelay(c.attempt, opts), Math.round(want), `${c.name}: draw ${draw}`);
    }
    math.random = random;
    for (let i = 0; i < 100; i++) {
      const d = TetherClient.backoffDelay(c.attempt, opts);
      assert.ok(d >= Math.round(lo) && d <= Math.round(hi), `${c.name}: ${d} not in ${lo}..${hi}`);
    }
  }
});

test("the heartbeat follows the shared heartbeat scenarios", () => {
  const { TetherClient } = load();
  assert.ok(cases.heartbeat.length > 0);
  for (const c of cases.heartbeat) {
    const opts = { heartbeatInterval: c.interval_ms, heartbeatTimeout: c.timeout_ms };
    const state = TetherClient.heartbeatStart(0, opts);
    c.steps.forEach((step, i) => {
      if (step.do === "poll") {
        assert.equal(TetherClient.heartbeatAction(state, step.at, opts), step.expect, `${c.name}, step ${i}`);
      } else if (step.do === "answer") {
        TetherClient.heartbeatAnswer(state, step.at);
      } else {
        assert.fail(`${c.name}: unknown step ${step.do}`);
      }
      if (step.next_wake !== undefined) {
        assert.equal(TetherClient.heartbeatNextWake(state), step.next_wake, `${c.name}, step ${i}: next_wake`);
      }
    });
  }
});
