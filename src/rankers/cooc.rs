//! Item-to-item co-occurrence kNN.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{Ranker, Recommend};

/// Item-to-item co-occurrence kNN.
///
/// Two items co-occur when they appear within `window` positions of each other in one sequence
/// (each occurrence pair counts once; an item never co-occurs with itself). For a history,
/// `score(c) = sum over the last `recent` distinct known history items h of
/// cooc(h, c) / sqrt(pop(h) * pop(c))` (cosine-like), where `pop` counts occurrences. The
/// history items are excluded; when fewer than `n` items have a positive score, the rest is
/// filled in by popularity, so there are always `n` results unless the catalog (items seen in
/// the training sequences) is smaller. Ties: higher popularity, then item id ascending.
///
/// Leakage note: fit it on sequences with each evaluated user's held-out target removed.
#[derive(Debug, Clone)]
pub struct Cooc {
    ids: Vec<String>,
    index: HashMap<String, u32>,
    pop: Vec<u64>,
    /// CSR adjacency: the neighbours of item `i` are `neighbors[offsets[i]..offsets[i + 1]]`,
    /// sorted by index, with their pair counts and precomputed cosine-like weights.
    offsets: Vec<usize>,
    neighbors: Vec<u32>,
    counts: Vec<u32>,
    weights: Vec<f32>,
    /// Item indices by popularity descending, then id ascending.
    by_pop: Vec<u32>,
    recent: usize,
}

impl Cooc {
    /// The default co-occurrence window (positions).
    pub const DEFAULT_WINDOW: usize = 5;
    /// The default number of recent history items scored from.
    pub const DEFAULT_RECENT: usize = 5;

    /// Builds the co-occurrence graph of `seqs`.
    pub fn fit(seqs: &[Vec<String>], window: usize, recent: usize) -> Self {
        let mut index: HashMap<String, u32> = HashMap::new();
        let mut ids: Vec<String> = Vec::new();
        let mut pop: Vec<u64> = Vec::new();
        let mut total = 0usize;
        let encoded: Vec<Vec<u32>> = seqs
            .iter()
            .map(|s| {
                total += s.len();
                s.iter()
                    .map(|item| {
                        let i = match index.get(item.as_str()) {
                            Some(&i) => i,
                            None => {
                                let i = u32::try_from(ids.len()).expect("fewer than 2^32 items");
                                index.insert(item.clone(), i);
                                ids.push(item.clone());
                                pop.push(0);
                                i
                            }
                        };
                        pop[i as usize] += 1;
                        i
                    })
                    .collect()
            })
            .collect();

        // Both directions of every occurrence pair, packed as (a << 32 | b), then counted.
        let mut pairs: Vec<u64> = Vec::with_capacity(total.saturating_mul(2 * window.min(64)));
        for s in &encoded {
            for (i, &a) in s.iter().enumerate() {
                for &b in s.iter().skip(i + 1).take(window) {
                    if a != b {
                        pairs.push((u64::from(a) << 32) | u64::from(b));
                        pairs.push((u64::from(b) << 32) | u64::from(a));
                    }
                }
            }
        }
        pairs.sort_unstable();

        let n_items = ids.len();
        let mut offsets = vec![0usize; n_items + 1];
        let mut neighbors: Vec<u32> = Vec::new();
        let mut counts: Vec<u32> = Vec::new();
        let mut weights: Vec<f32> = Vec::new();
        let mut k = 0;
        while k < pairs.len() {
            let p = pairs[k];
            let mut run = 1;
            while k + run < pairs.len() && pairs[k + run] == p {
                run += 1;
            }
            let (a, b) = ((p >> 32) as u32, p as u32);
            offsets[a as usize + 1] += 1;
            neighbors.push(b);
            counts.push(run as u32);
            let denom = ((pop[a as usize] as f64) * (pop[b as usize] as f64)).sqrt();
            weights.push((run as f64 / denom) as f32);
            k += run;
        }
        for i in 0..n_items {
            offsets[i + 1] += offsets[i];
        }

        let mut by_pop: Vec<u32> = (0..n_items as u32).collect();
        by_pop.sort_unstable_by(|&a, &b| {
            pop[b as usize]
                .cmp(&pop[a as usize])
                .then_with(|| ids[a as usize].cmp(&ids[b as usize]))
        });

        Cooc {
            ids,
            index,
            pop,
            offsets,
            neighbors,
            counts,
            weights,
            by_pop,
            recent,
        }
    }

    /// Number of distinct items seen.
    pub fn item_count(&self) -> usize {
        self.ids.len()
    }

    /// The item's occurrence count (0 if never seen).
    pub fn popularity(&self, item: &str) -> u64 {
        self.index.get(item).map_or(0, |&i| self.pop[i as usize])
    }

