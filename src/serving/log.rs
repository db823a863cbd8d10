//! The request log: every answered rerank is a row (the list as sent, the order answered,
//! the prompt versions, the profile), on disk in the journal before the answer leaves and
//! in Postgres right after. Feedback joins to it; the closed loop learns from it.

use std::time::{Duration, Instant};

use super::{RerankOutcome, RerankRequest, Reranker};
use crate::store::journal::Record;
use crate::store::rerank::{self as db, RerankLogRow};

/// Longest wait for the journal before answering anyway (a sick disk must not stall answers).
const LOG_WAIT: Duration = Duration::from_secs(2);

impl Reranker {
    /// Waits until every logged request is stored (feedback joins, tests, shutdown).
    pub async fn flush(&self) {
        if let Some(j) = &self.journal {
            j.flush().await;
        }
    }

    /// Waits (up to `within`) until every logged request is in Postgres.
    pub async fn flush_within(&self, within: Duration) -> bool {
        match &self.journal {
            Some(j) => j.flush_within(within).await,
            None => true,
        }
    }

    /// Logs an answered request: on disk (the journal) when this returns, in Postgres soon
    /// after. A failure is counted and logged; the answer still goes.
    pub(super) async fn log(&self, req: &RerankRequest, out: &RerankOutcome, started: Instant) {
        let fallback = out.fallback.map(|f| f.as_str());
        metrics::counter!("agp_rerank_total", "fallback" => fallback.unwrap_or("none"))
            .increment(1);
        metrics::histogram!("agp_rerank_duration_seconds").record(started.elapsed().as_secs_f64());
        let ids = |order: &mut dyn Iterator<Item = usize>| {
            serde_json::Value::from(
                order
                    .map(|c| req.candidates[c].id.clone())
                    .collect::<Vec<_>>(),
            )
        };
        let row = RerankLogRow {
            id: req.request_id.clone(),
            created_at: chrono::Utc::now(),
            project: req.project.clone(),
            user_id: req.user_id.clone(),
            candidates: ids(&mut (0..req.candidates.len())),
            result_order: ids(&mut out.order.iter().copied()),
            prompt_version: Some(out.prompt_version),
            prompt_versions: serde_json::to_value(&out.prompt_versions).unwrap_or_default(),
            profile_id: out.profile_id,
            model: out.model.clone(),
            fallback: fallback.map(str::to_string),
            repaired: out.repaired,
            latency_ms: out.latency_ms.min(i32::MAX as u64) as i32,
            usage: serde_json::to_value(out.usage).unwrap_or_default(),
            blend: serde_json::to_value(&out.blend).unwrap_or_default(),
            history: serde_json::Value::from(out.history.clone()),
            teams: out
                .interleaving
                .as_ref()
                .map(|i| crate::experiment::interleave::encode_teams(&i.teams)),
        };
        let Some(journal) = &self.journal else {
            if let Err(e) = db::insert_rerank_logs(&self.pool, std::slice::from_ref(&row)).await {
                metrics::counter!("agp_journal_dropped_total", "kind" => "rerank").increment(1);
                tracing::warn!(error = %e, request_id = %row.id, "rerank log row lost");
            }
            return;
        };
        match tokio::time::timeout(LOG_WAIT, journal.append(&Record::Rerank(row))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, request_id = %req.request_id, "rerank log row not journaled")
            }
            Err(_) => {
                metrics::counter!("agp_journal_slow_total").increment(1);
                tracing::warn!(request_id = %req.request_id, "the journal took over 2 s; answering before the row is on disk");
            }
        }
    }
}
