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

  async function request(method, path, params) {
    const res = await authorizedFetch(apiUrl(path, params), {
      method,
      headers: { accept: 'application/json' },
      cache: 'no-store',
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
    return { view: 'jobs', id: null, params };
  }

  function hashFor(view, id, params) {
    const qs = new URLSearchParams();
    for (const [k, v] of Object.entries(params || {})) if (v !== undefined && v !== null && v !== '' && v !== 0) qs.set(k, String(v));
    const q = qs.toString();
    const path = view === 'job' ? `/jobs/${encodeURIComponent(id)}` : '/';
    return `#${path}${q ? `?${q}` : ''}`;
  }

  function render() {
    state.route = parseRoute();
    const crumbs = $('crumbs');
    clear(crumbs);
    const jobsSection = $('jobs-view');
    const jobSection = $('job-view');
    if (state.route.view === 'job') {
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
    const offset = Math.max(0, parseInt(state.route.params.get('offset') || '0', 10) || 0);
    if (!jobsView) {
      const tbody = h('tbody', { testid: 'jobs-body' });
      const filter = statusSelect('status-filter', JOB_STATUSES, status, (v) => {
        window.location.hash = hashFor('jobs', null, { status: v });
      }, 'All statuses');
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
          h('th', null, 'Job'), h('th', null, 'Type'), h('th', null, 'Status'),
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
            filter,
            h('button', { type: 'button', class: 'btn', testid: 'refresh', onclick: () => { refreshList(); refreshStats(); } }, 'Refresh'))),
        h('div', { class: 'card' }, h('div', { class: 'table-wrap' }, table), empty, pg.el),
      ]);
      jobsView = { tbody, filter, count, pager: pg, empty, status, offset, total: 0 };
    }
    jobsView.status = status;
    jobsView.offset = offset;
    jobsView.filter.value = status;
    refreshList();
  }

  async function refreshList() {
    if (!jobsView || state.route.view !== 'jobs') return;
    const seq = ++state.listSeq;
    const { status, offset } = jobsView;
    let page;
    try {
      page = await request('GET', 'batch/jobs', { status, limit: JOBS_PAGE, offset });
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
      }
    }
    jobsView.empty.hidden = page.jobs.length > 0;
    clear(jobsView.empty);
    if (page.jobs.length === 0) {
      append(jobsView.empty, status
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
    const tr = h(
      'tr',
      { class: 'job-row', testid: 'job-row', data: { jobId: job.job_id } },
      h('td', null, cells.link),
      h('td', null, cells.type),
      h('td', null, cells.status),
      h('td', { class: 'col-progress' }, bar.el),
      cells.ok, cells.failed, cells.rate, cells.eta, cells.created, cells.actions,
    );
    return { tr, bar, cells, cancel };
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
          h('div', { class: 'toolbar-right' }, exportLink, parts.cancel)),
        bar.el,
        parts.figures,
        parts.error,
        parts.meta),
      h('div', { class: 'toolbar' },
        h('h2', null, 'Items ', parts.itemsTotal),
        h('div', { class: 'toolbar-right' }, parts.itemFilter)),
      h('div', { class: 'card' },
        h('div', { class: 'table-wrap' },
          h('table', { class: 'table items-table', testid: 'items-table' },
            h('thead', null, h('tr', null,
              h('th', { class: 'col-toggle' }, ''), h('th', { class: 'num' }, '#'), h('th', null, 'Item'),
              h('th', null, 'Status'), h('th', { class: 'num' }, 'Attempts'), h('th', { class: 'num' }, 'Duration'),
              h('th', { class: 'num' }, 'Exit'), h('th', null, 'Message'))),
            parts.tbody)),
        parts.itemsEmpty,
        parts.pager.el),
    ]);
    state.jobPage = parts;
    const known = state.jobs.get(id);
    if (known) updateJobPage(known);
    refreshJob(id);
    loadItems();
  }

  function updateJobPage(job) {
    const jp = state.jobPage;
    if (!jp || jp.id !== job.job_id) return;
    const p = progressOf(job);
    updateBadge(jp.status, job.status, job.paused);
    setText(jp.type, job.type);
    jp.cancel.hidden = !isActive(job.status);
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
    for (const [k, v] of Object.entries(opts)) {
      if (k === 'check_command' || k === 'test_command') continue;
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
      h('td', { class: 'message', title: message }, message),
    );
    const cell = h('td', { colspan: 8 });
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

    const blocks = [h('div', { class: 'facts' }, facts)];
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
    if (jp && jp.id === ev.job_id) loadItems();
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
    if (state.route.view === 'jobs') refreshList();
    const jp = state.jobPage;
    if (jp) {
      const job = state.jobs.get(jp.id);
      if (!job || isActive(job.status)) {
        refreshJob(jp.id);
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
