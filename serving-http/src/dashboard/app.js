// The serving dashboard: charts and logs of one endpoint, drawn as SVG from the JSON APIs.
// No framework and no network beyond this server's /api/v1/endpoints/{name}/ routes.
'use strict';

const COLORS = ['#2563eb', '#16a34a', '#d97706', '#9333ea', '#dc2626', '#0891b2', '#4b5563'];
const SVG = 'http://www.w3.org/2000/svg';
const REFRESH_MS = 5000;

const state = { endpoint: '', token: '', view: 'charts', offset: 0, total: 0, timer: null };

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, text) {
  const node = tag.startsWith('svg:')
    ? document.createElementNS(SVG, tag.slice(4))
    : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  if (text !== undefined) node.textContent = text;
  return node;
}

function setStatus(text, isError = false) {
  const status = $('status');
  status.textContent = text;
  status.classList.toggle('error', isError);
}

// ---- connection -------------------------------------------------------------------------

// The fragment (#endpoint=NAME&token=TOKEN) never reaches the server; the token is moved to
// sessionStorage and dropped from the address bar.
function readConnection() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  state.endpoint = fragment.get('endpoint') || sessionStorage.getItem('serving.endpoint') || '';
  state.token = fragment.get('token') || sessionStorage.getItem('serving.token') || '';
  if (fragment.has('token')) {
    history.replaceState(null, '', `${location.pathname}${location.search}#endpoint=${encodeURIComponent(state.endpoint)}`);
  }
  $('endpoint').value = state.endpoint;
  $('token').value = state.token;
}

function connect(event) {
  if (event) event.preventDefault();
  state.endpoint = $('endpoint').value.trim();
  state.token = $('token').value;
  sessionStorage.setItem('serving.endpoint', state.endpoint);
  sessionStorage.setItem('serving.token', state.token);
  history.replaceState(null, '', `${location.pathname}${location.search}#endpoint=${encodeURIComponent(state.endpoint)}`);
  state.offset = 0;
  refresh();
}

async function api(path, params = {}) {
  const query = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== '' && v !== undefined));
  const url = `/api/v1/endpoints/${encodeURIComponent(state.endpoint)}/${path}?${query}`;
  const response = await fetch(url, { headers: { 'Cnvrg-Api-Key': state.token } });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

// ---- views ------------------------------------------------------------------------------

function showView(view) {
  state.view = view;
  for (const button of document.querySelectorAll('#tabs button')) {
    button.classList.toggle('active', button.dataset.view === view);
  }
  for (const section of document.querySelectorAll('main > section')) {
    section.hidden = section.id !== `view-${view}`;
  }
  refresh();
}

async function refresh() {
  clearTimeout(state.timer);
  if (!state.endpoint) {
    setStatus('Enter an endpoint and its token.');
    return;
  }
  try {
    if (state.view === 'charts') await loadCharts();
    if (state.view === 'logs') await loadLogs();
    if (state.view === 'logs') await loadFeedback();
    if (state.view === 'triggers') await loadTriggers();
    setStatus(`${state.endpoint} · updated ${new Date().toLocaleTimeString()}`);
  } catch (error) {
    setStatus(`${state.endpoint}: ${error.message}`, true);
  }
  if (state.view === 'charts' || state.view === 'triggers') state.timer = setTimeout(refresh, REFRESH_MS);
}

// ---- charts -----------------------------------------------------------------------------

