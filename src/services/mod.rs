//! The engine's background services, each a task beside the queue: cron schedules
//! ([`cron`]), several nodes sharing one PostgreSQL queue ([`cluster`]), `callback_url`
//! deliveries from the durable outbox ([`webhooks`]) and pruning finished jobs
//! ([`retention`]).

pub mod cluster;
pub mod cron;
pub mod retention;
pub mod webhooks;
