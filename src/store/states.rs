//! The states and kinds the rows carry, each a closed set stored as `text` (the migrations'
//! CHECK constraints list the same names). Nothing outside this file spells one of these names:
//! code matches on the variants and SQL binds them (`tests in this file` check the sources).

use crate::text_enum::text_enum;

text_enum! {
    /// What a job does.
    #[derive(Default)]
    pub enum JobKind {
        Optimization = "optimization",
        #[default]
        Evaluation = "evaluation",
        SummarizeCatalog = "summarize_catalog",
    }
}

text_enum! {
    /// Where a job is.
    #[derive(Default)]
    pub enum JobStatus {
        #[default]
        Queued = "queued",
        Running = "running",
        Succeeded = "succeeded",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

impl JobStatus {
    /// Queued or running: the job still has work to do.
    pub const LIVE: [JobStatus; 2] = [JobStatus::Queued, JobStatus::Running];

    /// True once the job will not change any more.
    pub fn is_final(self) -> bool {
        !Self::LIVE.contains(&self)
    }
}

text_enum! {
    /// Where an experiment is: running, or how it ended.
    pub enum ExperimentStatus {
        Running = "running",
        /// The treatment won: the label moved to it.
        Promoted = "promoted",
        /// The treatment lost: the control stays.
        KeptControl = "kept_control",
        /// A guardrail broke: back to the control at once.
        RolledBack = "rolled_back",
        /// The most users allowed came without a decision.
        Inconclusive = "inconclusive",
        /// The users per arm did not match the split.
        Void = "void",
        /// Ended by hand.
        Stopped = "stopped",
    }
}

text_enum! {
    /// Who started an experiment.
    pub enum ExperimentSource {
        Api = "api",
        Autopilot = "autopilot",
    }
}

text_enum! {
    /// Where a prompt version came from.
    #[derive(Default)]
    pub enum VersionSource {
        /// The built-in version 1.
        Seed = "seed",
        #[default]
        Api = "api",
        Optimization = "optimization",
        /// Blend weights tuned by an evaluation.
        Evaluation = "evaluation",
    }
}

text_enum! {
    /// Where an autopilot run is.
    pub enum AutopilotStatus {
        Optimizing = "optimizing",
        Experimenting = "experimenting",
        Done = "done",
        Skipped = "skipped",
        Failed = "failed",
    }
}

impl AutopilotStatus {
    /// A run in one of these is in progress (a project has at most one).
    pub const ACTIVE: [AutopilotStatus; 2] =
        [AutopilotStatus::Optimizing, AutopilotStatus::Experimenting];
}

text_enum! {
    /// Whether a project's interaction order is chronological, or carries no time (evaluation
    /// then holds out a random interaction per user instead of the last).
    #[derive(Default)]
    pub enum HistoryOrder {
        #[default]
        Chronological = "chronological",
        Unordered = "unordered",
    }
}

text_enum! {
    /// Who wrote a stored profile: a request that needed it (a rerank, an evaluation), or
    /// a refresh ahead of time (new interactions arrived for the user).
    pub enum ProfileWriter {
        Inline = "inline",
        Ahead = "ahead",
    }
}

text_enum! {
    /// Which budget an LLM call is charged to: reranks, or jobs and refreshes.
    pub enum BudgetClass {
        Interactive = "interactive",
        Background = "background",
    }
}

text_enum! {
    /// How an LLM call ended (a usage row's `outcome`; also the metrics label).
    pub enum UsageOutcome {
        Ok = "ok",
        NotConfigured = "not_configured",
        Timeout = "timeout",
        CircuitOpen = "circuit_open",
        ConnectError = "connect_error",
        RateLimited = "rate_limited",
        ServerError = "server_error",
        Refused = "refused",
        Garbage = "garbage",
        /// Not made: the project's budget for this kind of work is spent.
        OverBudget = "over_budget",
        Exhausted = "exhausted",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every stored name, with the set it belongs to.
    fn names() -> Vec<(&'static str, &'static str)> {
        fn of<T: Copy>(
            set: &'static str,
            all: &[T],
            f: fn(T) -> &'static str,
        ) -> Vec<(&'static str, &'static str)> {
            all.iter().map(|v| (set, f(*v))).collect()
        }
        [
            of("JobKind", JobKind::ALL, JobKind::as_str),
            of("JobStatus", JobStatus::ALL, JobStatus::as_str),
            of(
                "ExperimentStatus",
                ExperimentStatus::ALL,
                ExperimentStatus::as_str,
            ),
            of(
                "ExperimentSource",
                ExperimentSource::ALL,
                ExperimentSource::as_str,
            ),
            of("VersionSource", VersionSource::ALL, VersionSource::as_str),
            of(
                "AutopilotStatus",
                AutopilotStatus::ALL,
                AutopilotStatus::as_str,
            ),
            of("HistoryOrder", HistoryOrder::ALL, HistoryOrder::as_str),
            of("UsageOutcome", UsageOutcome::ALL, UsageOutcome::as_str),
            of("BudgetClass", BudgetClass::ALL, BudgetClass::as_str),
            of("ProfileWriter", ProfileWriter::ALL, ProfileWriter::as_str),
        ]
        .concat()
    }

    fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let p = entry.path();
            if p.is_dir() {
                rust_files(&p, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }

    /// Where `quoted` (a name in quotes) stands in `line` as a value: not as a JSON key
    /// (`"seed": x`, `v["seed"]`).
    fn spelled_as_value(line: &str, quoted: &str) -> bool {
        line.match_indices(quoted).any(|(at, _)| {
            let before = line[..at].chars().next_back();
            let after = line[at + quoted.len()..].chars().next();
            before != Some('[') && after != Some(':')
        })
    }

    /// No state name is spelled outside this file: not as a Rust string (`"running"`), not in
    /// SQL (`'running'`). A line that uses the same word for something else says so with
    /// `// not a state`. `ok` (a usage outcome) is left out: health checks say it too.
    #[test]
    fn no_state_name_is_spelled_outside_its_enum() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let mut found = Vec::new();
        for file in files {
            if file.ends_with("store/states.rs") || file.ends_with("text_enum.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                if line.contains("// not a state") {
                    continue;
                }
                for (set, name) in names() {
                    if name == UsageOutcome::Ok.as_str() {
                        continue;
                    }
                    if spelled_as_value(line, &format!("\"{name}\""))
                        || spelled_as_value(line, &format!("'{name}'"))
                    {
                        let at = file.strip_prefix(&src).unwrap_or(&file).display();
                        found.push(format!(
                            "src/{at}:{}: {set} {name:?}: {}",
                            n + 1,
                            line.trim()
                        ));
                    }
                }
            }
        }
        assert!(
            found.is_empty(),
            "state names spelled outside store/states.rs:\n{}",
            found.join("\n")
        );
    }

    #[test]
    fn the_check_sees_values_not_keys() {
        assert!(spelled_as_value(r#"if s == "running" {"#, "\"running\""));
        assert!(spelled_as_value("WHERE status = 'running'", "'running'"));
        assert!(!spelled_as_value(r#"json!({"seed": 1})"#, "\"seed\""));
        assert!(!spelled_as_value(r#"v["seed"]"#, "\"seed\""));
    }

    /// The JSON (and OpenAPI) name of every value is its stored name.
    #[test]
    fn serialized_names_are_the_stored_names() {
        fn check<T: serde::Serialize>(all: &[T], name: fn(&T) -> &'static str) {
            for v in all {
                assert_eq!(serde_json::to_value(v).unwrap(), name(v));
            }
        }
        check(JobKind::ALL, |v| v.as_str());
        check(JobStatus::ALL, |v| v.as_str());
        check(ExperimentStatus::ALL, |v| v.as_str());
        check(ExperimentSource::ALL, |v| v.as_str());
        check(VersionSource::ALL, |v| v.as_str());
        check(AutopilotStatus::ALL, |v| v.as_str());
        check(HistoryOrder::ALL, |v| v.as_str());
        check(UsageOutcome::ALL, |v| v.as_str());
        check(BudgetClass::ALL, |v| v.as_str());
        check(ProfileWriter::ALL, |v| v.as_str());
        check(crate::experiment::Design::ALL, |v| v.as_str());
    }

    #[test]
    fn stored_names_are_the_check_constraints() {
        let migrations = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        let mut sql = String::new();
        for e in std::fs::read_dir(migrations).unwrap().flatten() {
            sql.push_str(&std::fs::read_to_string(e.path()).unwrap());
        }
        let listed = |all: &[&str]| {
            let list = all
                .iter()
                .map(|n| format!("'{n}'"))
                .collect::<Vec<_>>()
                .join(", ");
            assert!(
                sql.contains(&format!("IN ({list})")),
                "no CHECK lists ({list})"
            );
        };
        fn names<T: Copy>(all: &[T], f: fn(T) -> &'static str) -> Vec<&'static str> {
            all.iter().map(|v| f(*v)).collect()
        }
        listed(&names(JobKind::ALL, JobKind::as_str));
        listed(&names(JobStatus::ALL, JobStatus::as_str));
        listed(&names(ExperimentStatus::ALL, ExperimentStatus::as_str));
        listed(&names(AutopilotStatus::ALL, AutopilotStatus::as_str));
        listed(&names(HistoryOrder::ALL, HistoryOrder::as_str));
        listed(&names(BudgetClass::ALL, BudgetClass::as_str));
        listed(&names(ProfileWriter::ALL, ProfileWriter::as_str));
    }
}
