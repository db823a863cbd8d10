//! What an evaluation or optimization is asked for: the data settings both share, the
//! evaluation's own (seeds, methods, split), and the methods as an enum.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{BaseRecommender, Protocol};
use crate::agp::rank::RankMode;

/// Largest seed: integers above 2^53 - 1 do not survive every JSON parser.
pub const MAX_SEED: u64 = 9_007_199_254_740_991;

/// Settings shared by evaluations and optimizations (all optional; defaults shown in API.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct DataParams {
    /// Candidate protocol: `llmrank` (target + random items) or `base-topk` (a base recommender's top-n).
    #[arg(long, value_enum, default_value_t = Protocol::Llmrank)]
    pub protocol: Protocol,
    /// Training users (optimization batches come from them).
    #[arg(long, default_value_t = 100)]
    #[schema(maximum = 100000)]
    pub train_users: usize,
    /// Validation users (validation acceptance).
    #[arg(long, default_value_t = 50)]
    #[schema(maximum = 100000)]
    pub validation_users: usize,
    /// Test users (final metrics).
    #[arg(long, default_value_t = 200)]
    #[schema(maximum = 100000)]
    pub test_users: usize,
    /// Seed of the split, candidate lists and shuffles.
    #[arg(long, default_value_t = 7)]
    #[schema(maximum = 9007199254740991_u64)]
    pub seed: u64,
    /// Candidates per list (llmrank: 1 target + n-1 random; base-topk: the base's top-n).
    #[arg(long, default_value_t = 20)]
    #[schema(minimum = 2, maximum = 200)]
    pub candidates: usize,
    /// Recent items a profile is written from (L).
    #[arg(long, default_value_t = 5)]
    #[schema(minimum = 1, maximum = 50)]
    pub history_len: usize,
    /// Summarize items with `p_sum` before writing profiles (false: raw metadata).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub summaries: bool,
    /// Base recommender of the base-topk protocol.
    #[arg(long, value_enum, default_value_t = BaseRecommender::Cooc)]
    pub base: BaseRecommender,
    /// Rankings in shuffled orders summed per list (1 = off).
    #[arg(long, default_value_t = 1)]
    #[schema(minimum = 1, maximum = 10)]
    pub rank_repeats: usize,
    /// How the LLM ranks (`generate`: the whole order as JSON; `logprobs`: one token per
    /// window, ordered by log-probabilities). The `*_logprobs` methods always use `logprobs`.
    #[arg(long, value_enum, default_value_t = RankMode::Generate)]
    pub rank_mode: RankMode,
    /// Feedback kinds that make a logged rerank a case (the `logged` protocol).
    #[arg(long, value_delimiter = ',', default_values_t = default_positive_kinds())]
    #[schema(min_items = 1, max_items = 20)]
    pub positive_kinds: Vec<String>,
}

/// Feedback kinds counted as positive by default.
pub fn default_positive_kinds() -> Vec<String> {
    vec!["click".into(), "purchase".into()]
}

impl Default for DataParams {
    fn default() -> Self {
        DataParams {
            protocol: Protocol::Llmrank,
            train_users: 100,
            validation_users: 50,
            test_users: 200,
            seed: 7,
            candidates: 20,
            history_len: 5,
            summaries: true,
            base: BaseRecommender::Cooc,
            rank_repeats: 1,
            rank_mode: RankMode::Generate,
            positive_kinds: default_positive_kinds(),
        }
    }
}

