//! The cases of one seed: split the users, hold out every user's item (leave-one-out), fit
//! the base recommenders and the negative pool on what is left, and build the evaluated
//! users' candidate lists.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use super::params::{DataParams, EvalSplit};
use super::{BaseRecommender, Holdout, Protocol, UserSeq, protocol, split};
use crate::agp::case::Case;
use crate::rankers::{Cooc, Popularity, Recommend};

/// Users, splits and candidate lists of one seed.
pub struct Prepared {
    pub train: Vec<Case>,
    pub validation: Vec<Case>,
    pub test: Vec<Case>,
    pub popularity: Popularity,
    /// Per split (train, validation, test): users whose held-out item fell outside the
    /// base-topk list and who therefore have no case (always 0 under llmrank).
    pub outside: [usize; 3],
    pub notes: Vec<String>,
    /// Every user's sequence without its held-out item: what the models are fit on.
    training: Vec<Vec<String>>,
    knn: OnceLock<Arc<Cooc>>,
}

impl Prepared {
    /// The cases of a split.
    pub fn cases(&self, split: EvalSplit) -> &[Case] {
        match split {
            EvalSplit::Train => &self.train,
            EvalSplit::Validation => &self.validation,
            EvalSplit::Test => &self.test,
        }
    }

    /// Users of the split left without a case (target outside the base-topk list).
    pub fn outside(&self, split: EvalSplit) -> usize {
        self.outside[match split {
            EvalSplit::Train => 0,
            EvalSplit::Validation => 1,
            EvalSplit::Test => 2,
        }]
    }

    /// The co-occurrence model (window and recent items at their defaults), fit on first use
    /// on the same leave-one-out sequences as the popularity counts.
    pub fn knn(&self) -> Arc<Cooc> {
        self.knn
            .get_or_init(|| {
                Arc::new(Cooc::fit(
                    &self.training,
                    Cooc::DEFAULT_WINDOW,
                    Cooc::DEFAULT_RECENT,
                ))
            })
            .clone()
    }
}

/// `prepare` over given sequences (pure).
///
/// Leave-one-out: every user with at least 2 items has an item held out (the same rule as for
/// evaluated users), and popularity, the co-occurrence model and the pool of llmrank
/// negatives are fit on the sequences without it, so no user's held-out item ever counts,
/// whichever users are evaluated and however many.
pub fn prepare_from(seqs: &[UserSeq], holdout: Holdout, p: &DataParams, seed: u64) -> Prepared {
    let s = split::split_users(
        seqs,
        p.train_users,
        p.validation_users,
        p.test_users,
        seed,
        2,
    );
    let mut notes = holdout_notes(holdout);
    let eligible = seqs.iter().filter(|u| u.items.len() >= 2).count();
    notes.push(format!(
        "{} users, {} with at least 2 items; split with seed {seed}: {} train, {} validation, {} test",
        seqs.len(),
        eligible,
        s.train.len(),
        s.validation.len(),
        s.test.len()
    ));
    if s.train.len() < p.train_users
        || s.validation.len() < p.validation_users
        || s.test.len() < p.test_users
    {
        notes.push("fewer users than asked for: the splits hold what there is".into());
    }
    let held = hold_out_everyone(seqs, holdout, seed);
    let training: Vec<Vec<String>> = seqs
        .iter()
        .map(|u| {
            held.get(u.user_id.as_str())
                .map(|(h, _)| h.clone())
                .unwrap_or_else(|| u.items.clone())
        })
        .collect();
    let pool = negative_pool(&training);
    let mut prep = Prepared {
        train: Vec::new(),
        validation: Vec::new(),
        test: Vec::new(),
        popularity: Popularity::fit(&training),
        outside: [0; 3],
        notes,
        training,
        knn: OnceLock::new(),
    };
    let base: Option<Arc<Cooc>> =
        (p.protocol == Protocol::BaseTopk && p.base == BaseRecommender::Cooc).then(|| prep.knn());
    let rec: &dyn Recommend = match &base {
        Some(c) => c.as_ref(),
        None => &prep.popularity,
    };
    let lists = Lists {
        held: &held,
        pool: &pool,
        base: rec,
        p,
        seed,
    };
    let (train, m0) = lists.build(&s.train);
    let (validation, m1) = lists.build(&s.validation);
    let (test, m2) = lists.build(&s.test);
    prep.notes.push(candidates_note(p, seed));
    (prep.train, prep.validation, prep.test, prep.outside) =
        (train, validation, test, [m0, m1, m2]);
    prep
}

