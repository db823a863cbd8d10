//! Seeded, disjoint user splits (train / validation / test).

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::UserSeq;

/// Disjoint user sets. `train` users are the ones a prompt is optimized on, `validation` users
/// select between prompts, `test` users give the reported numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Split {
    pub train: Vec<UserSeq>,
    pub validation: Vec<UserSeq>,
    pub test: Vec<UserSeq>,
}

/// Users eligible for evaluation: at least `min_items` items (never fewer than 2: one history
/// item + the target, so a `min_items` below 2 counts as 2).
///
/// The eligible users are sorted by user id (then items, should an id repeat), shuffled with
/// `StdRng::seed_from_u64(seed)`, and cut into the first `train` users, the next `validation`
/// and the next `test`. If there are fewer users than asked, train is filled first, then
/// validation, then test, and the split holds what there is (the caller reports the
/// shortfall). The result depends only on the set of users and the seed, not on input order.
pub fn split_users(
    users: &[UserSeq],
    train: usize,
    validation: usize,
    test: usize,
    seed: u64,
    min_items: usize,
) -> Split {
    let min_items = min_items.max(2);
    let mut eligible: Vec<&UserSeq> = users
        .iter()
        .filter(|u| u.items.len() >= min_items)
        .collect();
    eligible.sort_by(|a, b| {
        a.user_id
            .cmp(&b.user_id)
            .then_with(|| a.items.cmp(&b.items))
    });
    let mut rng = StdRng::seed_from_u64(seed);
    eligible.shuffle(&mut rng);

    let mut rest = eligible.into_iter();
    let mut take = |k: usize| rest.by_ref().take(k).cloned().collect::<Vec<_>>();
    let train = take(train);
    let validation = take(validation);
    let test = take(test);
    Split {
        train,
        validation,
        test,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn users(n: usize) -> Vec<UserSeq> {
        (0..n)
            .map(|i| UserSeq {
                user_id: format!("u{i:03}"),
                // lengths 1..=5 cycling, so some users are filtered out by min_items
                items: (0..(i % 5) + 1).map(|j| format!("i{j}")).collect(),
            })
            .collect()
    }

    fn ids(v: &[UserSeq]) -> Vec<&str> {
        v.iter().map(|u| u.user_id.as_str()).collect()
    }

    #[test]
    fn disjoint_and_sized() {
        let all = users(100); // 80 users with >= 2 items
        let s = split_users(&all, 30, 10, 20, 7, 2);
        assert_eq!(
            (s.train.len(), s.validation.len(), s.test.len()),
            (30, 10, 20)
        );
        let mut seen = HashSet::new();
        for u in s.train.iter().chain(&s.validation).chain(&s.test) {
            assert!(seen.insert(u.user_id.clone()), "{} twice", u.user_id);
            assert!(u.items.len() >= 2);
            // the user is returned unchanged
            assert!(all.contains(u));
        }
    }

    #[test]
    fn deterministic_and_order_independent() {
        let all = users(100);
        let a = split_users(&all, 30, 10, 20, 7, 2);
        let b = split_users(&all, 30, 10, 20, 7, 2);
        assert_eq!(a, b);
        let mut rev = all.clone();
        rev.reverse();
        assert_eq!(split_users(&rev, 30, 10, 20, 7, 2), a);
        let mut rotated = all.clone();
        rotated.rotate_left(37);
        assert_eq!(split_users(&rotated, 30, 10, 20, 7, 2), a);
    }

    #[test]
    fn different_seeds_differ() {
        let all = users(100);
        let a = split_users(&all, 30, 10, 20, 7, 2);
        let b = split_users(&all, 30, 10, 20, 8, 2);
        assert_ne!(ids(&a.test), ids(&b.test));
        assert_ne!(ids(&a.train), ids(&b.train));
    }

    #[test]
    fn shuffled_not_sorted() {
        let all = users(100);
        let s = split_users(&all, 80, 0, 0, 1, 2);
        let mut sorted = ids(&s.train);
        sorted.sort();
        assert_ne!(ids(&s.train), sorted);
    }

    #[test]
    fn min_items_filter() {
        let all = users(100);
        let s = split_users(&all, 1000, 0, 0, 1, 4);
        assert_eq!(s.train.len(), 40); // lengths 4 and 5
        assert!(s.train.iter().all(|u| u.items.len() >= 4));
        // below 2 counts as 2: single-item users are never eligible
        let s = split_users(&all, 1000, 0, 0, 1, 0);
        assert_eq!(s.train.len(), 80);
        assert!(s.train.iter().all(|u| u.items.len() >= 2));
    }

    #[test]
    fn shortfall_fills_train_then_validation_then_test() {
        let all = users(100); // 80 eligible
        let s = split_users(&all, 50, 20, 20, 3, 2);
        assert_eq!(
            (s.train.len(), s.validation.len(), s.test.len()),
            (50, 20, 10)
        );
        let s = split_users(&all, 70, 20, 20, 3, 2);
        assert_eq!(
            (s.train.len(), s.validation.len(), s.test.len()),
            (70, 10, 0)
        );
        let s = split_users(&all, 90, 20, 20, 3, 2);
        assert_eq!(
            (s.train.len(), s.validation.len(), s.test.len()),
            (80, 0, 0)
        );
        let s = split_users(&[], 5, 5, 5, 3, 2);
        assert_eq!(s, Split::default());
        // the larger request starts with the same users: the order is the seed's
        let small = split_users(&all, 10, 0, 0, 3, 2);
        assert_eq!(ids(&small.train), ids(&s_train(&all)[..10]));
    }

    fn s_train(all: &[UserSeq]) -> Vec<UserSeq> {
        split_users(all, 80, 0, 0, 3, 2).train
    }
}
