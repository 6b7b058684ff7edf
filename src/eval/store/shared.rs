//! One store connection shared by several users in a process (the
//! calibration's evals and its journal, one after another or at once):
//! each call takes the connection for its duration.

use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;

use super::{Counts, EvalListing, EvalRecord, Store, StoreError, Unit, UnitRecord, WorkerId};
use crate::eval::{ItemResult, Totals};

/// A store behind a lock; clones share the connection. It is a [`Store`]
/// itself, so an eval can run on it while others read it between runs.
#[derive(Clone)]
pub struct SharedStore {
    inner: Arc<Mutex<Box<dyn Store>>>,
    location: String,
}

impl SharedStore {
    pub fn new(store: Box<dyn Store>) -> SharedStore {
        let location = store.location();
        SharedStore {
            inner: Arc::new(Mutex::new(store)),
            location,
        }
    }

    /// Opens the store at `location` (see [`super::open`]) off the runtime.
    pub async fn open(location: &str) -> Result<SharedStore, StoreError> {
        let at = location.to_string();
        let store = tokio::task::spawn_blocking(move || super::open(&at))
            .await
            .map_err(|e| StoreError::Db {
                store: crate::redact::url(location).into_owned(),
                message: format!("the store thread failed: {e}"),
            })??;
        Ok(SharedStore::new(store))
    }

    fn lock(&self) -> Result<MutexGuard<'_, Box<dyn Store>>, StoreError> {
        self.inner.lock().map_err(|_| StoreError::Db {
            store: self.location.clone(),
            message: "an earlier call on this connection panicked".into(),
        })
    }

    /// Runs `f` on the store on a blocking thread (database calls never
    /// block the runtime).
    pub async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut dyn Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&mut **this.lock()?))
            .await
            .map_err(|e| StoreError::Db {
                store: self.location.clone(),
                message: format!("the store thread failed: {e}"),
            })?
    }
}

impl Store for SharedStore {
    fn location(&self) -> String {
        self.location.clone()
    }
    fn open_eval(&mut self, eval: &EvalRecord) -> Result<EvalRecord, StoreError> {
        self.lock()?.open_eval(eval)
    }
    fn add_units(&mut self, eval: &str, units: &[Unit]) -> Result<usize, StoreError> {
        self.lock()?.add_units(eval, units)
    }
    fn archive_eval(&mut self, id: &str) -> Result<Option<String>, StoreError> {
        self.lock()?.archive_eval(id)
    }
    fn reset_failed(&mut self, eval: &str) -> Result<usize, StoreError> {
        self.lock()?.reset_failed(eval)
    }
    fn release_dead(&mut self, eval: &str, me: &WorkerId) -> Result<usize, StoreError> {
        self.lock()?.release_dead(eval, me)
    }
    fn claim(
        &mut self,
        eval: &str,
        worker: &WorkerId,
        n: usize,
        lease_ms: i64,
        shard: Option<(u32, u32)>,
    ) -> Result<Vec<Unit>, StoreError> {
        self.lock()?.claim(eval, worker, n, lease_ms, shard)
    }
    fn renew(&mut self, eval: &str, worker: &WorkerId, lease_ms: i64) -> Result<(), StoreError> {
        self.lock()?.renew(eval, worker, lease_ms)
    }
    fn finish(&mut self, eval: &str, results: &[ItemResult]) -> Result<(), StoreError> {
        self.lock()?.finish(eval, results)
    }
    fn release(
        &mut self,
        eval: &str,
        worker: &WorkerId,
        units: &[(String, u32)],
    ) -> Result<(), StoreError> {
        self.lock()?.release(eval, worker, units)
    }
    fn counts(&mut self, eval: &str) -> Result<Counts, StoreError> {
        self.lock()?.counts(eval)
    }
    fn spent(&mut self, eval: &str) -> Result<Totals, StoreError> {
        self.lock()?.spent(eval)
    }
    fn evals(&mut self) -> Result<Vec<EvalListing>, StoreError> {
        self.lock()?.evals()
    }
    fn eval(&mut self, id: &str) -> Result<EvalRecord, StoreError> {
        self.lock()?.eval(id)
    }
    fn units(&mut self, eval: &str, full: bool) -> Result<Vec<UnitRecord>, StoreError> {
        self.lock()?.units(eval, full)
    }
    fn unit(
        &mut self,
        eval: &str,
        item: &str,
        epoch: u32,
    ) -> Result<Option<UnitRecord>, StoreError> {
        self.lock()?.unit(eval, item, epoch)
    }
    fn append_record(&mut self, kind: &str, key: &str, value: &Value) -> Result<i64, StoreError> {
        self.lock()?.append_record(kind, key, value)
    }
    fn records(&mut self, kind: &str, key: &str) -> Result<Vec<Value>, StoreError> {
        self.lock()?.records(kind, key)
    }
    fn record_keys(&mut self, kind: &str) -> Result<Vec<String>, StoreError> {
        self.lock()?.record_keys(kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn clones_share_one_connection_and_a_panic_is_an_error_not_a_panic() {
        let dir = std::env::temp_dir().join(format!("redraft-shared-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let at = dir.join("s.db").display().to_string();
        let a = SharedStore::open(&at).await.unwrap();
        let mut b = a.clone();
        a.with(|s| s.append_record("k", "x", &Value::from(1)))
            .await
            .unwrap();
        // The other clone reads it on the same connection, also as a Store.
        assert_eq!(b.records("k", "x").unwrap(), vec![Value::from(1)]);
        assert_eq!(b.location(), at);
        // A call that panics poisons the connection: later calls say so.
        let r: Result<(), _> = a.with(|_| panic!("boom")).await;
        assert!(
            r.unwrap_err()
                .to_string()
                .contains("the store thread failed")
        );
        let e = b.records("k", "x").unwrap_err().to_string();
        assert!(e.contains("panicked") && e.contains(&at), "{e}");
        drop((a, b));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