    /// How many occurrence pairs of `a` and `b` lie within the window (symmetric).
    pub fn cooc(&self, a: &str, b: &str) -> u32 {
        let (Some(&a), Some(&b)) = (self.index.get(a), self.index.get(b)) else {
            return 0;
        };
        let range = self.offsets[a as usize]..self.offsets[a as usize + 1];
        match self.neighbors[range.clone()].binary_search(&b) {
            Ok(k) => self.counts[range.start + k],
            Err(_) => 0,
        }
    }

    /// The kNN score of `item` for `history` from the model's `recent` items (0 for unknown
    /// items; history items are not excluded here).
    pub fn score(&self, history: &[String], item: &str) -> f32 {
        self.score_from(history, item, self.recent)
    }

    /// The kNN score of `item` from the last `recent` distinct known items of `history`
    /// (`usize::MAX`: the whole history).
    pub fn score_from(&self, history: &[String], item: &str, recent: usize) -> f32 {
        let Some(&c) = self.index.get(item) else {
            return 0.0;
        };
        let mut s = 0.0f32;
        for h in self.recent_items(history, recent) {
            let range = self.offsets[h as usize]..self.offsets[h as usize + 1];
            if let Ok(k) = self.neighbors[range.clone()].binary_search(&c) {
                s += self.weights[range.start + k];
            }
        }
        s
    }

    /// The last `recent` distinct known items of `history`, most recent first.
    fn recent_items(&self, history: &[String], recent: usize) -> Vec<u32> {
        let mut out: Vec<u32> = Vec::with_capacity(recent.min(history.len()));
        for item in history.iter().rev() {
            if out.len() == recent {
                break;
            }
            if let Some(&i) = self.index.get(item.as_str())
                && !out.contains(&i)
            {
                out.push(i);
            }
        }
        out
    }
}

impl Recommend for Cooc {
    fn top_n(&self, history: &[String], n: usize) -> Vec<String> {
        if n == 0 {
            return Vec::new();
        }
        let in_history: HashSet<u32> = history
            .iter()
            .filter_map(|i| self.index.get(i.as_str()).copied())
            .collect();
        let mut scores = vec![0.0f32; self.ids.len()];
        let mut touched: Vec<u32> = Vec::new();
        // Same summation order as `score` (most recent first), so the values agree exactly.
        for h in self.recent_items(history, self.recent) {
            let range = self.offsets[h as usize]..self.offsets[h as usize + 1];
            for (&c, &w) in self.neighbors[range.clone()]
                .iter()
                .zip(&self.weights[range])
            {
                if scores[c as usize] == 0.0 {
                    touched.push(c);
                }
                scores[c as usize] += w;
            }
        }
        touched.retain(|c| !in_history.contains(c));
        touched.sort_unstable_by(|&a, &b| {
            scores[b as usize]
                .total_cmp(&scores[a as usize])
                .then_with(|| self.pop[b as usize].cmp(&self.pop[a as usize]))
                .then_with(|| self.ids[a as usize].cmp(&self.ids[b as usize]))
        });
        touched.truncate(n);
        if touched.len() < n {
            // Every positively scored non-history item is already in; fill by popularity.
            let missing = n - touched.len();
            let fill: Vec<u32> = self
                .by_pop
                .iter()
                .copied()
                .filter(|&c| scores[c as usize] == 0.0 && !in_history.contains(&c))
                .take(missing)
                .collect();
            touched.extend(fill);
        }
        touched
            .into_iter()
            .map(|i| self.ids[i as usize].clone())
            .collect()
    }
}

/// Item-kNN as a ranker: candidates by their co-occurrence score with the user's last
/// `recent` distinct items (`None`: the whole history), then popularity, then the incoming
/// order.
#[derive(Debug, Clone)]
pub struct ItemKnn {
    pub model: Arc<Cooc>,
    pub recent: Option<usize>,
}

impl ItemKnn {
    /// Scores from the last `recent` items.
    pub fn last(model: Arc<Cooc>, recent: usize) -> Self {
        ItemKnn {
            model,
            recent: Some(recent),
        }
    }

    /// Scores from the whole history.
    pub fn whole_history(model: Arc<Cooc>) -> Self {
        ItemKnn {
            model,
            recent: None,
        }
    }
}

impl Ranker for ItemKnn {
    fn rank(&self, _user: &str, history: &[String], candidates: &[String]) -> Vec<usize> {
        let recent = self.recent.unwrap_or(usize::MAX);
        let scores: Vec<(f32, u64)> = candidates
            .iter()
            .map(|c| {
                (
                    self.model.score_from(history, c, recent),
                    self.model.popularity(c),
                )
            })
            .collect();
        let mut order: Vec<usize> = (0..candidates.len()).collect();
        // Stable: full ties keep the incoming order.
        order.sort_by(|&a, &b| {
            scores[b]
                .0
                .total_cmp(&scores[a].0)
                .then_with(|| scores[b].1.cmp(&scores[a].1))
        });
        order
    }