pub use crate::store::rerank::LoggedCase;

/// How many logged cases the splits need.
pub fn logged_needed(p: &DataParams) -> usize {
    p.train_users + p.validation_users + p.test_users
}

/// The message when there are too few logged cases.
pub fn too_few_logged(p: &DataParams, have: usize) -> String {
    format!(
        "the logged protocol needs {} logged reranks with a positive outcome ({}) for train_users + \
         validation_users + test_users ({} + {} + {}), and there are {have}",
        logged_needed(p),
        p.positive_kinds.join(", "),
        p.train_users,
        p.validation_users,
        p.test_users
    )
}

/// `prepare` for the `logged` protocol (pure): the cases sorted by time, the newest
/// `test_users` for test, the `validation_users` before them for validation, the
/// `train_users` before those for training (older ones are left out). A case whose target is
/// not among its candidates is dropped. Popularity and the co-occurrence model are fit on the
/// stored interactions (`seqs`).
pub fn prepare_logged(
    mut logged: Vec<LoggedCase>,
    seqs: &[UserSeq],
    p: &DataParams,
) -> Result<Prepared, String> {
    logged.retain(|c| c.candidates.contains(&c.target) && !c.history.is_empty());
    logged.sort_by(|a, b| a.at.cmp(&b.at).then(a.request_id.cmp(&b.request_id)));
    let need = logged_needed(p);
    if logged.len() < need {
        return Err(too_few_logged(p, logged.len()));
    }
    let to_case = |c: &LoggedCase| Case {
        user_id: c.user_id.clone(),
        history: c.history.clone(),
        target: c.target.clone(),
        candidates: c.candidates.clone(),
    };
    let n = logged.len();
    let test_from = n - p.test_users;
    let val_from = test_from - p.validation_users;
    let train_from = val_from - p.train_users;
    let cases = |r: std::ops::Range<usize>| logged[r].iter().map(to_case).collect::<Vec<_>>();
    let span = |r: std::ops::Range<usize>| match (logged[r.clone()].first(), logged[r].last()) {
        (Some(a), Some(b)) => format!(
            "{} to {}",
            a.at.format("%Y-%m-%d %H:%M:%S"),
            b.at.format("%Y-%m-%d %H:%M:%S")
        ),
        _ => "none".into(),
    };
    let training: Vec<Vec<String>> = seqs.iter().map(|u| u.items.clone()).collect();
    let notes = vec![
        format!(
            "logged protocol: {n} logged reranks with a positive outcome ({}); the target is the item of the \
             earliest positive event, the candidates the list as the caller sent it, the history what the \
             service used for that request",
            p.positive_kinds.join(", ")
        ),
        format!(
            "split by time: train {} ({}), validation {} ({}), test {} ({}); {} older cases left out",
            p.train_users,
            span(train_from..val_from),
            p.validation_users,
            span(val_from..test_from),
            p.test_users,
            span(test_from..n),
            train_from
        ),
        "popularity and item-kNN are fit on the interactions stored now".into(),
    ];
    Ok(Prepared {
        train: cases(train_from..val_from),
        validation: cases(val_from..test_from),
        test: cases(test_from..n),
        popularity: Popularity::fit(&training),
        outside: [0; 3],
        notes,
        training,
        knn: OnceLock::new(),
    })
}

fn holdout_notes(holdout: Holdout) -> Vec<String> {
    vec![
        match holdout {
            Holdout::Last => "held-out item: each user's last item; history: the items before it".into(),
            Holdout::Random => "this data has no timestamps: a seeded random item of each user was held out, and \
                                the history is the user's other items in file order"
                .into(),
        },
        "leave-one-out: every user's held-out item is removed before popularity, the co-occurrence model and \
         the negative pool are fit"
            .into(),
    ]
}

/// Every user's `(history, held-out item)` (users with at least 2 items).
fn hold_out_everyone(
    seqs: &[UserSeq],
    holdout: Holdout,
    seed: u64,
) -> HashMap<&str, (Vec<String>, String)> {
    seqs.iter()
        .filter_map(|u| Some((u.user_id.as_str(), protocol::hold_out(u, holdout, seed)?)))
        .collect()
}

