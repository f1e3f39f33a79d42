// End-to-end test of the demo page (web/) in headless Chromium against a real wshub.
//
//   node tests/browser/demo.mjs target/release/wshub
//
// Two pages (alice, bob) connect, join a room, publish, broadcast, send to a user and
// make requests; then the server is SIGKILLed and restarted on the same port, and both
// pages must reconnect by themselves and re-join their room. The server first binds
// 127.0.0.1:0 and the port is read from its "listening" line (no free-port guess to race).
//
// Env: DEMO_URL  load the page from there instead of the server itself (e.g. a
//                `python3 -m http.server` over web/); `?server=` then points it at wshub.
//      CHROMIUM  the browser (default /usr/bin/chromium).
// Writes target/browser/demo.png (alice's page at the end, also on failure) and
// target/browser/demo-open.png (alice's page, connected, with a varied log).

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const STEP_MS = 10_000;
// A reconnect may wait out a whole back-off step (the page caps it at 10 s).
const RECONNECT_MS = 20_000;
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const OUT_DIR = path.join(ROOT, 'target/browser');
const PID_FILE = path.join(OUT_DIR, 'wshub.pid');

const binary = process.argv[2];
if (!binary) {
  console.error('usage: node tests/browser/demo.mjs path/to/wshub');
  process.exit(2);
}

// ---- the server -----------------------------------------------------------------

class Server {
  // Port 0 at first; a restart reuses the port the first start got.
  constructor(bin) {
    this.bin = bin;
    this.port = 0;
    this.proc = null;
    this.output = '';
  }

