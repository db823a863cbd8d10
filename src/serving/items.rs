//! Candidates and histories: catalog items from the cache or one query, inline items as
//! sent, and the user's recent items.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::cache::ItemKey;
use super::{ItemRef, RerankError, RerankRequest, Reranker};
use crate::store::rerank::{self as db, ItemLite};

impl Reranker {
    /// Catalog items for `refs` (inline items as given). Unknown ids without inline text are
    /// a client error naming the first.
    pub async fn load_items(
        &self,
        project: &str,
        refs: &[ItemRef],
        field: &str,
    ) -> Result<Vec<Arc<ItemLite>>, RerankError> {
        let mut found: HashMap<&str, Arc<ItemLite>> = HashMap::new();
        let mut to_fetch: HashSet<&str> = HashSet::new();
        for r in refs.iter().filter(|r| !r.is_inline()) {
            match self.caches.items.get(&ItemKey::new(project, &r.id)) {
                Some(i) => {
                    found.insert(r.id.as_str(), i);
                }
                None => {
                    to_fetch.insert(r.id.as_str());
                }
            }
        }
        if !to_fetch.is_empty() {
            let ids: Vec<&str> = to_fetch.iter().copied().collect();
            for item in db::items_by_ids(&self.pool, project, &ids).await? {
                let item = Arc::new(item);
                self.caches
                    .items
                    .insert(ItemKey::new(project, &item.id), item.clone());
                if let Some(k) = to_fetch.get(item.id.as_str()) {
                    found.insert(k, item);
                }
            }
        }
        let mut out = Vec::with_capacity(refs.len());
        for (i, r) in refs.iter().enumerate() {
            if r.is_inline() {
                let item = crate::catalog::NewItem {
                    id: r.id.clone(),
                    title: r.title.clone().unwrap_or_default(),
                    text: r.text.clone(),
                    attributes: None,
                };
                let content_hash = crate::store::catalog::content_hash(&item);
                out.push(Arc::new(ItemLite {
                    id: item.id,
                    title: item.title,
                    text: item.text,
                    attributes: None,
                    content_hash,
                }));
            } else {
                match found.get(r.id.as_str()) {
                    Some(item) => out.push(item.clone()),
                    None => {
                        return Err(RerankError::Invalid(format!(
                            "{field}[{i}].id {:?} is not in the catalog; add it with PUT /v1/items or send it inline with a title or text",
                            r.id
                        )));
                    }
                }
            }
        }
        Ok(out)
    }

    /// The user's stored recent items (`None`: unknown user).
    pub(super) async fn stored_history(
        &self,
        project: &str,
        user: &str,
    ) -> Result<Option<Vec<Arc<ItemLite>>>, RerankError> {
        let key = ItemKey::new(project, user);
        if let Some(h) = self.caches.histories.get(&key) {
            return Ok((*h).clone());
        }
        let h = db::recent_items(&self.pool, project, user, self.settings.history_len as i64)
            .await?
            .map(|items| items.into_iter().map(Arc::new).collect::<Vec<_>>());
        self.caches.histories.insert(key, Arc::new(h.clone()));
        Ok(h)
    }

    /// The history a profile is written from: the request's, or the stored one; its last L
    /// items.
    pub(super) async fn recent_history(
        &self,
        req: &RerankRequest,
    ) -> Result<Vec<Arc<ItemLite>>, RerankError> {
        let history = match &req.history {
            Some(h) => Some(self.load_items(&req.project, h, "history").await?),
            None => self.stored_history(&req.project, &req.user_id).await?,
        };
        let mut history = history.unwrap_or_default();
        let start = history.len().saturating_sub(self.settings.history_len);
        Ok(history.split_off(start))
    }
}
