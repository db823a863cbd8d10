//! The replay simulator (`agp simulate`, and tests): plays a data set's users against a
//! running service. Each simulated request takes a user with at least two items, sends their
//! items but the last as the (inline) history and a candidate list holding the last item
//! (`llmrank`: it and random items the user never touched; `popularity`: the most popular
//! items, which may miss it), and clicks what the click model says, through `POST /v1/feedback`.
//!
//! The service must not hold what a simulated user is asked to find: when it holds the data
//! set's every interaction, its popularity and item-kNN rankers are fit on the held-out items
//! themselves. `agp import --hold-out-last` leaves out exactly the interaction [`users`] holds
//! out ([`crate::import::held_out_target`] is the one definition), and [`check_leak`] reads a
//! sample of the planned users' stored histories to find out (`agp simulate` refuses a leak).
//!
//! Click model (position-based examination, Joachims et al. 2017): the item shown at 1-based
//! rank r <= k is examined with probability `1 / r^eta`; the user's real next item is clicked
//! when examined; any other examined item is clicked with probability `noise`. Items below k
//! are never examined. So a ranking that puts the real item higher earns more clicks.

use std::collections::{BTreeMap, HashSet};

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

use crate::import::{self, Dataset};

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

/// The users of a data set with at least two items: each user's last interaction is the
/// target, the ones before it the history. The target is [`import::held_out_target`], the
/// interaction `agp import --hold-out-last` leaves out.
pub fn users(data: &Dataset) -> Vec<SimUser> {
    let its = &data.interactions;
    import::user_runs(its)
        .into_iter()
        .filter_map(|run| {
            let target = import::held_out_target(&run)?;
            Some(SimUser {
                id: its[run.start].user_id.clone(),
                history: its[run.start..target]
                    .iter()
                    .map(|it| it.item_id.clone())
                    .collect(),
                target: its[target].item_id.clone(),
            })
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

/// What happened, overall and per arm (what answered: see [`arm_key`]).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct SimReport {
    pub requests: usize,
    pub users: usize,
    pub clicks: usize,
    /// Requests with a click.
    pub clicked_requests: usize,
    /// Requests that failed (not 200) and were not counted.
    pub failures: usize,
    /// Mean over requests of 1 / (1 + the 0-based position of the user's real next item in the
    /// answer); 0 for a request whose answer does not show it.
    pub mrr: f64,
    /// Share of requests whose real next item was among the first `k` (the click model's) shown.
    pub hr_at_k: f64,
    /// `p_gen` version -> (requests, requests with a click). `by_arm` tells the arms apart
    /// (a blend experiment's arms share one `p_gen` version).
    pub by_version: BTreeMap<i64, (usize, usize)>,
    /// [`arm_key`] of the answers -> their figures.
    pub by_arm: BTreeMap<String, ArmReport>,
}

/// The figures of the requests one arm answered.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ArmReport {
    pub requests: usize,
    /// Requests with a click.
    pub clicked_requests: usize,
    pub clicks: usize,
    /// clicked_requests / requests.
    pub click_through: f64,
    /// As [`SimReport::mrr`], over this arm's requests.
    pub mrr: f64,
    /// As [`SimReport::hr_at_k`], over this arm's requests.
    pub hr_at_k: f64,
}

/// What answered a rerank, from its `meta`: `interleaved {name} v{control}+v{treatment}` when
/// `meta.interleaving` is an object (an interleaved experiment), else
/// `p_gen v{meta.prompt.version} · blend v{meta.blend.version}` (`blend request` when the
/// request gave its own weights).
pub fn arm_key(meta: &Value) -> String {
    fn version(v: &Value) -> String {
        match v.as_i64() {
            Some(n) => n.to_string(),
            None => "?".into(),
        }
    }
    let il = &meta["interleaving"];
    if il.is_object() {
        return format!(
            "interleaved {} v{}+v{}",
            il["name"].as_str().unwrap_or("?"),
            version(&il["control"]),
            version(&il["treatment"])
        );
    }
    let blend = match meta["blend"]["version"].as_i64() {
        Some(v) => format!("blend v{v}"),
        None => "blend request".into(),
    };
    format!("p_gen v{} · {blend}", version(&meta["prompt"]["version"]))
}

/// The seeded order users are drawn in (the first `o.users` of a shuffle).
fn draw_order(n: usize, o: &SimOptions, rng: &mut impl Rng) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    order.truncate(o.users.max(1));
    order
}

