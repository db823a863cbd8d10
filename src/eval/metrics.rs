//! Ranking metrics with one relevant item per case: NDCG@k = 1/log2(rank+1) if rank <= k,
//! HR@k, MRR, mean rank; averaged over cases, then mean and spread over seeds.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Averages over a set of cases (or over seeds).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Metrics {
    pub ndcg_1: f64,
    pub ndcg_5: f64,
    pub ndcg_10: f64,
    pub hr_1: f64,
    pub hr_5: f64,
    pub hr_10: f64,
    pub mrr: f64,
    /// Mean 1-based rank of the target (lower is better).
    pub mean_rank: f64,
    /// Cases averaged.
    pub n: usize,
}

/// NDCG@k of one case whose target is at 1-based `rank`.
pub fn ndcg_at(rank: usize, k: usize) -> f64 {
    if rank >= 1 && rank <= k {
        1.0 / ((rank + 1) as f64).log2()
    } else {
        0.0
    }
}

/// Metrics of cases given each target's 1-based rank.
pub fn from_ranks(ranks: &[usize]) -> Metrics {
    let n = ranks.len();
    if n == 0 {
        return Metrics::default();
    }
    let mean = |f: &dyn Fn(usize) -> f64| ranks.iter().map(|&r| f(r)).sum::<f64>() / n as f64;
    Metrics {
        ndcg_1: mean(&|r| ndcg_at(r, 1)),
        ndcg_5: mean(&|r| ndcg_at(r, 5)),
        ndcg_10: mean(&|r| ndcg_at(r, 10)),
        hr_1: mean(&|r| (r <= 1) as u8 as f64),
        hr_5: mean(&|r| (r <= 5) as u8 as f64),
        hr_10: mean(&|r| (r <= 10) as u8 as f64),
        mrr: mean(&|r| 1.0 / r as f64),
        mean_rank: mean(&|r| r as f64),
        n,
    }
}

impl Metrics {
    fn fields(&self) -> [f64; 8] {
        [
            self.ndcg_1,
            self.ndcg_5,
            self.ndcg_10,
            self.hr_1,
            self.hr_5,
            self.hr_10,
            self.mrr,
            self.mean_rank,
        ]
    }

    fn from_fields(f: [f64; 8], n: usize) -> Metrics {
        Metrics {
            ndcg_1: f[0],
            ndcg_5: f[1],
            ndcg_10: f[2],
            hr_1: f[3],
            hr_5: f[4],
            hr_10: f[5],
            mrr: f[6],
            mean_rank: f[7],
            n,
        }
    }
}

impl Metrics {
    /// The same figures over `self.n + misses` users, where each of the `misses` users never
    /// saw the item (it was outside the list): NDCG, HR and MRR count 0 for them and their
    /// rank counts as `miss_rank` (the list length + 1).
    pub fn with_misses(&self, misses: usize, miss_rank: usize) -> Metrics {
        let all = self.n + misses;
        if misses == 0 || all == 0 {
            return *self;
        }
        let keep = self.n as f64 / all as f64;
        let mut f = self.fields().map(|v| v * keep);
        f[7] += (misses * miss_rank) as f64 / all as f64;
        Metrics::from_fields(f, all)
    }
}

/// Mean and sample standard deviation of per-seed metrics (std is 0 for one seed); `n` of
/// both is the number of seeds.
pub fn mean_and_std(per_seed: &[Metrics]) -> (Metrics, Metrics) {
    let s = per_seed.len();
    if s == 0 {
        return (Metrics::default(), Metrics::default());
    }
    let mut mean = [0.0; 8];
    for m in per_seed {
        for (a, v) in mean.iter_mut().zip(m.fields()) {
            *a += v / s as f64;
        }
    }
    let mut var = [0.0; 8];
    if s > 1 {
        for m in per_seed {
            for ((a, v), mu) in var.iter_mut().zip(m.fields()).zip(mean) {
                *a += (v - mu).powi(2) / (s - 1) as f64;
            }
        }
    }
    (
        Metrics::from_fields(mean, s),
        Metrics::from_fields(var.map(f64::sqrt), s),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn hand_computed_values() {
        // Ranks 1, 3, 12: NDCG@10 = (1 + 1/log2(4) + 0) / 3 = (1 + 0.5) / 3 = 0.5
        let m = from_ranks(&[1, 3, 12]);
        assert!(close(m.ndcg_10, 0.5), "{m:?}");
        assert!(close(m.ndcg_1, 1.0 / 3.0));
        assert!(close(m.ndcg_5, 0.5));
        assert!(close(m.hr_1, 1.0 / 3.0) && close(m.hr_5, 2.0 / 3.0) && close(m.hr_10, 2.0 / 3.0));
        assert!(close(m.mrr, (1.0 + 1.0 / 3.0 + 1.0 / 12.0) / 3.0));
        assert!(close(m.mean_rank, 16.0 / 3.0));
        assert_eq!(m.n, 3);
        // Rank 2: 1/log2(3) = 0.6309...
        assert!(close(ndcg_at(2, 5), 0.630_929_753_571_457_4));
        assert_eq!(ndcg_at(6, 5), 0.0);
    }

    #[test]
    fn misses_count_as_zero_and_as_the_rank_after_the_list() {
        // 2 users in the list at ranks 1 and 3, 2 users outside a 20-item list.
        let m = from_ranks(&[1, 3]).with_misses(2, 21);
        let expected = from_ranks(&[1, 3, 21, 21]);
        assert!(close(m.ndcg_10, expected.ndcg_10) && close(m.ndcg_10, 1.5 / 4.0));
        assert!(close(m.hr_5, 0.5) && close(m.mrr, (1.0 + 1.0 / 3.0) / 4.0));
        assert!(close(m.mean_rank, expected.mean_rank));
        assert_eq!(m.n, 4);
        assert_eq!(from_ranks(&[2]).with_misses(0, 21), from_ranks(&[2]));
    }

    #[test]
    fn spread_over_seeds() {
        let a = from_ranks(&[1]);
        let b = from_ranks(&[3]);
        let (mean, std) = mean_and_std(&[a, b]);
        assert!(close(mean.mean_rank, 2.0) && close(std.mean_rank, 2f64.sqrt()));
        assert!(close(mean.ndcg_10, 0.75));
        let (_, std1) = mean_and_std(&[a]);
        assert_eq!(std1.mean_rank, 0.0);
    }
}