impl DataParams {
    /// Checks ranges; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        let limits = [
            ("train_users", self.train_users, 0, 100_000),
            ("validation_users", self.validation_users, 0, 100_000),
            ("test_users", self.test_users, 0, 100_000),
            ("candidates", self.candidates, 2, 200),
            ("history_len", self.history_len, 1, 50),
            ("rank_repeats", self.rank_repeats, 1, 10),
        ];
        for (name, v, lo, hi) in limits {
            if v < lo || v > hi {
                return Err(format!("{name} must be between {lo} and {hi}, got {v}"));
            }
        }
        if self.positive_kinds.is_empty() || self.positive_kinds.len() > 20 {
            return Err("positive_kinds must list 1 to 20 feedback kinds".into());
        }
        for k in &self.positive_kinds {
            crate::catalog::check_id("positive_kinds", k, 64).map_err(|e| e.0)?;
        }
        if self.seed > MAX_SEED {
            return Err(format!(
                "seed must be at most {MAX_SEED}, got {}",
                self.seed
            ));
        }
        Ok(())
    }
}

/// Removes from a report's settings (`DataParams` fields, possibly flattened into a larger
/// object) those that do not apply: the base recommender under llmrank, and the profile and
/// ranking settings when no LLM method runs.
pub fn drop_inapplicable(settings: &mut serde_json::Value, data: &DataParams, uses_llm: bool) {
    let Some(map) = settings.as_object_mut() else {
        return;
    };
    if data.protocol != Protocol::BaseTopk {
        map.remove("base");
    }
    if data.protocol != Protocol::Logged {
        map.remove("positive_kinds");
    }
    if !uses_llm {
        for key in ["summaries", "history_len", "rank_repeats", "rank_mode"] {
            map.remove(key);
        }
    }
}

/// A method an evaluation can run on the same candidate lists.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum Method {
    /// The candidate list in its incoming order.
    Base,
    /// A seeded random order.
    Random,
    /// Most-interacted items first.
    Popularity,
    /// Co-occurrence item-kNN from the user's last 5 items (popularity breaks ties).
    ItemKnn,
    /// Co-occurrence item-kNN from the user's whole history (popularity breaks ties).
    ItemKnnAll,
    /// LLM listwise ranking given the raw recent items (no written profile).
    LlmNoProfile,
    /// LLM ranking with a profile from the manual `p_gen` (version 1).
    LlmManual,
    /// `llm_no_profile` in log-probability mode (one output token per window).
    LlmNoProfileLogprobs,
    /// `llm_manual` in log-probability mode (one output token per window).
    LlmManualLogprobs,
    /// The evaluation's last LLM method fused with the incoming order, popularity and
    /// item-kNN, weights tuned on the validation users (stored as a blend version).
    Fused,
}

impl Method {
    /// Every method, in report order.
    pub const ALL: [Method; 10] = [
        Method::Base,
        Method::Random,
        Method::Popularity,
        Method::ItemKnn,
        Method::ItemKnnAll,
        Method::LlmNoProfile,
        Method::LlmManual,
        Method::LlmNoProfileLogprobs,
        Method::LlmManualLogprobs,
        Method::Fused,
    ];

    /// What runs when no methods are named: all but the `*_logprobs` comparisons (set
    /// `rank_mode` to run the LLM methods in log-probability mode instead).
    pub fn defaults() -> Vec<Method> {
        Method::ALL
            .into_iter()
            .filter(|m| !matches!(m, Method::LlmNoProfileLogprobs | Method::LlmManualLogprobs))
            .collect()
    }

    /// The method's name in requests and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Base => "base",
            Method::Random => "random",
            Method::Popularity => "popularity",
            Method::ItemKnn => "item_knn",
            Method::ItemKnnAll => "item_knn_all",
            Method::LlmNoProfile => "llm_no_profile",
            Method::LlmManual => "llm_manual",
            Method::LlmNoProfileLogprobs => "llm_no_profile_logprobs",
            Method::LlmManualLogprobs => "llm_manual_logprobs",
            Method::Fused => "fused",
        }
    }
}

/// What an evaluation scores: a method, or a stored `p_gen` version (`llm_pgen_v<N>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scored {
    Method(Method),
    PGen(i32),
}

impl Scored {
    /// The name in reports and the resumable state.
    pub fn name(self) -> String {
        match self {
            Scored::Method(m) => m.as_str().to_string(),
            Scored::PGen(v) => format!("llm_pgen_v{v}"),
        }
    }

