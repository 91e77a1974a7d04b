// The orch dashboard page: three views (jobs, a job, a task) chosen by the URL's hash, each
// polling the server's JSON API and updating in place. Plain DOM, no framework, no build step:
// the file is embedded in the orch binary as it is. Text from jobs (error messages, logs) only
// ever goes into textContent, never into HTML.
'use strict';

const POLL_MS = 2000;
const STATES = [
  ['pending', 'p'], ['dispatched', 'd'], ['running', 'r'], ['succeeded', 's'],
  ['failed', 'f'], ['retrying', 'y'], ['cancelled', 'c'],
];
const COLOR_VARS = { p: '--wait', d: '--disp', r: '--run', s: '--ok', f: '--fail', y: '--retry', c: '--cancel' };

// The page never reloads: tests compare this mark before and after updates.
document.documentElement.dataset.loadedAt = String(Date.now());

let generation = 0;
let timer = null;

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'text') node.textContent = v;
    else if (k === 'class') node.className = v;
    else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k.startsWith('data-')) node.dataset[k.slice(5).replace(/-(\w)/g, (_, c) => c.toUpperCase())] = v;
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

async function api(path, options) {
  const response = await fetch('api/' + path, options);
  const type = response.headers.get('content-type') || '';
  const body = type.includes('json') ? await response.json() : await response.text();
  if (!response.ok) throw new Error((body && body.error) || response.statusText);
  return body;
}

const fmt = {
  num: (n) => (n === undefined || n === null ? '–' : Number(n).toLocaleString('en-US')),
  rate: (r) => (!r ? '0' : r < 10 ? r.toFixed(1) : Math.round(r).toLocaleString('en-US')),
  duration(seconds) {
    if (seconds === undefined || seconds === null) return '–';
    const s = Math.round(seconds);
    if (s < 60) return s + 's';
    const m = Math.floor(s / 60);
    if (m < 60) return m + 'm ' + String(s % 60).padStart(2, '0') + 's';
    const h = Math.floor(m / 60);
    return h + 'h ' + String(m % 60).padStart(2, '0') + 'm';
  },
  time: (ms) => (ms ? new Date(ms).toISOString().replace('T', ' ').slice(0, 19) + 'Z' : '–'),
  percent: (x) => (x === undefined || x === null ? '–' : (x * 100).toFixed(0) + '%'),
};

// Whether `data` is what `slot` last showed (then the DOM is left alone: a reader's
// selection, hover and focus survive the update); remembers it otherwise.
function unchanged(memo, slot, data) {
  const text = JSON.stringify(data);
  if (memo[slot] === text) return true;
  memo[slot] = text;
  return false;
}

function phase(p) {
  return el('span', { class: 'phase phase-' + p, text: p });
}

function progressBar(job) {
  const total = Math.max(job.itemsTotal, 1);
  const ok = Math.max(job.itemsDone - job.itemsFailed, 0);
  const bar = el('div', { class: 'bar', title: fmt.num(job.itemsDone) + ' of ' + fmt.num(job.itemsTotal) });
  const okPart = el('div', { class: 'ok' });
  okPart.style.width = (100 * ok / total) + '%';
  const failPart = el('div', { class: 'fail' });
  failPart.style.width = (100 * job.itemsFailed / total) + '%';
  bar.append(okPart, failPart);
  return bar;
}

function notice(text) {
  const box = document.getElementById('notice');
  box.textContent = text;
  box.hidden = false;
  clearTimeout(notice.timer);
  notice.timer = setTimeout(() => { box.hidden = true; }, 6000);
}

function setLive(ok) {
  document.getElementById('live').classList.toggle('stale', !ok);
  document.getElementById('live').textContent = ok ? 'live' : 'reconnecting…';
}

function crumbs(...parts) {
  document.getElementById('crumbs').replaceChildren(...parts.map((p) => (
    p.href ? el('a', { href: p.href, text: p.text }) : el('span', { text: p.text }))));
}

// ---------------------------------------------------------------- routing and polling

function route() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  if (parts[0] === 'job' && parts[1] && parts[2] === 'task' && parts[3] !== undefined) {
    return { view: taskView, job: parts[1], task: Number(parts[3]) };
  }
  if (parts[0] === 'job' && parts[1]) return { view: jobView, job: parts[1] };
  return { view: jobsView };
}