async function loadCharts() {
  const minutes = Number($('window').value);
  const charts = await (await api('charts', { minutes })).json();
  const xMax = charts.now;
  const xMin = xMax - (minutes - 1) * 60;
  const color = (i) => COLORS[i % COLORS.length];

  const requests = charts.versions.map((v, i) => ({
    name: `v${v.model_version}`, color: color(i), points: filled(v.points, xMin, xMax, (p) => p.requests),
  }));
  const errors = charts.versions.map((v, i) => ({
    name: `v${v.model_version}`, color: color(i), points: filled(v.points, xMin, xMax, (p) => p.errors),
  }));
  const latency = charts.versions.flatMap((v, i) => [
    ['p50', 'p50_ms', ''], ['p95', 'p95_ms', '6 3'], ['p99', 'p99_ms', '2 3'],
  ].map(([label, field, dash]) => ({
    name: `v${v.model_version} ${label}`, color: color(i), dash,
    points: v.points.map((p) => ({ x: p.minute, y: p[field] })),
  })));

  const grid = $('charts');
  grid.replaceChildren(
    lineChart({ id: 'requests', title: 'Requests per minute', series: requests, xMin, xMax }),
    lineChart({ id: 'latency', title: 'Latency per minute (ms): p50, p95, p99', series: latency, xMin, xMax }),
    lineChart({ id: 'errors', title: 'Errors per minute', series: errors, xMin, xMax }),
  );

  const versions = charts.versions.map((v) => v.model_version);
  const byKey = new Map();
  for (const metric of charts.metrics) {
    if (!byKey.has(metric.key)) byKey.set(metric.key, []);
    let index = versions.indexOf(metric.model_version);
    if (index < 0) index = versions.push(metric.model_version) - 1;
    byKey.get(metric.key).push({
      name: `v${metric.model_version}`, color: color(index),
      points: metric.points.map((p) => ({ x: p.minute, y: p.mean, count: p.count })),
    });
  }
  const metricCharts = [...byKey].map(([key, series]) => lineChart({
    id: `metric:${key}`, title: key, series, xMin, xMax,
  }));
  if (metricCharts.length === 0) {
    metricCharts.push(el('p', { class: 'hint' }, 'No custom metrics logged in this window.'));
  }
  $('metric-charts').replaceChildren(...metricCharts);
}

// One point per minute of the window, zero where the API has none (no requests that minute).
function filled(points, xMin, xMax, value) {
  const byMinute = new Map(points.map((p) => [p.minute, value(p)]));
  const out = [];
  for (let x = xMin; x <= xMax; x += 60) out.push({ x, y: byMinute.get(x) || 0, filled: !byMinute.has(x) });
  return out;
}

function lineChart({ id, title, series, xMin, xMax }) {
  const W = 560, H = 220, left = 48, right = 30, top = 10, bottom = 28;
  const box = el('div', { class: 'chart' });
  box.append(el('h3', {}, title));
  const svg = el('svg:svg', { viewBox: `0 0 ${W} ${H}`, 'data-chart': id, role: 'img', 'aria-label': title });
  box.append(svg);

  const all = series.flatMap((s) => s.points);
  const yMaxRaw = Math.max(0, ...all.map((p) => p.y));
  const yMinRaw = Math.min(0, ...all.map((p) => p.y));
  const yMax = niceCeil(yMaxRaw === yMinRaw ? yMinRaw + 1 : yMaxRaw);
  const yMin = yMinRaw < 0 ? -niceCeil(-yMinRaw) : 0;
  const span = Math.max(60, xMax - xMin);
  const sx = (x) => left + ((x - xMin) / span) * (W - left - right);
  const sy = (y) => top + (1 - (y - yMin) / (yMax - yMin)) * (H - top - bottom);

  for (let i = 0; i <= 4; i++) {
    const y = yMin + ((yMax - yMin) * i) / 4;
    svg.append(el('svg:line', { class: 'grid-line', x1: left, x2: W - right, y1: sy(y), y2: sy(y) }));
    svg.append(el('svg:text', { class: 'tick', x: left - 6, y: sy(y) + 4, 'text-anchor': 'end' }, formatNumber(y)));
  }
  const step = Math.max(60, Math.ceil(span / 6 / 60) * 60);
  for (let x = xMax; x >= xMin; x -= step) {
    svg.append(el('svg:text', { class: 'tick', x: sx(x), y: H - 8, 'text-anchor': 'middle' }, formatMinute(x)));
  }
  svg.append(el('svg:line', { class: 'axis', x1: left, x2: W - right, y1: sy(yMin), y2: sy(yMin) }));
  svg.append(el('svg:line', { class: 'axis', x1: left, x2: left, y1: top, y2: H - bottom }));

  let drawn = 0;
  for (const s of series) {
    const points = s.points.filter((p) => Number.isFinite(p.y)).sort((a, b) => a.x - b.x);
    if (points.length === 0) continue;
    const d = points.map((p, i) => `${i ? 'L' : 'M'}${sx(p.x).toFixed(1)},${sy(p.y).toFixed(1)}`).join(' ');
    const path = el('svg:path', { class: 'series', d, stroke: s.color, 'data-series': s.name });
    if (s.dash) path.setAttribute('stroke-dasharray', s.dash);
    svg.append(path);
    // Minutes filled with zero get the line but no dot: dots mark measured minutes.
    for (const p of points.filter((point) => !point.filled)) {
      const dot = el('svg:circle', { cx: sx(p.x), cy: sy(p.y), r: 2.5, fill: s.color, 'data-value': p.y });
      dot.append(el('svg:title', {}, `${s.name} ${formatMinute(p.x)}: ${formatNumber(p.y)}`));
      svg.append(dot);
      drawn += 1;
    }
  }
  svg.setAttribute('data-points', drawn);
  if (drawn === 0) {
    svg.append(el('svg:text', { class: 'empty', x: W / 2, y: H / 2, 'text-anchor': 'middle' }, 'No data in this window'));
  }

  const legend = el('div', { class: 'legend' });
  for (const s of series) {
    const swatch = el('svg:svg', { width: 22, height: 8, viewBox: '0 0 22 8' });
    const line = el('svg:line', { x1: 1, x2: 21, y1: 4, y2: 4, stroke: s.color, 'stroke-width': 2.5 });
    if (s.dash) line.setAttribute('stroke-dasharray', s.dash);
    swatch.append(line);
    const item = el('span');
    item.append(swatch, s.name);
    legend.append(item);
  }
  box.append(legend);
  return box;
}

