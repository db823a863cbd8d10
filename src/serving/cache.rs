//! In-process caches of the rerank hot path, kept correct across replicas: entries that can
//! change (items, histories, labels) are dropped when any replica's write sends a
//! `pg_notify` on `agp_invalidate`; immutable entries (prompt versions, profiles, summaries
//! by content hash) need no invalidation. When the listener loses its connection, the caches
//! keep serving (reranks go on answering while the database restarts); once it listens again
//! everything invalidatable is dropped, since messages may have been missed meanwhile.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::OnceCell;

use crate::store::rerank::{ItemLite, ProfileSlot};
use crate::store::{INVALIDATION_CHANNEL, Invalidation};

/// A size-bounded map; when full, an arbitrary half is evicted (cheap and good enough for
/// caches whose misses cost one query).
#[derive(Debug)]
pub struct BoundedMap<K, V> {
    cap: usize,
    inner: Mutex<HashMap<K, V>>,
}

impl<K: Eq + Hash + Clone, V: Clone> BoundedMap<K, V> {
    /// A map holding at most `cap` entries.
    pub fn new(cap: usize) -> Self {
        BoundedMap {
            cap: cap.max(2),
            inner: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, V>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, k: &K) -> Option<V> {
        self.lock().get(k).cloned()
    }

    pub fn insert(&self, k: K, v: V) {
        let mut m = self.lock();
        if m.len() >= self.cap && !m.contains_key(&k) {
            let mut n = 0;
            let half = self.cap / 2;
            m.retain(|_, _| {
                n += 1;
                n > half
            });
        }
        m.insert(k, v);
    }

    pub fn remove(&self, k: &K) {
        self.lock().remove(k);
    }

    pub fn retain(&self, f: impl FnMut(&K, &mut V) -> bool) {
        self.lock().retain(f);
    }

    pub fn clear(&self) {
        self.lock().clear();
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Runs one computation per key at a time; concurrent callers of the same key share its result.
#[derive(Debug)]
pub struct SingleFlight<K, V> {
    inflight: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            inflight: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> SingleFlight<K, V> {
    /// `f()` for the first caller of `key`; the others wait for and share its value.
    /// If the first caller is cancelled, a waiting caller runs `f` instead.
    pub async fn run<F, Fut>(&self, key: K, f: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = V>,
    {
        let cell = {
            let mut m = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
            m.entry(key.clone()).or_default().clone()
        };
        let v = cell.get_or_init(f).await.clone();
        let mut m = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if m.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            m.remove(&key);
        }
        v
    }
}

/// A catalog item or a user of a project.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ItemKey {
    pub project: String,
    pub id: String,
}

impl ItemKey {
    pub fn new(project: &str, id: &str) -> Self {
        ItemKey {
            project: project.to_string(),
            id: id.to_string(),
        }
    }
}

/// A prompt label of a project.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LabelKey {
    pub project: String,
    /// Registry name: a prompt's, or the blend's.
    pub name: &'static str,
    pub label: String,
}

/// A prompt version of a project (versions are immutable).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TemplateKey {
    pub project: String,
    /// Registry name: a prompt's, or the blend's.
    pub name: &'static str,
    pub version: i32,
}

/// Everything a profile depends on: who, the exact history texts, the `p_gen` version and
/// the model that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ProfileKey {
    pub project: String,
    pub user: String,
    pub history_hash: Vec<u8>,
    pub version: i32,
    pub model: String,
}

impl ProfileKey {
    /// The row this profile is stored in.
    pub fn slot(&self) -> ProfileSlot<'_> {
        ProfileSlot {
            project: &self.project,
            user: &self.user,
            history_hash: &self.history_hash,
            version: self.version,
            model: &self.model,
        }
    }
}

/// Everything a summary depends on: the item's content, the `p_sum` version, the model.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SummaryKey {
    pub project: String,
    pub item: String,
    pub content_hash: Vec<u8>,
    pub version: i32,
    pub model: String,
}

/// All caches of the rerank path.
/// A profile as kept in memory: its stored id, text and who wrote it.
#[derive(Debug, Clone)]
pub struct CachedProfile {
    pub id: uuid::Uuid,
    pub text: Arc<String>,
    pub written_by: crate::store::states::ProfileWriter,
}

