//! The Redis side of the scheduled reconciliation ([`crate::reconcile`]'s schedule): the
//! claim that lets one process per period do the work, and when each source was last pulled
//! from Buildium, shared by every process.

use std::time::Duration;

use super::{JobQueue, QueueError};

impl JobQueue {
    /// Claims the current reconciliation period of `source` for this process: a key that
    /// lives `ttl` (at least 1 ms) unless given back. The claim's token, to give it back with
    /// [`Self::release_reconcile_claim`]; `None` if another process (or an earlier run of
    /// this one) holds it.
    pub async fn claim_reconcile_period(
        &self,
        source: &str,
        ttl: Duration,
    ) -> Result<Option<String>, QueueError> {
        let token = ulid::Ulid::new().to_string();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut conn = self.conn.clone();
        let taken: Option<String> = redis::cmd("SET")
            .arg(self.keys.reconcile_claim(source))
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut conn)
            .await?;
        Ok(taken.map(|_| token))
    }

    /// Gives back `source`'s reconciliation claim if it still holds `token`, so the next try
    /// is not skipped; a claim that lapsed and was taken over is left alone.
    pub async fn release_reconcile_claim(
        &self,
        source: &str,
        token: &str,
    ) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        // The resident locks' compare-and-delete: the same script for the same job.
        let _: i64 = self
            .scripts
            .unlock
            .key(self.keys.reconcile_claim(source))
            .arg(token)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    /// When `source`'s last Buildium pull began, and its last whole one (unix seconds;
    /// `None` for never).
    pub async fn reconcile_pull_times(
        &self,
        source: &str,
    ) -> Result<(Option<i64>, Option<i64>), QueueError> {
        let mut conn = self.conn.clone();
        Ok(redis::pipe()
            .cmd("GET")
            .arg(self.keys.reconcile_last_pull(source))
            .cmd("GET")
            .arg(self.keys.reconcile_last_full_pull(source))
            .query_async(&mut conn)
            .await?)
    }

    /// Records that a reconciliation of `source` from a file ended well at `at` (unix seconds).
    pub async fn record_file_reconcile(&self, source: &str, at: i64) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: () = redis::cmd("SET")
            .arg(self.keys.reconcile_last_file_run(source))
            .arg(at)
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// When `source`'s last reconciliation from a file ended well (unix seconds), if ever.
    pub async fn last_file_reconcile(&self, source: &str) -> Result<Option<i64>, QueueError> {
        let mut conn = self.conn.clone();
        Ok(redis::cmd("GET")
            .arg(self.keys.reconcile_last_file_run(source))
            .query_async(&mut conn)
            .await?)
    }

    /// Records that a Buildium pull of `source` began at `started` (unix seconds), and with
    /// `full`, that it was a whole one.
    pub async fn record_reconcile_pull(
        &self,
        source: &str,
        started: i64,
        full: bool,
    ) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.keys.reconcile_last_pull(source))
            .arg(started)
            .ignore();
        if full {
            pipe.cmd("SET")
                .arg(self.keys.reconcile_last_full_pull(source))
                .arg(started)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::Keys;

    #[test]
    fn pull_times_sit_beside_the_claim_as_before() {
        let keys = Keys::new("ns");
        assert_eq!(keys.reconcile_claim("b"), "{ns}:reconcile:b:claim");
        assert_eq!(
            keys.reconcile_last_pull("b"),
            "{ns}:reconcile:b:claim:last-pull"
        );
        assert_eq!(
            keys.reconcile_last_full_pull("b"),
            "{ns}:reconcile:b:claim:last-full-pull"
        );
    }
}