function navigate() {
  generation += 1;
  clearTimeout(timer);
  const r = route();
  const main = document.getElementById('view');
  const page = r.view(r);
  main.replaceChildren(page.root);
  poll(generation, page);
}

async function poll(gen, page) {
  try {
    await page.refresh();
    if (gen !== generation) return;
    setLive(true);
  } catch (e) {
    if (gen !== generation) return;
    setLive(false);
    if (page.failed) page.failed(e);
  }
  timer = setTimeout(() => poll(gen, page), POLL_MS);
}

function markRendered(view) {
  // Time from the start of navigation to the first complete view, for the tests.
  if (window.orchFirstRenderMs === undefined) window.orchFirstRenderMs = performance.now();
  document.body.dataset.view = view;
  document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
}

// ---------------------------------------------------------------- the jobs list

function jobsView() {
  crumbs({ text: 'jobs' });
  const body = el('tbody', { id: 'jobs' });
  const empty = el('p', { class: 'muted', text: 'No jobs in this storage yet.', hidden: true });
  const root = el('section', {},
    el('h1', { text: 'Jobs' }),
    empty,
    el('table', {},
      el('thead', {}, el('tr', {},
        el('th', { text: 'job' }), el('th', { text: 'phase' }), el('th', { text: 'progress' }),
        el('th', { class: 'num', text: 'items' }), el('th', { class: 'num', text: 'failed' }),
        el('th', { class: 'num', text: 'items/s' }), el('th', { class: 'num', text: 'ETA' }),
        el('th', { class: 'num', text: 'tasks' }), el('th', { text: 'started' }))),
      body));
  const memo = {};
  return {
    root,
    async refresh() {
      const data = await api('jobs');
      empty.hidden = data.jobs.length > 0;
      if (unchanged(memo, 'jobs', data)) { markRendered('jobs'); return; }
      body.replaceChildren(...data.jobs.map((j) => el('tr', { 'data-job': j.id },
        el('td', {},
          el('a', { href: '#/job/' + encodeURIComponent(j.id), class: 'job-link', 'data-job': j.id, text: (j.namespace ? j.namespace + '/' : '') + j.name }),
          el('div', { class: 'mono muted', text: j.id })),
        el('td', {}, phase(j.phase), j.suspended ? el('span', { class: 'muted', text: ' paused' }) : null),
        el('td', {}, progressBar(j)),
        el('td', { class: 'num', text: fmt.num(j.itemsDone) + ' / ' + fmt.num(j.itemsTotal) }),
        el('td', { class: 'num', text: fmt.num(j.itemsFailed) }),
        el('td', { class: 'num', text: fmt.rate(j.itemsPerSecond) }),
        el('td', { class: 'num', text: j.etaSeconds === undefined ? '–' : fmt.duration(j.etaSeconds) }),
        el('td', { class: 'num', text: fmt.num(j.tasksDone) + ' / ' + fmt.num(j.tasksTotal) + (j.tasksRunning ? ' (' + j.tasksRunning + ' running)' : '') }),
        el('td', { class: 'mono', text: fmt.time(j.createdAt) }))));
      markRendered('jobs');
    },
  };
}

// ---------------------------------------------------------------- a job

