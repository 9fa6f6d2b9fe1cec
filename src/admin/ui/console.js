// turnout console: a page over the admin API (SPEC sections 8 and 14).
// Plain JavaScript, no build step. Everything shown is built with DOM calls
// and textContent, never innerHTML, so names and reasons are only text.
// The bearer token, when the API asks for one, lives in sessionStorage.
'use strict';

const TOKEN_KEY = 'turnout.token';
const REFRESH_MS = 5000;   // counters (requests, p99) change without events
const RECONNECT_MS = 2000;

const state = {
  tenants: [],       // the last GET /v1/tenants
  view: null,        // the tenant page's last GET /v1/tenants/{name}
  events: [],        // the tenant page's events, newest first
  lastSeq: null,     // the newest event seen on the stream
  stream: null,      // AbortController of the running stream
  refreshTimer: null,
  weightsEdited: false, // the weight inputs hold the operator's numbers
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') node.className = v;
    else if (k === 'text') node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c !== null && c !== undefined) node.append(c);
  }
  return node;
}

function token() { return sessionStorage.getItem(TOKEN_KEY) || ''; }

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

// One call to the admin API; the JSON answer, or an ApiError.
async function api(method, path, opts = {}) {
  const headers = { Accept: 'application/json' };
  if (token()) headers.Authorization = 'Bearer ' + token();
  if (opts.body !== undefined) headers['Content-Type'] = 'application/json';
  if (opts.ifMatch !== undefined) headers['If-Match'] = '"' + opts.ifMatch + '"';
  let resp;
  try {
    resp = await fetch(path, {
      method, headers, cache: 'no-store',
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
    });
  } catch (e) {
    throw new ApiError(0, 'cannot reach the admin API (' + e.message + ')');
  }
  let data = null;
  try { data = await resp.json(); } catch (_) { /* not JSON */ }
  if (!resp.ok) {
    throw new ApiError(resp.status, (data && data.error) || resp.statusText);
  }
  return data;
}

// A refused call as a sentence an operator can act on.
function explain(err) {
  switch (err.status) {
    case 0: return err.message;
    case 401: return '401 Unauthorized: this admin API needs a bearer token (' +
      err.message + '). Enter one of its tokens below.';
    case 403: return '403 Forbidden: ' + err.message +
      '. The token is scoped to other tenants; use another token.';
    case 409: return '409 Conflict: ' + err.message + '.';
    case 412: return '412 Precondition Failed: the tenant changed since this page read it (' +
      err.message + '). The page now shows the current state: check it and try again.';
    default: return err.status + ': ' + err.message;
  }
}

function showError(err) {
  const box = $('message');
  box.textContent = explain(err);
  box.hidden = false;
  if (err.status === 401) showTokenForm(true);
}

function clearError() { $('message').hidden = true; $('message').textContent = ''; }

function notify(text) {
  const n = $('notice');
  n.textContent = text;
  n.hidden = false;
}

function showTokenForm(show) {
  const opening = show && $('token-section').hidden;
  $('token-section').hidden = !show;
  $('token-toggle').setAttribute('aria-expanded', String(show));
  if (opening) $('token-input').focus();   // once, not on every refresh
}

// ---- rendering ----

function pct(x) { return (Math.round(x * 10) / 10) + '%'; }
function rate(r) { return (r * 100).toFixed(2) + '%'; }

function splitBar(t) {
  const blue = t.pools.blue.share, green = t.pools.green.share;
  const label = 'blue ' + pct(blue) + ', green ' + pct(green);
  const bar = el('div', { class: 'split', role: 'img', 'aria-label': 'split: ' + label });
  for (const [pool, share] of [['blue', blue], ['green', green]]) {
    if (share <= 0) continue;
    const seg = el('div', { class: 'seg ' + pool, text: share >= 12 ? pool + ' ' + pct(share) : '' });
    seg.style.width = share + '%';   // CSSOM, allowed by the CSP
    bar.append(seg);
  }
  return bar;
}

function poolRole(t, pool) { return pool === t.stable ? 'stable' : 'candidate'; }

function poolsTable(t, withEndpoints) {
  const head = el('tr', {},
    el('th', { scope: 'col', text: 'pool' }), el('th', { scope: 'col', text: 'share' }),
    el('th', { scope: 'col', text: 'error rate' }), el('th', { scope: 'col', text: 'p99' }),
    el('th', { scope: 'col', text: 'endpoints' }));
  const body = el('tbody');
  for (const pool of ['blue', 'green']) {
    const slo = t.slo[pool], eps = t.pools[pool].endpoints;
    const healthy = eps.filter((e) => e.healthy).length;
    const health = el('td', { class: healthy < eps.length ? 'down' : '',
      text: eps.length === 0 ? 'none' : healthy + '/' + eps.length + ' healthy' });
    if (withEndpoints && eps.length) {
      health.append(el('ul', { class: 'endpoints' }, ...eps.map((e) =>
        el('li', { class: e.healthy ? '' : 'down', text: e.address + (e.healthy ? ' up' : ' DOWN') }))));
    }
    body.append(el('tr', { 'data-pool': pool },
      el('th', { scope: 'row' }, pool, el('span', { class: 'role', text: poolRole(t, pool) })),
      el('td', { class: 'num', text: pct(t.pools[pool].share) }),
      el('td', { class: 'num', text: rate(slo.error_rate) + ' (' + slo.requests + ' req)' }),
      el('td', { class: 'num', text: slo.p99_ms === null ? '–' : Math.round(slo.p99_ms) + ' ms' }),
      health));
  }
  return el('div', { class: 'table-wrap' }, el('table', { class: 'pools' }, el('thead', {}, head), body));
}

