//! The replay simulator (`agp simulate`, and tests): plays a data set's users against a
//! running service. Each simulated request takes a user with at least two items, sends their
//! items but the last as the (inline) history and a candidate list holding the last item
//! (`llmrank`: it and random items the user never touched; `popularity`: the most popular
//! items, which may miss it), and clicks what the click model says, through `POST /v1/feedback`.
//!
//! Click model (position-based examination, Joachims et al. 2017): the item shown at 1-based
//! rank r <= k is examined with probability `1 / r^eta`; the user's real next item is clicked
//! when examined; any other examined item is clicked with probability `noise`. Items below k
//! are never examined. So a ranking that puts the real item higher earns more clicks.

use std::collections::{BTreeMap, HashSet};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::import::Dataset;

/// The click model.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClickModel {
    /// Position-bias exponent (1: rank 2 is examined half as often as rank 1).
    pub eta: f64,
    /// Ranks examined at most.
    pub k: usize,
    /// Click probability of an examined item that is not the user's real next item.
    pub noise: f64,
}

impl Default for ClickModel {
    fn default() -> Self {
        ClickModel {
            eta: 1.0,
            k: 10,
            noise: 0.0,
        }
    }
}

impl ClickModel {
    /// Probability that the item at 0-based position `pos` is examined.
    pub fn examined(&self, pos: usize) -> f64 {
        if pos >= self.k {
            0.0
        } else {
            1.0 / ((pos + 1) as f64).powf(self.eta)
        }
    }

    /// The items clicked in `shown` (best first) by a user whose real next item is `target`.
    pub fn clicks(&self, shown: &[String], target: &str, rng: &mut impl Rng) -> Vec<String> {
        let mut out = Vec::new();
        for (pos, id) in shown.iter().enumerate().take(self.k) {
            if rng.random::<f64>() >= self.examined(pos) {
                continue;
            }
            if id == target || rng.random::<f64>() < self.noise {
                out.push(id.clone());
            }
        }
        out
    }
}

/// How candidate lists are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lists {
    /// The real next item and random items the user never touched, shuffled.
    Llmrank,
    /// The most popular items the user has not touched (the real item only if among them).
    Popularity,
}

/// One simulated user: history (oldest first) and the real next item.
#[derive(Debug, Clone, PartialEq)]
pub struct SimUser {
    pub id: String,
    pub history: Vec<String>,
    pub target: String,
}

/// The users of a data set with at least two items.
pub fn users(data: &Dataset) -> Vec<SimUser> {
    let mut grouped: Vec<(String, Vec<String>)> = Vec::new();
    for it in &data.interactions {
        match grouped.last_mut() {
            Some((u, items)) if *u == it.user_id => items.push(it.item_id.clone()),
            _ => grouped.push((it.user_id.clone(), vec![it.item_id.clone()])),
        }
    }
    grouped
        .into_iter()
        .filter(|(_, items)| items.len() >= 2)
        .map(|(id, mut items)| {
            let target = items.pop().unwrap_or_default();
            SimUser {
                id,
                history: items,
                target,
            }
        })
        .collect()
}

/// What a simulation is asked for.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Service base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// Bearer key (`rerank` scope), if the service has auth on.
    pub key: Option<String>,
    pub requests: usize,
    /// Distinct users drawn from (the first `users` of a seeded shuffle).
    pub users: usize,
    pub candidates: usize,
    pub lists: Lists,
    /// History items sent (the most recent).
    pub history_len: usize,
    pub click: ClickModel,
    pub seed: u64,
    pub concurrency: usize,
    /// Feedback kind sent for a click.
    pub kind: String,
}

/// What happened, overall and per `p_gen` version that answered.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SimReport {
    pub requests: usize,
    pub users: usize,
    pub clicks: usize,
    /// Requests with a click.
    pub clicked_requests: usize,
    /// Requests that failed (not 200) and were not counted.
    pub failures: usize,
    /// `p_gen` version -> (requests, requests with a click).
    pub by_version: BTreeMap<i64, (usize, usize)>,
}

/// One planned request: the user, and the candidate list.
fn plan(users: &[SimUser], data: &Dataset, o: &SimOptions) -> Vec<(usize, Vec<String>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(o.seed);
    let mut order: Vec<usize> = (0..users.len()).collect();
    order.shuffle(&mut rng);
    order.truncate(o.users.max(1));
    let items: Vec<&str> = data.items.iter().map(|i| i.id.as_str()).collect();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for it in &data.interactions {
        *counts.entry(it.item_id.as_str()).or_default() += 1;
    }
    let mut popular: Vec<&str> = counts.keys().copied().collect();
    popular.sort_by_key(|id| std::cmp::Reverse(counts[id]));
    (0..o.requests)
        .map(|n| {
            let u = order[n % order.len()];
            let user = &users[u];
            let seen: HashSet<&str> = user
                .history
                .iter()
                .map(String::as_str)
                .chain([user.target.as_str()])
                .collect();
            let list: Vec<String> = match o.lists {
                Lists::Llmrank => {
                    let mut l = vec![user.target.clone()];
                    let wanted = o.candidates.saturating_sub(1).min(items.len());
                    let mut tries = 0;
                    while l.len() <= wanted && tries < wanted * 50 {
                        tries += 1;
                        let c = items[rng.random_range(0..items.len())];
                        if !seen.contains(c) && !l.iter().any(|x| x == c) {
                            l.push(c.to_string());
                        }
                    }
                    l.shuffle(&mut rng);
                    l
                }
                Lists::Popularity => popular
                    .iter()
                    .filter(|id| !user.history.iter().any(|h| h == *id))
                    .take(o.candidates)
                    .map(|s| s.to_string())
                    .collect(),
            };
            (u, list)
        })
        .collect()
}

