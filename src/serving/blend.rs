//! The blend: which weights fuse the LLM ranking with the non-LLM rankings (the request's
//! override, or a blend version by label, A/B split or number), the non-LLM orders themselves
//! (incoming, popularity, item-kNN), and the fused answer. The item-kNN model is fit per
//! project in the background and refreshed; until the first fit is done the component is
//! skipped and the answer says so.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{FallbackRanker, PromptSelector, RerankError, RerankRequest, Reranker};
use crate::rankers::{BlendWeights, Component, Cooc, Incoming, ItemKnn, Popularity, Ranker, fuse};
use crate::store::blends::{self, BLEND};
use crate::store::rerank::{self as db, ItemLite};

/// Which blend answers a request.
#[derive(Debug, Clone, PartialEq)]
pub enum BlendSelector {
    /// A stored version by label (an A/B split picks by a stable hash of the user) or number.
    Stored(PromptSelector),
    /// Weights given with the request.
    Weights(BlendWeights),
}

/// The blend that answered, as reported in `meta.blend` and logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BlendUsed {
    /// The stored version (null when the request gave its own weights).
    pub version: Option<i32>,
    pub weights: BlendWeights,
    /// The stored version's rank mode (null: the request's or the server's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank_mode: Option<crate::agp::rank::RankMode>,
    /// Components with weight that could not take part (`llm` after an LLM fault, `item_knn`
    /// while the project's model is first being fit).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

/// A stored blend version as used.
fn stored_blend(version: i32, text: &str) -> Result<BlendUsed, RerankError> {
    let spec = blends::decode(text).ok_or_else(|| {
        RerankError::Invalid(format!("blend version {version} holds no readable weights"))
    })?;
    Ok(BlendUsed {
        version: Some(version),
        weights: spec.weights,
        rank_mode: spec.rank_mode,
        skipped: Vec::new(),
    })
}

/// How often a project's item-kNN model is refit from its interactions.
pub const KNN_REFRESH: Duration = Duration::from_secs(600);
/// Wait before retrying a failed fit.
const KNN_RETRY: Duration = Duration::from_secs(30);

/// The item-kNN models of the projects, fit in the background.
#[derive(Default)]
pub struct KnnModels {
    entries: Mutex<HashMap<String, KnnEntry>>,
}

struct KnnEntry {
    model: Option<Arc<Cooc>>,
    fitting: bool,
    next_fit: Instant,
}

impl Reranker {
    /// The request's blend: its own weights, or the stored version its selector names; and
    /// the control's when the blend label interleaves and the user is in the interleaved
    /// share (the first is then the treatment's).
    pub(super) async fn blend_for(
        &self,
        req: &RerankRequest,
    ) -> Result<(BlendUsed, Option<BlendUsed>), RerankError> {
        match &req.blend {
            BlendSelector::Weights(w) => Ok((
                BlendUsed {
                    version: None,
                    weights: *w,
                    rank_mode: None,
                    skipped: Vec::new(),
                },
                None,
            )),
            BlendSelector::Stored(sel) => {
                let pair = self
                    .resolve_pair(&req.project, BLEND, "blend", sel, &req.user_id)
                    .await?;
                let control = match pair.control {
                    Some((v, text)) => Some(stored_blend(v, &text)?),
                    None => None,
                };
                Ok((stored_blend(pair.chosen.0, &pair.chosen.1)?, control))
            }
        }
    }

