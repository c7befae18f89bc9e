//! Job and item statuses: the only representation of state inside the core; their
//! string forms exist for the database and the wire.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A string that names a state but is not one of the allowed values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} '{value}' (expected one of {})", .expected.trim_end_matches(", "))]
pub struct UnknownStatus {
    /// Which kind of status was being parsed.
    pub what: &'static str,
    /// The rejected value.
    pub value: String,
    /// The allowed values, comma separated.
    pub expected: &'static str,
}

macro_rules! status_enum {
    ($(#[$meta:meta])* $name:ident, $what:literal, { $($(#[$vmeta:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every variant, in lifecycle order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored and wire form.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownStatus;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownStatus {
                        what: $what,
                        value: s.to_string(),
                        expected: concat!($($text, ", "),+),
                    }),
                }
            }
        }
    };
}

status_enum!(
    /// Lifecycle of a job: `queued → running → completed | failed | cancelled`.
    JobStatus, "job status", {
        /// Submitted, no item claimed yet.
        Queued => "queued",
        /// At least one item has been claimed.
        Running => "running",
        /// Every item reached a final state (some may have failed).
        Completed => "completed",
        /// The job could not run at all (no processor, invalid at run time).
        Failed => "failed",
        /// Cancelled by a user; terminal, never overwritten.
        Cancelled => "cancelled",
        /// Its `deadline` passed first: the finished results are kept, the rest of its
        /// items are cancelled; terminal.
        Expired => "expired",
    }
);

impl JobStatus {
    /// Whether no further transition is possible.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled | JobStatus::Expired
        )
    }
}

status_enum!(
    /// Lifecycle of an item: `queued → running → succeeded | failed | skipped | cancelled`.
    ItemStatus, "item status", {
        /// Waiting to be claimed.
        Queued => "queued",
        /// Claimed by a worker.
        Running => "running",
        /// Processed successfully.
        Succeeded => "succeeded",
        /// Processed, with a failing outcome or an error.
        Failed => "failed",
        /// Deliberately not processed.
        Skipped => "skipped",
        /// Stopped or never started because its job was cancelled.
        Cancelled => "cancelled",
    }
);

impl ItemStatus {
    /// Whether the item holds its final result.
    pub fn is_terminal(self) -> bool {
        !matches!(self, ItemStatus::Queued | ItemStatus::Running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_reject_unknown_values() {
        for s in JobStatus::ALL {
            assert_eq!(s.as_str().parse::<JobStatus>().unwrap(), *s);
        }
        for s in ItemStatus::ALL {
            assert_eq!(s.as_str().parse::<ItemStatus>().unwrap(), *s);
        }
        let err = "bogus".parse::<JobStatus>().unwrap_err();
        assert!(err.to_string().contains("'bogus'"));
        assert!(err.to_string().contains("cancelled"));
    }
}