/// Plays the simulation against the service.
pub async fn run(data: &Dataset, o: &SimOptions) -> anyhow::Result<SimReport> {
    let users = users(data);
    anyhow::ensure!(!users.is_empty(), "the data set has no user with two items");
    let planned = plan(&users, data, o);
    let http = reqwest::Client::new();
    let report = std::sync::Mutex::new(SimReport::default());
    let distinct: HashSet<usize> = planned.iter().map(|p| p.0).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let worker = |w: usize| {
        let (http, planned, users, report, next) = (&http, &planned, &users, &report, &next);
        async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(o.seed ^ (w as u64 + 1) << 32);
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((u, list)) = planned.get(n) else {
                    return;
                };
                let outcome = one(http, o, &users[*u], list, &mut rng).await;
                let mut r = report.lock().unwrap_or_else(|p| p.into_inner());
                match outcome {
                    Ok((version, clicks)) => {
                        r.requests += 1;
                        r.clicks += clicks;
                        r.clicked_requests += usize::from(clicks > 0);
                        let e = r.by_version.entry(version).or_default();
                        e.0 += 1;
                        e.1 += usize::from(clicks > 0);
                    }
                    Err(e) => {
                        r.failures += 1;
                        tracing::warn!(error = %e, "simulated request failed");
                    }
                }
            }
        }
    };
    futures_util::future::join_all((0..o.concurrency.max(1)).map(worker)).await;
    let mut r = report.into_inner().unwrap_or_else(|p| p.into_inner());
    r.users = distinct.len();
    Ok(r)
}

/// One request and its clicks: (the `p_gen` version that answered, clicks sent).
async fn one(
    http: &reqwest::Client,
    o: &SimOptions,
    user: &SimUser,
    list: &[String],
    rng: &mut impl Rng,
) -> anyhow::Result<(i64, usize)> {
    let start = user.history.len().saturating_sub(o.history_len.max(1));
    let history: Vec<Value> = user.history[start..]
        .iter()
        .map(|id| json!({"id": id}))
        .collect();
    let candidates: Vec<Value> = list.iter().map(|id| json!({"id": id})).collect();
    let body = json!({"user_id": user.id, "candidates": candidates, "history": history});
    let answer: Value = send(http, o, "/v1/rerank", &body).await?;
    let shown: Vec<String> = answer["results"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let version = answer["meta"]["prompt"]["version"].as_i64().unwrap_or(0);
    let request_id = answer["id"].as_str().unwrap_or_default().to_string();
    let clicks = o.click.clicks(&shown, &user.target, rng);
    for item in &clicks {
        let fb =
            json!({"request_id": request_id, "user_id": user.id, "item_id": item, "kind": o.kind});
        send(http, o, "/v1/feedback", &fb).await?;
    }
    Ok((version, clicks.len()))
}

async fn send(
    http: &reqwest::Client,
    o: &SimOptions,
    path: &str,
    body: &Value,
) -> anyhow::Result<Value> {
    let mut req = http
        .post(format!("{}{path}", o.url.trim_end_matches('/')))
        .json(body);
    if let Some(k) = &o.key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    anyhow::ensure!(status.is_success(), "{path} answered {status}: {v}");
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examination_falls_with_rank_and_stops_at_k() {
        let m = ClickModel {
            eta: 1.0,
            k: 3,
            noise: 0.0,
        };
        assert_eq!(m.examined(0), 1.0);
        assert_eq!(m.examined(1), 0.5);
        assert!((m.examined(2) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(m.examined(3), 0.0);
        let steep = ClickModel { eta: 2.0, ..m };
        assert_eq!(steep.examined(1), 0.25);
    }

    #[test]
    fn the_real_item_is_clicked_as_often_as_it_is_examined() {
        let m = ClickModel::default();
        let shown: Vec<String> = (0..20).map(|i| format!("i{i}")).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for (pos, expected) in [(0usize, 1.0), (1, 0.5), (3, 0.25), (12, 0.0)] {
            let target = format!("i{pos}");
            let n = 20_000;
            let hits = (0..n)
                .filter(|_| !m.clicks(&shown, &target, &mut rng).is_empty())
                .count();
            let rate = hits as f64 / n as f64;
            assert!((rate - expected).abs() < 0.015, "rank {pos}: {rate}");
        }
        // No noise: only the real item is ever clicked.
        let clicks = m.clicks(&shown, "i0", &mut rng);
        assert_eq!(clicks, vec!["i0".to_string()]);
        // Noise: other examined items are clicked too, never below k.
        let noisy = ClickModel {
            noise: 1.0,
            k: 2,
            eta: 0.0,
        };
        assert_eq!(noisy.clicks(&shown, "zz", &mut rng), vec!["i0", "i1"]);
    }

    #[test]
    fn users_hold_out_their_last_item() {
        use crate::catalog::NewInteraction;
        let it = |u: &str, i: &str| NewInteraction {
            user_id: u.into(),
            item_id: i.into(),
            kind: None,
            value: None,
            timestamp: None,
        };
        let data = Dataset {
            items: Vec::new(),
            interactions: vec![it("a", "1"), it("a", "2"), it("a", "3"), it("b", "9")],
            notes: Vec::new(),
        };
        assert_eq!(
            users(&data),
            vec![SimUser {
                id: "a".into(),
                history: vec!["1".into(), "2".into()],
                target: "3".into()
            }]
        );
    }
}
