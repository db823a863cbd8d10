//! Popularity: most-interacted items first.

use std::collections::{HashMap, HashSet};

use super::{Ranker, Recommend};

/// Popularity: interaction counts over the training sequences; ties broken by item id (ascending)
/// for determinism.
///
/// Leakage note: fit it on sequences with each evaluated user's held-out target removed.
#[derive(Debug, Clone, Default)]
pub struct Popularity {
    counts: HashMap<String, u64>,
    /// Items by count descending, then id ascending.
    ranking: Vec<String>,
}

impl Popularity {
    /// Counts every occurrence of every item in `seqs`.
    pub fn fit(seqs: &[Vec<String>]) -> Self {
        let mut counts: HashMap<String, u64> = HashMap::new();
        for s in seqs {
            for item in s {
                match counts.get_mut(item.as_str()) {
                    Some(c) => *c += 1,
                    None => {
                        counts.insert(item.clone(), 1);
                    }
                }
            }
        }
        let mut ranked: Vec<(&String, u64)> = counts.iter().map(|(k, &v)| (k, v)).collect();
        ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let ranking = ranked.into_iter().map(|(k, _)| k.clone()).collect();
        Popularity { counts, ranking }
    }

    /// The item's interaction count (0 if never seen).
    pub fn score(&self, item: &str) -> u64 {
        self.counts.get(item).copied().unwrap_or(0)
    }

    /// Number of distinct items seen.
    pub fn item_count(&self) -> usize {
        self.ranking.len()
    }
}

impl Recommend for Popularity {
    fn top_n(&self, history: &[String], n: usize) -> Vec<String> {
        let seen: HashSet<&str> = history.iter().map(String::as_str).collect();
        self.ranking
            .iter()
            .filter(|i| !seen.contains(i.as_str()))
            .take(n)
            .cloned()
            .collect()
    }
}

impl Ranker for Popularity {
    fn rank(&self, _user: &str, _history: &[String], candidates: &[String]) -> Vec<usize> {
        let mut order: Vec<usize> = (0..candidates.len()).collect();
        // Stable: ties keep the incoming order.
        order.sort_by_key(|&i| std::cmp::Reverse(self.score(&candidates[i])));
        order
    }

    fn name(&self) -> &'static str {
        "popularity"
    }
}

impl Popularity {
    /// A ranker over counts looked up elsewhere (the production fallback asks the database
    /// for the candidates' counts only).
    pub fn from_counts(counts: HashMap<String, u64>) -> Self {
        let mut ranked: Vec<(&String, u64)> = counts.iter().map(|(k, &v)| (k, v)).collect();
        ranked.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        let ranking = ranked.into_iter().map(|(k, _)| k.clone()).collect();
        Popularity { counts, ranking }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rankers::testdata::*;

    #[test]
    fn popularity_hand_computed() {
        let p = Popularity::fit(&data());
        assert_eq!(
            (
                p.score("a"),
                p.score("b"),
                p.score("c"),
                p.score("d"),
                p.score("z")
            ),
            (2, 3, 1, 1, 0)
        );
        assert_eq!(p.item_count(), 4);
        // ties (c, d) by id
        assert_eq!(p.top_n(&[], 10), strings(&["b", "a", "c", "d"]));
        assert_eq!(p.top_n(&[], 2), strings(&["b", "a"]));
        // history items excluded
        assert_eq!(p.top_n(&strings(&["b"]), 2), strings(&["a", "c"]));
        assert_eq!(
            p.top_n(&strings(&["b", "c", "unknown"]), 5),
            strings(&["a", "d"])
        );
    }

    #[test]
    fn as_a_ranker_most_popular_first_ties_incoming() {
        let p = Popularity::fit(&data());
        let c = strings(&["d", "b", "c", "z", "a"]);
        // counts d 1, b 3, c 1, z 0, a 2 -> b, a, then d and c (tie: incoming), z
        assert_eq!(p.rank("u", &[], &c), vec![1, 4, 0, 2, 3]);
        let q = Popularity::from_counts([("x".to_string(), 5)].into_iter().collect());
        assert_eq!(q.rank("u", &[], &strings(&["y", "x"])), vec![1, 0]);
    }
}