function jobView(r) {
  const jobPath = 'jobs/' + encodeURIComponent(r.job);
  crumbs({ text: 'jobs', href: '#/' }, { text: r.job });
  const head = el('div', { class: 'head' });
  const cards = el('div', { class: 'cards' });
  const bar = el('div', {});
  const legend = el('div', { class: 'legend', id: 'legend' });
  const canvas = el('canvas', { id: 'grid' });
  const tip = el('div', { class: 'tip', hidden: true });
  const gridWrap = el('div', { class: 'grid-wrap' }, canvas, tip);
  const chart = el('div', { id: 'chart' });
  const aggregation = el('p', { class: 'muted' });
  const kinds = el('tbody', { id: 'error-kinds' });
  const samples = el('div', { id: 'samples' });
  const failedTasks = el('tbody', { id: 'failed-tasks' });
  const limits = el('div', { id: 'rate-limits' });
  const root = el('section', {},
    head, cards, bar,
    el('h2', { text: 'Tasks' }), legend, gridWrap, aggregation,
    el('h2', { text: 'Items per second' }), chart,
    el('div', { class: 'cols' },
      el('div', {},
        el('h2', { text: 'Failed items by error kind' }),
        el('table', {}, el('thead', {}, el('tr', {}, el('th', { text: 'kind' }), el('th', { class: 'num', text: 'items' }), el('th', {}))), kinds),
        samples),
      el('div', {},
        el('h2', { text: 'Rate limits' }), limits)),
    el('h2', { text: 'Tasks with errors' }),
    el('table', {}, el('thead', {}, el('tr', {}, el('th', { text: 'task' }), el('th', { text: 'state' }),
      el('th', { class: 'num', text: 'attempt' }), el('th', { text: 'kind' }), el('th', { text: 'error' }))), failedTasks));

  const memo = {};
  let drawn = { grid: null, width: 0 };
  let grid = '';

  function cellAt(event) {
    const cell = Number(canvas.dataset.cell);
    const cols = Number(canvas.dataset.cols);
    const rect = canvas.getBoundingClientRect();
    const x = Math.floor((event.clientX - rect.left) / cell);
    const y = Math.floor((event.clientY - rect.top) / cell);
    const i = y * cols + x;
    return x < cols && i >= 0 && i < grid.length ? i : null;
  }
  canvas.addEventListener('mousemove', (event) => {
    const i = cellAt(event);
    if (i === null) { tip.hidden = true; return; }
    const state = STATES.find((s) => s[1] === grid[i]);
    tip.textContent = 'task ' + i + ': ' + (state ? state[0] : '?');
    tip.style.left = (event.offsetX + 14) + 'px';
    tip.style.top = (event.offsetY + 10) + 'px';
    tip.hidden = false;
  });
  canvas.addEventListener('mouseleave', () => { tip.hidden = true; });
  canvas.addEventListener('click', (event) => {
    const i = cellAt(event);
    if (i !== null) location.hash = '#/job/' + encodeURIComponent(r.job) + '/task/' + i;
  });

  async function showSamples(kind) {
    samples.replaceChildren(el('p', { class: 'muted', text: 'Reading failed items…' }));
    try {
      const data = await api(jobPath + '/errors?kind=' + encodeURIComponent(kind) + '&limit=50');
      samples.replaceChildren(
        el('h2', { text: 'Failed items: ' + kind }),
        data.samples.length === 0
          ? el('p', { class: 'muted', text: kind === 'task' ? 'These items failed with their whole task: see the tasks with errors below.' : 'No failed item recorded yet (items are recorded when their task commits).' })
          : el('table', { id: 'sample-table' },
            el('thead', {}, el('tr', {}, el('th', { class: 'num', text: 'item' }), el('th', { text: 'task' }),
              el('th', { text: 'error' }), el('th', { class: 'num', text: 'tries' }))),
            el('tbody', {}, data.samples.map((s) => el('tr', { class: 'sample' },
              el('td', { class: 'num mono', text: s.item }),
              el('td', {}, el('a', { href: '#/job/' + encodeURIComponent(r.job) + '/task/' + s.task, text: String(s.task) })),
              el('td', { class: 'sample-message mono', text: s.message }),
              el('td', { class: 'num', text: s.attempts }))))),
        data.truncated ? el('p', { class: 'muted', text: 'The first 50 shown.' }) : null);
    } catch (e) {
      samples.replaceChildren(el('p', { text: 'Cannot read the failed items: ' + e.message }));
    }
  }

  async function act(action, job) {
    if ((action === 'cancel' || action === 'retry') && !confirm(action + ' job ' + job.name + '?')) return;
    try {
      const done = await api(jobPath + '/actions/' + action, { method: 'POST', headers: { 'x-orch-action': '1' } });
      notice(done.message);
    } catch (e) {
      notice(action + ' failed: ' + e.message);
    }
  }

  function renderHead(data) {
    const j = data.job;
    const buttons = [];
    if (data.actions) {
      const ended = ['succeeded', 'failed', 'cancelled'].includes(j.phase);
      if (!ended && !j.suspended) buttons.push(['pause', 'Pause']);
      if (!ended && j.suspended) buttons.push(['resume', 'Resume']);
      if (!ended && !j.cancelRequested) buttons.push(['cancel', 'Cancel']);
      if (j.phase === 'failed' || j.phase === 'cancelled') buttons.push(['retry', 'Retry failed tasks']);
    }
    head.replaceChildren(
      el('div', {},
        el('h1', { text: j.name }),
        el('div', {}, phase(j.phase), ' ', j.suspended ? el('b', { text: 'paused ' }) : null,
          j.cancelRequested && !j.finishedAt ? el('b', { text: 'cancelling ' }) : null,
          el('span', { class: 'mono muted', text: j.id })),
        j.message ? el('p', { text: j.message }) : null,
        el('p', { class: 'muted mono', text: data.handler + ' · ' + data.executor + (data.output ? ' · output ' + data.output : '') })),
      el('div', { class: 'actions' }, buttons.map(([a, label]) => el('button', { id: 'action-' + a, text: label, onclick: () => act(a, j) }))));
  }

  function card(id, value, label) {
    return el('div', { class: 'card' }, el('div', { class: 'v', id, text: value }), el('div', { class: 'k', text: label }));
  }

  function renderCards(j) {
    const elapsed = ((j.finishedAt || Date.now()) - j.createdAt) / 1000;
    cards.replaceChildren(
      card('items-done', fmt.num(j.itemsDone), 'items done of ' + fmt.num(j.itemsTotal)),
      card('items-failed', fmt.num(j.itemsFailed), 'items failed'),
      card('items-per-second', fmt.rate(j.itemsPerSecond), j.finishedAt ? 'items/s over the run' : 'items/s (last minute)'),
      card('eta', j.etaSeconds === undefined ? '–' : fmt.duration(j.etaSeconds), 'to go at this rate'),
      card('tasks', fmt.num(j.tasksDone) + ' / ' + fmt.num(j.tasksTotal), 'tasks done (' + j.tasksRunning + ' running)'),
      card('elapsed', fmt.duration(elapsed), j.finishedAt ? 'ran for' : 'running for'));
    bar.replaceChildren(progressBar(j));
  }

  function renderGrid(data) {
    grid = data.grid;
    legend.replaceChildren(...STATES.map(([name]) => el('span', { 'data-state': name },
      el('i', { class: 's-' + name }), name + ' ' + fmt.num(data.tasksByState[name] || 0))));
    const width = gridWrap.clientWidth - 16;
    if (drawn.grid === grid && drawn.width === width) return;
    drawn = { grid, width };
    const n = grid.length;
    const cell = n <= 400 ? 16 : n <= 4000 ? 9 : n <= 25000 ? 5 : 3;
    const gap = cell >= 5 ? 1 : 0;
    const cols = Math.max(1, Math.min(n, Math.floor(width / cell)));
    canvas.width = cols * cell;
    canvas.height = Math.max(1, Math.ceil(n / cols)) * cell;
    canvas.dataset.cell = cell;
    canvas.dataset.cols = cols;
    const ctx = canvas.getContext('2d');
    const style = getComputedStyle(document.documentElement);
    const paths = {};
    for (const [, letter] of STATES) paths[letter] = new Path2D();
    for (let i = 0; i < n; i += 1) {
      const path = paths[grid[i]] || paths.p;
      path.rect((i % cols) * cell, Math.floor(i / cols) * cell, cell - gap, cell - gap);
    }
    ctx.clearRect(0, 0, canvas.width, canvas.height);
    for (const [, letter] of STATES) {
      ctx.fillStyle = style.getPropertyValue(COLOR_VARS[letter]).trim();
      ctx.fill(paths[letter]);
    }
  }

  function renderChart(curve) {
    const W = 800, H = 180, PAD = 28, BUCKETS = 60;
    const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
    svg.setAttribute('class', 'chart');
    svg.setAttribute('viewBox', '0 0 ' + W + ' ' + H);
    svg.setAttribute('preserveAspectRatio', 'none');
    const text = (x, y, t) => {
      const node = document.createElementNS(svg.namespaceURI, 'text');
      node.setAttribute('x', x); node.setAttribute('y', y); node.textContent = t;
      svg.append(node);
    };
    if (curve.length < 2 || curve[curve.length - 1][0] <= curve[0][0]) {
      text(PAD, H / 2, 'Not enough data yet.');
      chart.replaceChildren(svg);
      return;
    }
    // Items done, interpolated at even bucket edges: a rate per bucket, smooth whether the
    // points came from attempts ending or from the server's own observations.
    const t0 = curve[0][0], t1 = curve[curve.length - 1][0];
    const doneAt = (t) => {
      let k = 1;
      while (k < curve.length - 1 && curve[k][0] < t) k += 1;
      const [ta, da] = curve[k - 1], [tb, db] = curve[k];
      return tb === ta ? db : da + (db - da) * (t - ta) / (tb - ta);
    };
    const width = (t1 - t0) / BUCKETS;
    const rates = [];
    for (let b = 0; b < BUCKETS; b += 1) {
      rates.push((doneAt(t0 + (b + 1) * width) - doneAt(t0 + b * width)) / (width / 1000));
    }
    const max = Math.max(...rates, 1e-9);
    const points = rates.map((rate, b) => {
      const x = PAD + (W - 2 * PAD) * (b + 0.5) / BUCKETS;
      const y = H - PAD - (H - 2 * PAD) * rate / max;
      return x.toFixed(1) + ',' + y.toFixed(1);
    });
    const line = document.createElementNS(svg.namespaceURI, 'polyline');
    line.setAttribute('points', points.join(' '));
    svg.append(line);
    text(PAD, 14, fmt.rate(max) + ' items/s');
    text(PAD, H - 8, fmt.time(t0));
    text(W - PAD - 130, H - 8, fmt.time(t1));
    chart.replaceChildren(svg);
  }

  function renderErrors(data) {
    const entries = Object.entries(data.errorsByKind);
    kinds.replaceChildren(...(entries.length === 0
      ? [el('tr', {}, el('td', { colspan: 3, class: 'muted', text: 'No failed items.' }))]
      : entries.map(([kind, n]) => el('tr', {},
        el('td', {}, el('button', { class: 'linkish error-kind', 'data-kind': kind, text: kind, onclick: () => showSamples(kind) })),
        el('td', { class: 'num', text: fmt.num(n) }),
        el('td', {}, el('button', { class: 'linkish', text: 'show items', onclick: () => showSamples(kind) }))))));
    failedTasks.replaceChildren(...(data.failedTasks.length === 0
      ? [el('tr', {}, el('td', { colspan: 5, class: 'muted', text: 'None.' }))]
      : data.failedTasks.map((t) => el('tr', {},
        el('td', {}, el('a', { href: '#/job/' + encodeURIComponent(r.job) + '/task/' + t.task, text: String(t.task) })),
        el('td', { text: t.state }), el('td', { class: 'num', text: t.attempt }), el('td', { text: t.kind }),
        el('td', { class: 'mono', text: t.error })))));
  }

  function renderLimits(data) {
    const use = data.rateLimit;
    if (data.buckets.length === 0 && !use.tokens) {
      limits.replaceChildren(el('p', { class: 'muted', text: 'This job uses no rate limit.' }));
      return;
    }
    limits.replaceChildren(
      el('div', { class: 'cards' },
        card('tokens', fmt.num(use.tokens), 'tokens taken'),
        card('waited', fmt.duration(use.waitMs / 1000), 'items waited in all'),
        card('waiting-share', fmt.percent(use.waitingShare), 'of worker time waiting')),
      el('table', {},
        el('thead', {}, el('tr', {}, el('th', { text: 'bucket' }), el('th', { class: 'num', text: 'rate/s' }),
          el('th', { class: 'num', text: 'now/s' }), el('th', { class: 'num', text: 'holders' }),
          el('th', { class: 'num', text: 'used' }), el('th', { text: 'state' }))),
        el('tbody', {}, data.buckets.map((b) => el('tr', {},
          el('td', { class: 'mono', text: b.key }), el('td', { class: 'num', text: fmt.rate(b.rate) }),
          el('td', { class: 'num', text: fmt.rate(b.currentRate) }), el('td', { class: 'num', text: b.holders }),
          el('td', { class: 'num', text: fmt.num(b.used) }),
          el('td', { text: b.pausedUntil ? 'paused by the API until ' + fmt.time(b.pausedUntil) : b.throttledRecently ? 'saturated' : 'ok' }))))));
  }

  return {
    root,
    async refresh() {
      const data = await api(jobPath);
      crumbs({ text: 'jobs', href: '#/' }, { text: data.job.name });
      if (!unchanged(memo, 'head', [data.job, data.actions])) renderHead(data);
      if (!unchanged(memo, 'cards', data.job)) renderCards(data.job);
      renderGrid(data);
      aggregation.textContent = data.aggregation
        ? 'Aggregating: ' + data.aggregation.stage + ', ' + data.aggregation.groupsDone + ' of ' + data.aggregation.groupsTotal + ' merges done'
        : '';
      if (!unchanged(memo, 'chart', data.curve)) renderChart(data.curve);
      if (!unchanged(memo, 'errors', [data.errorsByKind, data.failedTasks])) renderErrors(data);
      if (!unchanged(memo, 'limits', [data.rateLimit, data.buckets])) renderLimits(data);
      // A chosen kind's samples stay as they are: they are read again only on a click.
      markRendered('job');
    },
    failed(e) {
      if (!head.firstChild) head.replaceChildren(el('p', { text: e.message }));
    },
  };
}