  start() {
    const proc = spawn(this.bin, ['--listen', `127.0.0.1:${this.port}`, '--log-level', 'info'], {
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    this.proc = proc;
    fs.writeFileSync(PID_FILE, `${proc.pid}\n`);
    return new Promise((resolve, reject) => {
      let seen = '';
      const timer = setTimeout(() => fail(`no "listening" line within ${STEP_MS} ms`), STEP_MS);
      const fail = (why) => {
        clearTimeout(timer);
        reject(new Error(`wshub did not start: ${why}\n--- wshub stderr ---\n${seen}`));
      };
      proc.on('error', (err) => fail(err.message));
      proc.on('exit', (code, signal) => {
        if (this.proc === proc) this.proc = null;
        fail(`exited (code ${code}, signal ${signal})`);
      });
      proc.stderr.setEncoding('utf8');
      proc.stderr.on('data', (chunk) => {
        seen += chunk;
        this.output += chunk;
        const listening = /wshub listening on ws:\/\/127\.0\.0\.1:(\d+)/.exec(seen);
        if (listening) {
          clearTimeout(timer);
          this.port = Number(listening[1]);
          resolve();
        }
      });
    });
  }

  // Resolves once the process is gone, so the port is free to bind again.
  kill(signal = 'SIGKILL') {
    const proc = this.proc;
    this.proc = null;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return Promise.resolve();
    return new Promise((resolve) => {
      proc.once('exit', () => resolve());
      proc.kill(signal);
    });
  }
}

// ---- the pages ------------------------------------------------------------------

const tid = (id) => `[data-testid="${id}"]`;

// Chromium's own console line for a WebSocket to our server that could not be set up: the
// connection-failure family of net errors (which one depends on how far the attempt got when
// the server died or while it is down: refused, reset, closed, aborted, not connected, ...).
const connectionFailure = (port) => new RegExp(
  `^WebSocket connection to 'ws://127\\.0\\.0\\.1:${port}/[^']*' failed: `
  + '(?:(?:Error in connection establishment: )?net::ERR_(?:CONNECTION_(?:REFUSED|RESET|CLOSED|ABORTED|FAILED)'
  + '|SOCKET_NOT_CONNECTED|EMPTY_RESPONSE)|Connection closed before receiving a handshake response)$');

class Demo {
  constructor(name, page, port) {
    this.name = name;
    this.page = page;
    this.consoleErrors = [];
    // Set only from the kill until both pages are back: the one window where such
    // failures are expected; outside it they are errors like any other.
    this.serverDown = false;
    this.failuresSeen = 0;
    const failure = connectionFailure(port);
    page.on('console', (msg) => {
      if (msg.type() !== 'error') return;
      if (this.serverDown && failure.test(msg.text())) this.failuresSeen += 1;
      else this.consoleErrors.push(`console.error: ${msg.text()}`);
    });
    page.on('pageerror', (err) => this.consoleErrors.push(`page error: ${err.message}`));
  }

  async seq() {
    return this.page.evaluate(() => window.wshubDemo.state.seq);
  }

  // Waits for a log entry written after `since` (a data-seq) whose direction is `dir`
  // and whose frame contains `match` (a deep subset). Returns the frame.
  async waitFrame(dir, match, since, what, timeout = STEP_MS) {
    try {
      const handle = await this.page.waitForFunction(
        ({ dir, match, since }) => {
          const contains = (have, want) =>
            want !== null && typeof want === 'object'
              ? have !== null && typeof have === 'object' && Object.keys(want).every((k) => contains(have[k], want[k]))
              : have === want;
          for (const li of document.querySelectorAll(`[data-testid="log-entry"][data-dir="${dir}"]`)) {
            if (Number(li.dataset.seq) <= since) continue;
            const frame = JSON.parse(li.querySelector('[data-testid="log-json"]').textContent);
            if (contains(frame, match)) return frame;
          }
          return null;
        },
        { dir, match, since },
        { timeout, polling: 50 },
      );
      return await handle.jsonValue();
    } catch (err) {
      throw new Error(`${this.name}: ${what}: no ${dir === 'in' ? 'incoming' : 'outgoing'} frame like ${JSON.stringify(match)} within ${timeout} ms\n${await this.tail()}`);
    }
  }

  // Waits for a log entry of `type` (any direction) after `since`; returns its data-seq.
  async waitEntry(type, since, what, timeout = STEP_MS) {
    try {
      const handle = await this.page.waitForFunction(({ type, since }) => {
        const li = [...document.querySelectorAll(`[data-testid="log-entry"][data-type="${type}"]`)]
          .find((e) => Number(e.dataset.seq) > since);
        return li ? Number(li.dataset.seq) : null;
      }, { type, since }, { timeout, polling: 50 });
      return await handle.jsonValue();
    } catch {
      throw new Error(`${this.name}: ${what}: no "${type}" log entry within ${timeout} ms\n${await this.tail()}`);
    }
  }

  async frames(dir, since) {
    return this.page.evaluate(({ dir, since }) =>
      [...document.querySelectorAll(`[data-testid="log-entry"][data-dir="${dir}"]`)]
        .filter((li) => Number(li.dataset.seq) > since)
        .map((li) => JSON.parse(li.querySelector('[data-testid="log-json"]').textContent)), { dir, since });
  }

  // Returns the status text, read in the same evaluation that saw the state: a state such
  // as "reconnecting" may last only until the (jittered, possibly ~0 ms) retry fires.
  async waitStatus(state, timeout = STEP_MS) {
    try {
      const handle = await this.page.waitForFunction(({ sel, state }) => {
        const el = document.querySelector(sel);
        return el && el.dataset.state === state ? { text: el.textContent } : null;
      }, { sel: tid('status'), state }, { timeout, polling: 'raf' });
      return (await handle.jsonValue()).text;
    } catch {
      const now = await this.page.textContent(tid('status'));
      throw new Error(`${this.name}: status should become "${state}" within ${timeout} ms, it is "${now}"\n${await this.tail()}`);
    }
  }

  // The last log lines, for failure messages.
  async tail(n = 12) {
    const lines = await this.page.$$eval(tid('log-entry'), (lis) =>
      lis.map((li) => `  ${li.dataset.dir} ${li.dataset.type} ${li.querySelector('[data-testid="log-json"]').textContent}`));
    const formErrors = await this.page.$$eval('.form-error', (ps) => ps.map((p) => p.textContent).filter(Boolean));
    const errors = formErrors.length ? `--- ${this.name}'s form errors ---\n  ${formErrors.join('\n  ')}\n` : '';
    return `${errors}--- ${this.name}'s last log entries ---\n${lines.slice(-n).join('\n')}`;
  }

  async submit(form, fields) {
    for (const [id, value] of Object.entries(fields)) await this.page.fill(tid(id), value);
    await this.page.click(tid(form));
  }

  // Sends a frame through the UI and waits for the server's answer to it (by id).
  async roundTrip(button, fields, answerType, what) {
    const since = await this.seq();
    await this.submit(button, fields);
    const sent = await this.waitFrame('out', {}, since, what);
    const answer = await this.waitFrame('in', { id: sent.id }, since, `${what}: the answer`);
    if (answer.type !== answerType) throw new Error(`${this.name}: ${what}: expected ${answerType}, got ${JSON.stringify(answer)}`);
    return { sent, answer };
  }
}

// ---- the scenario ---------------------------------------------------------------

function pass(step) {
  console.log(`PASS ${step}`);
}

async function main() {
  fs.mkdirSync(OUT_DIR, { recursive: true });
  const started = Date.now();
  const server = new Server(binary);
  let browser;
  let alice;
  let bob;
  const cleanup = async () => {
    await server.kill('SIGKILL');
    fs.rmSync(PID_FILE, { force: true });
  };
  for (const sig of ['SIGINT', 'SIGTERM']) {
    process.on(sig, () => cleanup().finally(() => process.exit(130)));
  }

  try {
    await server.start();
    const { port } = server;
    pass(`wshub started on 127.0.0.1:${port}`);

    browser = await chromium.launch({
      executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
        '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    const pageUrl = process.env.DEMO_URL
      ? `${process.env.DEMO_URL}${process.env.DEMO_URL.includes('?') ? '&' : '?'}server=${encodeURIComponent(`ws://127.0.0.1:${port}/ws`)}`
      : `http://127.0.0.1:${port}/`;
    const open = async (name) => {
      const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
      const page = await context.newPage();
      page.setDefaultTimeout(STEP_MS);
      const demo = new Demo(name, page, port);
      const response = await page.goto(pageUrl);
      if (!response || !response.ok()) throw new Error(`${name}: GET ${pageUrl} answered ${response && response.status()}`);
      await page.waitForFunction(() => window.wshubDemo !== undefined);
      return demo;
    };
    alice = await open('alice');
    bob = await open('bob');
    pass(`both pages loaded from ${pageUrl}`);

    // 1. connect
    for (const demo of [alice, bob]) {
      const since = await demo.seq();
      await demo.submit('connect', { user: demo.name });
      await demo.waitFrame('in', { type: 'welcome', user: demo.name }, since, 'connect');
      await demo.waitStatus('open');
    }
    pass('alice and bob connected (welcome, status open)');

    // 2. join lobby
    for (const demo of [alice, bob]) {
      await demo.roundTrip('join', { 'room-input': 'lobby' }, 'ack', 'join lobby');
      await demo.page.waitForSelector(`${tid('room-item')}[data-room="lobby"]`);
    }
    pass('both joined lobby (ack, listed in rooms)');

    // 3. publish alice → lobby
    let since = await bob.seq();
    await alice.roundTrip('publish', { 'publish-topic': 'lobby', 'publish-data': '{"text":"hello from alice"}' }, 'ack', 'publish');
    await bob.waitFrame('in', { type: 'message', topic: 'lobby', from: 'alice', data: { text: 'hello from alice' } }, since, 'publish to lobby');
    pass('alice published to lobby; bob got it from "alice"');

    // 4. broadcast from bob
    let marks = [await alice.seq(), await bob.seq()];
    await bob.roundTrip('broadcast', { 'broadcast-data': 'hi everyone' }, 'ack', 'broadcast');
    for (const [i, demo] of [alice, bob].entries()) {
      const frame = await demo.waitFrame('in', { type: 'message', from: 'bob', data: 'hi everyone' }, marks[i], 'broadcast');
      if ('topic' in frame) throw new Error(`${demo.name}: a broadcast should have no topic: ${JSON.stringify(frame)}`);
    }
    pass('bob broadcast; both pages got it');

    // 5. send alice → bob
    since = await bob.seq();
    const aliceSince = await alice.seq();
    await alice.roundTrip('send', { 'send-to': 'bob', 'send-data': 'psst, bob' }, 'ack', 'send to bob');
    await bob.waitFrame('in', { type: 'message', from: 'alice', data: 'psst, bob' }, since, 'send to bob');
    // Anything for alice would be queued on her connection before the pong to a later ping.
    await alice.page.click(tid('ping'));
    await alice.waitFrame('in', { type: 'pong' }, aliceSince, 'ping');
    const leaked = (await alice.frames('in', aliceSince)).filter((f) => f.type === 'message');
    if (leaked.length) throw new Error(`alice should not get her own message to bob: ${JSON.stringify(leaked)}`);
    pass('alice sent to bob; only bob got it');

    // 6. requests
    const { answer: stats } = await alice.roundTrip('request', { 'request-method': 'stats', 'request-params': '' }, 'response', 'stats request');
    if (!stats.result || !(stats.result.connections >= 2)) throw new Error(`stats: expected result.connections >= 2: ${JSON.stringify(stats)}`);
    await alice.page.waitForFunction(() => document.querySelector('[data-testid="response"]').textContent.startsWith('stats'));
    const { answer: presence } = await bob.roundTrip('request', { 'request-method': 'presence', 'request-params': '{"topic":"lobby"}' }, 'response', 'presence request');
    if (JSON.stringify(presence.result && presence.result.users) !== '["alice","bob"]') {
      throw new Error(`presence of lobby: expected users ["alice","bob"]: ${JSON.stringify(presence)}`);
    }
    pass(`stats and presence requests answered (connections ${stats.result.connections}, lobby: alice, bob)`);

    // 7. the server dies
    marks = [await alice.seq(), await bob.seq()];
    for (const demo of [alice, bob]) demo.serverDown = true;
    await server.kill('SIGKILL');
    for (const demo of [alice, bob]) {
      // A retry that fires at once may hide the first "reconnecting"; the next one (the
      // server is still down) shows it.
      const text = await demo.waitStatus('reconnecting', RECONNECT_MS);
      if (!/^reconnecting in \d+s$/.test(text)) throw new Error(`${demo.name}: status text "${text}"`);
    }
    pass('server killed (SIGKILL); both pages show "reconnecting in Ns"');

    // Let each page fail one retry against the closed port, so the back-off (and the
    // console filter for refused connections) is exercised, not just the first drop.
    for (const [i, demo] of [alice, bob].entries()) {
      const attempt = await demo.waitEntry('connect', marks[i], 'a retry while the server is down', RECONNECT_MS);
      await demo.waitEntry('close', attempt, 'the retry fails while the server is down');
      await demo.waitStatus('reconnecting');
    }
    pass('both pages retried while the server was down, and are still reconnecting');

    // 8. the server comes back on the same port
    await server.start();
    for (const [i, demo] of [alice, bob].entries()) {
      await demo.waitFrame('in', { type: 'welcome', user: demo.name }, marks[i], 'reconnect', RECONNECT_MS);
      await demo.waitStatus('open');
      const join = await demo.waitFrame('out', { type: 'join', topic: 'lobby' }, marks[i], 're-join');
      await demo.waitFrame('in', { type: 'ack', id: join.id }, marks[i], 're-join ack');
    }
    for (const demo of [alice, bob]) demo.serverDown = false;
    pass('server restarted; both pages reconnected (new welcome) and re-joined lobby');

    since = await bob.seq();
    await alice.roundTrip('publish', { 'publish-topic': 'lobby', 'publish-data': '{"text":"back again"}' }, 'ack', 'publish after restart');
    await bob.waitFrame('in', { type: 'message', topic: 'lobby', from: 'alice', data: { text: 'back again' } }, since, 'publish after restart');
    since = await alice.seq();
    await bob.roundTrip('publish', { 'publish-topic': 'lobby', 'publish-data': 'welcome back' }, 'ack', 'publish after restart');
    await alice.waitFrame('in', { type: 'message', topic: 'lobby', from: 'bob', data: 'welcome back' }, since, 'publish after restart');
    pass('after the restart, lobby messages flow both ways');

    // A varied, connected log for the docs (committed as docs/demo.png).
    await alice.roundTrip('request', { 'request-method': 'presence', 'request-params': '{"topic":"lobby"}' }, 'response', 'presence request');
    await alice.page.screenshot({ path: path.join(OUT_DIR, 'demo-open.png') });

    // 9. a manual disconnect stays disconnected
    since = await alice.seq();
    await alice.page.click(tid('disconnect'));
    await alice.waitStatus('disconnected');
    await alice.waitEntry('close', since, 'disconnect');
    const after = await alice.page.evaluate(() => ({ wanted: window.wshubDemo.state.wanted, timer: window.wshubDemo.state.retryTimer }));
    if (after.wanted || after.timer) throw new Error(`alice: a manual disconnect must not schedule a reconnect: ${JSON.stringify(after)}`);
    pass('manual disconnect: status disconnected, no reconnect scheduled');

    // 10. the console
    for (const demo of [alice, bob]) {
      if (demo.consoleErrors.length) throw new Error(`${demo.name}: console errors:\n  ${demo.consoleErrors.join('\n  ')}`);
    }
    pass(`no console errors (ignored ${alice.failuresSeen + bob.failuresSeen} expected connection failures while the server was down)`);

    console.log(`PASS all browser steps in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  } finally {
    if (alice) await alice.page.screenshot({ path: path.join(OUT_DIR, 'demo.png') }).catch(() => {});
    if (browser) await browser.close().catch(() => {});
    await cleanup();
  }
}

main().then(
  () => process.exit(0),
  (err) => {
    console.error(`FAIL ${err.message}`);
    process.exit(1);
  },
);