function niceCeil(value) {
  if (value <= 0) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const m of [1, 2, 2.5, 5, 10]) if (value <= m * magnitude) return m * magnitude;
  return 10 * magnitude;
}

function formatNumber(value) {
  if (Math.abs(value) >= 1000) return value.toFixed(0);
  if (Math.abs(value) >= 10) return String(Math.round(value * 10) / 10);
  return String(Math.round(value * 1000) / 1000);
}

function formatMinute(seconds) {
  return new Date(seconds * 1000).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
}

// ---- logs -------------------------------------------------------------------------------

function filters() {
  const iso = (value) => (value ? new Date(value).toISOString() : '');
  return {
    start_time: iso($('start').value),
    end_time: iso($('end').value),
    model_version: $('version').value.trim(),
    status: $('outcome').value,
  };
}

async function loadLogs() {
  const size = Number($('size').value);
  const page = await (await api('logs', { ...filters(), order: 'desc', offset: state.offset, size })).json();
  state.total = page.total;
  const body = $('log-table').querySelector('tbody');
  body.replaceChildren(...page.predictions.map((p) => {
    const row = el('tr', { 'data-request-id': p.request_id });
    const failed = p.status < 200 || p.status >= 300;
    row.append(
      el('td', {}, new Date(p.start_time).toLocaleString()),
      el('td', { class: 'json', title: p.request_id }, p.request_id),
      el('td', {}, p.model_version),
      el('td', { class: failed ? 'bad' : '' }, String(p.status)),
      el('td', {}, p.elapsed_ms.toFixed(1)),
      el('td', { class: 'json', title: json(p.input) }, json(p.input)),
      el('td', { class: failed ? 'json bad' : 'json', title: failed ? p.error : json(p.output) }, failed ? p.error : json(p.output)),
      el('td', { class: 'json' }, Object.keys(p.metrics).length ? JSON.stringify(p.metrics) : ''),
    );
    return row;
  }));
  const first = page.total === 0 ? 0 : state.offset + 1;
  const last = state.offset + page.predictions.length;
  // A query stops at its page: with filters the total can be a lower bound.
  const total = page.total_exact === false ? `at least ${page.total}` : String(page.total);
  $('log-summary').textContent = `Showing ${first}–${last} of ${total} predictions, newest first.`;
  $('newer').disabled = state.offset === 0;
  $('older').disabled = last >= page.total;
}