// ---------------------------------------------------------------- a task

function taskView(r) {
  const jobHref = '#/job/' + encodeURIComponent(r.job);
  const taskPath = 'jobs/' + encodeURIComponent(r.job) + '/tasks/' + r.task;
  crumbs({ text: 'jobs', href: '#/' }, { text: r.job, href: jobHref }, { text: 'task ' + r.task });
  const head = el('div', {});
  const attempts = el('tbody', { id: 'attempts' });
  const logTitle = el('h2', { text: 'Log' });
  const log = el('pre', { class: 'log', id: 'log' });
  const root = el('section', {}, head,
    el('h2', { text: 'Attempts' }),
    el('table', {}, el('thead', {}, el('tr', {},
      ['attempt', 'outcome', 'started', 'ended', 'took', 'worker', 'executor', 'exit', 'items ok', 'failed', 'error', ''].map((h) => el('th', { text: h })))),
    attempts),
    logTitle, log);
  let chosen = null;

  async function showLog(attempt) {
    chosen = attempt;
    logTitle.textContent = 'Log of attempt ' + attempt;
    const text = await api(taskPath + '/log?attempt=' + attempt + '&tail=1000');
    log.textContent = text || '(no log stored for this attempt yet)';
  }

  return {
    root,
    async refresh() {
      const data = await api(taskPath);
      const t = data.task;
      head.replaceChildren(
        el('h1', { text: 'Task ' + t.id + (t.kind && t.kind !== 'work' ? ' (' + t.kind + ')' : '') }),
        el('p', {}, el('span', { class: 'phase', text: t.state }), ' attempt ' + t.attempt + ' · ' + fmt.num(t.items) + ' items · '
          + fmt.num(t.itemsOk) + ' ok · ' + fmt.num(t.itemsFailed) + ' failed'),
        t.lastError ? el('p', { class: 'mono', id: 'task-error', text: t.lastError.kind + ': ' + t.lastError.message }) : null);
      attempts.replaceChildren(...data.attempts.map((a) => el('tr', {},
        el('td', { class: 'num', text: a.attempt }), el('td', { text: a.outcome }),
        el('td', { class: 'mono', text: fmt.time(a.startedAt) }), el('td', { class: 'mono', text: fmt.time(a.endedAt) }),
        el('td', { text: a.startedAt && a.endedAt ? fmt.duration((a.endedAt - a.startedAt) / 1000) : '–' }),
        el('td', { class: 'mono', text: a.worker || '–' }), el('td', { class: 'mono', text: a.executorId || '–' }),
        el('td', { text: a.signal ? 'signal ' + a.signal : (a.exitCode ?? '–') }),
        el('td', { class: 'num', text: fmt.num(a.itemsOk) }), el('td', { class: 'num', text: fmt.num(a.itemsFailed) }),
        el('td', { class: 'mono', text: a.error ? a.error.kind + ': ' + a.error.message : '' }),
        el('td', {}, el('button', { class: 'linkish', text: 'log', onclick: () => showLog(a.attempt) })))));
      const current = Math.max(t.attempt, 1);
      // Follow the running attempt's log; a chosen earlier one does not change.
      if (chosen === null || (chosen === current && !['succeeded', 'failed', 'cancelled'].includes(t.state))) {
        await showLog(chosen === null ? current : chosen);
      }
      markRendered('task');
    },
    failed(e) {
      head.replaceChildren(el('p', { text: e.message }));
    },
  };
}

window.addEventListener('hashchange', navigate);
navigate();