/// The items llmrank draws negatives from: every item of the training sequences, sorted.
fn negative_pool(training: &[Vec<String>]) -> Vec<String> {
    let mut pool: Vec<String> = training
        .iter()
        .flatten()
        .cloned()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    pool.sort();
    pool
}

fn candidates_note(p: &DataParams, seed: u64) -> String {
    match p.protocol {
        Protocol::Llmrank => format!(
            "candidates (llmrank): the held-out item + {} random items the user never interacted with, shuffled (seed {seed})",
            p.candidates.saturating_sub(1)
        ),
        Protocol::BaseTopk => format!(
            "candidates (base-topk): the top {} of the {:?} base recommender; users whose held-out item is outside \
             the list have no case: the in-list figures leave them out, the all-users figures count them as misses",
            p.candidates, p.base
        ),
        Protocol::Logged => "candidates (logged): the list as the caller sent it".into(),
    }
}

/// What building one split's candidate lists needs.
struct Lists<'a> {
    held: &'a HashMap<&'a str, (Vec<String>, String)>,
    pool: &'a [String],
    base: &'a dyn Recommend,
    p: &'a DataParams,
    seed: u64,
}

impl Lists<'_> {
    /// The users' cases, and how many users had their item outside a base-topk list.
    fn build(&self, users: &[UserSeq]) -> (Vec<Case>, usize) {
        let mut out = Vec::new();
        let mut missing = 0;
        for u in users {
            let Some((history, target)) = self.held.get(u.user_id.as_str()).cloned() else {
                continue;
            };
            match self.p.protocol {
                // (logged cases come from `prepare_logged`; asked here, random lists are made)
                Protocol::Llmrank | Protocol::Logged => out.push(protocol::llmrank_case(
                    u,
                    history,
                    target,
                    self.pool,
                    self.p.candidates,
                    self.seed,
                )),
                Protocol::BaseTopk => {
                    let (case, inside) = protocol::base_topk_case(
                        &u.user_id,
                        history,
                        target,
                        self.base,
                        self.p.candidates,
                    );
                    if inside {
                        out.push(case);
                    } else {
                        missing += 1;
                    }
                }
            }
        }
        (out, missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seqs() -> Vec<UserSeq> {
        (0..30)
            .map(|u| UserSeq {
                user_id: format!("u{u}"),
                // shared items, then a last item only this user ever has
                items: vec!["common".into(), format!("g{}", u % 3), format!("only-{u}")],
            })
            .collect()
    }

    fn params(test_users: usize, protocol: Protocol) -> DataParams {
        DataParams {
            protocol,
            train_users: 2,
            validation_users: 2,
            test_users,
            candidates: 5,
            ..DataParams::default()
        }
    }

    #[test]
    fn no_held_out_item_is_ever_fit_whichever_users_are_evaluated() {
        let data = seqs();
        for test_users in [1, 5, 26] {
            let prep = prepare_from(
                &data,
                Holdout::Last,
                &params(test_users, Protocol::Llmrank),
                3,
            );
            assert_eq!(prep.test.len(), test_users);
            // every user's last item is held out, evaluated or not: none is counted or sampled
            for u in 0..30 {
                let held = format!("only-{u}");
                assert_eq!(
                    prep.popularity.score(&held),
                    0,
                    "{held} with {test_users} test users"
                );
                assert_eq!(prep.knn().popularity(&held), 0);
            }
            assert_eq!(prep.popularity.score("common"), 30);
            // negatives come from the fitted items only
            for c in prep.test.iter().flat_map(|c| c.candidates.iter()) {
                assert!(!c.starts_with("only-") || prep.test.iter().any(|t| &t.target == c));
            }
        }
    }

    #[test]
    fn base_topk_counts_misses_per_split() {
        let prep = prepare_from(&seqs(), Holdout::Last, &params(10, Protocol::BaseTopk), 3);
        // the held-out items were never fit, so no base list can contain them
        assert_eq!(prep.test.len(), 0);
        assert_eq!(prep.outside(EvalSplit::Test), 10);
        assert_eq!(prep.outside(EvalSplit::Validation), 2);
        assert_eq!(prep.outside(EvalSplit::Train), 2);
    }
}