    fn name(&self) -> &'static str {
        match self.recent {
            Some(_) => "item_knn",
            None => "item_knn_all",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rankers::testdata::*;

    fn close(a: f32, b: f64) -> bool {
        (f64::from(a) - b).abs() < 1e-6
    }

    #[test]
    fn cooc_counts_and_scores_hand_computed() {
        let m = Cooc::fit(&data(), 5, 5);
        assert_eq!(m.item_count(), 4);
        assert_eq!((m.cooc("a", "b"), m.cooc("b", "a")), (2, 2));
        assert_eq!(
            (m.cooc("a", "c"), m.cooc("b", "c"), m.cooc("b", "d")),
            (1, 1, 1)
        );
        assert_eq!(
            (
                m.cooc("a", "d"),
                m.cooc("c", "d"),
                m.cooc("a", "a"),
                m.cooc("a", "z")
            ),
            (0, 0, 0, 0)
        );
        assert_eq!(m.popularity("b"), 3);

        let h = strings(&["a"]);
        assert!(close(m.score(&h, "b"), 2.0 / 6f64.sqrt())); // 0.8165
        assert!(close(m.score(&h, "c"), 1.0 / 2f64.sqrt())); // 0.7071
        assert_eq!(m.score(&h, "d"), 0.0);
        // b, c by score; d filled in by popularity
        assert_eq!(m.top_n(&h, 3), strings(&["b", "c", "d"]));
        assert_eq!(m.top_n(&h, 1), strings(&["b"]));

        // [c]: a = 1/sqrt(2) = 0.707 > b = 1/sqrt(3) = 0.577; then d by popularity
        assert_eq!(m.top_n(&strings(&["c"]), 10), strings(&["a", "b", "d"]));

        // [d]: only b scores (1/sqrt(3)); fill-in by popularity: a (2), c (1)
        assert!(close(m.score(&strings(&["d"]), "b"), 1.0 / 3f64.sqrt()));
        assert_eq!(m.top_n(&strings(&["d"]), 3), strings(&["b", "a", "c"]));

        // [a, c]: b = 2/sqrt(6) + 1/sqrt(3) = 1.3938; d only by fill-in; a, c excluded
        let h = strings(&["a", "c"]);
        assert!(close(
            m.score(&h, "b"),
            2.0 / 6f64.sqrt() + 1.0 / 3f64.sqrt()
        ));
        assert_eq!(m.top_n(&h, 4), strings(&["b", "d"]));

        // unknown history: pure popularity; n = 0: nothing
        assert_eq!(
            m.top_n(&strings(&["zz"]), 4),
            strings(&["b", "a", "c", "d"])
        );
        assert_eq!(m.top_n(&h, 0), Vec::<String>::new());
    }

    #[test]
    fn cooc_window_and_recent() {
        // window 1: only neighbours; (a, c) no longer co-occur
        let m = Cooc::fit(&data(), 1, 5);
        assert_eq!(
            (m.cooc("a", "b"), m.cooc("a", "c"), m.cooc("b", "c")),
            (2, 0, 1)
        );
        assert_eq!(m.score(&strings(&["a"]), "c"), 0.0);
        // [a]: b by score, then c, d by popularity (tie by id)
        assert_eq!(m.top_n(&strings(&["a"]), 3), strings(&["b", "c", "d"]));

        // recent 1: only the last history item scores; [c, d]: b from d only
        let m = Cooc::fit(&data(), 5, 1);
        let h = strings(&["c", "d"]);
        assert!(close(m.score(&h, "b"), 1.0 / 3f64.sqrt()));
        assert_eq!(m.score(&h, "a"), 0.0);
        // b by score; a by popularity (c is in the history, so excluded although older)
        assert_eq!(m.top_n(&h, 3), strings(&["b", "a"]));
    }

    #[test]
    fn cooc_repeated_pairs_count_per_occurrence() {
        // x y x: pairs (x,y), (x,x) skipped, (y,x) -> cooc(x,y) = 2, pop x = 2, y = 1
        let m = Cooc::fit(&[strings(&["x", "y", "x"])], 5, 5);
        assert_eq!(m.cooc("x", "y"), 2);
        assert!(close(m.score(&strings(&["y"]), "x"), 2.0 / 2f64.sqrt()));
    }

    #[test]
    fn as_a_ranker_knn_then_popularity_then_incoming() {
        let m = Arc::new(Cooc::fit(&data(), 5, 5));
        // history [a]: b 0.816, c 0.707, d 0 (pop 1), z 0 (pop 0)
        let c = strings(&["z", "d", "c", "b"]);
        let knn = ItemKnn::last(m.clone(), 5);
        assert_eq!(knn.rank("u", &strings(&["a"]), &c), vec![3, 2, 1, 0]);
        // z and y: no score, no popularity: incoming order
        let c = strings(&["z", "y", "b"]);
        assert_eq!(knn.rank("u", &strings(&["a"]), &c), vec![2, 0, 1]);
    }

    #[test]
    fn last_l_and_whole_history_differ_hand_computed() {
        // [x, y] twice, [z, w]: cooc(x, y) = 2 / sqrt(2 * 2) = 1, cooc(z, w) = 1 / sqrt(1 * 1) = 1
        let m = Arc::new(Cooc::fit(
            &[
                strings(&["x", "y"]),
                strings(&["x", "y"]),
                strings(&["z", "w"]),
            ],
            5,
            5,
        ));
        let h = strings(&["x", "z"]);
        let c = strings(&["y", "w"]);
        let last1 = ItemKnn::last(m.clone(), 1);
        let all = ItemKnn::whole_history(m.clone());
        // last 1 = [z]: w 1, y 0
        assert!(close(m.score_from(&h, "y", 1), 0.0));
        assert!(close(m.score_from(&h, "w", 1), 1.0));
        assert_eq!(last1.rank("u", &h, &c), vec![1, 0]);
        // whole history: y 1, w 1, tie broken by popularity (y 2 > w 1)
        assert!(close(m.score_from(&h, "y", usize::MAX), 1.0));
        assert_eq!(all.rank("u", &h, &c), vec![0, 1]);
        assert_eq!((last1.name(), all.name()), ("item_knn", "item_knn_all"));
    }

    /// Timing on the real Amazon Games data, read from `$AGP_SHARED_DATA/amazon-games` (default:
    /// `../shared/data/amazon-games` beside this crate). Run with
    /// `AGP_SHARED_DATA=/path/to/data cargo test --release --lib rankers::cooc -- --ignored --nocapture`.
    #[test]
    #[ignore = "reads $AGP_SHARED_DATA/amazon-games (default ../shared/data); timing only"]
    fn amazon_timing() {
        use crate::rankers::Popularity;
        use std::time::Instant;

        let t = Instant::now();
        let dir = crate::import::test_util::shared_data().join("amazon-games");
        let ds = crate::import::read(crate::import::Format::Recbole, std::slice::from_ref(&dir))
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
        let read_time = t.elapsed();
        let mut seqs: Vec<Vec<String>> = Vec::new();
        let mut last: Option<&str> = None;
        for it in &ds.interactions {
            if last != Some(it.user_id.as_str()) {
                seqs.push(Vec::new());
                last = Some(it.user_id.as_str());
            }
            seqs.last_mut().expect("pushed").push(it.item_id.clone());
        }
        let interactions: usize = seqs.iter().map(Vec::len).sum();
        let longest = seqs.iter().map(Vec::len).max().unwrap_or(0);

        let t = Instant::now();
        let pop = Popularity::fit(&seqs);
        let pop_fit = t.elapsed();
        let t = Instant::now();
        let m = Cooc::fit(&seqs, Cooc::DEFAULT_WINDOW, Cooc::DEFAULT_RECENT);
        let fit = t.elapsed();

        let step = (seqs.len() / 200).max(1);
        let histories: Vec<&[String]> = seqs
            .iter()
            .step_by(step)
            .take(200)
            .map(|s| &s[..s.len() - 1])
            .collect();
        let t = Instant::now();
        let mut total = 0;
        for h in &histories {
            let top = m.top_n(h, 20);
            assert_eq!(top.len(), 20);
            total += top.len();
        }
        let topn = t.elapsed();
        let t = Instant::now();
        for h in &histories {
            total += pop.top_n(h, 20).len();
        }
        let pop_topn = t.elapsed();

        println!(
            "amazon-games: {} sequences, {} interactions, {} items (longest {}), {} co-occurring pairs; read {:?}",
            seqs.len(),
            interactions,
            m.item_count(),
            longest,
            m.neighbors.len(),
            read_time
        );
        println!("Popularity::fit {pop_fit:?}; Cooc::fit {fit:?}");
        println!(
            "{} Cooc::top_n(.., 20) calls: {topn:?} ({:?} each); {} Popularity::top_n: {pop_topn:?}; {total} items",
            histories.len(),
            topn / histories.len() as u32,
            histories.len()
        );
    }
}