    /// Whether it calls the LLM.
    pub fn uses_llm(self) -> bool {
        matches!(
            self,
            Scored::Method(
                Method::LlmNoProfile
                    | Method::LlmManual
                    | Method::LlmNoProfileLogprobs
                    | Method::LlmManualLogprobs
            ) | Scored::PGen(_)
        )
    }

    /// The `p_gen` version whose profiles it ranks with (none: the raw history, or no LLM).
    pub fn profile_version(self) -> Option<i32> {
        match self {
            Scored::Method(Method::LlmManual | Method::LlmManualLogprobs) => Some(1),
            Scored::PGen(v) => Some(v),
            _ => None,
        }
    }

    /// How its LLM ranks, given the evaluation's `rank_mode`.
    pub fn rank_mode(self, default: RankMode) -> RankMode {
        match self {
            Scored::Method(Method::LlmNoProfileLogprobs | Method::LlmManualLogprobs) => {
                RankMode::Logprobs
            }
            _ => default,
        }
    }

    /// One line saying what it is.
    pub fn describe(self) -> String {
        match self {
            Scored::Method(Method::Base) => "the candidate list in its incoming order".into(),
            Scored::Method(Method::Random) => "a seeded random order".into(),
            Scored::Method(Method::Popularity) => "most-interacted items first".into(),
            Scored::Method(Method::ItemKnn) => format!(
                "co-occurrence item-kNN from the user's last {} items, popularity breaking ties",
                crate::rankers::Cooc::DEFAULT_RECENT
            ),
            Scored::Method(Method::ItemKnnAll) => {
                "co-occurrence item-kNN from the user's whole history, popularity breaking ties".into()
            }
            Scored::Method(Method::LlmNoProfile) => {
                "LLM listwise ranking given the raw recent items (no written profile)".into()
            }
            Scored::Method(Method::LlmManual) => {
                "LLM ranking with a profile from the manual p_gen (version 1)".into()
            }
            Scored::Method(Method::LlmNoProfileLogprobs) => {
                "llm_no_profile ranked from the log-probabilities of one output token per window".into()
            }
            Scored::Method(Method::LlmManualLogprobs) => {
                "llm_manual ranked from the log-probabilities of one output token per window".into()
            }
            Scored::PGen(v) => format!("LLM ranking with a profile from p_gen v{v}"),
            Scored::Method(Method::Fused) => {
                "the last LLM method fused with the incoming order, popularity and item-kNN (weighted Borda), \
                 weights tuned on the validation users"
                    .into()
            }
        }
    }
}

/// Which split's users an evaluation scores.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum EvalSplit {
    #[default]
    Test,
    Validation,
    Train,
}

/// Request of an evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema, clap::Args)]
#[serde(default, deny_unknown_fields)]
pub struct EvalParams {
    #[serde(flatten)]
    #[command(flatten)]
    pub data: DataParams,
    /// Seeds to repeat the whole evaluation with (default: `[seed]`); spread is over seeds.
    #[arg(long, value_delimiter = ',')]
    #[schema(min_items = 1, max_items = 10, value_type = Option<Vec<SeedDoc>>)]
    pub seeds: Option<Vec<u64>>,
    /// Methods to run (default all).
    #[arg(long, value_enum, value_delimiter = ',')]
    #[schema(min_items = 1)]
    pub methods: Option<Vec<Method>>,
    /// Stored `p_gen` versions to evaluate as methods `llm_pgen_v<N>`.
    #[arg(long, value_delimiter = ',')]
    #[schema(max_items = 10, value_type = Vec<VersionDoc>)]
    pub versions: Vec<i32>,
    /// Which split's users to evaluate on.
    #[arg(long, value_enum, default_value_t = EvalSplit::Test)]
    pub split: EvalSplit,
    /// With the `fused` method: point this blend label (e.g. `production`) at the tuned blend.
    #[arg(long)]
    #[schema(pattern = "LABEL")]
    pub promote_blend: Option<String>,
}