#[derive(Debug)]
pub struct Caches {
    pub items: BoundedMap<ItemKey, Arc<ItemLite>>,
    /// A user's recent items (`None`: unknown user), by (project, user).
    pub histories: BoundedMap<ItemKey, Arc<Option<Vec<Arc<ItemLite>>>>>,
    pub labels: BoundedMap<LabelKey, Arc<crate::store::prompts::LabelRow>>,
    pub templates: BoundedMap<TemplateKey, Arc<String>>,
    pub profiles: BoundedMap<ProfileKey, CachedProfile>,
    pub summaries: BoundedMap<SummaryKey, Arc<String>>,
}

impl Caches {
    /// Caches sized for `entries` users/items each.
    pub fn new(entries: usize) -> Self {
        Caches {
            items: BoundedMap::new(entries),
            histories: BoundedMap::new(entries),
            labels: BoundedMap::new(1024),
            templates: BoundedMap::new(4096),
            profiles: BoundedMap::new(entries),
            summaries: BoundedMap::new(entries),
        }
    }

    /// Drops what `inv` says went stale.
    pub fn invalidate(&self, inv: &Invalidation) {
        match inv {
            Invalidation::Items(p) => {
                self.items.retain(|k, _| &k.project != p);
                // Histories embed item texts.
                self.histories.retain(|k, _| &k.project != p);
            }
            Invalidation::User(p, u) => self.histories.remove(&ItemKey::new(p, u)),
            Invalidation::Labels(p) => self.labels.retain(|k, _| &k.project != p),
            Invalidation::All => {
                self.items.clear();
                self.histories.clear();
                self.labels.clear();
            }
        }
    }

    /// Listens for invalidations from every replica until the process ends.
    pub fn start_listener(self: &Arc<Self>, pool: PgPool) {
        let caches = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let mut listener = match PgListener::connect_with(&pool).await {
                    Ok(l) => l,
                    Err(e) => {
                        if pool.is_closed() {
                            return;
                        }
                        tracing::warn!(error = %e, "cache invalidation listener cannot connect; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                if let Err(e) = listener.listen(INVALIDATION_CHANNEL).await {
                    tracing::warn!(error = %e, "cache invalidation listener cannot LISTEN; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                // Anything may have changed while we were not listening.
                match caches.upgrade() {
                    Some(c) => c.invalidate(&Invalidation::All),
                    None => return,
                }
                loop {
                    match listener.try_recv().await {
                        Ok(Some(n)) => match caches.upgrade() {
                            Some(c) => c.invalidate(&Invalidation::parse(n.payload())),
                            None => return,
                        },
                        Ok(None) | Err(_) => {
                            if pool.is_closed() {
                                return;
                            }
                            // Keep serving from the caches while the database is away (writes
                            // cannot happen meanwhile); they are dropped when we listen again.
                            break;
                        }
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn bounded_map_evicts_when_full() {
        let m = BoundedMap::new(4);
        for i in 0..10 {
            m.insert(i, i);
        }
        assert!(m.len() <= 4);
        assert_eq!(m.get(&9), Some(9), "the newest entry is kept");
    }

    #[tokio::test]
    async fn single_flight_runs_once_for_concurrent_callers() {
        let sf: Arc<SingleFlight<&str, usize>> = Arc::new(SingleFlight::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let sf = sf.clone();
                let runs = runs.clone();
                tokio::spawn(async move {
                    sf.run("k", || async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        42
                    })
                    .await
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), 42);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        // Later callers compute again (the flight is over).
        assert_eq!(sf.run("k", || async { 7 }).await, 7);
    }

    #[test]
    fn invalidation_round_trips() {
        for inv in [
            Invalidation::Items("p".into()),
            Invalidation::User("p".into(), "u:1".into()),
            Invalidation::Labels("p".into()),
            Invalidation::All,
        ] {
            assert_eq!(Invalidation::parse(&inv.payload()), inv);
        }
        assert_eq!(Invalidation::parse("nonsense"), Invalidation::All);
    }
}