// ---- feedback loops (Logs tab) ---------------------------------------------------------

function schedule(loop) {
  const s = loop.schedule;
  if (s === 'now') return 'now (once)';
  if (s.every_secs !== undefined) return `every ${s.every_secs} s`;
  if (s.cron !== undefined) return `cron ${s.cron}`;
  return JSON.stringify(s);
}

async function loadFeedback() {
  const body = $('feedback-table').querySelector('tbody');
  let loops;
  try {
    loops = (await (await api('feedback')).json()).feedback;
  } catch (error) {
    body.replaceChildren();
    $('feedback-summary').textContent = `Feedback loops: ${error.message}`;
    return;
  }
  body.replaceChildren(...loops.map((loop) => {
    const row = el('tr', { 'data-loop-id': loop.id, 'data-state': loop.state });
    const last = loop.exports[loop.exports.length - 1];
    const lastText = last
      ? `${last.file} · ${last.records} records · ${new Date(last.from).toLocaleString()} → ${new Date(last.to).toLocaleString()}`
      : (loop.last_error ? `failed: ${loop.last_error}` : 'none yet');
    const stop = el('td');
    if (loop.state === 'running') {
      const button = el('button', { type: 'button', class: 'stop', 'data-loop-id': loop.id }, 'Stop');
      button.addEventListener('click', () => stopFeedback(loop.id));
      stop.append(button);
    }
    row.append(
      el('td', { class: 'json' }, loop.id),
      el('td', {}, loop.dataset),
      el('td', {}, `${schedule(loop)} · ${loop.format}`),
      el('td', { class: loop.state === 'failed' ? 'bad' : '' }, loop.state),
      el('td', {}, String(loop.exported_records)),
      el('td', { class: 'json last-export', title: lastText }, lastText),
      stop,
    );
    return row;
  }));
  $('feedback-summary').textContent = loops.length
    ? `${loops.length} feedback loop${loops.length === 1 ? '' : 's'}.`
    : 'No feedback loops: start one with POST /api/v1/admin/endpoints/{name}/feedback.';
}

async function stopFeedback(id) {
  const token = $('admin-token').value.trim();
  if (!token) {
    setStatus(`${state.endpoint}: enter the admin token to stop a feedback loop`, true);
    return;
  }
  const url = `/api/v1/admin/endpoints/${encodeURIComponent(state.endpoint)}/feedback/${encodeURIComponent(id)}`;
  const response = await fetch(url, { method: 'DELETE', headers: { Authorization: `Bearer ${token}` } });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
    setStatus(`${state.endpoint}: stop failed: ${message}`, true);
    return;
  }
  setStatus(`${state.endpoint} · feedback loop ${id} stopped`);
  await loadFeedback();
}

function json(value) {
  return value === null || value === undefined ? '' : JSON.stringify(value);
}

async function exportCsv() {
  try {
    const response = await api('logs.csv', { ...filters(), order: 'asc', size: 1000000 });
    const blob = await response.blob();
    const link = el('a', { href: URL.createObjectURL(blob), download: `${state.endpoint}-predictions.csv` });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
    setStatus(`${state.endpoint} · exported ${blob.size} bytes`);
  } catch (error) {
    setStatus(`${state.endpoint}: export failed: ${error.message}`, true);
  }
}

// ---- triggers ---------------------------------------------------------------------------

const COMPARISONS = { greater_than: '>', less_than: '<' };

