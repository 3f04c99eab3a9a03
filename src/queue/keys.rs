//! Every Redis key name lease-sync uses, and nothing else builds one.
//!
//! Each key starts with the namespace as a Redis Cluster hash tag, `{namespace}:…`, so all of
//! a deployment's keys live in one hash slot: every script can take every key it touches in
//! `KEYS` and run on one node of a cluster, and `MULTI`/`EXEC` pipelines stay legal. There is
//! no key outside the namespace.
//!
//! [`LegacyKeys`] names the layout of the releases before this one (no hash tag, apalis-redis's
//! task keys), for the one-time migration in [`super::migrate`] only.

/// Names of every key lease-sync uses, derived from the namespace.
#[derive(Debug, Clone)]
pub struct Keys {
    namespace: String,
    /// `{namespace}`: the hash tag every key starts with.
    tag: String,
}

impl Keys {
    /// Keys under `namespace` (which config validation keeps free of braces).
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
            tag: format!("{{{namespace}}}"),
        }
    }

    /// The tag followed by `parts`, in one allocation of the exact size. Keys are built for
    /// every job (several per claim and per finish); `format!` cost the worker about 4 % of
    /// its CPU in a drain profile.
    fn key(&self, parts: &[&str]) -> String {
        let len = self.tag.len() + parts.iter().map(|p| p.len()).sum::<usize>();
        let mut key = String::with_capacity(len);
        key.push_str(&self.tag);
        for part in parts {
            key.push_str(part);
        }
        key
    }

    /// The namespace (`[redis] namespace`).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The prefix every key starts with: `{namespace}`.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Job ids ready to run, oldest first (a list: pushed at the tail, fetched from the head).
    pub fn ready(&self) -> String {
        self.key(&[":jobs:ready"])
    }

    /// Job ids waiting for their time (retries, deferrals, lease-window convergences), a
    /// sorted set by due time in ms.
    pub fn scheduled(&self) -> String {
        self.key(&[":jobs:scheduled"])
    }

    /// Job ids a worker holds, a sorted set by the time (ms) its hold lapses unless renewed.
    pub fn in_flight(&self) -> String {
        self.key(&[":jobs:in-flight"])
    }

    /// The payload of every queued job (a hash: job id → [`super::Job`] JSON).
    pub fn job_data(&self) -> String {
        self.key(&[":jobs:data"])
    }

    /// Which layout this namespace holds (a string: [`super::migrate::LAYOUT_VERSION`]).
    pub fn layout(&self) -> String {
        self.key(&[":layout"])
    }

    /// The lock of the process migrating an older layout.
    pub fn migration_lock(&self) -> String {
        self.key(&[":layout:migrating"])
    }

    /// Marker that `source` delivered `event_id`.
    pub fn dedupe(&self, source: &str, event_id: &str) -> String {
        self.key(&[":dedupe:", source, ":", event_id])
    }

    /// Prefix of the per-delivery ledger hashes (for a `SCAN` by tools).
    pub fn delivery_prefix(&self) -> String {
        self.key(&[":delivery"])
    }

    /// Ledger hash of one delivery.
    pub fn delivery(&self, delivery_id: &str) -> String {
        self.key(&[":delivery:", delivery_id])
    }

    /// Attempt records of one delivery (a list of JSON objects).
    pub fn attempts(&self, delivery_id: &str) -> String {
        self.key(&[":delivery:", delivery_id, ":attempts"])
    }

    /// Sorted set of dead-letter ids by dead-at (ms).
    pub fn dead_letters(&self) -> String {
        self.key(&[":dead-letters"])
    }

    /// Audit records of replays and purges (a list, newest first).
    pub fn audit(&self) -> String {
        self.key(&[":audit"])
    }

    /// State of one resident in one building.
    pub fn resident(&self, integration_id: &str, user_id: &str) -> String {
        self.key(&[":resident:", integration_id, ":", user_id])
    }

    /// Set of users lease-sync holds state for in one building.
    pub fn residents_index(&self, integration_id: &str) -> String {
        self.key(&[":residents:", integration_id])
    }

    /// Lock serializing calls for one resident.
    pub fn resident_lock(&self, integration_id: &str, user_id: &str) -> String {
        self.key(&[":lock:", integration_id, ":", user_id])
    }

    /// Scheduled convergences (lease window boundaries) by due time, for the pending count.
    pub fn convergences(&self) -> String {
        self.key(&[":convergences"])
    }

    /// The OpenApp user an email maps to in `org_id`, by the email's digest.
    pub fn identity(&self, org_id: &str, email_digest: &str) -> String {
        self.key(&[":identity:", org_id, ":", email_digest])
    }

    /// The digests of the emails cached as mapping to `user_id` in `org_id` (a set), so the
    /// mappings of a user OpenApp no longer knows can be dropped.
    pub fn identity_of_user(&self, org_id: &str, user_id: &str) -> String {
        self.key(&[":identity-user:", org_id, ":", user_id])
    }

    /// Unresolved people, by source and person.
    pub fn conflicts(&self) -> String {
        self.key(&[":conflicts"])
    }

    /// The OpenApp user each person of `source` was last resolved to (a hash by person), so
    /// a tenant who moved out — whose email Buildium's lease no longer carries — can lose
    /// their door without one more read of Buildium.
    pub fn person_users(&self, source: &str) -> String {
        self.key(&[":person-users:", source])
    }

    /// Grants of the shared request rate of `scope` (a sorted set by grant time, see
    /// [`super::rate_limit`]).
    pub fn rate_limit(&self, scope: &str) -> String {
        self.key(&[":rate-limit:", scope])
    }

    /// The claim of the process running `source`'s scheduled reconciliation this period;
    /// `…:last-pull` and `…:last-full-pull` beside it.
    pub fn reconcile_claim(&self, source: &str) -> String {
        self.key(&[":reconcile:", source, ":claim"])
    }

    /// When `source`'s last Buildium pull began (a string: unix seconds).
    pub fn reconcile_last_pull(&self, source: &str) -> String {
        self.key(&[":reconcile:", source, ":claim:last-pull"])
    }

    /// When `source`'s last reconciliation from a file ended well (a string: unix seconds). A key
    /// of its own, so that switching a source to Buildium never shortens its first pull.
    pub fn reconcile_last_file_run(&self, source: &str) -> String {
        self.key(&[":reconcile:", source, ":claim:last-file-run"])
    }

    /// When `source`'s last whole Buildium pull began (a string: unix seconds).
    pub fn reconcile_last_full_pull(&self, source: &str) -> String {
        self.key(&[":reconcile:", source, ":claim:last-full-pull"])
    }

    /// History of one resident in one building (a sorted set of JSON entries by time in
    /// ms, see [`crate::history`]).
    pub fn history(&self, integration_id: &str, user_id: &str) -> String {
        self.key(&[":history:", integration_id, ":", user_id])
    }

    /// History of one integration itself (pauses and resumes), shown within each of its
    /// residents' histories. The `~` cannot start a user id, so it never meets
    /// [`Self::history`].
    pub fn integration_history(&self, integration_id: &str) -> String {
        self.key(&[":history:", integration_id, ":~integration"])
    }

    /// Paused integrations (a hash: integration id → JSON of who paused it and when).
    pub fn paused(&self) -> String {
        self.key(&[":paused"])
    }

    /// Convergence job ids held while `integration_id` is paused (a list, oldest first).
    pub fn held(&self, integration_id: &str) -> String {
        self.key(&[":jobs:held:", integration_id])
    }

    /// One web console session, by the SHA-256 (hex) of its cookie's value: the cookie itself
    /// is never stored.
    pub fn console_session(&self, session_digest: &str) -> String {
        self.key(&[":console:session:", session_digest])
    }

    /// When each source's last webhook was accepted (a hash: source → ms), for the console.
    pub fn last_events(&self) -> String {
        self.key(&[":sources:last-event"])
    }

    /// Lifetime counters.
    pub fn stats(&self) -> String {
        self.key(&[":stats"])
    }
}

