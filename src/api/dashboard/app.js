// The batchforge dashboard. Plain JavaScript, no dependencies, no build step.
//
// Every URL is relative to the page's own directory, so the dashboard works wherever the
// routes are mounted (`/` or a scope such as `/engine/`). Every piece of server data goes
// into the page as text nodes (never as markup): the server runs commands for scripts, and
// an item's output is whatever those commands printed.
//
// Live updates come from one event stream on `batch/events` (progress, item and end events
// of every job); the jobs list and the stats are also refreshed every few seconds, which
// covers new jobs and a dropped stream. Rate and ETA are computed here from the progress
// snapshots the page saw over the last seconds.
'use strict';

(() => {
  const BASE = new URL('.', window.location.href);
  const JOBS_PAGE = 50;
  const ITEMS_PAGE = 50;
  const REFRESH_MS = 5000;
  const RATE_WINDOW_S = 20;
  const JOB_STATUSES = ['queued', 'running', 'completed', 'failed', 'cancelled', 'expired'];
  const ITEM_STATUSES = ['queued', 'running', 'succeeded', 'failed', 'skipped', 'cancelled'];

  // ---------------------------------------------------------------- helpers

  function apiUrl(path, params) {
    const url = new URL(path, BASE);
    if (params) {
      for (const [k, v] of Object.entries(params)) {
        if (v !== undefined && v !== null && v !== '') url.searchParams.set(k, String(v));
      }
    }
    return url;
  }

  // ---------------------------------------------------------------- the token
  //
  // A server started with --token answers 401 without one. The page then asks for it once,
  // keeps it in sessionStorage (this tab only, gone with it) and sends it as an
  // Authorization header, never as a cookie: a cookie would go along with other sites'
  // requests too. The page and its assets load without a token; they hold no data.
  const TOKEN_KEY = 'batchforge-token';
  let asking = null;
  let declined = false;

  function token() {
    try {
      return window.sessionStorage.getItem(TOKEN_KEY) || '';
    } catch (_) {
      return '';
    }
  }

  function authHeaders(headers) {
    const t = token();
    if (t) headers.authorization = `Bearer ${t}`;
    return headers;
  }

  // Asks for the token (one question at a time, however many requests were refused);
  // resolves to whether there is a new one to try.
  function askToken(rejected) {
    if (declined) return Promise.resolve(false);
    if (!asking) {
      asking = new Promise((resolve) => {
        // Let the other refused requests of this moment join this question.
        setTimeout(() => {
          const message = rejected
            ? 'The token was not accepted. Enter the batchforge server token:'
            : 'This batchforge server needs a token (its --token or --read-token). Enter it:';
          const answer = window.prompt(message, '');
          if (answer && answer.trim()) {
            try {
              window.sessionStorage.setItem(TOKEN_KEY, answer.trim());
            } catch (_) {
              // No storage: the question comes back on the next refusal.
            }
            resolve(true);
          } else {
            declined = true;
            banner('This server needs a token. Reload the page to enter it.');
            resolve(false);
          }
          asking = null;
        }, 0);
      });
    }
    return asking;
  }

  // fetch with the token; a 401 asks for one and tries again.
  async function authorizedFetch(url, init) {
    for (;;) {
      const sent = token();
      const res = await fetch(url, Object.assign({}, init, { headers: authHeaders(Object.assign({}, init.headers)) }));
      if (res.status !== 401) return res;
      if (asking === null && token() !== sent) continue;
      if (!(await askToken(Boolean(sent)))) return res;
    }
  }

  // `body`, when given, goes as JSON.
  async function request(method, path, params, payload) {
    const headers = { accept: 'application/json' };
    if (payload !== undefined) headers['content-type'] = 'application/json';
    const res = await authorizedFetch(apiUrl(path, params), {
      method,
      headers,
      cache: 'no-store',
      body: payload === undefined ? undefined : JSON.stringify(payload),
    });
    const text = await res.text();
    let body = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch (_) {
      body = { detail: text };
    }
    if (!res.ok) {
      const detail = body && typeof body.detail === 'string' ? body.detail : `${res.status} ${res.statusText}`;
      const err = new Error(detail);
      err.status = res.status;
      throw err;
    }
    return body;
  }

  // Builds an element. Children that are not nodes become text nodes.
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    if (attrs) {
      for (const [k, v] of Object.entries(attrs)) {
        if (v === undefined || v === null || v === false) continue;
        if (k === 'class') el.className = v;
        else if (k === 'testid') el.dataset.testid = v;
        else if (k === 'data') Object.assign(el.dataset, v);
        else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
        else el.setAttribute(k, v === true ? '' : String(v));
      }
    }
    append(el, children);
    return el;
  }

  function append(el, children) {
    const list = Array.isArray(children) ? children.flat(Infinity) : [children];
    for (const c of list) {
      if (c === undefined || c === null || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
  }

  function clear(el) {
    while (el.firstChild) el.removeChild(el.firstChild);
  }

  function setText(el, text) {
    const t = text === undefined || text === null ? '' : String(text);
    if (el.textContent !== t) el.textContent = t;
  }

  function debounce(fn, ms) {
    let timer = null;
    return (...args) => {
      if (timer) return;
      timer = setTimeout(() => {
        timer = null;
        fn(...args);
      }, ms);
    };
  }

  const isActive = (status) => status === 'queued' || status === 'running';

  function fmtDuration(s) {
    if (s === undefined || s === null || !Number.isFinite(s)) return '—';
    if (s < 1) return s <= 0 ? '0s' : '<1s';
    if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)}s`;
    const total = Math.round(s);
    if (total < 3600) return `${Math.floor(total / 60)}m ${String(total % 60).padStart(2, '0')}s`;
    const hours = Math.floor(total / 3600);
    if (hours < 48) return `${hours}h ${String(Math.floor((total % 3600) / 60)).padStart(2, '0')}m`;
    return `${Math.floor(hours / 24)}d ${hours % 24}h`;
  }

  function fmtSeconds(s) {
    if (s === undefined || s === null || !Number.isFinite(s)) return '—';
    if (s < 1) return `${Math.round(s * 1000)} ms`;
    return fmtDuration(s);
  }

  function fmtRate(r) {
    if (r === undefined || r === null || !Number.isFinite(r) || r <= 0) return '—';
    if (r >= 100) return `${Math.round(r)}/s`;
    if (r >= 10) return `${r.toFixed(1)}/s`;
    if (r >= 0.1) return `${r.toFixed(2)}/s`;
    return `${(r * 60).toFixed(1)}/min`;
  }

  function fmtPercent(p) {
    if (!Number.isFinite(p)) return '0%';
    return `${p >= 100 || p === 0 ? Math.round(p) : p.toFixed(1)}%`;
  }

  function fmtTime(unix) {
    if (!unix) return '—';
    return new Date(unix * 1000).toLocaleString();
  }

  function fmtAgo(unix) {
    if (!unix) return '—';
    const s = Date.now() / 1000 - unix;
    if (s < 5) return 'just now';
    if (s < 60) return `${Math.round(s)}s ago`;
    if (s < 3600) return `${Math.round(s / 60)}m ago`;
    if (s < 86400) return `${Math.round(s / 3600)}h ago`;
    return new Date(unix * 1000).toLocaleDateString();
  }

  function progressOf(job) {
    const p = (job && job.metadata && job.metadata.progress) || {};
    return {
      total: p.total || 0,
      processed: p.processed || 0,
      successful: p.successful || 0,
      failed: p.failed || 0,
      skipped: p.skipped || 0,
      cancelled: p.cancelled || 0,
      percentage: Number.isFinite(p.percentage) ? p.percentage : (job && job.progress) || 0,
      elapsed_seconds: p.elapsed_seconds,
      items_per_second: p.items_per_second,
      estimated_remaining_seconds: p.estimated_remaining_seconds,
      current_item: p.current_item,
    };
  }

  // ---------------------------------------------------------------- state

  const state = {
    jobs: new Map(), // job_id → the latest JobResponse seen
    samples: new Map(), // job_id → [[seconds, processed], …] from progress snapshots
    route: { view: 'jobs', id: null, params: new URLSearchParams() },
    jobRows: new Map(), // job_id → row parts of the jobs table
    jobPage: null, // the job page's parts, while it shows
    listSeq: 0,
  };

  const $ = (testid) => document.querySelector(`[data-testid="${testid}"]`);

  // Notes a progress snapshot for the client-side rate.
  function noteSample(jobId, processed) {
    const now = performance.now() / 1000;
    let samples = state.samples.get(jobId);
    if (!samples) {
      samples = [];
      state.samples.set(jobId, samples);
    }
    const last = samples[samples.length - 1];
    if (last && last[1] === processed && samples.length >= 2 && samples[samples.length - 2][1] === processed) {
      last[0] = now; // a plateau: keep its two ends only
    } else {
      samples.push([now, processed]);
    }
    while (samples.length > 2 && samples[0][0] < now - RATE_WINDOW_S) samples.shift();
    if (samples.length > 400) samples.splice(0, samples.length - 400);
  }

  // Items per second over the recent window, and the time left at that rate.
  function rateAndEta(job) {
    const p = progressOf(job);
    const remaining = Math.max(0, p.total - p.processed - p.cancelled);
    if (!isActive(job.status)) return { rate: p.items_per_second, eta: null, done: true };
    let rate = null;
    const samples = state.samples.get(job.job_id);
    if (samples && samples.length >= 2) {
      const now = performance.now() / 1000;
      const first = samples[0];
      const last = samples[samples.length - 1];
      const span = now - first[0];
      if (span >= 2) rate = (last[1] - first[1]) / span;
    }
    if (rate === null && job.status === 'running') rate = p.items_per_second || null;
    let eta = null;
    if (remaining === 0) eta = 0;
    else if (rate && rate > 0) eta = remaining / rate;
    return { rate, eta, done: false };
  }

  // ---------------------------------------------------------------- shared widgets

  function progressBar(testid, large) {
    const segs = {
      ok: h('span', { class: 'seg seg-ok' }),
      failed: h('span', { class: 'seg seg-failed' }),
      skipped: h('span', { class: 'seg seg-skipped' }),
      cancelled: h('span', { class: 'seg seg-cancelled' }),
    };
    const bar = h(
      'div',
      { class: 'bar', role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100, testid },
      segs.ok, segs.failed, segs.skipped, segs.cancelled,
    );
    const label = h('span', { class: 'bar-label', testid: `${testid}-text` });
    const el = h('div', { class: large ? 'progress progress-large' : 'progress' }, bar, label);
    return {
      el,
      update(job) {
        const p = progressOf(job);
        const total = p.total || 0;
        const width = (n) => (total > 0 ? `${Math.min(100, (n / total) * 100)}%` : '0%');
        segs.ok.style.width = width(p.successful);
        segs.failed.style.width = width(p.failed);
        segs.skipped.style.width = width(p.skipped);
        segs.cancelled.style.width = width(p.cancelled);
        const pct = Math.max(0, Math.min(100, p.percentage));
        bar.setAttribute('aria-valuenow', String(pct));
        bar.dataset.percent = String(pct);
        bar.classList.toggle('active', job.status === 'running');
        bar.title = `${p.processed} of ${total} processed`;
        setText(label, fmtPercent(pct));
      },
    };
  }

  function statusBadge(status, testid) {
    return h('span', { class: `badge b-${status}`, testid }, status);
  }

  // A paused job keeps its status; the badge says both.
  function updateBadge(el, status, paused) {
    el.className = paused ? `badge b-${status} b-paused` : `badge b-${status}`;
    setText(el, paused ? `${status} · paused` : status);
  }

  // A cancel button that asks once more before it sends the DELETE.
  function cancelButton(jobId, testid) {
    let armed = null;
    const btn = h('button', { type: 'button', class: 'btn btn-danger btn-small', testid, data: { jobId } }, 'Cancel');
    const disarm = () => {
      if (armed) clearTimeout(armed);
      armed = null;
      btn.classList.remove('armed');
      setText(btn, 'Cancel');
    };
    btn.addEventListener('click', async (ev) => {
      ev.stopPropagation();
      if (btn.disabled) return;
      if (!armed) {
        btn.classList.add('armed');
        setText(btn, 'Confirm cancel');
        armed = setTimeout(disarm, 5000);
        return;
      }
      disarm();
      btn.disabled = true;
      setText(btn, 'Cancelling…');
      try {
        await request('DELETE', `batch/jobs/${encodeURIComponent(jobId)}`);
        toast(`Cancelled ${jobId}`, 'ok');
      } catch (e) {
        toast(`Could not cancel ${jobId}: ${e.message}`, 'error');
      }
      btn.disabled = false;
      setText(btn, 'Cancel');
      await refreshJob(jobId);
      refreshStats();
    });
    return btn;
  }

  function toast(message, kind) {
    const el = h('div', { class: `toast toast-${kind || 'info'}`, testid: 'toast', role: 'status' }, message);
    $('toasts').append(el);
    setTimeout(() => el.remove(), 6000);
  }

  function banner(message) {
    const el = $('banner');
    if (!message) {
      el.hidden = true;
      return;
    }
    setText(el, message);
    el.hidden = false;
  }

  function statusSelect(testid, statuses, value, onChange, allLabel) {
    const select = h(
      'select',
      { class: 'select', testid, 'aria-label': 'Filter by status', onchange: () => onChange(select.value) },
      h('option', { value: '' }, allLabel),
      statuses.map((s) => h('option', { value: s }, s)),
    );
    select.value = value || '';
    return select;
  }

  function pager(prefix, onMove) {
    const prev = h('button', { type: 'button', class: 'btn btn-small', testid: `${prefix}-prev`, onclick: () => onMove(-1) }, '← Prev');
    const next = h('button', { type: 'button', class: 'btn btn-small', testid: `${prefix}-next`, onclick: () => onMove(1) }, 'Next →');
    const range = h('span', { class: 'muted', testid: `${prefix}-range` });
    return {
      el: h('div', { class: 'pager' }, range, prev, next),
      update(offset, count, total, limit) {
        setText(range, total === 0 ? 'none' : `${offset + 1}–${offset + count} of ${total}`);
        prev.disabled = offset <= 0;
        next.disabled = offset + limit >= total;
      },
    };
  }

  // ---------------------------------------------------------------- routing

  function parseRoute() {
    const raw = window.location.hash.replace(/^#/, '') || '/';
    const q = raw.indexOf('?');
    const path = q >= 0 ? raw.slice(0, q) : raw;
    const params = new URLSearchParams(q >= 0 ? raw.slice(q + 1) : '');
    const m = path.match(/^\/jobs\/([^/]+)\/?$/);
    if (m) return { view: 'job', id: decodeURIComponent(m[1]), params };
    if (/^\/kinds\/?$/.test(path)) return { view: 'kinds', id: null, params };
    if (/^\/schedules\/?$/.test(path)) return { view: 'schedules', id: null, params };
    return { view: 'jobs', id: null, params };
  }

  function hashFor(view, id, params) {
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) if (v !== undefined && v !== null && v !== '' && v !== 0) qs.set(k, String(v));
    const q = qs.toString();
    const path = view === 'job' ? `/jobs/${encodeURIComponent(id)}` : view === 'jobs' ? '/' : `/${view}`;
    return `#${path}${q ? `?${q}` : ''}`;
  }

  function render() {
    state.route = parseRoute();
    const crumbs = $('crumbs');
    clear(crumbs);
    const jobsSection = $('jobs-view');
    const jobSection = $('job-view');
    for (const v of ['jobs', 'kinds', 'schedules']) {
      const link = $(`nav-${v}`);
      if (link) link.classList.toggle('current', state.route.view === v);
    }
    $('kinds-view').hidden = state.route.view !== 'kinds';
    $('schedules-view').hidden = state.route.view !== 'schedules';
    if (state.route.view === 'kinds' || state.route.view === 'schedules') {
      append(crumbs, h('span', null, state.route.view === 'kinds' ? 'Kinds' : 'Schedules'));
      jobsSection.hidden = true;
      jobSection.hidden = true;
      state.jobPage = null;
      if (state.route.view === 'kinds') renderKindsView();
      else renderSchedulesView();
      document.title = `${state.route.view} · batchforge`;
    } else if (state.route.view === 'job') {
      append(crumbs, [h('a', { href: '#/' }, 'Jobs'), h('span', { class: 'sep' }, '›'), h('span', { class: 'mono' }, state.route.id)]);
      jobsSection.hidden = true;
      jobSection.hidden = false;
      renderJobPage();
      document.title = `${state.route.id} · batchforge`;
    } else {
      append(crumbs, h('span', null, 'Jobs'));
      jobSection.hidden = true;
      jobsSection.hidden = false;
      state.jobPage = null;
      renderJobsView();
      document.title = 'batchforge';
    }
  }

  // ---------------------------------------------------------------- jobs list

  let jobsView = null;

  function renderJobsView() {
    const status = state.route.params.get('status') || '';
    const search = state.route.params.get('q') || '';
    const offset = Math.max(0, parseInt(state.route.params.get('offset') || '0', 10) || 0);
    if (!jobsView) {
      const tbody = h('tbody', { testid: 'jobs-body' });
      const filter = statusSelect('status-filter', JOB_STATUSES, status, (v) => {
        window.location.hash = hashFor('jobs', null, { status: v, q: jobsView.search });
      }, 'All statuses');
      const searchBox = h('input', {
        type: 'search', class: 'input search', testid: 'job-search', placeholder: 'Search id, kind, key, metadata',
        'aria-label': 'Search jobs',
      });
      const go = debounce(() => {
        if (searchBox.value.trim() === jobsView.search) return;
        window.location.hash = hashFor('jobs', null, { status: jobsView.status, q: searchBox.value.trim() });
      }, 350);
      searchBox.addEventListener('input', go);
      const selectAll = h('input', { type: 'checkbox', testid: 'select-all', 'aria-label': 'Select every job shown' });
      selectAll.addEventListener('change', () => {
        for (const [id, row] of state.jobRows) {
          row.check.checked = selectAll.checked;
          if (selectAll.checked) jobsView.selected.add(id);
          else jobsView.selected.delete(id);
        }
        updateBulkBar();
      });
      const bulkCount = h('span', { class: 'muted', testid: 'bulk-count' });
      const bulkBar = h('div', { class: 'bulk-bar', testid: 'bulk-bar', hidden: true },
        bulkCount,
        h('button', { type: 'button', class: 'btn btn-small btn-danger', testid: 'bulk-cancel', onclick: () => bulkAction('cancel') }, 'Cancel selected'),
        h('button', { type: 'button', class: 'btn btn-small', testid: 'bulk-retry', onclick: () => bulkAction('retry') }, 'Retry selected'),
        h('button', { type: 'button', class: 'btn btn-small', testid: 'bulk-clear', onclick: () => { jobsView.selected.clear(); for (const row of state.jobRows.values()) row.check.checked = false; updateBulkBar(); } }, 'Clear'));
      const sparks = h('div', { class: 'sparks', testid: 'kind-sparks' });
      const count = h('span', { class: 'count', testid: 'jobs-total' });
      const pg = pager('jobs', (dir) => {
        const cur = jobsView.offset;
        window.location.hash = hashFor('jobs', null, { status: jobsView.status, offset: Math.max(0, cur + dir * JOBS_PAGE) });
      });
      const empty = h('div', { class: 'empty', testid: 'jobs-empty', hidden: true });
      const table = h(
        'table',
        { class: 'table jobs-table', testid: 'jobs-table' },
        h('thead', null, h('tr', null,
          h('th', { class: 'col-check' }, selectAll), h('th', null, 'Job'), h('th', null, 'Type'), h('th', null, 'Status'),
          h('th', { class: 'col-progress' }, 'Progress'),
          h('th', { class: 'num', title: 'Succeeded' }, '✓'), h('th', { class: 'num', title: 'Failed' }, '✗'),
          h('th', { class: 'num' }, 'Rate'), h('th', { class: 'num' }, 'ETA'),
          h('th', null, 'Created'), h('th', { class: 'col-actions' }, ''))),
        tbody,
      );
      const root = $('jobs-view');
      append(root, [
        h('div', { class: 'toolbar' },
          h('h2', null, 'Jobs ', count),
          h('div', { class: 'toolbar-right' },
            searchBox,
            filter,
            h('button', { type: 'button', class: 'btn', testid: 'refresh', onclick: () => { refreshList(); refreshStats(); } }, 'Refresh'))),
        sparks,
        bulkBar,
        h('div', { class: 'card' }, h('div', { class: 'table-wrap' }, table), empty, pg.el),
      ]);
      jobsView = { tbody, filter, searchBox, selectAll, bulkBar, bulkCount, sparks, selected: new Set(), count, pager: pg, empty, status, search, offset, total: 0 };
    }
    jobsView.status = status;
    jobsView.search = search;
    jobsView.offset = offset;
    jobsView.filter.value = status;
    if (document.activeElement !== jobsView.searchBox) jobsView.searchBox.value = search;
    refreshList();
    refreshThroughput();
  }

  async function refreshList() {
    if (!jobsView || state.route.view !== 'jobs') return;
    const seq = ++state.listSeq;
    const { status, search, offset } = jobsView;
    let page;
    try {
      page = await request('GET', 'batch/jobs', { status, q: search, limit: JOBS_PAGE, offset });
      banner(null);
    } catch (e) {
      banner(`Cannot load jobs: ${e.message}`);
      return;
    }
    if (seq !== state.listSeq) return; // a newer refresh is on its way
    jobsView.total = page.total;
    setText(jobsView.count, String(page.total));
    const seen = new Set();
    const tbody = jobsView.tbody;
    let cursor = tbody.firstChild;
    for (const job of page.jobs) {
      remember(job);
      seen.add(job.job_id);
      let row = state.jobRows.get(job.job_id);
      if (!row) {
        row = createJobRow(job);
        state.jobRows.set(job.job_id, row);
      }
      updateJobRow(row, job);
      if (row.tr !== cursor) tbody.insertBefore(row.tr, cursor);
      else cursor = cursor.nextSibling;
    }
    for (const [id, row] of state.jobRows) {
      if (!seen.has(id)) {
        row.tr.remove();
        state.jobRows.delete(id);
        jobsView.selected.delete(id);
      }
    }
    updateBulkBar();
    jobsView.empty.hidden = page.jobs.length > 0;
    clear(jobsView.empty);
    if (page.jobs.length === 0) {
      append(jobsView.empty, search
        ? [`No job matches “${search}”.`]
        : status
        ? [`No ${status} jobs.`]
        : ['No jobs yet. Submit one with ', h('code', null, 'POST batch/validation'), ' or the ', h('code', null, 'batchforge submit'), ' command.']);
    }
    jobsView.pager.update(offset, page.jobs.length, page.total, JOBS_PAGE);
  }

  function remember(job) {
    const prev = state.jobs.get(job.job_id);
    state.jobs.set(job.job_id, job);
    const p = progressOf(job);
    if (isActive(job.status) && (!prev || progressOf(prev).processed !== p.processed || job.status === 'running')) {
      noteSample(job.job_id, p.processed);
    }
  }

  function createJobRow(job) {
    const bar = progressBar('progress', false);
    const cells = {
      link: h('a', { href: hashFor('job', job.job_id), class: 'mono job-link', testid: 'job-link' }, job.job_id),
      type: h('span', { class: 'tag' }, job.type),
      status: statusBadge(job.status, 'job-status'),
      ok: h('td', { class: 'num ok', testid: 'count-ok' }),
      failed: h('td', { class: 'num failed', testid: 'count-failed' }),
      rate: h('td', { class: 'num', testid: 'rate' }),
      eta: h('td', { class: 'num', testid: 'eta' }),
      created: h('td', { class: 'muted nowrap', testid: 'created' }),
      actions: h('td', { class: 'col-actions' }),
    };
    const cancel = cancelButton(job.job_id, 'cancel-button');
    cells.actions.append(cancel);
    const check = h('input', { type: 'checkbox', testid: 'job-select', 'aria-label': `Select ${job.job_id}` });
    check.checked = jobsView.selected.has(job.job_id);
    check.addEventListener('change', () => {
      if (check.checked) jobsView.selected.add(job.job_id);
      else jobsView.selected.delete(job.job_id);
      updateBulkBar();
    });
    const tr = h(
      'tr',
      { class: 'job-row', testid: 'job-row', data: { jobId: job.job_id } },
      h('td', { class: 'col-check' }, check),
      h('td', null, cells.link),
      h('td', null, cells.type),
      h('td', null, cells.status),
      h('td', { class: 'col-progress' }, bar.el),
      cells.ok, cells.failed, cells.rate, cells.eta, cells.created, cells.actions,
    );
    return { tr, bar, cells, cancel, check };
  }

  function updateBulkBar() {
    if (!jobsView) return;
    const n = jobsView.selected.size;
    jobsView.bulkBar.hidden = n === 0;
    setText(jobsView.bulkCount, `${n} selected`);
    jobsView.selectAll.checked = n > 0 && state.jobRows.size > 0 && [...state.jobRows.keys()].every((id) => jobsView.selected.has(id));
  }

  // One request for every selected job; the answer holds each one's outcome.
  async function bulkAction(action) {
    const ids = [...jobsView.selected];
    if (ids.length === 0) return;
    let answer;
    try {
      answer = await request('POST', 'batch/jobs/bulk', null, { action, ids });
    } catch (e) {
      toast(`Could not ${action}: ${e.message}`, 'error');
      return;
    }
    const verb = action === 'cancel' ? 'Cancelled' : 'Retried';
    toast(`${verb} ${answer.done} of ${ids.length} jobs`, answer.refused ? 'info' : 'ok');
    for (const r of answer.results) {
      if (r.status !== 200) toast(`${r.id}: ${r.detail}`, 'error');
    }
    jobsView.selected.clear();
    for (const row of state.jobRows.values()) row.check.checked = false;
    updateBulkBar();
    refreshList();
    refreshStats();
  }

  // ---------------------------------------------------------------- charts (plain SVG)

  const SVG_NS = 'http://www.w3.org/2000/svg';

  function svg(tag, attrs, ...children) {
    const el = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null) continue;
      if (k === 'testid') el.setAttribute('data-testid', v);
      else el.setAttribute(k, String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === undefined || c === null || c === false) continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  // A sparkline of `values` (oldest first).
  function sparkline(values, width, height) {
    const max = Math.max(1e-9, ...values);
    const step = values.length > 1 ? width / (values.length - 1) : width;
    const pts = values.map((v, i) => `${(i * step).toFixed(1)},${(height - 1 - (v / max) * (height - 2)).toFixed(1)}`);
    return svg('svg', { class: 'spark', width, height, viewBox: `0 0 ${width} ${height}`, 'aria-hidden': 'true' },
      svg('polyline', { points: pts.join(' '), fill: 'none', stroke: 'currentColor', 'stroke-width': 1.5 }));
  }

  // Items finished per bucket, succeeded below failed below the rest, one bar a bucket
  // at its place in time (buckets in which nothing finished are gaps).
  function timelineChart(timeline, width) {
    const W = Math.max(320, Math.round(width || 720));
    const H = 150;
    const PAD_L = 34;
    const PAD_B = 20;
    const buckets = timeline.buckets || [];
    const n = timeline.bucket_seconds || 1;
    const root = svg('svg', {
      class: 'chart', viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img', testid: 'timeline-chart',
      'data-bucket-seconds': n, 'data-buckets': buckets.length,
      'aria-label': `Items finished per ${n} s`,
    });
    if (buckets.length === 0) {
      root.append(svg('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', class: 'chart-empty' }, 'No item has finished yet'));
      return root;
    }
    const first = buckets[0].start;
    const last = buckets[buckets.length - 1].start;
    const slots = Math.round((last - first) / n) + 1;
    const max = Math.max(...buckets.map((b) => b.succeeded + b.failed + b.other));
    const plotW = W - PAD_L - 4;
    const plotH = H - PAD_B - 6;
    const slotW = plotW / slots;
    const barW = Math.max(1, slotW * 0.8);
    const y = (v) => 6 + plotH - (v / max) * plotH;
    root.append(
      svg('line', { x1: PAD_L, y1: 6 + plotH, x2: W - 4, y2: 6 + plotH, class: 'axis' }),
      svg('text', { x: PAD_L - 4, y: 12, 'text-anchor': 'end', class: 'tick' }, String(max)),
      svg('text', { x: PAD_L - 4, y: 6 + plotH, 'text-anchor': 'end', class: 'tick' }, '0'),
      svg('text', { x: PAD_L, y: H - 4, class: 'tick' }, new Date(first * 1000).toLocaleTimeString()),
      svg('text', { x: W - 4, y: H - 4, 'text-anchor': 'end', class: 'tick' }, new Date((last + n) * 1000).toLocaleTimeString()),
    );
    for (const b of buckets) {
      const x = PAD_L + ((b.start - first) / n) * slotW + (slotW - barW) / 2;
      const g = svg('g', { testid: 'timeline-bar', 'data-start': b.start, 'data-succeeded': b.succeeded, 'data-failed': b.failed },
        svg('title', null, `${new Date(b.start * 1000).toLocaleTimeString()}: ✓ ${b.succeeded}  ✗ ${b.failed}${b.other ? `  · ${b.other} other` : ''}`));
      let base = 0;
      for (const [v, cls] of [[b.succeeded, 'bar-ok'], [b.failed, 'bar-failed'], [b.other, 'bar-other']]) {
        if (!v) continue;
        g.append(svg('rect', { x: x.toFixed(2), y: y(base + v).toFixed(2), width: barW.toFixed(2), height: (y(base) - y(base + v)).toFixed(2), class: cls }));
        base += v;
      }
      root.append(g);
    }
    return root;
  }

  // A bucket width that gives a job's life at most ~60 bars.
  function bucketFor(job) {
    const from = job.started_at || job.created_at;
    const to = job.completed_at || Date.now() / 1000;
    const span = Math.max(1, to - from);
    const nice = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 21600, 43200, 86400];
    return nice.find((s) => span / s <= 60) || 86400;
  }

  // Per-kind throughput from /metrics' finished-items counters, sampled on each refresh.
  const throughput = { last: null, series: new Map() };
  const SPARK_POINTS = 30;

  async function refreshThroughput() {
    if (!jobsView) return;
    let text;
    try {
      const res = await authorizedFetch(apiUrl('metrics'), { headers: { accept: 'text/plain' }, cache: 'no-store' });
      if (!res.ok) return;
      text = await res.text();
    } catch (_) {
      return;
    }
    const totals = new Map();
    for (const line of text.split('\n')) {
      const m = line.match(/^batchforge_items_finished_total\{kind="((?:[^"\\]|\\.)*)",status="[^"]*"\} (\d+(?:\.\d+)?)$/);
      if (m) totals.set(m[1], (totals.get(m[1]) || 0) + Number(m[2]));
    }
    const now = performance.now() / 1000;
    const last = throughput.last;
    throughput.last = { at: now, totals };
    if (last && now - last.at > 0.5) {
      for (const [kind, n] of totals) {
        const rate = Math.max(0, (n - (last.totals.get(kind) || 0)) / (now - last.at));
        const series = throughput.series.get(kind) || [];
        series.push(rate);
        if (series.length > SPARK_POINTS) series.shift();
        throughput.series.set(kind, series);
      }
    }
    clear(jobsView.sparks);
    for (const [kind, total] of [...totals].sort()) {
      const series = throughput.series.get(kind) || [];
      const values = series.length ? series : [0];
      jobsView.sparks.append(h('div', { class: 'spark-card', testid: 'kind-spark', data: { kind } },
        h('span', { class: 'tag' }, kind),
        sparkline(values.length > 1 ? values : [values[0], values[0]], 120, 26),
        h('span', { class: 'muted', title: `${total} items finished since the server started` }, `${fmtRate(values[values.length - 1])} · ${total} done`)));
    }
  }

  function updateJobRow(row, job) {
    const p = progressOf(job);
    row.tr.dataset.status = job.status;
    updateBadge(row.cells.status, job.status, job.paused);
    row.bar.update(job);
    setText(row.cells.ok, `✓ ${p.successful}`);
    setText(row.cells.failed, `✗ ${p.failed}`);
    row.cells.failed.classList.toggle('zero', p.failed === 0);
    const { rate, eta, done } = rateAndEta(job);
    setText(row.cells.rate, fmtRate(rate));
    setText(row.cells.eta, done ? '—' : fmtDuration(eta));
    setText(row.cells.created, fmtAgo(job.created_at));
    row.cells.created.title = fmtTime(job.created_at);
    row.cancel.hidden = !isActive(job.status);
  }

  // ---------------------------------------------------------------- job page

  function renderJobPage() {
    const id = state.route.id;
    const params = state.route.params;
    const filter = params.get('status') || '';
    const offset = Math.max(0, parseInt(params.get('offset') || '0', 10) || 0);
    if (state.jobPage && state.jobPage.id === id) {
      state.jobPage.filter = filter;
      state.jobPage.offset = offset;
      state.jobPage.itemFilter.value = filter;
      loadItems();
      return;
    }
    const root = $('job-view');
    clear(root);
    const bar = progressBar('job-progress', true);
    const parts = {
      id,
      filter,
      offset,
      expanded: new Set(),
      itemRows: new Map(),
      itemsSeq: 0,
      title: h('h2', { class: 'mono job-title', testid: 'job-id' }, id),
      status: statusBadge('queued', 'job-status'),
      type: h('span', { class: 'tag', testid: 'job-type' }),
      cancel: cancelButton(id, 'job-cancel'),
      bar,
      figures: h('div', { class: 'figures', testid: 'job-figures' }),
      meta: h('dl', { class: 'meta', testid: 'job-meta' }),
      actions: h('div', { class: 'job-actions', testid: 'job-actions' }),
      chart: h('div', { class: 'chart-wrap', testid: 'timeline' }),
      chartNote: h('span', { class: 'muted', testid: 'timeline-note' }),
      deps: h('div', { class: 'deps', testid: 'job-deps', hidden: true }),
      hooks: h('div', { class: 'card', testid: 'job-webhooks', hidden: true }),
      chartSeq: 0,
      error: h('div', { class: 'alert', testid: 'job-error', hidden: true }),
      itemFilter: statusSelect('item-filter', ITEM_STATUSES, filter, (v) => {
        window.location.hash = hashFor('job', id, { status: v });
      }, 'All items'),
      itemsTotal: h('span', { class: 'count', testid: 'items-total' }),
      tbody: h('tbody', { testid: 'items-body' }),
      itemsEmpty: h('div', { class: 'empty', testid: 'items-empty', hidden: true }),
      pager: pager('items', (dir) => {
        const jp = state.jobPage;
        window.location.hash = hashFor('job', id, { status: jp.filter, offset: Math.max(0, jp.offset + dir * ITEMS_PAGE) });
      }),
    };
    const exportLink = h('a', { class: 'btn', href: apiUrl(`batch/jobs/${encodeURIComponent(id)}/results.jsonl`).href, download: `${id}.jsonl`, testid: 'export-link' }, 'Export JSONL');
    append(root, [
      h('div', { class: 'card job-head' },
        h('div', { class: 'job-head-top' },
          h('div', { class: 'job-head-title' }, parts.title, parts.status, parts.type),
          h('div', { class: 'toolbar-right' }, parts.actions, exportLink, parts.cancel)),
        bar.el,
        parts.figures,
        parts.error,
        parts.deps,
        parts.meta),
      h('div', { class: 'toolbar' }, h('h2', null, 'Items finished over time'), h('div', { class: 'toolbar-right' },
        h('span', { class: 'legend' }, h('i', { class: 'sw sw-ok' }), 'succeeded', h('i', { class: 'sw sw-failed' }), 'failed', h('i', { class: 'sw sw-other' }), 'other'),
        parts.chartNote)),
      h('div', { class: 'card' }, parts.chart),
      parts.hooks,
      h('div', { class: 'toolbar' },
        h('h2', null, 'Items ', parts.itemsTotal),
        h('div', { class: 'toolbar-right' }, parts.itemFilter)),
      h('div', { class: 'card' },
        h('div', { class: 'table-wrap' },
          h('table', { class: 'table items-table', testid: 'items-table' },
            h('thead', null, h('tr', null,
              h('th', { class: 'col-toggle' }, ''), h('th', { class: 'num' }, '#'), h('th', null, 'Item'),
              h('th', null, 'Status'), h('th', { class: 'num' }, 'Attempts'), h('th', { class: 'num' }, 'Duration'),
              h('th', { class: 'num' }, 'Exit'), h('th', null, 'Node'), h('th', null, 'Message'))),
            parts.tbody)),
        parts.itemsEmpty,
        parts.pager.el),
    ]);
    state.jobPage = parts;
    const known = state.jobs.get(id);
    if (known) updateJobPage(known);
    refreshJob(id).then((job) => {
      if (job) {
        loadTimeline(job);
        loadWebhooks(id);
      }
    });
    loadItems();
  }

  // The job's action buttons for its state; a refusal (409) is shown as it came.
  function jobActions(job) {
    const jp = state.jobPage;
    const id = job.job_id;
    const key = `${job.status}|${job.paused}`;
    if (jp.actionsKey === key) return;
    jp.actionsKey = key;
    clear(jp.actions);
    const act = (label, testid, method, path, body, done) => h('button', {
      type: 'button', class: 'btn', testid,
      onclick: async (ev) => {
        const btn = ev.currentTarget;
        btn.disabled = true;
        try {
          const answer = await request(method, `batch/jobs/${encodeURIComponent(id)}/${path}`, null, body);
          toast(done(answer), 'ok');
        } catch (e) {
          toast(`${label}: ${e.message}`, 'error');
        }
        btn.disabled = false;
        jp.actionsKey = null;
        const fresh = await refreshJob(id);
        if (fresh) loadTimeline(fresh);
        loadItems();
        refreshStats();
      },
    }, label);
    if (isActive(job.status)) {
      jp.actions.append(job.paused
        ? act('Resume', 'job-resume', 'POST', 'resume', undefined, () => `Resumed ${id}`)
        : act('Pause', 'job-pause', 'POST', 'pause', undefined, () => `Paused ${id}`));
    } else {
      jp.actions.append(
        act('Retry failed', 'job-retry-failed', 'POST', 'retry', { status: ['failed'] }, (a) => `Requeued ${a.requeued} failed items`),
        act('Retry all', 'job-retry-all', 'POST', 'retry', { status: ['failed', 'cancelled', 'skipped'] }, (a) => `Requeued ${a.requeued} items`));
    }
  }

  async function loadTimeline(job) {
    const jp = state.jobPage;
    if (!jp || jp.id !== job.job_id) return;
    const seq = ++jp.chartSeq;
    const n = bucketFor(job);
    let timeline;
    try {
      timeline = await request('GET', `batch/jobs/${encodeURIComponent(job.job_id)}/timeline`, { bucket_seconds: n });
    } catch (e) {
      setText(jp.chartNote, `timeline unavailable: ${e.message}`);
      return;
    }
    if (state.jobPage !== jp || seq !== jp.chartSeq) return;
    clear(jp.chart);
    // Drawn at the card's width in pixels, so text and bars keep their size.
    jp.chart.append(timelineChart(timeline, jp.chart.clientWidth - 24));
    setText(jp.chartNote, `per ${fmtDuration(n)}`);
  }

  async function loadWebhooks(id) {
    const jp = state.jobPage;
    let list;
    try {
      list = await request('GET', `batch/jobs/${encodeURIComponent(id)}/webhooks`);
    } catch (_) {
      return;
    }
    if (state.jobPage !== jp) return;
    clear(jp.hooks);
    jp.hooks.hidden = list.deliveries.length === 0;
    if (list.deliveries.length === 0) return;
    const stateOf = (d) => (d.delivered_at ? 'delivered' : d.given_up_at ? 'given up' : 'retrying');
    append(jp.hooks, [
      h('div', { class: 'card-title' }, 'Webhook deliveries'),
      h('table', { class: 'table' },
        h('thead', null, h('tr', null, h('th', null, 'URL'), h('th', null, 'State'), h('th', { class: 'num' }, 'Attempts'), h('th', null, 'Next / done'), h('th', null, 'Last error'))),
        h('tbody', null, list.deliveries.map((d) => h('tr', { testid: 'webhook-row', data: { state: stateOf(d) } },
          h('td', { class: 'mono' }, d.url),
          h('td', null, h('span', { class: `badge ${d.delivered_at ? 'b-completed' : d.given_up_at ? 'b-failed' : 'b-running'}` }, stateOf(d))),
          h('td', { class: 'num' }, String(d.attempts)),
          h('td', { class: 'muted' }, fmtTime(d.delivered_at || d.given_up_at || d.next_attempt_at)),
          h('td', { class: 'message' }, d.last_error || ''))))),
    ]);
  }

  function updateJobPage(job) {
    const jp = state.jobPage;
    if (!jp || jp.id !== job.job_id) return;
    const p = progressOf(job);
    updateBadge(jp.status, job.status, job.paused);
    setText(jp.type, job.type);
    jp.cancel.hidden = !isActive(job.status);
    jobActions(job);
    jp.bar.update(job);
    const { rate, eta, done } = rateAndEta(job);
    clear(jp.figures);
    const fig = (label, value, cls, testid) => h('div', { class: `figure ${cls || ''}`, testid }, h('span', { class: 'figure-value' }, value), h('span', { class: 'figure-label' }, label));
    append(jp.figures, [
      fig('processed', `${p.processed} / ${p.total}`, '', 'fig-processed'),
      fig('succeeded', `✓ ${p.successful}`, 'ok', 'fig-succeeded'),
      fig('failed', `✗ ${p.failed}`, p.failed ? 'failed' : '', 'fig-failed'),
      fig('skipped', String(p.skipped), '', 'fig-skipped'),
      fig('cancelled', String(p.cancelled), p.cancelled ? 'cancelled' : '', 'fig-cancelled'),
      fig('rate', fmtRate(rate), '', 'fig-rate'),
      fig(done ? 'took' : 'ETA', done ? fmtDuration(p.elapsed_seconds) : fmtDuration(eta), '', 'fig-eta'),
    ]);
    // Token accounting, when the job's processor reports it in its progress.
    const raw = (job.metadata && job.metadata.progress) || {};
    if (Number.isFinite(raw.prompt_tokens) || Number.isFinite(raw.completion_tokens)) {
      jp.figures.append(fig('tokens in / out', `${raw.prompt_tokens || 0} / ${raw.completion_tokens || 0}`, '', 'fig-tokens'));
    }
    if (isActive(job.status) && p.current_item) {
      jp.figures.append(h('div', { class: 'figure figure-wide' }, h('span', { class: 'figure-value mono' }, p.current_item), h('span', { class: 'figure-label' }, 'now')));
    }
    jp.error.hidden = !job.error;
    setText(jp.error, job.error || '');
    clear(jp.meta);
    const row = (k, v, mono) => [h('dt', null, k), h('dd', { class: mono ? 'mono' : null }, v)];
    const opts = job.options && typeof job.options === 'object' ? job.options : {};
    const command = opts.check_command || opts.test_command;
    const metaRows = [];
    if (command) metaRows.push(row('command', command, true));
    const deps = Array.isArray(opts.depends_on) ? opts.depends_on.filter((d) => typeof d === 'string') : [];
    clear(jp.deps);
    jp.deps.hidden = deps.length === 0;
    if (deps.length) {
      append(jp.deps, ['waits on ', deps.map((d, i) => [i ? ', ' : '', h('a', { href: hashFor('job', d), class: 'mono', testid: 'dep-link' }, d)])]);
    }
    for (const [k, v] of Object.entries(opts)) {
      if (k === 'check_command' || k === 'test_command' || k === 'depends_on') continue;
      metaRows.push(row(k, typeof v === 'string' ? v : JSON.stringify(v), true));
    }
    if (job.priority) metaRows.push(row('priority', String(job.priority)));
    if (job.run_at) metaRows.push(row('run at', fmtTime(job.run_at)));
    if (job.idempotency_key) metaRows.push(row('idempotency key', job.idempotency_key, true));
    metaRows.push(row('created', fmtTime(job.created_at)));
    if (job.started_at) metaRows.push(row('started', fmtTime(job.started_at)));
    if (job.completed_at) metaRows.push(row('finished', fmtTime(job.completed_at)));
    const user = Object.assign({}, job.metadata || {});
    delete user.progress;
    if (Object.keys(user).length) metaRows.push(row('metadata', JSON.stringify(user), true));
    append(jp.meta, metaRows);
  }

  async function refreshJob(id) {
    let job;
    try {
      job = await request('GET', `batch/jobs/${encodeURIComponent(id)}`);
    } catch (e) {
      if (state.jobPage && state.jobPage.id === id) {
        if (e.status === 404) banner(`Job ${id} was not found.`);
        else banner(`Cannot load job ${id}: ${e.message}`);
      }
      return null;
    }
    if (state.jobPage && state.jobPage.id === id) banner(null);
    remember(job);
    applyJob(job);
    return job;
  }

  function applyJob(job) {
    const row = state.jobRows.get(job.job_id);
    if (row) updateJobRow(row, job);
    updateJobPage(job);
  }

  async function loadItems() {
    const jp = state.jobPage;
    if (!jp) return;
    const seq = ++jp.itemsSeq;
    let page;
    try {
      page = await request('GET', `batch/jobs/${encodeURIComponent(jp.id)}/items`, {
        status: jp.filter,
        offset: jp.offset,
        limit: ITEMS_PAGE,
      });
    } catch (e) {
      if (e.status !== 404) toast(`Cannot load items: ${e.message}`, 'error');
      return;
    }
    if (state.jobPage !== jp || seq !== jp.itemsSeq) return;
    setText(jp.itemsTotal, String(page.total));
    const tbody = jp.tbody;
    const keep = new Map();
    const order = [];
    for (const item of page.items) {
      const sig = `${item.status}|${item.attempts}|${item.finished_at}`;
      let row = jp.itemRows.get(item.index);
      if (!row || row.sig !== sig) row = createItemRow(item, sig);
      keep.set(item.index, row);
      order.push(row.tr, row.detail);
    }
    jp.itemRows = keep;
    clear(tbody);
    append(tbody, order);
    jp.itemsEmpty.hidden = page.items.length > 0;
    setText(jp.itemsEmpty, jp.filter ? `No ${jp.filter} items.` : 'No items.');
    jp.pager.update(jp.offset, page.items.length, page.total, ITEMS_PAGE);
  }

  const reloadItemsSoon = debounce(() => loadItems(), 800);

  function itemDuration(item) {
    const r = item.result;
    if (r && typeof r === 'object' && Number.isFinite(r.duration_seconds)) return r.duration_seconds;
    if (item.started_at && item.finished_at) return item.finished_at - item.started_at;
    return null;
  }

  function firstLine(s) {
    if (typeof s !== 'string') return '';
    const line = s.split('\n').find((l) => l.trim() !== '') || '';
    return line.length > 200 ? `${line.slice(0, 200)}…` : line;
  }

  function createItemRow(item, sig) {
    const jp = state.jobPage;
    const r = item.result && typeof item.result === 'object' ? item.result : {};
    const message = item.error || firstLine(r.stderr) || firstLine(r.error) || firstLine(r.summary) || '';
    const toggle = h('button', { type: 'button', class: 'toggle', 'aria-expanded': 'false', 'aria-label': 'Show output', testid: 'item-toggle' }, '▸');
    const tr = h(
      'tr',
      { class: 'item-row', testid: 'item-row', data: { itemId: item.id, index: String(item.index), status: item.status } },
      h('td', { class: 'col-toggle' }, toggle),
      h('td', { class: 'num muted' }, String(item.index)),
      h('td', { class: 'mono item-id' }, item.id),
      h('td', null, statusBadge(item.status, 'item-status')),
      h('td', { class: 'num' }, String(item.attempts)),
      h('td', { class: 'num' }, item.finished_at ? fmtSeconds(itemDuration(item)) : '—'),
      h('td', { class: 'num mono' }, r.exit_code === undefined || r.exit_code === null ? '—' : String(r.exit_code)),
      h('td', { class: 'mono muted', testid: 'item-node' }, item.node || '—'),
      h('td', { class: 'message', title: message }, message),
    );
    const cell = h('td', { colspan: 9 });
    const detail = h('tr', { class: 'item-detail-row', hidden: true }, cell);
    let built = false;
    const setOpen = (open) => {
      if (open && !built) {
        cell.append(itemDetail(item));
        built = true;
      }
      detail.hidden = !open;
      tr.classList.toggle('open', open);
      toggle.setAttribute('aria-expanded', String(open));
      setText(toggle, open ? '▾' : '▸');
      if (open) jp.expanded.add(item.index);
      else jp.expanded.delete(item.index);
    };
    tr.addEventListener('click', (ev) => {
      if (window.getSelection && String(window.getSelection()).length > 0 && ev.target !== toggle) return;
      setOpen(detail.hidden);
    });
    if (jp.expanded.has(item.index)) setOpen(true);
    return { tr, detail, sig };
  }

  function outputBlock(label, text, testid, cls) {
    const empty = text === '' || text === undefined || text === null;
    return h('div', { class: 'output' },
      h('div', { class: 'output-label' }, label),
      h('pre', { class: `pre ${cls || ''} ${empty ? 'pre-empty' : ''}`, testid }, empty ? '(empty)' : String(text)));
  }

  // A unified diff, one line a row, coloured by its first character.
  function diffView(patch) {
    const pre = h('pre', { class: 'pre diff', testid: 'item-patch' });
    for (const line of String(patch).split('\n')) {
      let cls = 'd-ctx';
      if (line.startsWith('+++') || line.startsWith('---')) cls = 'd-file';
      else if (line.startsWith('@@')) cls = 'd-hunk';
      else if (line.startsWith('+')) cls = 'd-add';
      else if (line.startsWith('-')) cls = 'd-del';
      else if (/^(diff |index |new file|deleted file|similarity|rename )/.test(line)) cls = 'd-meta';
      pre.append(h('span', { class: `d-line ${cls}` }, line === '' ? ' ' : line));
    }
    return pre;
  }

  function itemDetail(item) {
    const r = item.result && typeof item.result === 'object' && !Array.isArray(item.result) ? item.result : null;
    const facts = [];
    const fact = (k, v, testid) => facts.push(h('div', { class: 'fact' }, h('span', { class: 'fact-k' }, k), h('span', { class: 'fact-v', testid }, v)));
    fact('status', item.status, 'detail-status');
    if (r && 'exit_code' in r) fact('exit code', r.exit_code === null ? 'none' : String(r.exit_code), 'item-exit-code');
    fact('attempts', String(item.attempts));
    if (item.started_at) fact('started', fmtTime(item.started_at));
    if (item.finished_at) fact('finished', fmtTime(item.finished_at));
    const d = itemDuration(item);
    if (item.finished_at && d !== null) fact('duration', fmtSeconds(d));
    if (r && r.truncated) fact('output', 'truncated', 'item-truncated');
    const path = (item.input && item.input.path) || (r && r.path);
    if (path) fact('path', String(path));

    if (item.node) fact('node', item.node, 'detail-node');
    const blocks = [h('div', { class: 'facts' }, facts)];
    const history = Array.isArray(item.attempt_errors) ? item.attempt_errors : [];
    if (history.length) {
      blocks.push(h('div', { class: 'output' }, h('div', { class: 'output-label' }, `earlier attempts (${history.length})`),
        h('ol', { class: 'attempts', testid: 'attempt-history' }, history.map((e) => h('li', null, h('pre', { class: 'pre pre-error' }, e))))));
    }
    const error = item.error || (r && typeof r.error === 'string' ? r.error : null);
    if (error) blocks.push(h('div', { class: 'output' }, h('div', { class: 'output-label' }, 'error'), h('pre', { class: 'pre pre-error', testid: 'item-error' }, error)));
    const patch = r && (typeof r.patch === 'string' ? r.patch : typeof r.diff === 'string' ? r.diff : null);
    if (patch) blocks.push(h('div', { class: 'output' }, h('div', { class: 'output-label' }, 'patch'), diffView(patch)));
    const commandShaped = r && ('stdout' in r || 'stderr' in r);
    if (r && 'stdout' in r) blocks.push(outputBlock('stdout', r.stdout, 'item-stdout'));
    if (r && 'stderr' in r) blocks.push(outputBlock('stderr', r.stderr, 'item-stderr', 'pre-stderr'));
    if (item.result !== null && item.result !== undefined) {
      blocks.push(h('details', { class: 'raw', open: !commandShaped && !patch },
        h('summary', null, 'result (JSON)'),
        h('pre', { class: 'pre', testid: 'item-result' }, JSON.stringify(item.result, null, 2))));
    }
    blocks.push(h('details', { class: 'raw' },
      h('summary', null, 'input (JSON)'),
      h('pre', { class: 'pre', testid: 'item-input' }, JSON.stringify(item.input, null, 2))));
    return h('div', { class: 'item-detail', testid: 'item-detail' }, blocks);
  }

  // ---------------------------------------------------------------- kinds page

  let kindsView = null;

  function renderKindsView() {
    if (!kindsView) {
      const tbody = h('tbody', { testid: 'kinds-body' });
      append($('kinds-view'), [
        h('div', { class: 'toolbar' }, h('h2', null, 'Kinds'), h('div', { class: 'toolbar-right' }, h('span', { class: 'muted', testid: 'kinds-sandbox' }))),
        h('div', { class: 'card' }, h('div', { class: 'table-wrap' }, h('table', { class: 'table', testid: 'kinds-table' },
          h('thead', null, h('tr', null, h('th', null, 'Kind'), h('th', { class: 'num' }, 'Limit'), h('th', { class: 'num' }, 'Running'),
            h('th', { class: 'col-progress' }, 'Use'), h('th', null, 'State'), h('th', { class: 'col-actions' }, ''))),
          tbody))),
      ]);
      kindsView = { tbody };
    }
    loadKinds();
  }

  async function loadKinds() {
    if (!kindsView) return;
    let list;
    try {
      list = await request('GET', 'batch/kinds');
      banner(null);
    } catch (e) {
      banner(`Cannot load kinds: ${e.message}`);
      return;
    }
    setText($('kinds-sandbox'), `sandbox: ${list.sandbox}`);
    clear(kindsView.tbody);
    for (const k of list.kinds) {
      const use = k.limit > 0 ? Math.min(100, (k.running / k.limit) * 100) : 0;
      const toggle = h('button', {
        type: 'button', class: k.paused ? 'btn btn-small' : 'btn btn-small btn-danger', testid: 'kind-toggle',
        onclick: async (ev) => {
          ev.currentTarget.disabled = true;
          const verb = k.paused ? 'resume' : 'pause';
          try {
            await request('POST', `batch/kinds/${encodeURIComponent(k.kind)}/${verb}`);
            toast(`${k.paused ? 'Resumed' : 'Paused'} kind ${k.kind}`, 'ok');
          } catch (e) {
            toast(`Could not ${verb} ${k.kind}: ${e.message}`, 'error');
          }
          loadKinds();
        },
      }, k.paused ? 'Resume' : 'Pause');
      kindsView.tbody.append(h('tr', { testid: 'kind-row', data: { kind: k.kind, paused: String(k.paused) } },
        h('td', null, h('span', { class: 'tag' }, k.kind)),
        h('td', { class: 'num', testid: 'kind-limit' }, String(k.limit)),
        h('td', { class: 'num', testid: 'kind-running' }, String(k.running)),
        h('td', { class: 'col-progress' }, h('div', { class: 'bar', title: `${k.running} of ${k.limit}` }, h('span', { class: 'seg seg-ok', data: { width: use } }))),
        h('td', null, h('span', { class: `badge ${k.paused ? 'b-paused b-queued' : 'b-running'}`, testid: 'kind-state' }, k.paused ? 'paused' : 'active')),
        h('td', { class: 'col-actions' }, toggle)));
    }
    // Widths set through the style object, which the page's policy allows (no inline CSS).
    for (const seg of kindsView.tbody.querySelectorAll('.seg[data-width]')) seg.style.width = `${seg.dataset.width}%`;
  }

  // ---------------------------------------------------------------- schedules page

  let schedulesView = null;

  function renderSchedulesView() {
    if (!schedulesView) {
      const tbody = h('tbody', { testid: 'schedules-body' });
      const empty = h('div', { class: 'empty', testid: 'schedules-empty', hidden: true },
        'No schedules. Create one with ', h('code', null, 'POST batch/schedules'), '.');
      append($('schedules-view'), [
        h('div', { class: 'toolbar' }, h('h2', null, 'Schedules ', h('span', { class: 'count', testid: 'schedules-total' }))),
        h('div', { class: 'card' }, h('div', { class: 'table-wrap' }, h('table', { class: 'table', testid: 'schedules-table' },
          h('thead', null, h('tr', null, h('th', null, 'Schedule'), h('th', null, 'Cron'), h('th', null, 'State'),
            h('th', null, 'Next run'), h('th', null, 'Last run'), h('th', null, 'Last job'), h('th', null, 'Last error'), h('th', { class: 'col-actions' }, ''))),
          tbody)), empty),
      ]);
      schedulesView = { tbody, empty };
    }
    loadSchedules();
  }

  async function loadSchedules() {
    if (!schedulesView) return;
    let list;
    try {
      list = await request('GET', 'batch/schedules');
      banner(null);
    } catch (e) {
      banner(`Cannot load schedules: ${e.message}`);
      return;
    }
    setText($('schedules-total'), String(list.total));
    schedulesView.empty.hidden = list.schedules.length > 0;
    clear(schedulesView.tbody);
    for (const sc of list.schedules) {
      const act = (label, testid, method, path, cls) => h('button', {
        type: 'button', class: `btn btn-small ${cls || ''}`, testid,
        onclick: async (ev) => {
          const btn = ev.currentTarget;
          if (method === 'DELETE' && !btn.classList.contains('armed')) {
            btn.classList.add('armed');
            setText(btn, 'Confirm delete');
            setTimeout(() => { btn.classList.remove('armed'); setText(btn, label); }, 5000);
            return;
          }
          btn.disabled = true;
          try {
            await request(method, `batch/schedules/${encodeURIComponent(sc.id)}${path}`);
            toast(`${{ Pause: 'Paused', Resume: 'Resumed', Delete: 'Deleted' }[label]} schedule ${sc.name || sc.id}`, 'ok');
          } catch (e) {
            toast(`${label} ${sc.name || sc.id}: ${e.message}`, 'error');
          }
          loadSchedules();
        },
      }, label);
      schedulesView.tbody.append(h('tr', { testid: 'schedule-row', data: { scheduleId: sc.id, paused: String(sc.paused) } },
        h('td', null, h('div', { class: 'mono' }, sc.name || sc.id), sc.name ? h('div', { class: 'muted mono small' }, sc.id) : null,
          h('a', { href: hashFor('jobs', null, { q: `schedule:${sc.id}:` }), testid: 'schedule-jobs', class: 'small' }, 'its jobs →')),
        h('td', null, h('code', null, sc.cron), h('div', { class: 'muted small' }, sc.timezone)),
        h('td', null, h('span', { class: `badge ${sc.paused ? 'b-paused b-queued' : 'b-running'}`, testid: 'schedule-state' }, sc.paused ? 'paused' : 'active')),
        h('td', { class: 'nowrap', testid: 'schedule-next' }, sc.paused ? '—' : fmtTime(sc.next_run_at)),
        h('td', { class: 'nowrap muted' }, fmtTime(sc.last_run_at)),
        h('td', null, sc.last_job_id ? h('a', { href: hashFor('job', sc.last_job_id), class: 'mono' }, sc.last_job_id) : '—'),
        h('td', { class: 'message', testid: 'schedule-error' }, sc.last_error || ''),
        h('td', { class: 'col-actions nowrap' },
          sc.paused ? act('Resume', 'schedule-resume', 'POST', '/resume') : act('Pause', 'schedule-pause', 'POST', '/pause'),
          ' ',
          act('Delete', 'schedule-delete', 'DELETE', '', 'btn-danger'))));
    }
  }

  // ---------------------------------------------------------------- stats, health

  async function refreshStats() {
    let body;
    try {
      body = await request('GET', 'batch/stats');
    } catch (_) {
      return;
    }
    const s = (body && body.stats) || {};
    for (const k of ['total', 'queued', 'running', 'completed', 'failed', 'cancelled']) {
      setText($(`stat-${k}`), s[k] === undefined ? '–' : String(s[k]));
    }
  }
  const refreshStatsSoon = debounce(refreshStats, 300);
  const refreshListSoon = debounce(refreshList, 400);

  async function loadHealth() {
    try {
      const health = await request('GET', 'health');
      setText($('server-info'), `v${health.version} · ${health.node_id}`);
    } catch (_) {
      setText($('server-info'), 'server unreachable');
    }
  }

  // ---------------------------------------------------------------- live events

  function setLive(mode) {
    const el = $('live-status');
    el.dataset.state = mode;
    setText(el.querySelector('.live-text'), mode);
  }

  function onProgress(ev) {
    const job = state.jobs.get(ev.job_id);
    if (!job) {
      // A job this page has not seen yet: the list shows it on its next load.
      refreshListSoon();
      refreshStatsSoon();
      return;
    }
    const updated = Object.assign({}, job, {
      metadata: Object.assign({}, job.metadata, { progress: ev.progress }),
      progress: ev.progress.percentage,
    });
    if (job.status === 'queued') {
      updated.status = 'running';
      refreshStatsSoon();
    }
    noteSample(ev.job_id, ev.progress.processed || 0);
    state.jobs.set(ev.job_id, updated);
    applyJob(updated);
  }

  function onItem(ev) {
    const jp = state.jobPage;
    if (jp && jp.id === ev.job_id) reloadItemsSoon();
  }

  async function onEnd(ev) {
    await refreshJob(ev.job_id);
    state.samples.delete(ev.job_id);
    refreshListSoon();
    refreshStatsSoon();
    const jp = state.jobPage;
    if (jp && jp.id === ev.job_id) {
      loadItems();
      const job = state.jobs.get(ev.job_id);
      if (job) loadTimeline(job);
      loadWebhooks(ev.job_id);
    }
  }

  function parse(e) {
    try {
      return JSON.parse(e.data);
    } catch (_) {
      return null;
    }
  }

  // The event stream is read with fetch, not EventSource, which cannot send the token
  // header; the SSE format is parsed here (event, data, blank line ends an event).
  const handlers = {
    progress: (ev) => ev.job_id && ev.progress && onProgress(ev),
    item: (ev) => ev.job_id && onItem(ev),
    end: (ev) => ev.job_id && onEnd(ev),
  };

  function dispatch(block) {
    let event = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) continue;
      const colon = line.indexOf(':');
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
      if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
    }
    const handle = handlers[event];
    if (!handle || data.length === 0) return;
    const ev = parse({ data: data.join('\n') });
    if (ev) handle(ev);
  }

  async function connect() {
    if (!window.fetch || !window.ReadableStream || !window.TextDecoder) {
      setLive('polling');
      return;
    }
    try {
      const res = await authorizedFetch(apiUrl('batch/events'), {
        headers: { accept: 'text/event-stream' },
        cache: 'no-store',
      });
      if (!res.ok || !res.body) throw new Error(`${res.status}`);
      setLive('live');
      refreshStats();
      refreshList();
      const jp = state.jobPage;
      if (jp) {
        refreshJob(jp.id);
        loadItems();
      }
      const reader = res.body.getReader();
      const decoder = new TextDecoder();
      let buffered = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += decoder.decode(value, { stream: true }).replace(/\r\n?/g, '\n');
        let cut;
        while ((cut = buffered.indexOf('\n\n')) >= 0) {
          dispatch(buffered.slice(0, cut));
          buffered = buffered.slice(cut + 2);
        }
      }
    } catch (_) {
      // Reconnected below, as EventSource would.
    }
    setLive(declined ? 'offline' : 'reconnecting');
    if (!declined) setTimeout(connect, 3000);
  }

  // ---------------------------------------------------------------- start

  function tick() {
    // Rate and ETA move with time even between events.
    for (const [id, row] of state.jobRows) {
      const job = state.jobs.get(id);
      if (job && isActive(job.status)) updateJobRow(row, job);
    }
    const jp = state.jobPage;
    if (jp) {
      const job = state.jobs.get(jp.id);
      if (job && isActive(job.status)) updateJobPage(job);
    }
  }

  function periodic() {
    if (document.hidden) return;
    refreshStats();
    if (state.route.view === 'jobs') {
      refreshList();
      refreshThroughput();
    }
    if (state.route.view === 'kinds') loadKinds();
    if (state.route.view === 'schedules') loadSchedules();
    const jp = state.jobPage;
    if (jp) {
      const job = state.jobs.get(jp.id);
      if (!job || isActive(job.status)) {
        refreshJob(jp.id).then((fresh) => fresh && loadTimeline(fresh));
        loadItems();
      }
    }
  }

  function start() {
    window.addEventListener('hashchange', render);
    render();
    refreshStats();
    loadHealth();
    connect();
    setInterval(periodic, REFRESH_MS);
    setInterval(tick, 1000);
    document.addEventListener('visibilitychange', () => {
      if (!document.hidden) periodic();
    });
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