async function loadTriggers() {
  const { triggers } = await (await api('triggers')).json();
  const body = $('trigger-table').querySelector('tbody');
  body.replaceChildren(...triggers.map((t) => {
    const rule = t.rule;
    const row = el('tr', { 'data-trigger-id': t.id, 'data-state': t.state });
    let condition = `${rule.metric} ${COMPARISONS[rule.comparison] || rule.comparison} ${rule.threshold}`;
    condition += ` · ${rule.min_events} event${rule.min_events === 1 ? '' : 's'} per ${rule.every_secs} s`;
    if (rule.model_version) condition += ` · v${rule.model_version}`;
    if (rule.cooldown_secs) condition += ` · cooldown ${rule.cooldown_secs} s`;
    const action = t.action_spec && t.action_spec.url ? `${t.action} ${t.action_spec.url}`
      : t.action_spec && t.action_spec.to ? `${t.action} ${t.action_spec.to.join(', ')}` : t.action;
    const last = t.last_poll ? `${new Date(t.last_poll).toLocaleTimeString()}${t.last_value === undefined ? '' : ` (${formatNumber(t.last_value)})`}` : 'not yet';
    row.append(
      el('td', {}, rule.title),
      el('td', { class: `severity-${rule.severity}` }, rule.severity),
      el('td', { class: 'json' }, condition),
      el('td', { class: 'json', title: action }, action),
      el('td', { class: `state state-${t.state}` }, t.state.replace('_', ' ')),
      el('td', {}, last),
      el('td', {}, String(t.fired)),
      el('td', { class: t.failures ? 'bad' : '' }, String(t.failures)),
    );
    return row;
  }));
  const alerts = triggers
    .flatMap((t) => t.alerts.map((a) => ({ ...a, trigger: t.id })))
    .sort((a, b) => (a.at < b.at ? 1 : -1));
  $('alert-table').querySelector('tbody').replaceChildren(...alerts.map((a) => {
    const row = el('tr', { 'data-trigger-id': a.trigger, 'data-ok': String(a.ok) });
    row.append(
      el('td', {}, new Date(a.at).toLocaleString()),
      el('td', {}, a.title),
      el('td', {}, a.metric),
      el('td', {}, formatNumber(a.value)),
      el('td', {}, String(a.events)),
      el('td', {}, a.action),
      el('td', { class: a.ok ? '' : 'bad', title: a.error || '' }, a.ok ? 'sent' : `failed: ${a.error}`),
    );
    return row;
  }));
  $('trigger-summary').textContent = triggers.length === 0
    ? 'No triggers on this endpoint.'
    : `${triggers.length} trigger${triggers.length === 1 ? '' : 's'}, ${alerts.length} recent alert${alerts.length === 1 ? '' : 's'}.`;
}

// ---- wiring -----------------------------------------------------------------------------

document.addEventListener('DOMContentLoaded', () => {
  readConnection();
  $('connect').addEventListener('submit', connect);
  for (const button of document.querySelectorAll('#tabs button')) {
    button.addEventListener('click', () => showView(button.dataset.view));
  }
  $('window').addEventListener('change', refresh);
  $('filters').addEventListener('submit', (event) => { event.preventDefault(); state.offset = 0; refresh(); });
  $('newer').addEventListener('click', () => { state.offset = Math.max(0, state.offset - Number($('size').value)); refresh(); });
  $('older').addEventListener('click', () => { state.offset += Number($('size').value); refresh(); });
  $('export').addEventListener('click', exportCsv);
  const initial = new URLSearchParams(location.search).get('view');
  showView(['charts', 'logs', 'batch', 'triggers'].includes(initial) ? initial : 'charts');
});

// ---- batch runs -------------------------------------------------------------------------

// The Batch runs tab: the endpoint's runs (GET …/batches, newest first), the progress of
// running ones (GET …/batches/{id} every second) and a side-by-side comparison of the selected
// runs (GET …/batches/compare?ids=a,b). It hooks into the page through its own listeners.
const BATCH_POLL_MS = 1000;
const batch = { runs: [], selected: new Set(), timer: null, compared: [] };

function batchRuns(body) {
  return Array.isArray(body) ? body : (body.runs || []);
}

function formatSeconds(value) {
  return value === null || value === undefined ? '' : `${formatNumber(value)} s`;
}

function formatTime(value) {
  return value ? new Date(value).toLocaleString() : '';
}

function formatPercent(run) {
  const progress = run.progress !== undefined ? run.progress : batchProgress(run);
  return progress === null || progress === undefined ? '' : `${Math.round(progress * 100)}%`;
}

// The share of the input read, as BatchRun::progress computes it.
function batchProgress(run) {
  if (run.status === 'succeeded') return 1;
  if (!run.input_bytes) return null;
  return Math.min(1, run.bytes_read / run.input_bytes);
}

