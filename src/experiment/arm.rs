//! The two arms of an experiment, which both the sums of a look (`fold.rs`) and interleaving
//! (`interleave.rs`: a team's click credits an arm) speak of.

use serde::{Deserialize, Serialize};

/// The two arms of an experiment (as stored: `control`, `treatment`); in an interleaved
/// list, the teams.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Arm {
    Control,
    Treatment,
}

impl Arm {
    /// Both arms, control first.
    pub const BOTH: [Arm; 2] = [Arm::Control, Arm::Treatment];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Arm::Control => "control",
            Arm::Treatment => "treatment",
        }
    }

    /// Reads a stored name.
    pub fn parse(s: &str) -> Option<Arm> {
        match s {
            "control" => Some(Arm::Control),
            "treatment" => Some(Arm::Treatment),
            _ => None,
        }
    }

    /// The arm's place in per-arm arrays (control 0, treatment 1).
    pub(super) fn index(self) -> usize {
        match self {
            Arm::Control => 0,
            Arm::Treatment => 1,
        }
    }
}