/// One planned request: the user, and the candidate list.
fn plan(users: &[SimUser], data: &Dataset, o: &SimOptions) -> Vec<(usize, Vec<String>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(o.seed);
    let order = draw_order(users.len(), o, &mut rng);
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

/// The distinct users a simulation with `o` plays, in the order it first plays them.
pub fn planned_users(data: &Dataset, o: &SimOptions) -> Vec<SimUser> {
    let users = users(data);
    if users.is_empty() {
        return Vec::new();
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(o.seed);
    let order = draw_order(users.len(), o, &mut rng);
    let n = o.requests.min(order.len());
    order[..n].iter().map(|&u| users[u].clone()).collect()
}

/// The history endpoint's largest `limit`: what [`check_leak`] reads of a user.
const HISTORY_LIMIT: i64 = 1000;

/// Users read by [`check_leak`] at most.
pub const LEAK_SAMPLE: usize = 20;

/// What [`check_leak`] found.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct LeakCheck {
    /// Planned users whose stored history was read.
    pub sampled: usize,
    /// (user, held-out item) of the sampled users whose held-out item the service holds.
    pub leaking: Vec<(String, String)>,
}

/// Whether the service already holds the interactions the simulation holds out: for the first
/// `sample` planned users, reads `GET /v1/users/{id}/history?limit=1000` (newest last) and
/// counts a user as leaking when the stored history has their target item more often than the
/// history the simulator sends does. A user the service does not know (404) does not leak.
/// [`run`] does not call this; `agp simulate` does, before sending anything.
pub async fn check_leak(
    data: &Dataset,
    o: &SimOptions,
    sample: usize,
) -> anyhow::Result<LeakCheck> {
    let http = reqwest::Client::new();
    let mut check = LeakCheck::default();
    for user in planned_users(data, o).into_iter().take(sample) {
        let mut url = reqwest::Url::parse(o.url.trim_end_matches('/'))?;
        url.path_segments_mut()
            .map_err(|_| anyhow::anyhow!("{} cannot be a base URL", o.url))?
            .pop_if_empty()
            .extend(["v1", "users", user.id.as_str(), "history"]);
        url.query_pairs_mut()
            .append_pair("limit", &HISTORY_LIMIT.to_string());
        let mut req = http.get(url.clone());
        if let Some(k) = &o.key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await?;
        let status = resp.status();
        check.sampled += 1;
        if status == reqwest::StatusCode::NOT_FOUND {
            continue;
        }
        let v: Value = resp.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(status.is_success(), "GET {url} answered {status}: {v}");
        let count = |ids: &mut dyn Iterator<Item = &str>| ids.filter(|i| *i == user.target).count();
        let stored = count(
            &mut v["history"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|h| h["item_id"].as_str()),
        );
        let sent = count(&mut user.history.iter().map(String::as_str));
        if stored > sent {
            check.leaking.push((user.id.clone(), user.target.clone()));
        }
    }
    Ok(check)
}

/// One answered request.
struct Outcome {
    arm: String,
    version: i64,
    clicks: usize,
    /// 0-based position of the real next item in the answer.
    position: Option<usize>,
}

/// Plays the simulation against the service. It does not look for leaks: see [`check_leak`].
pub async fn run(data: &Dataset, o: &SimOptions) -> anyhow::Result<SimReport> {
    let users = users(data);
    anyhow::ensure!(!users.is_empty(), "the data set has no user with two items");
    let planned = plan(&users, data, o);
    let http = reqwest::Client::new();
    let report = std::sync::Mutex::new(SimReport::default());
    let distinct: HashSet<usize> = planned.iter().map(|p| p.0).collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let k = o.click.k;
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
                    Ok(x) => {
                        let clicked = usize::from(x.clicks > 0);
                        // Sums while running; made means at the end.
                        let rr = x.position.map_or(0.0, |p| 1.0 / (p + 1) as f64);
                        let hit = if x.position.is_some_and(|p| p < k) {
                            1.0
                        } else {
                            0.0
                        };
                        r.requests += 1;
                        r.clicks += x.clicks;
                        r.clicked_requests += clicked;
                        r.mrr += rr;
                        r.hr_at_k += hit;
                        let e = r.by_version.entry(x.version).or_default();
                        e.0 += 1;
                        e.1 += clicked;
                        let a = r.by_arm.entry(x.arm).or_default();
                        a.requests += 1;
                        a.clicks += x.clicks;
                        a.clicked_requests += clicked;
                        a.mrr += rr;
                        a.hr_at_k += hit;
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
    let mean = |sum: f64, n: usize| if n == 0 { 0.0 } else { sum / n as f64 };
    r.mrr = mean(r.mrr, r.requests);
    r.hr_at_k = mean(r.hr_at_k, r.requests);
    for a in r.by_arm.values_mut() {
        a.click_through = mean(a.clicked_requests as f64, a.requests);
        a.mrr = mean(a.mrr, a.requests);
        a.hr_at_k = mean(a.hr_at_k, a.requests);
    }
    Ok(r)
}

/// One request and its clicks.
async fn one(
    http: &reqwest::Client,
    o: &SimOptions,
    user: &SimUser,
    list: &[String],
    rng: &mut impl Rng,
) -> anyhow::Result<Outcome> {
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
    let arm = arm_key(&answer["meta"]);
    let request_id = answer["id"].as_str().unwrap_or_default().to_string();
    let clicks = o.click.clicks(&shown, &user.target, rng);
    for item in &clicks {
        let fb =
            json!({"request_id": request_id, "user_id": user.id, "item_id": item, "kind": o.kind});
        send(http, o, "/v1/feedback", &fb).await?;
    }
    Ok(Outcome {
        arm,
        version,
        clicks: clicks.len(),
        position: shown.iter().position(|id| *id == user.target),
    })
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
    fn the_history_read_is_the_endpoints_largest() {
        assert_eq!(HISTORY_LIMIT, crate::http::users::MAX_HISTORY_LIMIT);
    }

    #[test]
    fn arms_are_named_by_what_answered() {
        let meta = json!({"prompt": {"name": "p_gen", "version": 3}, "blend": {"version": 7, "weights": {}}});
        assert_eq!(arm_key(&meta), "p_gen v3 · blend v7");
        let meta = json!({"prompt": {"name": "p_gen", "version": 1}, "blend": {"version": null}});
        assert_eq!(arm_key(&meta), "p_gen v1 · blend request");
        let meta = json!({"prompt": {"name": "p_gen", "version": 1}, "blend": {"version": 2},
                          "interleaving": {"name": "blend", "control": 2, "treatment": 5, "teams": []}});
        assert_eq!(arm_key(&meta), "interleaved blend v2+v5");
        let meta = json!({"prompt": {"version": 1}, "blend": {"version": 2}, "interleaving": null});
        assert_eq!(arm_key(&meta), "p_gen v1 · blend v2");
    }

    #[test]
    fn planned_users_are_the_ones_played_first() {
        use crate::catalog::NewInteraction;
        let mut interactions = Vec::new();
        for u in 0..50 {
            for i in 0..3 {
                interactions.push(NewInteraction {
                    user_id: format!("u{u}"),
                    item_id: format!("i{}", u + i),
                    kind: None,
                    value: None,
                    timestamp: None,
                });
            }
        }
        let data = Dataset {
            items: Vec::new(),
            interactions,
            notes: Vec::new(),
        };
        let o = SimOptions {
            url: String::new(),
            key: None,
            requests: 30,
            users: 10,
            candidates: 5,
            lists: Lists::Popularity,
            history_len: 5,
            click: ClickModel::default(),
            seed: 4,
            concurrency: 1,
            kind: "click".into(),
        };
        let all = users(&data);
        let played: Vec<String> = plan(&all, &data, &o)
            .into_iter()
            .map(|(u, _)| all[u].id.clone())
            .collect();
        let planned: Vec<String> = planned_users(&data, &o).into_iter().map(|u| u.id).collect();
        assert_eq!(planned.len(), 10);
        assert_eq!(planned, played[..10]);
        let few = SimOptions { requests: 3, ..o };
        assert_eq!(planned_users(&data, &few).len(), 3);
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
