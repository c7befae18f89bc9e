// End-to-end test of the batchforge web dashboard in headless Chromium.
//
//   node tests/browser/dashboard.mjs BASE_URL WORKSPACE
//
// BASE_URL is a running batchforge server (or BATCHFORGE_URL), WORKSPACE its workspace
// root (or BATCHFORGE_WORKSPACE): the script writes the files its batches check there.
// The browser is Debian's chromium (CHROMIUM overrides the path); nothing is downloaded.
// DASHBOARD_SCREENSHOTS=DIR also saves screenshots of the pages. BATCHFORGE_TOKEN=TOKEN runs
// against a server started with --token: the script sends it, and the page must ask for it
// exactly once, keep it in sessionStorage and never in a cookie.
//
// It submits batches over REST, as a script would, and checks what the page shows:
//   1. a validation batch's progress bar reaches 100% and its ✓ count is right;
//   2. a slow job is cancelled by clicking its cancel button (and is cancelled over REST);
//   3. a failed item's stderr can be read on its job page (and its id is shown as text);
//   4. a running job is paused and resumed by clicking;
//   5. a finished job's failed item is retried by clicking, and its attempt history shows;
//   6. the job's timeline chart has as many bars as the timeline endpoint has buckets;
//   7. a cron schedule is paused from the schedules page, a kind from the kinds page;
//   8. three jobs are selected in the jobs table and cancelled with one bulk click;
//   9. the search box narrows the table to the job searched for.
// Every wait is bounded; any uncaught page error or CSP violation fails the run.

import { chromium } from 'playwright-core';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const WAIT = 20_000;
const base = new URL(process.argv[2] || process.env.BATCHFORGE_URL || 'http://127.0.0.1:8000/');
if (!base.pathname.endsWith('/')) base.pathname += '/';
const workspace = process.argv[3] || process.env.BATCHFORGE_WORKSPACE;
const shots = process.env.DASHBOARD_SCREENSHOTS;
const token = process.env.BATCHFORGE_TOKEN || '';
if (!workspace) {
  console.error('usage: node dashboard.mjs BASE_URL WORKSPACE');
  process.exit(2);
}

// The whole run is bounded too, whatever hangs.
const watchdog = setTimeout(() => {
  console.error('FAIL: the browser test did not finish within 240 s');
  process.exit(1);
}, 240_000);

function check(cond, message) {
  if (!cond) throw new Error(message);
}