function distribution(predictions) {
  if (!predictions || predictions.kind === 'empty') return '';
  if (predictions.kind === 'numeric') {
    const q = predictions.quantiles || {};
    const median = q.p50 === undefined ? '' : `, p50 ${formatNumber(q.p50)}`;
    return `mean ${formatNumber(predictions.mean)}, min ${formatNumber(predictions.min)}, max ${formatNumber(predictions.max)}${median}`;
  }
  const counts = Object.entries(predictions.counts || {}).sort((a, b) => b[1] - a[1]);
  const text = counts.map(([value, count]) => `${value} ${count}`).join(' · ');
  return predictions.other ? `${text} · other ${predictions.other}` : text;
}

function metricsText(metrics) {
  return Object.entries(metrics || {})
    .map(([key, m]) => `${key}: mean ${formatNumber(m.mean)} (${m.count})`)
    .join(' · ');
}

function statusCell(run) {
  const cell = el('td', { class: `batch-status batch-${run.status}`, title: run.error || '' });
  cell.append(el('span', {}, run.status));
  if (run.status === 'running' || run.status === 'queued') {
    const progress = batchProgress(run);
    const bar = el('progress', { max: 1 });
    if (progress !== null) bar.value = progress;
    cell.append(' ', bar, el('span', { class: 'batch-percent' }, ` ${formatPercent(run)}`));
  } else if (run.error) {
    cell.append(el('div', { class: 'bad' }, run.error));
  }
  return cell;
}

function batchRow(run) {
  const row = el('tr', { 'data-run-id': run.id, 'data-status': run.status });
  const check = el('input', { type: 'checkbox', 'aria-label': `select run ${run.id}` });
  check.checked = batch.selected.has(run.id);
  check.addEventListener('change', () => {
    if (check.checked) batch.selected.add(run.id); else batch.selected.delete(run.id);
    $('batch-compare').disabled = batch.selected.size < 2;
  });
  const pick = el('td');
  pick.append(check);
  const request = run.request || {};
  row.append(
    pick,
    statusCell(run),
    el('td', { class: 'json', title: request.input_file }, request.input_file || ''),
    el('td', { class: 'json', title: run.output_location || '' }, `${request.dataset}/${request.output_file}`),
    el('td', {}, run.model_version),
    el('td', { class: 'batch-rows' }, String(run.rows_read)),
    el('td', { class: run.rows_failed ? 'bad' : '' }, String(run.rows_failed)),
    el('td', {}, formatNumber(run.rows_per_second || 0)),
    el('td', {}, formatSeconds(run.cold_start_seconds)),
    el('td', {}, formatTime(run.started_at || run.submitted_at)),
  );
  return row;
}

async function loadBatches() {
  clearTimeout(batch.timer);
  const runs = batchRuns(await (await api('batches')).json());
  batch.runs = runs;
  const ids = new Set(runs.map((run) => run.id));
  for (const id of [...batch.selected]) if (!ids.has(id)) batch.selected.delete(id);
  $('batch-table').querySelector('tbody').replaceChildren(...runs.map(batchRow));
  $('batch-compare').disabled = batch.selected.size < 2;
  const running = runs.filter((run) => !isFinished(run)).length;
  $('batch-summary').textContent = runs.length === 0
    ? 'No batch runs on this endpoint yet.'
    : `${runs.length} run${runs.length === 1 ? '' : 's'}, newest first${running ? `, ${running} running` : ''}.`;
  if (running) batch.timer = setTimeout(pollBatches, BATCH_POLL_MS);
}

function isFinished(run) {
  return ['succeeded', 'failed', 'cancelled'].includes(run.status);
}

