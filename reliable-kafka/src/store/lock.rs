//! Named locks: one re-driver instance at a time per re-drive group, one SQLite relay
//! per table within a process.

use std::future::Future;

use sqlx::Pool;

/// A lock held by this process, released by [`LockStore::release`] or on drop.
pub trait LockStore: sqlx::Database + Sized {
    /// A held lock.
    type Lock: Send;

    /// Takes the lock `name` without waiting; `None` when it is held elsewhere.
    fn try_lock<'a>(
        pool: &'a Pool<Self>,
        name: &'a str,
    ) -> impl Future<Output = Result<Option<Self::Lock>, sqlx::Error>> + Send + 'a;

    /// Releases `lock`.
    fn release(lock: Self::Lock) -> impl Future<Output = ()> + Send;
}

/// A lock on a name within this process, released when dropped.
#[cfg(feature = "sqlite")]
#[derive(Debug)]
pub struct LocalLock(String);

#[cfg(feature = "sqlite")]
static LOCAL_LOCKS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

#[cfg(feature = "sqlite")]
impl LocalLock {
    /// Takes the lock `name`; `None` when this process holds it already.
    pub(crate) fn try_take(name: &str) -> Option<LocalLock> {
        let mut held = LOCAL_LOCKS.lock().unwrap_or_else(|p| p.into_inner());
        if held.iter().any(|n| n == name) {
            return None;
        }
        held.push(name.to_owned());
        Some(LocalLock(name.to_owned()))
    }
}

#[cfg(feature = "sqlite")]
impl Drop for LocalLock {
    fn drop(&mut self) {
        LOCAL_LOCKS.lock().unwrap_or_else(|p| p.into_inner()).retain(|n| *n != self.0);
    }
}
