// wshub demo client: drives the JSON protocol of docs/PROTOCOL.md from a browser.
// A classic script in an IIFE rather than a module, so it runs whatever Content-Type
// serves it and leaks nothing global except `window.wshubDemo` (for the console).
(() => {
  'use strict';

  // Back-off with "full jitter": a random delay in [0, min(cap, base * factor^n)).
  // Spreads out the reconnects of many pages after a server restart instead of
  // having them all knock at the same instant.
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_FACTOR = 2;
  const BACKOFF_CAP_MS = 10000;
  const LOG_CAP = 500;
  const USER_RE = /^[A-Za-z0-9_.@-]{1,64}$/; // the server's rule (it answers 400 otherwise)

  const $ = (testid) => document.querySelector(`[data-testid="${testid}"]`);
  const ui = {
    connectForm: $('connect-form'), connectFields: $('connect-fields'), connectError: $('connect-error'),
    server: $('server-url'), user: $('user'), token: $('token'),
    connect: $('connect'), disconnect: $('disconnect'), status: $('status'), identity: $('identity'),
    joinForm: $('join-form'), roomInput: $('room-input'), rooms: $('rooms-list'),
    publishForm: $('publish-form'), publishTopic: $('publish-topic'), publishData: $('publish-data'),
    broadcastForm: $('broadcast-form'), broadcastData: $('broadcast-data'),
    sendForm: $('send-form'), sendTo: $('send-to'), sendData: $('send-data'),
    requestForm: $('request-form'), method: $('request-method'), params: $('request-params'),
    requestError: $('request-error'), response: $('response'), ping: $('ping'),
    log: $('log'), logCount: $('log-count'), logClear: $('log-clear'),
    roomOptions: document.getElementById('joined-rooms'),
  };

  const state = {
    ws: null,
    wanted: false, // the user asked to be connected: only then do we reconnect
    attempt: 0, // failed attempts since the last welcome; drives the back-off
    retryAt: 0,
    retryTimer: 0,
    countdownTimer: 0,
    nextId: 1,
    seq: 0, // log entries ever written
    pending: new Map(), // id -> what we asked, to match ack/error/response to it
    rooms: new Set(), // rooms the server acknowledged; re-joined after a reconnect
  };

  // ---- connection -------------------------------------------------------------

  function defaultServer() {
    const fromQuery = new URLSearchParams(location.search).get('server');
    if (fromQuery) return fromQuery;
    if (location.protocol !== 'http:' && location.protocol !== 'https:') return 'ws://127.0.0.1:8080/ws';
    return `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
  }

  // Built by hand rather than with URLSearchParams, which writes spaces as '+': the
  // server percent-decodes and would read a '+' literally.
  function buildUrl() {
    const url = new URL(ui.server.value.trim());
    if (url.protocol !== 'ws:' && url.protocol !== 'wss:') throw new Error('the server URL must start with ws:// or wss://');
    const query = url.search.replace(/^\?/, '').split('&')
      .filter((kv) => kv && !/^(user|token)(=|$)/.test(kv));
    const user = ui.user.value.trim();
    const token = ui.token.value;
    if (user) query.push(`user=${encodeURIComponent(user)}`);
    if (token) query.push(`token=${encodeURIComponent(token)}`);
    url.search = query.length ? `?${query.join('&')}` : '';
    return url.toString();
  }

  function validateUser() {
    const user = ui.user.value.trim();
    if (!user) return null;
    if (!USER_RE.test(user)) return 'user: 1-64 characters of A-Z a-z 0-9 _ . @ -';
    if (/^\d+$/.test(user)) return 'user: may not be all digits (those name anonymous connections)';
    return null;
  }

  function connect() {
    clearTimers();
    let url;
    try {
      url = buildUrl();
    } catch (err) {
      return stop(`cannot connect: ${err.message}`);
    }
    setStatus('connecting');
    logSys('connect', `connecting to ${redact(url)}`);
    const ws = new WebSocket(url);
    state.ws = ws;
    // Handlers check `state.ws === ws` so a late event of a socket we already gave up
    // on cannot touch the state of the current one.
    ws.onopen = () => { if (state.ws === ws) setStatus('open'); };
    ws.onmessage = (ev) => { if (state.ws === ws) receive(ev.data); };
    ws.onclose = (ev) => { if (state.ws === ws) closed(ev); };
    // An 'error' event is always followed by 'close', which does the work.
    ws.onerror = () => {};
  }

  function closed(ev) {
    state.ws = null;
    state.pending.clear(); // ids of a dead connection are never answered
    ui.identity.textContent = '';
    setActionsEnabled(false);
    logSys('close', `closed: code ${ev.code}${ev.reason ? ` "${ev.reason}"` : ''}${ev.wasClean ? '' : ' (not clean)'}`);
    if (state.wanted) scheduleReconnect();
    else setStatus('disconnected');
  }

  function scheduleReconnect() {
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * BACKOFF_FACTOR ** state.attempt);
    const delay = Math.round(Math.random() * ceiling);
    state.attempt += 1;
    state.retryAt = Date.now() + delay;
    logSys('retry', `reconnecting in ${(delay / 1000).toFixed(1)} s (attempt ${state.attempt})`);
    state.retryTimer = setTimeout(connect, delay);
    renderCountdown();
    state.countdownTimer = setInterval(renderCountdown, 250);
  }

  function renderCountdown() {
    const left = Math.max(0, Math.ceil((state.retryAt - Date.now()) / 1000));
    setStatus('reconnecting', `in ${left}s`);
  }

  function clearTimers() {
    clearTimeout(state.retryTimer);
    clearInterval(state.countdownTimer);
    state.retryTimer = state.countdownTimer = 0;
  }

  function stop(message) {
    state.wanted = false;
    clearTimers();
    if (message) logSys('error', message);
    setStatus('disconnected');
  }

  function disconnect() {
    const ws = state.ws;
    stop();
    if (ws) ws.close(1000, 'bye'); // 'close' follows and sees wanted === false
  }

  // ---- frames -----------------------------------------------------------------

  function sendFrame(frame, pending) {
    const ws = state.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return logSys('error', 'not connected');
    if (pending) {
      frame.id = state.nextId++;
      state.pending.set(frame.id, pending);
    }
    ws.send(JSON.stringify(frame));
    logFrame('out', frame);
  }

  function receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return logSys('error', `not JSON from the server: ${text.slice(0, 200)}`);
    }
    logFrame('in', frame);
    const asked = frame.id != null ? state.pending.get(frame.id) : undefined;
    if (asked && ['ack', 'error', 'response'].includes(frame.type)) state.pending.delete(frame.id);

    switch (frame.type) {
      case 'welcome':
        // Only a welcome proves the server works: a socket that opens and drops at
        // once must keep backing off.
        state.attempt = 0;
        ui.identity.textContent = `${frame.user} · conn ${frame.conn}`;
        setStatus('open');
        setActionsEnabled(true);
        for (const room of state.rooms) sendFrame({ type: 'join', topic: room }, { kind: 'join', topic: room });
        break;
      case 'ack':
        if (asked && asked.kind === 'join') addRoom(asked.topic);
        break;
      case 'error':
        // A refused re-join (say the server's limits changed) must not linger as joined.
        if (asked && asked.kind === 'join') removeRoom(asked.topic);
        break;
      case 'response':
        if (asked && asked.kind === 'request') {
          ui.response.textContent = `${asked.method} → ${JSON.stringify('error' in frame ? { error: frame.error } : frame.result, null, 2)}`;
        }
        break;
      default: // message, batch, pong and types of the application: the log shows them
    }
  }

  // ---- rooms ------------------------------------------------------------------

  function addRoom(room) {
    state.rooms.add(room);
    renderRooms();
  }

  function removeRoom(room) {
    state.rooms.delete(room);
    renderRooms();
  }

  function leave(room) {
    removeRoom(room);
    // A join still in flight would add the room back when its ack comes.
    for (const [id, asked] of state.pending) if (asked.kind === 'join' && asked.topic === room) state.pending.delete(id);
    if (state.ws && state.ws.readyState === WebSocket.OPEN) sendFrame({ type: 'leave', topic: room }, { kind: 'leave', topic: room });
  }

  function renderRooms() {
    const items = [...state.rooms].sort().map((room) => {
      const li = el('li', { 'data-testid': 'room-item', 'data-room': room }, room);
      const button = el('button', { type: 'button', 'data-testid': 'room-leave', title: `Leave ${room}`, 'aria-label': `Leave ${room}` }, '×');
      button.addEventListener('click', () => leave(room));
      li.append(button);
      return li;
    });
    ui.rooms.replaceChildren(...items);
    ui.roomOptions.replaceChildren(...[...state.rooms].map((room) => el('option', { value: room })));
  }

  // ---- log --------------------------------------------------------------------

  function logFrame(dir, frame) {
    const type = typeof frame.type === 'string' ? frame.type : '?';
    appendEntry(dir, type, highlightJson(frame));
  }

  function logSys(type, text) {
    appendEntry('sys', type, document.createTextNode(text));
  }

  function appendEntry(dir, type, body) {
    // Follow the tail only if the reader is already there: don't yank them away from
    // an older entry they scrolled up to.
    const atBottom = ui.log.scrollHeight - ui.log.scrollTop - ui.log.clientHeight < 40;
    // data-seq survives the cap and the Clear button: a reader (or test) can ask for
    // "entries after N" without counting rows.
    const li = el('li', {
      class: `entry ${dir} t-${type.replace(/[^\w-]/g, '_')}`,
      'data-testid': 'log-entry', 'data-dir': dir, 'data-type': type, 'data-seq': ++state.seq,
    });
    li.append(
      el('span', { class: 'dir', 'aria-label': dir }, { in: '←', out: '→', sys: '•' }[dir]),
      el('span', { class: 'time' }, clock()),
      el('span', { class: 'type' }, type),
      el('span', { class: 'json', 'data-testid': 'log-json' }, body),
    );
    ui.log.append(li);
    while (ui.log.childElementCount > LOG_CAP) ui.log.firstElementChild.remove();
    ui.logCount.textContent = `${ui.log.childElementCount}${ui.log.childElementCount >= LOG_CAP ? ' (capped)' : ''}`;
    if (atBottom) ui.log.scrollTop = ui.log.scrollHeight;
  }

  // Compact JSON with a space after ':' and ',' and a colour per token. Built from text
  // nodes, never innerHTML: the frames carry other users' data. The spaces fall outside
  // strings, so the text still parses as JSON (the browser test relies on that).
  function highlightJson(value) {
    const text = JSON.stringify(value);
    const frag = document.createDocumentFragment();
    const token = /("(?:[^"\\]|\\.)*")(\s*:)?|\b(true|false|null)\b|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)/g;
    let last = 0;
    for (let m; (m = token.exec(text));) {
      frag.append(punct(text.slice(last, m.index)));
      if (m[1] && m[2]) frag.append(el('span', { class: 'j-key' }, m[1]), ': ');
      else if (m[1]) frag.append(el('span', { class: 'j-str' }, m[1]));
      else if (m[3]) frag.append(el('span', { class: 'j-lit' }, m[3]));
      else frag.append(el('span', { class: 'j-num' }, m[4]));
      last = token.lastIndex;
    }
    frag.append(punct(text.slice(last)));
    return frag;
  }

  const punct = (s) => s.replace(/,/g, ', ');

  function clock() {
    const d = new Date();
    const pad = (n, w = 2) => String(n).padStart(w, '0');
    return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
  }

  // ---- helpers ----------------------------------------------------------------

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    node.append(...children);
    return node;
  }

  // Typing `hello` sends the string "hello"; anything that parses as JSON is sent as that.
  function parseData(text) {
    try {
      return JSON.parse(text);
    } catch {
      return text;
    }
  }

  const redact = (url) => url.replace(/([?&]token=)[^&]*/, '$1…');

  function setStatus(name, detail) {
    ui.status.dataset.state = name;
    ui.status.textContent = detail ? `${name} ${detail}` : name;
    ui.connect.disabled = state.wanted;
    ui.disconnect.disabled = !state.wanted;
    ui.connectFields.disabled = state.wanted;
  }

  function setActionsEnabled(on) {
    for (const fs of document.querySelectorAll('[data-needs-open]')) fs.disabled = !on;
  }

  // ---- wiring -----------------------------------------------------------------

  function onSubmit(form, handler) {
    form.addEventListener('submit', (ev) => {
      ev.preventDefault();
      handler();
    });
  }

  onSubmit(ui.connectForm, () => {
    const problem = validateUser();
    ui.connectError.textContent = problem || '';
    if (problem || state.wanted) return;
    state.wanted = true;
    state.attempt = 0;
    connect();
  });
  ui.disconnect.addEventListener('click', disconnect);

  onSubmit(ui.joinForm, () => {
    const topic = ui.roomInput.value.trim();
    sendFrame({ type: 'join', topic }, { kind: 'join', topic });
    if (!ui.publishTopic.value) ui.publishTopic.value = topic;
    ui.roomInput.value = '';
  });

  onSubmit(ui.publishForm, () => {
    sendFrame({ type: 'publish', topic: ui.publishTopic.value.trim(), data: parseData(ui.publishData.value) }, { kind: 'publish' });
    ui.publishData.value = '';
  });

  onSubmit(ui.broadcastForm, () => {
    sendFrame({ type: 'broadcast', data: parseData(ui.broadcastData.value) }, { kind: 'broadcast' });
    ui.broadcastData.value = '';
  });

  onSubmit(ui.sendForm, () => {
    sendFrame({ type: 'send', to: ui.sendTo.value.trim(), data: parseData(ui.sendData.value) }, { kind: 'send' });
    ui.sendData.value = '';
  });

  onSubmit(ui.requestForm, () => {
    const method = ui.method.value.trim();
    const raw = ui.params.value.trim();
    let params;
    try {
      params = raw ? JSON.parse(raw) : undefined;
    } catch (err) {
      ui.requestError.textContent = `params are not JSON: ${err.message}`;
      return;
    }
    ui.requestError.textContent = '';
    const frame = { type: 'request', method };
    if (params !== undefined) frame.params = params;
    sendFrame(frame, { kind: 'request', method });
  });

  // presence needs a topic: offer the first joined room rather than an empty box. On
  // 'input', not 'change': 'change' fires on blur, after the user may have typed params.
  ui.method.addEventListener('input', () => {
    if (ui.method.value.trim() === 'presence' && !ui.params.value.trim()) {
      ui.params.value = JSON.stringify({ topic: [...state.rooms][0] || 'lobby' });
    }
  });

  ui.ping.addEventListener('click', () => sendFrame({ type: 'ping' }, { kind: 'ping' }));

  ui.logClear.addEventListener('click', () => {
    ui.log.replaceChildren();
    ui.logCount.textContent = '0';
  });

  // Back from offline: no point waiting out the rest of a long back-off.
  window.addEventListener('online', () => {
    if (state.wanted && state.retryTimer) connect();
  });

  const query = new URLSearchParams(location.search);
  ui.server.value = defaultServer();
  if (query.get('user')) ui.user.value = query.get('user');
  setStatus('disconnected');

  window.wshubDemo = { state, connect: () => ui.connectForm.requestSubmit(), disconnect, send: sendFrame };
})();