/// Key names of the layout written before this release: no hash tag, and jobs in
/// apalis-redis 1.0's keys under the queue `namespace:deliveries`. Read by the migration only.
#[derive(Debug, Clone)]
pub struct LegacyKeys {
    namespace: String,
}

/// The key families of the legacy layout that keep their meaning: each `namespace:<family>…`
/// key becomes `{namespace}:<family>…`.
pub const LEGACY_FAMILIES: &[&str] = &[
    "dedupe:",
    "delivery:",
    "dead-letters",
    "audit",
    "resident:",
    "residents:",
    "lock:",
    "convergences",
    "identity:",
    "identity-user:",
    "conflicts",
    "person-users:",
    "rate-limit:",
    "reconcile:",
    "stats",
];

impl LegacyKeys {
    /// The legacy names under `namespace`.
    pub fn new(namespace: &str) -> Self {
        Self {
            namespace: namespace.to_owned(),
        }
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// apalis-redis's queue name, `namespace:deliveries`, as registered in its global
    /// `core:apalis:queues:list`.
    pub fn queue(&self) -> String {
        format!("{}:deliveries", self.namespace)
    }

    /// One of apalis-redis's keys of the queue: `active`, `scheduled`, `data`, `done`,
    /// `dead`, `workers`, or a prefix (`inflight`, `meta`).
    pub fn queue_key(&self, suffix: &str) -> String {
        format!("{}:{suffix}", self.queue())
    }

    /// The index of worker names kept by the release before this one.
    pub fn worker_names(&self) -> String {
        format!("{}:worker-names", self.namespace)
    }

    /// apalis-redis's global registry of queues.
    pub fn apalis_queues() -> &'static str {
        "core:apalis:queues:list"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_carries_the_namespace_as_its_hash_tag() {
        let keys = Keys::new("lease-sync");
        for key in [
            keys.ready(),
            keys.scheduled(),
            keys.in_flight(),
            keys.job_data(),
            keys.layout(),
            keys.dedupe("s", "e"),
            keys.delivery("d"),
            keys.attempts("d"),
            keys.resident("i", "u"),
            keys.rate_limit("buildium:s"),
            keys.history("i", "u"),
            keys.integration_history("i"),
            keys.paused(),
            keys.held("i"),
            keys.console_session("d"),
            keys.last_events(),
            keys.stats(),
        ] {
            assert!(key.starts_with("{lease-sync}:"), "{key}");
        }
    }
    #[test]
    fn key_names_are_exactly_the_layouts() {
        // The names are the stored layout: a change here strands a deployment's data.
        let k = Keys::new("ns");
        let expected = [
            (k.ready(), "{ns}:jobs:ready"),
            (k.scheduled(), "{ns}:jobs:scheduled"),
            (k.in_flight(), "{ns}:jobs:in-flight"),
            (k.job_data(), "{ns}:jobs:data"),
            (k.layout(), "{ns}:layout"),
            (k.migration_lock(), "{ns}:layout:migrating"),
            (k.dedupe("s", "e"), "{ns}:dedupe:s:e"),
            (k.delivery_prefix(), "{ns}:delivery"),
            (k.delivery("d"), "{ns}:delivery:d"),
            (k.attempts("d"), "{ns}:delivery:d:attempts"),
            (k.dead_letters(), "{ns}:dead-letters"),
            (k.audit(), "{ns}:audit"),
            (k.resident("i", "u"), "{ns}:resident:i:u"),
            (k.residents_index("i"), "{ns}:residents:i"),
            (k.resident_lock("i", "u"), "{ns}:lock:i:u"),
            (k.convergences(), "{ns}:convergences"),
            (k.identity("o", "e"), "{ns}:identity:o:e"),
            (k.identity_of_user("o", "u"), "{ns}:identity-user:o:u"),
            (k.conflicts(), "{ns}:conflicts"),
            (k.person_users("s"), "{ns}:person-users:s"),
            (k.rate_limit("r"), "{ns}:rate-limit:r"),
            (k.reconcile_claim("s"), "{ns}:reconcile:s:claim"),
            (
                k.reconcile_last_pull("s"),
                "{ns}:reconcile:s:claim:last-pull",
            ),
            (
                k.reconcile_last_file_run("s"),
                "{ns}:reconcile:s:claim:last-file-run",
            ),
            (
                k.reconcile_last_full_pull("s"),
                "{ns}:reconcile:s:claim:last-full-pull",
            ),
            (k.history("i", "u"), "{ns}:history:i:u"),
            (k.integration_history("i"), "{ns}:history:i:~integration"),
            (k.paused(), "{ns}:paused"),
            (k.held("i"), "{ns}:jobs:held:i"),
            (k.console_session("c"), "{ns}:console:session:c"),
            (k.last_events(), "{ns}:sources:last-event"),
            (k.stats(), "{ns}:stats"),
        ];
        for (got, want) in expected {
            assert_eq!(got, want);
        }
    }
}
