//! Building evaluation cases: the held-out target and the candidate list of each protocol.
//!
//! Every random choice here is seeded per user ([`user_rng`]): a user's case depends only on
//! the seed, the user and the inputs, never on which other users are evaluated or in what order.

use std::collections::HashSet;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use super::{Holdout, UserSeq};
use crate::agp::case::Case;
use crate::rankers::Recommend;

/// A random generator for one user and one purpose: seeded with the first 8 bytes of
/// `sha256(seed (little-endian) || purpose || 0x00 || user_id)`. Different purposes give
/// independent streams for the same user and seed.
pub fn user_rng(seed: u64, user_id: &str, purpose: &str) -> StdRng {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(purpose.as_bytes());
    h.update([0u8]);
    h.update(user_id.as_bytes());
    let digest = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    StdRng::seed_from_u64(u64::from_le_bytes(b))
}

/// Builds the case of one user: returns `(history, target)`.
///
/// - [`Holdout::Last`]: target = the last item, history = all items before it.
/// - [`Holdout::Random`]: target = a seeded random position (the seed mixed with the user id
///   via sha256, see [`user_rng`], so each user's choice is stable and independent of other
///   users), history = all other items in file order.
///
/// Returns `None` when the user has fewer than 2 items.
pub fn hold_out(user: &UserSeq, holdout: Holdout, seed: u64) -> Option<(Vec<String>, String)> {
    let n = user.items.len();
    if n < 2 {
        return None;
    }
    let pos = match holdout {
        Holdout::Last => n - 1,
        Holdout::Random => user_rng(seed, &user.user_id, "holdout").random_range(0..n),
    };
    let mut history = user.items.clone();
    let target = history.remove(pos);
    Some((history, target))
}

/// The LLMRank protocol: the target + (n - 1) items drawn (seeded per user, see [`user_rng`])
/// from `pool` (catalog item ids that had interactions), never an item of the user's whole
/// sequence (history, target and anything after it), without repeats; then shuffled with the
/// same per-user generator. If the pool has too few eligible items, all of them are used
/// (the list is shorter than `n`). `n = 0` is treated as 1 (the target alone).
///
/// Leakage note: `pool` may be built from all interactions; only the item ids are used.
pub fn llmrank_case(
    user: &UserSeq,
    history: Vec<String>,
    target: String,
    pool: &[String],
    n: usize,
    seed: u64,
) -> Case {
    let mut rng = user_rng(seed, &user.user_id, "llmrank");
    let need = n.saturating_sub(1);
    let excluded: HashSet<&str> = user
        .items
        .iter()
        .map(String::as_str)
        .chain(history.iter().map(String::as_str))
        .chain(std::iter::once(target.as_str()))
        .collect();
    let mut chosen: HashSet<&str> = HashSet::with_capacity(need);
    let mut negatives: Vec<&str> = Vec::with_capacity(need);

    // Rejection sampling: fast when the pool is much larger than the list (the usual case).
    if need > 0 && !pool.is_empty() {
        let max_draws = 8 * need + 64;
        for _ in 0..max_draws {
            if negatives.len() == need {
                break;
            }
            let c = pool[rng.random_range(0..pool.len())].as_str();
            if !excluded.contains(c) && chosen.insert(c) {
                negatives.push(c);
            }
        }
    }
    // Too many rejections (a small or mostly excluded pool): enumerate what is left.
    if negatives.len() < need {
        let mut rest: Vec<&str> = Vec::new();
        let mut seen: HashSet<&str> = HashSet::new();
        for c in pool {
            let c = c.as_str();
            if !excluded.contains(c) && !chosen.contains(c) && seen.insert(c) {
                rest.push(c);
            }
        }
        rest.shuffle(&mut rng);
        negatives.extend(rest.into_iter().take(need - negatives.len()));
    }

    let mut candidates: Vec<String> = Vec::with_capacity(negatives.len() + 1);
    candidates.push(target.clone());
    candidates.extend(negatives.into_iter().map(str::to_owned));
    candidates.shuffle(&mut rng);
    Case {
        user_id: user.user_id.clone(),
        history,
        target,
        candidates,
    }
}