async function api(method, path, body) {
  const res = await fetch(new URL(path, base), {
    method,
    headers: Object.assign(body ? { 'content-type': 'application/json' } : {}, token ? { authorization: `Bearer ${token}` } : {}),
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  const json = text ? JSON.parse(text) : null;
  if (!res.ok) throw new Error(`${method} ${path} answered ${res.status}: ${text}`);
  return json;
}

const step = (name) => console.log(`-- ${name}`);
const ok = (name) => console.log(`ok: ${name}`);

for (const [name, content] of [['a.txt', 'a'], ['b.txt', 'b'], ['c.txt', 'c'], ['d.txt', 'd'], ['good.txt', 'g'], ['bad.txt', 'x'], ['slow.txt', 's']]) {
  writeFileSync(join(workspace, name), content);
}
if (shots) mkdirSync(shots, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: [
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
  ],
});

let failed = false;
const problems = [];
try {
  const context = await browser.newContext({ viewport: { width: 1360, height: 900 } });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  // The token question: answered with the token; any other dialog is a failure.
  let prompts = 0;
  page.on('dialog', async (d) => {
    if (d.type() === 'prompt' && token) {
      prompts += 1;
      await d.accept(token);
    } else {
      problems.push(`unexpected ${d.type()} dialog: ${d.message()}`);
      await d.dismiss();
    }
  });
  page.on('console', (m) => {
    if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) problems.push(`console error: ${m.text()}`);
  });
  page.on('requestfailed', (r) => {
    // The event stream is aborted when the page goes away; anything else is a failure.
    if (!r.url().includes('/batch/events')) problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`);
  });

  step(`open ${base.href}`);
  await page.goto(base.href);
  await page.getByTestId('jobs-table').waitFor();
  await page.locator('[data-testid="live-status"][data-state="live"]').waitFor();
  ok('the dashboard loads and its event stream is live');
  if (token) {
    check(prompts === 1, `the page asked for the token ${prompts} times`);
    const stored = await page.evaluate(() => window.sessionStorage.getItem('batchforge-token'));
    check(stored === token, 'the token is not in sessionStorage');
    check((await context.cookies()).length === 0, 'the page set a cookie');
    ok('the page asked for the token once and keeps it in sessionStorage, no cookie');
  }

  // 1. A batch submitted over REST: its bar reaches 100%.
  step('submit a validation batch over REST');
  const quick = await api('POST', 'batch/validation', {
    targets: ['a', 'b', 'c', 'd'].map((id) => ({ id, path: `${id}.txt` })),
    check_command: "sh -c 'sleep 0.4; test -s \"$0\"'",
    parallel: 2,
  });
  const quickRow = page.locator(`[data-testid="job-row"][data-job-id="${quick.job_id}"]`);
  await quickRow.waitFor();
  await quickRow.locator('[data-testid="progress"][aria-valuenow="100"]').waitFor();
  await quickRow.locator('[data-testid="job-status"]', { hasText: 'completed' }).waitFor();
  const pctText = (await quickRow.getByTestId('progress-text').textContent()).trim();
  check(pctText === '100%', `the progress label says ${pctText}`);
  const okCount = (await quickRow.getByTestId('count-ok').textContent()).trim();
  check(okCount === '✓ 4', `the ✓ count says ${okCount}`);
  check(await quickRow.getByTestId('cancel-button').isHidden(), 'a finished job still shows a cancel button');
  ok(`job ${quick.job_id}: the progress bar reached 100% with ✓ 4`);

  // 2. A slow job, cancelled by clicking.
  step('submit a slow job and cancel it by clicking');
  const slow = await api('POST', 'batch/validation', {
    targets: [{ id: 's1', path: 'slow.txt' }, { id: 's2', path: 'slow.txt' }, { id: 's3', path: 'slow.txt' }],
    check_command: "sh -c 'sleep 30'",
    parallel: 2,
  });
  const slowRow = page.locator(`[data-testid="job-row"][data-job-id="${slow.job_id}"]`);
  await slowRow.locator('[data-testid="job-status"]', { hasText: 'running' }).waitFor();
  const cancel = slowRow.getByTestId('cancel-button');
  await cancel.click();
  await slowRow.locator('[data-testid="cancel-button"]', { hasText: 'Confirm' }).waitFor();
  await cancel.click();
  await slowRow.locator('[data-testid="job-status"]', { hasText: 'cancelled' }).waitFor();
  await page.getByTestId('toast').filter({ hasText: `Cancelled ${slow.job_id}` }).waitFor();
  await cancel.waitFor({ state: 'hidden' });
  const slowJob = await api('GET', `batch/jobs/${slow.job_id}`);
  check(slowJob.status === 'cancelled', `over REST the slow job is ${slowJob.status}`);
  ok(`job ${slow.job_id}: cancelled from its button, and cancelled over REST`);
  if (shots) await page.screenshot({ path: join(shots, 'jobs.png'), fullPage: true, animations: 'disabled' });

  // 3. A failed item's stderr, on its job page.
  step('open a job with a failed item and read its stderr');
  const hostile = '<img src=x onerror="window.__pwned=1">';
  const mixed = await api('POST', 'batch/validation', {
    targets: [
      { id: 'good', path: 'good.txt' },
      { id: 'bad', path: 'bad.txt' },
      { id: hostile, path: 'good.txt' },
    ],
    check_command: "sh -c 'if [ \"$0\" = bad.txt ]; then echo \"boom: $0 is broken\" >&2; exit 3; fi; echo fine'",
    parallel: 3,
  });
  const mixedRow = page.locator(`[data-testid="job-row"][data-job-id="${mixed.job_id}"]`);
  await mixedRow.locator('[data-testid="job-status"]', { hasText: 'completed' }).waitFor();
  const failCount = (await mixedRow.getByTestId('count-failed').textContent()).trim();
  check(failCount === '✗ 1', `the ✗ count says ${failCount}`);
  await mixedRow.getByTestId('job-link').click();
  await page.getByTestId('job-view').waitFor();
  await page.locator('[data-testid="job-id"]', { hasText: mixed.job_id }).waitFor();
  await page.locator('[data-testid="job-progress"][aria-valuenow="100"]').waitFor();
  await page.locator('[data-testid="item-row"]').first().waitFor();
  check((await page.locator('[data-testid="item-row"]').count()) === 3, 'the job page lists 3 items');
  await page.getByTestId('item-filter').selectOption('failed');
  await page.waitForFunction(() => {
    const rows = document.querySelectorAll('[data-testid="item-row"]');
    return rows.length === 1 && rows[0].dataset.itemId === 'bad';
  });
  check(page.url().includes('status=failed'), `the filter is not in the URL: ${page.url()}`);
  const badRow = page.locator('[data-testid="item-row"][data-item-id="bad"]');
  await badRow.click();
  const detail = page.locator('[data-testid="item-detail"]:visible');
  const stderr = (await detail.getByTestId('item-stderr').textContent()).trim();
  check(stderr === 'boom: bad.txt is broken', `the failed item's stderr reads ${JSON.stringify(stderr)}`);
  const exitCode = (await detail.getByTestId('item-exit-code').textContent()).trim();
  check(exitCode === '3', `the exit code reads ${exitCode}`);
  ok(`job ${mixed.job_id}: the failed item's stderr reads "${stderr}", exit code ${exitCode}`);
  if (shots) await page.screenshot({ path: join(shots, 'job.png'), fullPage: true, animations: 'disabled' });

  // Server text is text: an item id that looks like markup is shown as it is, never run.
  await page.getByTestId('item-filter').selectOption('');
  const hostileRow = page.locator('[data-testid="item-row"]').filter({ hasText: '<img src=x' });
  await hostileRow.waitFor();
  check(!(await page.evaluate(() => window.__pwned)), 'markup in an item id ran');
  check((await page.locator('[data-testid="items-table"] img').count()) === 0, 'markup in an item id became an element');
  ok('markup in an item id is shown as text');

  // An agent task's patch is shown as a diff. No agent processor runs here, so the page
  // gets a finished agent job from routed answers, in the REST shapes.
  step('an agent task result with a patch renders as a coloured diff');
  const agentId = 'batch_agent_tasks-0123456789ab';
  const now = Date.now() / 1000;
  const patch = [
    'diff --git a/src/lib.rs b/src/lib.rs',
    '--- a/src/lib.rs',
    '+++ b/src/lib.rs',
    '@@ -1,3 +1,3 @@',
    ' fn main() {',
    '-    println!("helo");',
    '+    println!("hello <world>");',
    ' }',
  ].join('\n');
  const agentJob = {
    job_id: agentId, type: 'batch_agent_tasks', status: 'completed', progress: 100, error: null,
    result: { summary: { total: 1, successful: 1, failed: 0, skipped: 0, cancelled: 0 }, results: [], elapsed_seconds: 2 },
    created_at: now - 5, started_at: now - 4, completed_at: now - 2, options: { parallel: 3 },
    metadata: { progress: { total: 1, processed: 1, successful: 1, failed: 0, skipped: 0, cancelled: 0, percentage: 100, elapsed_seconds: 2, items_per_second: 0.5, estimated_remaining_seconds: 0, current_item: null } },
  };
  const agentItem = {
    index: 0, id: 'fix-typo', status: 'succeeded', attempts: 1,
    input: { id: 'fix-typo', description: 'fix the greeting' },
    result: { task_id: 'fix-typo', status: 'completed', summary: 'fixed the typo', patch },
    error: null, started_at: now - 4, finished_at: now - 2,
  };
  const json = (body) => ({ status: 200, contentType: 'application/json', body: JSON.stringify(body) });
  await page.route((url) => url.pathname.endsWith(`/batch/jobs/${agentId}`), (route) => route.fulfill(json(agentJob)));
  await page.route((url) => url.pathname.endsWith(`/batch/jobs/${agentId}/items`), (route) =>
    route.fulfill(json({ job_id: agentId, items: [agentItem], total: 1, limit: 50, offset: 0 })));
  await page.goto(`${base.href}#/jobs/${agentId}`);
  await page.locator('[data-testid="item-row"][data-item-id="fix-typo"]').click();
  const diff = page.locator('[data-testid="item-detail"]:visible [data-testid="item-patch"]');
  await diff.waitFor();
  const added = (await diff.locator('.d-add').allTextContents()).join('\n');
  const removed = (await diff.locator('.d-del').allTextContents()).join('\n');
  check(added === '+    println!("hello <world>");', `added lines read ${JSON.stringify(added)}`);
  check(removed === '-    println!("helo");', `removed lines read ${JSON.stringify(removed)}`);
  check((await diff.locator('.d-hunk').count()) === 1, 'no hunk header line');
  check((await diff.locator('.d-file').count()) === 2, 'no file header lines');
  ok('the patch renders as a diff: one line removed, one added');
  if (shots) await page.screenshot({ path: join(shots, 'patch.png'), fullPage: true, animations: 'disabled' });
  await page.unrouteAll();

  // Back to the list through the hash route.
  await page.getByTestId('home-link').click();
  await page.getByTestId('jobs-table').waitFor();
  await page.locator(`[data-testid="job-row"][data-job-id="${mixed.job_id}"]`).waitFor();
  const statCancelled = (await page.getByTestId('stat-cancelled').textContent()).trim();
  check(Number(statCancelled) >= 1, `the stats panel shows ${statCancelled} cancelled`);
  ok('the stats panel counts the cancelled job');
  if (token) {
    check(prompts === 1, `the page asked for the token ${prompts} times in all`);
    check((await context.cookies()).length === 0, 'the page set a cookie');
  }


  const slowBody = (n) => ({
    targets: Array.from({ length: n }, (_, i) => ({ id: `w${i}`, path: 'slow.txt' })),
    check_command: "sh -c 'sleep 30'",
    parallel: 1,
  });

  // 4. Pause and resume by clicking.
  step('pause and resume a running job from its page');
  const pausable = await api('POST', 'batch/validation', slowBody(2));
  await page.goto(`${base.href}#/jobs/${pausable.job_id}`);
  await page.locator('[data-testid="job-id"]', { hasText: pausable.job_id }).waitFor();
  await page.getByTestId('job-pause').click();
  await page.locator('[data-testid="job-status"]', { hasText: 'paused' }).waitFor();
  await page.getByTestId('toast').filter({ hasText: `Paused ${pausable.job_id}` }).waitFor();
  check((await api('GET', `batch/jobs/${pausable.job_id}`)).paused === true, 'over REST the job is not paused');
  await page.getByTestId('job-resume').click();
  await page.getByTestId('toast').filter({ hasText: `Resumed ${pausable.job_id}` }).waitFor();
  await page.getByTestId('job-pause').waitFor();
  check((await api('GET', `batch/jobs/${pausable.job_id}`)).paused === false, 'over REST the job is still paused');
  ok(`job ${pausable.job_id}: paused and resumed by clicking, as REST says`);
  await api('DELETE', `batch/jobs/${pausable.job_id}`);

  // 5. Retry the failed item by clicking.
  step('retry a finished job\'s failed items by clicking');
  await page.goto(`${base.href}#/jobs/${mixed.job_id}`);
  await page.getByTestId('job-retry-failed').click();
  await page.getByTestId('toast').filter({ hasText: 'Requeued 1 failed items' }).waitFor();
  const waitFinished = async (id) => {
    const until = Date.now() + WAIT;
    for (;;) {
      const j = await api('GET', `batch/jobs/${id}`);
      if (['completed', 'failed', 'cancelled', 'expired'].includes(j.status) && j.result) return j;
      check(Date.now() < until, `job ${id} did not finish: ${j.status}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };
  await waitFinished(mixed.job_id);
  const retriedItems = await api('GET', `batch/jobs/${mixed.job_id}/items`);
  const retried = retriedItems.items.find((i) => i.id === 'bad');
  check(retried.attempt_errors.length === 1, `the retried item has ${retried.attempt_errors.length} earlier errors`);
  await page.goto(`${base.href}#/jobs/${mixed.job_id}?status=failed`);
  await page.locator('[data-testid="item-row"][data-item-id="bad"]').click();
  const history = page.locator('[data-testid="item-detail"]:visible [data-testid="attempt-history"] li');
  await history.first().waitFor();
  check((await history.count()) === 1, 'the attempt history does not show the one earlier attempt');
  const node = (await page.locator('[data-testid="item-row"][data-item-id="bad"] [data-testid="item-node"]').textContent()).trim();
  check(node === retried.node, `the item's node reads ${node}, REST says ${retried.node}`);
  ok(`job ${mixed.job_id}: the failed item was retried by clicking; its earlier error and node (${node}) show`);

  // 6. The chart has one bar per bucket the API counts.
  step('the timeline chart of a known job');
  // The mixed job: two items finished at first, the failed one again after its retry.
  await page.goto(`${base.href}#/jobs/${mixed.job_id}`);
  const chart = page.getByTestId('timeline-chart');
  await chart.waitFor();
  const bucket = Number(await chart.getAttribute('data-bucket-seconds'));
  const timeline = await api('GET', `batch/jobs/${mixed.job_id}/timeline?bucket_seconds=${bucket}`);
  const bars = page.locator('[data-testid="timeline-bar"]');
  const barCount = await bars.count();
  check(barCount === timeline.buckets.length && barCount >= 1, `the chart has ${barCount} bars, the API ${timeline.buckets.length} buckets`);
  let drawnOk = 0;
  let drawnFailed = 0;
  for (const b of await bars.all()) {
    drawnOk += Number(await b.getAttribute('data-succeeded'));
    drawnFailed += Number(await b.getAttribute('data-failed'));
  }
  check(drawnOk === 2 && drawnFailed === 1, `the bars add up to ✓ ${drawnOk} ✗ ${drawnFailed}, not ✓ 2 ✗ 1`);
  check((await page.locator('[data-testid="timeline-bar"] rect.bar-failed').count()) === 1, 'not one failed segment');
  ok(`job ${mixed.job_id}: ${barCount} bars for ${timeline.buckets.length} buckets of ${bucket} s, ✓ 2 ✗ 1 in all`);
  if (shots) await page.screenshot({ path: join(shots, 'job-chart.png'), fullPage: true, animations: 'disabled' });

  // 7. A schedule paused from its page; a kind paused and resumed.
  step('pause a schedule and a kind from their pages');
  const schedule = await api('POST', 'batch/schedules', {
    name: `browser-${Date.now()}`,
    cron: '0 0 1 1 *',
    job: { type: 'batch_validation', items: [{ id: 'a', path: 'a.txt' }], check_command: 'test -s' },
  });
  await page.getByTestId('nav-schedules').click();
  const schedRow = page.locator(`[data-testid="schedule-row"][data-schedule-id="${schedule.id}"]`);
  await schedRow.waitFor();
  await schedRow.getByTestId('schedule-pause').click();
  await page.locator(`[data-testid="schedule-row"][data-schedule-id="${schedule.id}"][data-paused="true"]`).waitFor();
  check((await api('GET', `batch/schedules/${schedule.id}`)).paused === true, 'over REST the schedule is not paused');
  const jobsLink = await schedRow.getByTestId('schedule-jobs').getAttribute('href');
  check(jobsLink.includes(encodeURIComponent(`schedule:${schedule.id}:`)), `the schedule's jobs link is ${jobsLink}`);
  ok(`schedule ${schedule.id}: paused from its page`);
  if (shots) await page.screenshot({ path: join(shots, 'schedules.png'), fullPage: true, animations: 'disabled' });
  await page.getByTestId('nav-kinds').click();
  const kindRow = page.locator('[data-testid="kind-row"][data-kind="batch_tests"]');
  await kindRow.getByTestId('kind-toggle').click();
  await page.locator('[data-testid="kind-row"][data-kind="batch_tests"][data-paused="true"]').waitFor();
  const kinds = await api('GET', 'batch/kinds');
  check(kinds.kinds.find((k) => k.kind === 'batch_tests').paused === true, 'over REST the kind is not paused');
  if (shots) await page.screenshot({ path: join(shots, 'kinds.png'), fullPage: true, animations: 'disabled' });
  await page.locator('[data-testid="kind-row"][data-kind="batch_tests"]').getByTestId('kind-toggle').click();
  await page.locator('[data-testid="kind-row"][data-kind="batch_tests"][data-paused="false"]').waitFor();
  ok('the batch_tests kind was paused and resumed from the kinds page');

  // 8. Bulk cancel of three jobs.
  step('select three jobs and cancel them with one click');
  const three = [];
  for (let i = 0; i < 3; i++) three.push((await api('POST', 'batch/validation', slowBody(1))).job_id);
  await page.getByTestId('nav-jobs').click();
  for (const id of three) {
    const row = page.locator(`[data-testid="job-row"][data-job-id="${id}"]`);
    await row.waitFor();
    await row.getByTestId('job-select').check();
  }
  await page.locator('[data-testid="bulk-count"]', { hasText: '3 selected' }).waitFor();
  if (shots) await page.screenshot({ path: join(shots, 'jobs-bulk.png'), fullPage: true, animations: 'disabled' });
  let bulkRequests = 0;
  page.on('request', (r) => { if (r.url().endsWith('/batch/jobs/bulk')) bulkRequests += 1; });
  await page.getByTestId('bulk-cancel').click();
  await page.getByTestId('toast').filter({ hasText: 'Cancelled 3 of 3 jobs' }).waitFor();
  for (const id of three) {
    await page.locator(`[data-testid="job-row"][data-job-id="${id}"] [data-testid="job-status"]`, { hasText: 'cancelled' }).waitFor();
    check((await api('GET', `batch/jobs/${id}`)).status === 'cancelled', `over REST ${id} is not cancelled`);
  }
  check(bulkRequests === 1, `the bulk cancel sent ${bulkRequests} requests`);
  ok(`jobs ${three.join(', ')}: cancelled with one bulk request`);

  // 9. Search.
  step('search the jobs table');
  await page.getByTestId('job-search').fill(mixed.job_id.slice(-8).toUpperCase());
  await page.waitForFunction((id) => {
    const rows = document.querySelectorAll('[data-testid="job-row"]');
    return rows.length === 1 && rows[0].dataset.jobId === id;
  }, mixed.job_id);
  check(page.url().includes('q='), `the search is not in the URL: ${page.url()}`);
  await page.getByTestId('job-search').fill('');
  await page.locator(`[data-testid="job-row"][data-job-id="${quick.job_id}"]`).waitFor();
  ok('the search box narrows the table to the job searched for');
  const sparks = await page.getByTestId('kind-spark').count();
  check(sparks >= 1, 'no per-kind throughput sparkline');
  if (shots) await page.screenshot({ path: join(shots, 'jobs-final.png'), fullPage: true, animations: 'disabled' });

  check(problems.length === 0, `the page reported problems:\n  ${problems.join('\n  ')}`);
  ok('no page errors, console errors or CSP violations');
} catch (e) {
  failed = true;
  console.error(`FAIL: ${e.stack || e}`);
  if (problems.length) console.error(`the page also reported:\n  ${problems.join('\n  ')}`);
} finally {
  await browser.close();
  clearTimeout(watchdog);
}
console.log(failed ? 'dashboard browser test FAILED' : 'dashboard browser test passed');
process.exit(failed ? 1 : 0);
