//! The client's `schedules` and `schedule …` commands, apart from the job commands.

use super::{print_json, Client, Failure, Outcome};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;

/// `batchforge schedule …`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ScheduleCommand {
    /// Create a schedule that submits the job in --file at every tick of --cron.
    Add {
        /// 5 fields (`minute hour day-of-month month day-of-week`) or 6 with seconds first.
        #[arg(long)]
        cron: String,
        /// IANA time zone the expression is read in (default UTC).
        #[arg(long)]
        timezone: Option<String>,
        /// A unique name; adding the same name and definition again changes nothing.
        #[arg(long)]
        name: Option<String>,
        /// The job: a `POST /batch/jobs` body (`{"type", "items", …options}`) as JSON;
        /// `-` reads standard input.
        #[arg(long)]
        file: PathBuf,
    },
    /// Show one schedule.
    Show {
        /// The schedule id.
        id: String,
    },
    /// Pause a schedule: no tick fires until it is resumed.
    Pause {
        /// The schedule id.
        id: String,
    },
    /// Resume a schedule from its next tick after now.
    Resume {
        /// The schedule id.
        id: String,
    },
    /// Delete a schedule (its jobs stay).
    Delete {
        /// The schedule id.
        id: String,
    },
}

impl Client {
    pub(super) async fn list_schedules(&self) -> Outcome {
        let list = self.call("GET", "/batch/schedules", None).await?;
        if self.json {
            print_json(&list);
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "{:<18} {:<16} {:<16} {:<16} {:<8} {:<24} LAST JOB",
            "SCHEDULE", "NAME", "CRON", "TIMEZONE", "STATE", "NEXT RUN (UTC)"
        );
        for s in list["schedules"].as_array().into_iter().flatten() {
            println!(
                "{:<18} {:<16} {:<16} {:<16} {:<8} {:<24} {}",
                s["id"].as_str().unwrap_or(""),
                s["name"].as_str().unwrap_or("-"),
                s["cron"].as_str().unwrap_or(""),
                s["timezone"].as_str().unwrap_or(""),
                if s["paused"] == true {
                    "paused"
                } else {
                    "active"
                },
                utc_time(&s["next_run_at"]),
                s["last_job_id"].as_str().unwrap_or("-")
            );
        }
        println!("{} schedules", list["total"]);
        Ok(ExitCode::SUCCESS)
    }

    pub(super) async fn schedule(&self, command: ScheduleCommand) -> Outcome {
        let (method, path, body) = match command {
            ScheduleCommand::Add {
                cron,
                timezone,
                name,
                file,
            } => {
                let text = if file.as_os_str() == "-" {
                    std::io::read_to_string(std::io::stdin())
                } else {
                    std::fs::read_to_string(&file)
                }
                .map_err(|e| Failure(format!("cannot read {}: {e}", file.display())))?;
                let job: Value = serde_json::from_str(text.trim_start_matches('\u{feff}'))
                    .map_err(|e| Failure(format!("{}: not valid JSON: {e}", file.display())))?;
                let mut body = json!({"cron": cron, "job": job});
                if let Some(tz) = timezone {
                    body["timezone"] = tz.into();
                }
                if let Some(name) = name {
                    body["name"] = name.into();
                }
                ("POST", "/batch/schedules".to_string(), Some(body))
            }
            ScheduleCommand::Show { id } => ("GET", format!("/batch/schedules/{id}"), None),
            ScheduleCommand::Pause { id } => ("POST", format!("/batch/schedules/{id}/pause"), None),
            ScheduleCommand::Resume { id } => {
                ("POST", format!("/batch/schedules/{id}/resume"), None)
            }
            ScheduleCommand::Delete { id } => ("DELETE", format!("/batch/schedules/{id}"), None),
        };
        let body = body.map(|b| ("application/json", b.to_string().into_bytes()));
        let answer = self.call(method, &path, body).await?;
        if self.json {
            print_json(&answer);
        } else if answer["deleted"] == true {
            println!("deleted {}", answer["id"].as_str().unwrap_or(""));
        } else {
            println!(
                "{} {} {:?} in {}: next run {} UTC{}",
                answer["id"].as_str().unwrap_or(""),
                if answer["paused"] == true {
                    "paused"
                } else {
                    "active"
                },
                answer["cron"].as_str().unwrap_or(""),
                answer["timezone"].as_str().unwrap_or(""),
                utc_time(&answer["next_run_at"]),
                match answer["last_job_id"].as_str() {
                    Some(job) => format!(", last job {job}"),
                    None => String::new(),
                }
            );
            if let Some(e) = answer["last_error"].as_str() {
                println!("last tick skipped: {e}");
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS` (UTC).
fn utc_time(t: &Value) -> String {
    t.as_f64()
        .and_then(|t| chrono::DateTime::from_timestamp(t.floor() as i64, 0))
        .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "-".into())
}
