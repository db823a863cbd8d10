//! Catalog and behaviour ingestion: `PUT /v1/items`, `POST /v1/interactions`, `GET /v1/items/{id}`.

use axum::extract::State;
use axum::routing::{get, post, put};
use axum::{Extension, Router};
use chrono::{Duration, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{AppError, ErrorBody};
use super::extract::{Json, Path};
use super::state::AppState;
use crate::auth::Principal;
use crate::catalog::{self, NewInteraction, NewItem};
use crate::store::Invalidation;
use crate::store::catalog::{self as db, Item};

/// Routes of this area.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/items", put(upsert_items))
        .route("/v1/items/{id}", get(get_item))
        .route("/v1/interactions", post(post_interactions))
}

/// Body of `PUT /v1/items`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpsertItems {
    #[schema(min_items = 1, max_items = 1000)]
    pub items: Vec<NewItem>,
}

/// Answer of `PUT /v1/items`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Upserted {
    /// Items in the batch (all were written or none).
    pub upserted: usize,
    /// Of those, items that were new or whose content changed.
    pub changed: u64,
}

/// Upsert a batch of items, all or nothing. Re-sending the same items changes nothing.
#[utoipa::path(put, path = "/v1/items", tag = "catalog", request_body = UpsertItems,
    responses(
        (status = 200, description = "All items written", body = Upserted),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "A rule was broken (names the field and limit)", body = ErrorBody),
    ))]
pub async fn upsert_items(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Json(body): Json<UpsertItems>,
) -> Result<Json<Upserted>, AppError> {
    catalog::validate_items(&body.items, &state.config.limits)?;
    let mut tx = state.pool.begin().await?;
    let changed = db::upsert_items(&mut tx, &who.project, &body.items).await?;
    tx.commit().await?;
    state
        .reranker
        .caches
        .invalidate(&Invalidation::Items(who.project.clone()));
    Ok(Json(Upserted {
        upserted: body.items.len(),
        changed,
    }))
}

/// One catalog item.
#[utoipa::path(get, path = "/v1/items/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Item id")),
    responses(
        (status = 200, description = "The item", body = Item),
        (status = 404, description = "No such item", body = ErrorBody),
    ))]
pub async fn get_item(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<Item>, AppError> {
    db::get_item(&state.pool, &who.project, &id)
        .await?
        .map(Json)
        .ok_or_else(|| AppError::NotFound(format!("item {id:?} not found")))
}

/// Body of `POST /v1/interactions`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostInteractions {
    #[schema(min_items = 1, max_items = 10000)]
    pub interactions: Vec<NewInteraction>,
}

/// Answer of `POST /v1/interactions`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    /// Interactions in the batch (all were accepted or none).
    pub accepted: usize,
    /// Of those, events already stored (same user, item, kind and timestamp): not stored twice.
    pub duplicates: u64,
}

/// Record a batch of interactions, all or nothing. Every `item_id` must be in the catalog.
#[utoipa::path(post, path = "/v1/interactions", tag = "catalog", request_body = PostInteractions,
    responses(
        (status = 200, description = "All interactions accepted", body = Accepted),
        (status = 400, description = "Malformed JSON", body = ErrorBody),
        (status = 413, description = "Body too large", body = ErrorBody),
        (status = 422, description = "A rule was broken, e.g. an unknown item_id (named)", body = ErrorBody),
    ))]
pub async fn post_interactions(
    State(state): State<AppState>,
    Extension(who): Extension<Principal>,
    Json(body): Json<PostInteractions>,
) -> Result<Json<Accepted>, AppError> {
    let rows = body.interactions;
    catalog::validate_interactions(&rows, &state.config.limits)?;
    reject_duplicate_events(&rows)?;
    // Events without a timestamp get the receive time, a microsecond apart in batch order,
    // so their order is kept and two of them never collide.
    let now = Utc::now();
    let default_ts: Vec<_> = (0..rows.len())
        .map(|i| now + Duration::microseconds(i as i64))
        .collect();

    let mut tx = state.pool.begin().await?;
    let ids: Vec<&str> = rows.iter().map(|r| r.item_id.as_str()).collect();
    let missing = db::missing_items(&mut tx, &who.project, &ids).await?;
    if let Some(first) = missing.first() {
        let at = rows.iter().position(|r| &r.item_id == first).unwrap_or(0);
        return Err(AppError::Validation(format!(
            "interactions[{at}].item_id {first:?} is not in the catalog ({} unknown item id(s) in the batch; \
             add items with PUT /v1/items first); nothing was written",
            missing.len()
        )));
    }
    let res = db::insert_interactions(&mut tx, &who.project, &rows, &default_ts, true).await?;
    tx.commit().await?;
    let mut users: Vec<&str> = rows.iter().map(|r| r.user_id.as_str()).collect();
    users.sort_unstable();
    users.dedup();
    for &u in &users {
        state
            .reranker
            .caches
            .invalidate(&Invalidation::User(who.project.clone(), u.to_string()));
    }
    if let Some(r) = &state.refresher {
        r.enqueue(&who.project, users.iter().map(|u| u.to_string()));
    }
    Ok(Json(Accepted {
        accepted: rows.len(),
        duplicates: res.duplicates,
    }))
}

/// The same event (user, item, kind, timestamp) twice in one batch is a client bug.
fn reject_duplicate_events(rows: &[NewInteraction]) -> Result<(), AppError> {
    let mut seen = std::collections::HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        let Some(ts) = r.timestamp else { continue };
        let key = (
            r.user_id.as_str(),
            r.item_id.as_str(),
            r.kind.as_deref().unwrap_or(catalog::DEFAULT_KIND),
            ts,
        );
        if let Some(first) = seen.insert(key, i) {
            return Err(AppError::Validation(format!(
                "interactions[{i}] repeats interactions[{first}] (same user_id, item_id, kind and timestamp)"
            )));
        }
    }
    Ok(())
}