function progress(t) {
  const r = t.rollout;
  if (!r) return null;
  const step = r.step ? 'step ' + r.step + '/' + r.steps.length + ', ' : '';
  return el('span', {}, 'rollout: ', el('b', { text: r.phase + ' ' + step + r.share + '% since ' + r.since }));
}

function tenantCard(t, detail) {
  const name = detail ? el('span', { text: t.name })
    : el('a', { href: '#/tenants/' + encodeURIComponent(t.name), text: t.name });
  const card = el(detail ? 'div' : 'article', { class: 'tenant', 'data-tenant': t.name },
    el('h3', {}, name,
      el('span', { class: 'status status-' + t.status, 'data-field': 'status', text: t.status })),
    splitBar(t),
    el('p', { class: 'facts' },
      el('span', {}, 'stable: ', el('b', { text: t.stable })),
      el('span', {}, 'weights: ', el('b', { 'data-field': 'weights',
        text: 'blue ' + t.weights.blue + ' / green ' + t.weights.green })),
      el('span', {}, 'verdict: ', el('b', { class: 'verdict-' + t.verdict, 'data-field': 'verdict', text: t.verdict })),
      el('span', {}, 'generation: ', el('b', { text: String(t.generation) })),
      progress(t)),
    t.breach ? el('p', { class: 'verdict-breach', text: 'breach: ' + t.breach }) : null,
    poolsTable(t, detail));
  if (detail) card.append(el('p', { class: 'facts' }, 'hosts: ' + t.hosts.join(', ') +
    (t.preview_hosts.length ? ' · preview: ' + t.preview_hosts.join(', ') : '')));
  return card;
}

function weightsText(w) { return w ? w.blue + '/' + w.green : '–'; }

function eventItem(e) {
  return el('li', { 'data-seq': String(e.seq) },
    el('span', { class: 'when', text: '#' + e.seq + ' ' + e.at + ' ' }),
    el('span', { class: 'src', text: e.source }),
    e.actor ? ' by ' + e.actor : '',
    ': ' + weightsText(e.from) + ' → ' + weightsText(e.to) + ', stable ' + (e.stable || '–') + ' — ',
    el('span', { class: 'reason', text: e.reason }),
    e.persisted ? '' : ' (not persisted)');
}

function renderOverview() {
  const list = $('tenants');
  list.replaceChildren(...state.tenants.map((t) => tenantCard(t, false)));
  $('overview-empty').hidden = state.tenants.length > 0;
}

function renderTenant() {
  const t = state.view;
  if (!t) return;
  $('tenant-heading').textContent = 'Tenant ' + t.name;
  $('tenant-card').replaceChildren(tenantCard(t, true));
  const blue = $('weight-blue'), green = $('weight-green');
  if (document.activeElement !== blue && document.activeElement !== green && !state.weightsEdited) {
    blue.value = t.weights.blue;
    green.value = t.weights.green;
  }
}

function renderEvents() {
  $('events').replaceChildren(...state.events.map(eventItem));
}

// ---- pages ----