// Each running run's progress, in place; the list again once one has ended.
async function pollBatches() {
  if (state.view !== 'batch') return;
  try {
    let ended = false;
    for (const run of batch.runs.filter((r) => !isFinished(r))) {
      const now = await (await api(`batches/${encodeURIComponent(run.id)}`)).json();
      Object.assign(run, now);
      const old = $('batch-table').querySelector(`tr[data-run-id="${CSS.escape(run.id)}"]`);
      if (old) old.replaceWith(batchRow(now));
      ended = ended || isFinished(now);
    }
    if (ended) {
      await loadBatches();
    } else {
      batch.timer = setTimeout(pollBatches, BATCH_POLL_MS);
    }
  } catch (error) {
    setStatus(`${state.endpoint}: ${error.message}`, true);
    batch.timer = setTimeout(pollBatches, BATCH_POLL_MS * 5);
  }
}

async function compareBatches() {
  const ids = batch.runs.map((run) => run.id).filter((id) => batch.selected.has(id));
  if (ids.length < 2) return;
  try {
    const comparison = await (await api('batches/compare', { ids: ids.join(',') })).json();
    showComparison(comparison);
  } catch (error) {
    setStatus(`${state.endpoint}: compare failed: ${error.message}`, true);
  }
}

function showComparison(comparison) {
  const runs = comparison.runs || [];
  const head = el('tr');
  head.append(el('th', {}, 'Run'), ...runs.map((run) => el('th', { 'data-run-id': run.id }, run.id)));
  const figures = [
    ['Status', (r) => r.status],
    ['Model', (r) => `${r.model} v${r.model_version}`],
    ['Input', (r) => `${r.request.input_file}`],
    ['Output', (r) => `${r.request.dataset}/${r.request.output_file}`],
    ['Rows read', (r) => String(r.rows_read)],
    ['Predicted', (r) => String(r.rows_predicted)],
    ['Failed', (r) => String(r.rows_failed)],
    ['Rows/s', (r) => formatNumber(r.rows_per_second || 0)],
    ['Cold start', (r) => formatSeconds(r.cold_start_seconds)],
    ['Started', (r) => formatTime(r.started_at)],
    ['Finished', (r) => formatTime(r.finished_at)],
    ['Predictions', (r) => distribution(r.predictions)],
    ['Custom metrics', (r) => metricsText(r.metrics)],
  ];
  const rows = figures.map(([label, value]) => {
    const row = el('tr', { 'data-figure': label });
    const cells = runs.map((run) => value(run));
    const differ = new Set(cells).size > 1;
    row.append(el('th', {}, label), ...cells.map((text) => el('td', { class: differ ? 'differs' : '' }, text)));
    return row;
  });
  $('batch-compare-table').querySelector('thead').replaceChildren(head);
  $('batch-compare-table').querySelector('tbody').replaceChildren(...rows);

  const differences = comparison.differences || [];
  $('batch-diff-table').querySelector('tbody').replaceChildren(...differences.map((d) => {
    const row = el('tr', { 'data-a': d.a, 'data-b': d.b });
    const share = d.rows ? `${formatNumber((100 * d.differing) / d.rows)}%` : '';
    row.append(
      el('td', {}, d.a), el('td', {}, d.b), el('td', {}, String(d.rows)),
      el('td', { class: d.differing ? 'bad batch-differing' : 'batch-differing' }, String(d.differing)),
      el('td', {}, share),
    );
    return row;
  }));
  $('batch-diff-summary').textContent = differences.length === 0
    ? 'No pair of these runs succeeded over the same input: predictions are not compared.'
    : 'Rows compared one to one between the outputs of runs over the same input.';
  $('batch-comparison').hidden = false;
}

async function showBatches() {
  if (state.view !== 'batch' || !state.endpoint) return;
  try {
    await loadBatches();
  } catch (error) {
    setStatus(`${state.endpoint}: ${error.message}`, true);
  }
}

document.addEventListener('DOMContentLoaded', () => {
  for (const button of document.querySelectorAll('#tabs button')) {
    button.addEventListener('click', () => {
      clearTimeout(batch.timer);
      showBatches();
    });
  }
  $('connect').addEventListener('submit', () => {
    batch.selected.clear();
    $('batch-comparison').hidden = true;
    showBatches();
  });
  $('batch-refresh').addEventListener('click', showBatches);
  $('batch-compare').addEventListener('click', compareBatches);
  showBatches();
});
