//! The engine's schedule methods: creating, listing, pausing and deleting cron schedules
//! (the ticker that fires them is [`crate::services::cron`]).

use super::Engine;
use crate::model::{now, NewJob};
use crate::queue::messages::{EngineError, ValidateJob};
use crate::services::cron::{
    invalid, job_from_template, new_schedule_id, CronSchedule, NewSchedule, DEFAULT_TIMEZONE,
    MAX_NAME_LEN,
};
use crate::store::{self, schedules::ScheduleRecord};
use serde_json::Value;

impl Engine {
    /// Checks a job as a submission would (every admission check:
    /// [`crate::submission::check_job`]) without storing it.
    pub async fn validate_job(&self, job: &NewJob) -> Result<(), EngineError> {
        self.supervisor().send(ValidateJob(job.clone())).await?
    }

    /// Creates a schedule after checking its expression, time zone and job; answers it
    /// with `true` when it was created, `false` when a schedule of the same name and
    /// definition already existed.
    pub async fn create_schedule(
        &self,
        new: NewSchedule,
    ) -> Result<(ScheduleRecord, bool), EngineError> {
        let name = match new.name {
            None => None,
            Some(n) if n.trim().is_empty() => {
                return Err(invalid("name", "must not be empty when given"))
            }
            Some(n) if n.len() > MAX_NAME_LEN => {
                return Err(invalid(
                    "name",
                    format!("must be at most {MAX_NAME_LEN} bytes"),
                ))
            }
            Some(n) => Some(n),
        };
        let timezone = new
            .timezone
            .map(|t| t.trim().to_string())
            .unwrap_or_else(|| DEFAULT_TIMEZONE.to_string());
        let cron = new.cron.trim().to_string();
        let schedule = CronSchedule::parse(&cron, &timezone)?;
        let job = job_from_template(&new.job, "", None)?;
        match self.validate_job(&job).await {
            Err(EngineError::NoProcessor(kind)) => {
                return Err(invalid(
                    "job.type",
                    format!("no processor of kind '{kind}' is registered in this engine"),
                ))
            }
            Err(EngineError::Invalid { field, message }) => {
                return Err(invalid(format!("job.{field}"), message))
            }
            other => other?,
        }
        let created_at = now();
        let Some(next) = schedule
            .next_after_blocking(created_at.floor() as i64)
            .await?
        else {
            return Err(invalid(
                "cron",
                format!("'{cron}' matches no time from now on"),
            ));
        };
        let record = ScheduleRecord {
            id: new_schedule_id(),
            name,
            cron,
            timezone,
            job: new.job.to_string(),
            paused_at: None,
            next_run_at: next as f64,
            last_run_at: None,
            last_job_id: None,
            last_error: None,
            created_at,
        };
        let template = new.job;
        let answer = self
            .schedules
            .store()
            .write(move |conn| {
                if let Some(name) = &record.name {
                    if let Some(existing) = store::schedules::schedule_by_name(conn, name)? {
                        let same = existing.cron == record.cron
                            && existing.timezone == record.timezone
                            && serde_json::from_str::<Value>(&existing.job).ok() == Some(template);
                        return Ok(if same {
                            Ok((existing, false))
                        } else {
                            Err(existing)
                        });
                    }
                }
                store::schedules::insert_schedule(conn, &record)?;
                Ok(Ok((record, true)))
            })
            .await?;
        match answer {
            Ok(answer) => {
                self.schedules.wake();
                Ok(answer)
            }
            Err(existing) => Err(EngineError::Conflict(format!(
                "a schedule named '{}' already exists ({}) with another definition; delete it \
                 or choose another name",
                existing.name.unwrap_or_default(),
                existing.id
            ))),
        }
    }

    /// Every schedule, oldest first.
    pub async fn schedules(&self) -> Result<Vec<ScheduleRecord>, EngineError> {
        Ok(self
            .schedules
            .store()
            .read(store::schedules::list_schedules)
            .await?)
    }

    /// One schedule; `None` when unknown.
    pub async fn schedule(&self, id: &str) -> Result<Option<ScheduleRecord>, EngineError> {
        let id = id.to_string();
        Ok(self
            .schedules
            .store()
            .read(move |conn| store::schedules::get_schedule(conn, &id))
            .await?)
    }

    /// Pauses a schedule (no tick fires while paused) or resumes it: its next tick is then
    /// the first one after now, the ticks it missed while paused are not run. `None` when
    /// unknown.
    pub async fn set_schedule_paused(
        &self,
        id: &str,
        paused: bool,
    ) -> Result<Option<ScheduleRecord>, EngineError> {
        let store = self.schedules.store();
        let id = id.to_string();
        if paused {
            return Ok(store
                .write(move |conn| store::schedules::pause_schedule(conn, &id, now()))
                .await?);
        }
        let for_read = id.clone();
        let Some(current) = store
            .read(move |conn| store::schedules::get_schedule(conn, &for_read))
            .await?
        else {
            return Ok(None);
        };
        if current.paused_at.is_none() {
            return Ok(Some(current));
        }
        let schedule = CronSchedule::parse(&current.cron, &current.timezone)?;
        let Some(next) = schedule.next_after_blocking(now().floor() as i64).await? else {
            return Err(EngineError::Conflict(format!(
                "schedule '{id}' cannot resume: '{}' matches no time from now on",
                current.cron
            )));
        };
        let resumed = store
            .write(move |conn| store::schedules::resume_schedule(conn, &id, next as f64))
            .await?;
        self.schedules.wake();
        Ok(resumed)
    }

    /// Deletes a schedule (the jobs it created stay). Returns whether it existed.
    pub async fn delete_schedule(&self, id: &str) -> Result<bool, EngineError> {
        let id = id.to_string();
        Ok(self
            .schedules
            .store()
            .write(move |conn| store::schedules::delete_schedule(conn, &id))
            .await?)
    }
}