function route() {
  const m = location.hash.match(/^#\/tenants\/(.+)$/);
  return m ? { tenant: decodeURIComponent(m[1]) } : { tenant: null };
}

async function refresh() {
  const r = route();
  const used = token();
  try {
    if (r.tenant) {
      state.view = await api('GET', '/v1/tenants/' + encodeURIComponent(r.tenant));
      renderTenant();
    } else {
      state.tenants = await api('GET', '/v1/tenants');
      renderOverview();
    }
    clearError();
  } catch (e) {
    // An answer to a token since replaced says nothing about the new one.
    if (token() === used) showError(e);
  }
}

async function loadEvents(tenant) {
  try {
    const list = await api('GET', '/v1/events?limit=50&tenant=' + encodeURIComponent(tenant));
    state.events = list.reverse();
    renderEvents();
  } catch (e) {
    showError(e);
  }
}

async function show() {
  const r = route();
  $('overview').hidden = !!r.tenant;
  $('tenant-page').hidden = !r.tenant;
  state.view = null;
  state.weightsEdited = false;
  state.events = [];
  $('notice').hidden = true;
  if (r.tenant) {
    $('tenant-heading').textContent = 'Tenant ' + r.tenant;
    $('tenant-card').replaceChildren();
    renderEvents();
    await Promise.all([refresh(), loadEvents(r.tenant)]);
  } else {
    await refresh();
  }
}

// ---- actions ----

async function act(what, call) {
  const buttons = document.querySelectorAll('#actions button');
  buttons.forEach((b) => { b.disabled = true; });
  try {
    const answer = await call();
    clearError();
    notify(what + ' (generation ' + answer.generation + (answer.persisted === false ? ', kept in memory only' : '') + ')');
    $('reason').value = '';
    state.weightsEdited = false;
  } catch (e) {
    showError(e);
  } finally {
    buttons.forEach((b) => { b.disabled = false; });
    await refresh();
  }
}

function reasonBody() {
  const reason = $('reason').value.trim();
  return reason ? { reason } : {};
}

function tenantPath(action) { return '/v1/tenants/' + encodeURIComponent(route().tenant) + '/' + action; }

function wireActions() {
  $('rollback').addEventListener('click', () => act('Rolled back to the stable pool',
    () => api('POST', tenantPath('rollback'), { body: reasonBody() })));
  $('rollout').addEventListener('click', () => act('Rollout started',
    () => api('POST', tenantPath('rollout'), { body: reasonBody() })));
  $('promote').addEventListener('click', () => act('Promotion started',
    () => api('POST', tenantPath('promote'), { body: reasonBody() })));
  $('set-weights').addEventListener('click', () => {
    const blue = Number($('weight-blue').value), green = Number($('weight-green').value);
    if (!Number.isInteger(blue) || !Number.isInteger(green) || blue < 0 || green < 0) {
      showError(new ApiError(400, 'weights must be whole numbers, 0 or more'));
      return;
    }
    const generation = state.view ? state.view.generation : undefined;
    act('Weights set to blue ' + blue + ' / green ' + green,
      () => api('PUT', tenantPath('weights'), { body: { blue, green, ...reasonBody() }, ifMatch: generation }));
  });
  for (const id of ['weight-blue', 'weight-green']) {
    $(id).addEventListener('input', () => { state.weightsEdited = true; });
  }
}

// ---- the live stream ----
// EventSource cannot send an Authorization header, so the stream is read
// with fetch() and parsed here (the text/event-stream format).

function setLive(text) { $('live').textContent = text; }

function onEvent(kind, data) {
  if (kind === 'gap') { scheduleRefresh(); return; }
  let e;
  try { e = JSON.parse(data); } catch (_) { return; }
  state.lastSeq = e.seq;
  const r = route();
  if (r.tenant && e.tenant === r.tenant && !state.events.some((x) => x.seq === e.seq)) {
    state.events.unshift(e);
    renderEvents();
  }
  scheduleRefresh();
}

function scheduleRefresh() {
  clearTimeout(state.refreshTimer);
  state.refreshTimer = setTimeout(refresh, 100);
}

async function readStream(controller) {
  const headers = { Accept: 'text/event-stream' };
  if (token()) headers.Authorization = 'Bearer ' + token();
  if (state.lastSeq !== null) headers['Last-Event-ID'] = String(state.lastSeq);
  const resp = await fetch('/v1/events/stream', { headers, cache: 'no-store', signal: controller.signal });
  if (!resp.ok) {
    let msg = resp.statusText;
    try { msg = (await resp.json()).error || msg; } catch (_) { /* not JSON */ }
    throw new ApiError(resp.status, msg);
  }
  setLive('live');
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let kind = 'message';
      const data = [];
      for (const line of block.split('\n')) {
        if (line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const field = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (field === 'event') kind = val;
        else if (field === 'data') data.push(val);
      }
      if (data.length) onEvent(kind, data.join('\n'));
    }
  }
}

async function stream() {
  if (state.stream) state.stream.abort();
  const controller = new AbortController();
  state.stream = controller;
  while (!controller.signal.aborted) {
    try {
      await readStream(controller);
    } catch (e) {
      if (controller.signal.aborted) return;
      if (e instanceof ApiError) {
        setLive('not live: ' + e.status);
        if (e.status === 401 || e.status === 403) { showError(e); return; }
      }
    }
    setLive('reconnecting…');
    await new Promise((r) => setTimeout(r, RECONNECT_MS));
  }
}

// ---- start ----

function start() {
  $('token-toggle').addEventListener('click', () => showTokenForm($('token-section').hidden));
  $('token-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $('token-input').value.trim());
    $('token-input').value = '';
    showTokenForm(false);
    clearError();
    stream();
    show();
  });
  $('token-forget').addEventListener('click', () => {
    sessionStorage.removeItem(TOKEN_KEY);
    $('token-input').value = '';
    notify('Token forgotten.');
  });
  wireActions();
  window.addEventListener('hashchange', show);
  setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS);
  stream();
  show();
}

document.addEventListener('DOMContentLoaded', start);