/// The base-topk protocol: the candidates are `recommender`'s top-n for the user's history
/// (which excludes the history items), in the recommender's order. The list may then not
/// contain the target: returns `(case, target_in_list)` so the caller can report those users.
///
/// Leakage note: the recommender must have been fitted without the evaluated users' targets.
pub fn base_topk_case(
    user_id: &str,
    history: Vec<String>,
    target: String,
    recommender: &dyn Recommend,
    n: usize,
) -> (Case, bool) {
    let candidates = recommender.top_n(&history, n);
    let inside = candidates.contains(&target);
    (
        Case {
            user_id: user_id.to_owned(),
            history,
            target,
            candidates,
        },
        inside,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rankers::Popularity;

    fn seq(user: &str, items: &[&str]) -> UserSeq {
        UserSeq {
            user_id: user.to_owned(),
            items: items.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn hold_out_last() {
        let u = seq("u1", &["a", "b", "c"]);
        let (h, t) = hold_out(&u, Holdout::Last, 0).unwrap();
        assert_eq!(h, strings(&["a", "b"]));
        assert_eq!(t, "c");
        assert_eq!(hold_out(&seq("u2", &["a"]), Holdout::Last, 0), None);
        assert_eq!(hold_out(&seq("u2", &[]), Holdout::Random, 0), None);
        let (h, t) = hold_out(&seq("u3", &["x", "y"]), Holdout::Last, 9).unwrap();
        assert_eq!((h, t.as_str()), (strings(&["x"]), "y"));
    }

    #[test]
    fn hold_out_random() {
        let items: Vec<String> = (0..20).map(|i| format!("i{i:02}")).collect();
        let mut positions = HashSet::new();
        for k in 0..50 {
            let u = UserSeq {
                user_id: format!("user{k}"),
                items: items.clone(),
            };
            let (h, t) = hold_out(&u, Holdout::Random, 42).unwrap();
            // stable per user + seed
            assert_eq!(
                hold_out(&u, Holdout::Random, 42),
                Some((h.clone(), t.clone()))
            );
            assert_eq!(h.len(), 19);
            assert!(!h.contains(&t));
            // history keeps file order: the sequence minus the target
            let expected: Vec<String> = items.iter().filter(|i| **i != t).cloned().collect();
            assert_eq!(h, expected);
            positions.insert(t);
        }
        // not always the same position across users
        assert!(positions.len() > 5, "{positions:?}");
        // the seed matters (for at least one of these users)
        let differs = (0..20).any(|k| {
            let u = UserSeq {
                user_id: format!("user{k}"),
                items: items.clone(),
            };
            hold_out(&u, Holdout::Random, 1) != hold_out(&u, Holdout::Random, 2)
        });
        assert!(differs);
    }

    #[test]
    fn user_rng_is_independent_of_others() {
        let mut a = user_rng(5, "alice", "llmrank");
        let mut b = user_rng(5, "alice", "llmrank");
        assert_eq!(a.random::<u64>(), b.random::<u64>());
        let mut c = user_rng(5, "alice", "holdout");
        let mut d = user_rng(5, "bob", "llmrank");
        let mut e = user_rng(6, "alice", "llmrank");
        let x = user_rng(5, "alice", "llmrank").random::<u64>();
        assert_ne!(x, c.random::<u64>());
        assert_ne!(x, d.random::<u64>());
        assert_ne!(x, e.random::<u64>());
    }

    fn pool(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("p{i:03}")).collect()
    }

    #[test]
    fn llmrank_case_properties() {
        let pool = {
            let mut p = pool(200);
            p.extend(strings(&["a", "b", "c", "d"]));
            p
        };
        let mut first_count = 0;
        let users = 60;
        for k in 0..users {
            // the user's sequence items are also in the pool
            let u = seq(&format!("u{k}"), &["a", "b", "c", "d"]);
            let (h, t) = hold_out(&u, Holdout::Last, 0).unwrap();
            let case = llmrank_case(&u, h.clone(), t.clone(), &pool, 20, 11);
            assert_eq!(case.candidates.len(), 20);
            assert_eq!(case.candidates.iter().filter(|c| **c == t).count(), 1);
            for c in &case.candidates {
                assert!(
                    *c == t || !u.items.contains(c),
                    "{c} from the user's sequence"
                );
            }
            let distinct: HashSet<&String> = case.candidates.iter().collect();
            assert_eq!(distinct.len(), 20);
            assert_eq!(case.history, h);
            assert_eq!(case.target, t);
            assert_eq!(case.user_id, u.user_id);
            // deterministic
            assert_eq!(llmrank_case(&u, h.clone(), t.clone(), &pool, 20, 11), case);
            if case.candidates[0] == t {
                first_count += 1;
            }
            assert!(case.target_rank(&(0..20).collect::<Vec<_>>()).is_some());
        }
        // shuffled: the target is not always first (expected ~ users / 20)
        assert!(first_count < users / 2, "{first_count}");
        // different seeds give different lists
        let u = seq("u0", &["a", "b", "c", "d"]);
        let a = llmrank_case(&u, strings(&["a", "b", "c"]), "d".into(), &pool, 20, 1);
        let b = llmrank_case(&u, strings(&["a", "b", "c"]), "d".into(), &pool, 20, 2);
        assert_ne!(a.candidates, b.candidates);
    }

    #[test]
    fn llmrank_excludes_items_after_the_target() {
        // Random holdout: items after the target are in the history; still never sampled.
        let mut p = pool(3);
        p.extend(strings(&["a", "b", "c"]));
        let u = seq("u", &["a", "b", "c"]);
        for seed in 0..20 {
            let case = llmrank_case(&u, strings(&["a", "c"]), "b".into(), &p, 10, seed);
            let mut got = case.candidates.clone();
            got.sort();
            assert_eq!(got, strings(&["b", "p000", "p001", "p002"]));
        }
    }

    #[test]
    fn llmrank_small_pool_uses_what_there_is() {
        let u = seq("u", &["a", "b"]);
        // repeats in the pool are drawn once
        let p = strings(&["x", "y", "x", "a", "b", "y", "z"]);
        let case = llmrank_case(&u, strings(&["a"]), "b".into(), &p, 20, 3);
        let mut got = case.candidates.clone();
        got.sort();
        assert_eq!(got, strings(&["b", "x", "y", "z"]));
        let case = llmrank_case(&u, strings(&["a"]), "b".into(), &[], 20, 3);
        assert_eq!(case.candidates, strings(&["b"]));
        let case = llmrank_case(&u, strings(&["a"]), "b".into(), &p, 1, 3);
        assert_eq!(case.candidates, strings(&["b"]));
        let case = llmrank_case(&u, strings(&["a"]), "b".into(), &p, 0, 3);
        assert_eq!(case.candidates, strings(&["b"]));
    }

    #[test]
    fn base_topk_reports_target_in_list() {
        let pop = Popularity::fit(&[
            strings(&["a", "b", "c"]),
            strings(&["a", "b"]),
            strings(&["b", "d"]),
        ]);
        // popularity order: b(3), a(2), c(1), d(1)
        let (case, inside) = base_topk_case("u", strings(&["a"]), "c".into(), &pop, 2);
        assert!(inside);
        assert_eq!(case.candidates, strings(&["b", "c"]));
        assert_eq!(case.history, strings(&["a"]));
        assert_eq!(case.target, "c");
        assert_eq!(case.user_id, "u");
        assert_eq!(case.target_rank(&[1, 0]), Some(1));
        let (case, inside) = base_topk_case("u", strings(&["a"]), "d".into(), &pop, 2);
        assert!(!inside);
        assert_eq!(case.candidates, strings(&["b", "c"]));
        assert_eq!(case.target_rank(&[0, 1]), None);
    }
}