impl Default for EvalParams {
    fn default() -> Self {
        EvalParams {
            data: DataParams::default(),
            seeds: None,
            methods: None,
            versions: Vec::new(),
            split: EvalSplit::Test,
            promote_blend: None,
        }
    }
}

impl EvalParams {
    /// Checks the request; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        self.data.validate()?;
        if self.methods.as_ref().is_some_and(|m| m.is_empty()) {
            return Err("methods must not be empty (leave it out for all)".into());
        }
        if let Some(s) = &self.seeds
            && (s.is_empty() || s.len() > 10 || s.iter().any(|x| *x > MAX_SEED))
        {
            return Err(format!(
                "seeds must list 1 to 10 seeds of at most {MAX_SEED}"
            ));
        }
        if self.versions.len() > 10 || self.versions.iter().any(|v| *v < 1) {
            return Err("versions must list up to 10 p_gen versions (numbers from 1)".into());
        }
        if self.scored().contains(&Scored::Method(Method::Fused)) && self.data.validation_users == 0
        {
            return Err(
                "the fused method tunes its weights on validation users: ask for validation_users > 0 \
                 (or leave fused out of methods)"
                    .into(),
            );
        }
        if let Some(label) = &self.promote_blend {
            crate::agp::prompt::check_label("promote_blend", label)?;
            if !self.scored().contains(&Scored::Method(Method::Fused)) {
                return Err("promote_blend needs the fused method".into());
            }
        }
        Ok(())
    }

    /// The seeds to run.
    pub fn seeds(&self) -> Vec<u64> {
        self.seeds.clone().unwrap_or_else(|| vec![self.data.seed])
    }

    /// What to score, in report order.
    pub fn scored(&self) -> Vec<Scored> {
        let methods = self.methods.clone().unwrap_or_else(Method::defaults);
        let mut m: Vec<Scored> = methods.into_iter().map(Scored::Method).collect();
        m.extend(self.versions.iter().map(|&v| Scored::PGen(v)));
        m
    }
}

/// How a seed is documented: an integer JSON can carry exactly.
struct SeedDoc;

impl utoipa::PartialSchema for SeedDoc {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        int_schema(0, MAX_SEED as i64)
    }
}
impl ToSchema for SeedDoc {}

/// How a `p_gen` version number is documented.
struct VersionDoc;

impl utoipa::PartialSchema for VersionDoc {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        int_schema(1, i32::MAX as i64)
    }
}
impl ToSchema for VersionDoc {}

fn int_schema(min: i64, max: i64) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Integer)
        .minimum(Some(min as f64))
        .maximum(Some(max as f64))
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_do_not_apply_are_left_out() {
        let data = DataParams::default();
        let mut v = serde_json::to_value(&data).unwrap();
        drop_inapplicable(&mut v, &data, true);
        assert!(v.get("base").is_none() && v.get("summaries").is_some());
        let topk = DataParams {
            protocol: Protocol::BaseTopk,
            ..DataParams::default()
        };
        let mut v = serde_json::to_value(&topk).unwrap();
        drop_inapplicable(&mut v, &topk, false);
        assert!(v.get("base").is_some());
        assert!(v.get("summaries").is_none() && v.get("history_len").is_none());
    }

    #[test]
    fn an_unknown_method_is_refused_naming_the_valid_ones() {
        let err = serde_json::from_value::<EvalParams>(serde_json::json!({"methods": ["bogus"]}))
            .unwrap_err()
            .to_string();
        for m in Method::ALL {
            assert!(err.contains(m.as_str()), "{err}");
        }
        let p: EvalParams =
            serde_json::from_value(serde_json::json!({"methods": ["popularity"], "versions": [3]}))
                .unwrap();
        assert_eq!(
            p.scored(),
            vec![Scored::Method(Method::Popularity), Scored::PGen(3)]
        );
        assert_eq!(Scored::PGen(3).name(), "llm_pgen_v3");
    }
}
