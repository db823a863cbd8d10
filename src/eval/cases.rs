//! The cases of one seed: split the users, hold out each one's item, fit the base
//! recommenders on what is left, and build every user's candidate list.

use std::collections::{HashMap, HashSet};

use super::params::DataParams;
use super::{BaseRecommender, Holdout, Protocol, UserSeq, protocol, split};
use crate::agp::case::Case;
use crate::rankers::{Cooc, Popularity, Recommend};

/// Users, splits and candidate lists of one seed.
pub struct Prepared {
    pub train: Vec<Case>,
    pub validation: Vec<Case>,
    pub test: Vec<Case>,
    pub popularity: Popularity,
    pub notes: Vec<String>,
}

/// `prepare` over given sequences (pure).
pub fn prepare_from(seqs: &[UserSeq], holdout: Holdout, p: &DataParams, seed: u64) -> Prepared {
    let mut notes = Vec::new();
    match holdout {
        Holdout::Last => notes.push("held-out item: each user's last item; history: the items before it".into()),
        Holdout::Random => notes.push(
            "this data has no timestamps: a seeded random item of each user was held out, and the history is the \
             user's other items in file order"
                .into(),
        ),
    }
    let s = split::split_users(
        seqs,
        p.train_users,
        p.validation_users,
        p.test_users,
        seed,
        2,
    );
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
    // Base recommenders learn from every sequence with the evaluated users' targets removed.
    let mut held: HashMap<String, (Vec<String>, String)> = HashMap::new();
    for u in s.train.iter().chain(&s.validation).chain(&s.test) {
        if let Some(h) = protocol::hold_out(u, holdout, seed) {
            held.insert(u.user_id.clone(), h);
        }
    }
    let training: Vec<Vec<String>> = seqs
        .iter()
        .map(|u| {
            held.get(&u.user_id)
                .map(|(h, _)| h.clone())
                .unwrap_or_else(|| u.items.clone())
        })
        .collect();
    let popularity = Popularity::fit(&training);
    let mut pool: Vec<String> = training
        .iter()
        .flatten()
        .cloned()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    pool.sort();
    let cooc = (p.protocol == Protocol::BaseTopk && p.base == BaseRecommender::Cooc)
        .then(|| Cooc::fit(&training, 5, 5));
    let mut missing = 0usize;
    let mut total = 0usize;
    let mut build = |users: &[UserSeq]| -> Vec<Case> {
        let mut out = Vec::new();
        for u in users {
            let Some((history, target)) = held.get(&u.user_id).cloned() else {
                continue;
            };
            match p.protocol {
                Protocol::Llmrank => out.push(protocol::llmrank_case(
                    u,
                    history,
                    target,
                    &pool,
                    p.candidates,
                    seed,
                )),
                Protocol::BaseTopk => {
                    let rec: &dyn Recommend = match &cooc {
                        Some(c) => c,
                        None => &popularity,
                    };
                    let (case, inside) =
                        protocol::base_topk_case(&u.user_id, history, target, rec, p.candidates);
                    total += 1;
                    if inside {
                        out.push(case);
                    } else {
                        missing += 1;
                    }
                }
            }
        }
        out
    };
    let train = build(&s.train);
    let validation = build(&s.validation);
    let test = build(&s.test);
    match p.protocol {
        Protocol::Llmrank => notes.push(format!(
            "candidates (llmrank): the held-out item + {} random items the user never interacted with, shuffled (seed {seed})",
            p.candidates.saturating_sub(1)
        )),
        Protocol::BaseTopk => notes.push(format!(
            "candidates (base-topk): the top {} of the {:?} base recommender; {missing} of {total} users had the held-out \
             item outside the list and are not scored (reported, not hidden)",
            p.candidates, p.base
        )),
    }
    Prepared {
        train,
        validation,
        test,
        popularity,
        notes,
    }
}