    /// The answer's order: the blend's components fused. `llm` is the LLM's order, `None`
    /// when it was not asked or failed; then the fallback ranker takes the LLM's place and
    /// weight (the incoming order by default, so a blend of the LLM and the incoming order
    /// falls back to the incoming order).
    pub(super) async fn fused_order(
        &self,
        req: &RerankRequest,
        blend: &mut BlendUsed,
        llm: Option<&[usize]>,
        candidates: &[Arc<ItemLite>],
        history: &[Arc<ItemLite>],
    ) -> Vec<usize> {
        let mut weights = blend.weights;
        if llm.is_none() && weights.llm > 0.0 {
            blend.skipped.push(Component::Llm.as_str().into());
            let stand_in = fallback_component(self.settings.fallback_ranker);
            weights.set(stand_in, weights.get(stand_in) + weights.llm);
            weights.llm = 0.0;
        }
        let ids: Vec<String> = candidates.iter().map(|c| c.id.clone()).collect();
        let hist: Vec<String> = history.iter().map(|h| h.id.clone()).collect();
        let mut orders: Vec<(f64, Vec<usize>)> = Vec::new();
        for c in weights.active() {
            let order = match c {
                Component::Llm => llm.map(<[usize]>::to_vec),
                Component::Incoming => Some(Incoming.rank("", &[], &ids)),
                Component::Popularity => Some(self.popularity_order(&req.project, &ids).await),
                Component::ItemKnn => self.knn_model(&req.project).map(|m| {
                    ItemKnn::last(m, self.settings.history_len).rank(&req.user_id, &hist, &ids)
                }),
            };
            match order {
                Some(o) => orders.push((weights.get(c), o)),
                None => blend.skipped.push(c.as_str().into()),
            }
        }
        let parts: Vec<(f64, &[usize])> = orders.iter().map(|(w, o)| (*w, o.as_slice())).collect();
        fuse(&parts, ids.len()).0
    }

    /// Candidates by their interaction counts (the incoming order when the lookup fails).
    async fn popularity_order(&self, project: &str, ids: &[String]) -> Vec<usize> {
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        match db::popularity(&self.pool, project, &refs).await {
            Ok(counts) => {
                let counts = counts
                    .into_iter()
                    .map(|(k, v)| (k, v.max(0) as u64))
                    .collect();
                Popularity::from_counts(counts).rank("", &[], ids)
            }
            Err(e) => {
                tracing::warn!(error = %e, "popularity lookup failed; using the incoming order");
                Incoming.rank("", &[], ids)
            }
        }
    }

    /// The project's item-kNN model; `None` while its first fit runs (started here). A
    /// model older than [`KNN_REFRESH`] is refit in the background and served meanwhile.
    pub fn knn_model(&self, project: &str) -> Option<Arc<Cooc>> {
        let mut entries = self.knn.entries.lock().unwrap_or_else(|p| p.into_inner());
        let e = entries.entry(project.to_string()).or_insert(KnnEntry {
            model: None,
            fitting: false,
            next_fit: Instant::now(),
        });
        if !e.fitting && Instant::now() >= e.next_fit {
            e.fitting = true;
            let (pool, knn, project) = (self.pool.clone(), self.knn.clone(), project.to_string());
            tokio::spawn(async move {
                let fitted = fit_knn(&pool, &project).await;
                let mut entries = knn.entries.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(e) = entries.get_mut(&project) {
                    e.fitting = false;
                    match fitted {
                        Ok(m) => {
                            e.model = Some(m);
                            e.next_fit = Instant::now() + KNN_REFRESH;
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, project, "item-kNN fit failed; retrying later");
                            e.next_fit = Instant::now() + KNN_RETRY;
                        }
                    }
                }
            });
        }
        e.model.clone()
    }
}

/// Why a model could not be fit.
pub type FitError = Box<dyn std::error::Error + Send + Sync>;

/// Fits a project's co-occurrence model from every stored interaction sequence.
async fn fit_knn(pool: &sqlx::PgPool, project: &str) -> Result<Arc<Cooc>, FitError> {
    let started = Instant::now();
    let seqs: Vec<Vec<String>> = crate::store::catalog::user_sequences(pool, project)
        .await?
        .into_iter()
        .map(|(_, items)| items)
        .collect();
    let model = tokio::task::spawn_blocking(move || {
        Cooc::fit(&seqs, Cooc::DEFAULT_WINDOW, Cooc::DEFAULT_RECENT)
    })
    .await?;
    tracing::info!(
        project,
        items = model.item_count(),
        ms = started.elapsed().as_millis() as u64,
        "item-kNN model fit"
    );
    Ok(Arc::new(model))
}

/// The component the fallback ranker setting stands for.
fn fallback_component(r: FallbackRanker) -> Component {
    match r {
        FallbackRanker::Incoming => Component::Incoming,
        FallbackRanker::Popularity => Component::Popularity,
        FallbackRanker::ItemKnn => Component::ItemKnn,
    }
}
