//! How many connections each listener may hold: `http.max_connections` and
//! `admin.max_connections`, or caps derived from the open-file limit.

use std::num::NonZeroUsize;

use super::{Role, Settings};

/// File descriptors a serving process keeps for everything but its listeners' connections:
/// standard streams, the runtime's epoll and event fds, the listening sockets, Redis
/// connections, DNS look-ups, a log file.
pub const RESERVED_FDS: u64 = 64;

/// Connections a listener may hold beyond its cap for a moment, twice over: ones admitted in
/// place of reclaimed idle connections that have not closed yet, and ones being answered 503
/// `overloaded`. Each listener's cap leaves room for both.
pub const CONNECTION_SPARE: usize = 32;

/// The admin listener's derived cap: operators, probes and a Prometheus scraper need few.
pub const ADMIN_CONNECTIONS: usize = 64;

/// The smallest derived cap, however low the open-file limit.
pub const MIN_CONNECTIONS: usize = 8;

/// How many connections each listener of a process may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCaps {
    /// The webhook listener's cap; `None` when the role does not run it.
    pub http: Option<usize>,
    /// The admin listener's cap; `None` when the process does not serve the admin API.
    pub admin: Option<usize>,
    /// File descriptors left for the listeners' connections by the open-file limit.
    pub budget: usize,
}

impl ConnectionCaps {
    /// Whether the caps together exceed the budget (only possible when configured): the
    /// process could then run out of file descriptors before refusing a connection.
    pub fn overcommitted(&self) -> bool {
        self.http.unwrap_or(0) + self.admin.unwrap_or(0) > self.budget
    }
}

impl Settings {
    /// Each listener's connection cap under an open-file limit of `fd_limit`: the configured
    /// `max_connections`, or derived. The derived caps share
    ///
    /// `budget = fd_limit − RESERVED_FDS − worker.concurrency (roles that deliver: one
    /// OpenApp connection per job) − 2 × CONNECTION_SPARE per listener`
    ///
    /// as `admin = min(ADMIN_CONNECTIONS, budget / 8)` and `http = budget − admin`, neither
    /// below [`MIN_CONNECTIONS`]. With 1,024 descriptors, `serve` and the default 16 workers:
    /// budget 816, admin 64, http 752.
    pub fn connection_caps(&self, role: Role, fd_limit: u64) -> ConnectionCaps {
        let webhook = role.runs_ingest();
        let admin = self.admin.enabled && role.is_service();
        let listeners = u64::from(webhook) + u64::from(admin);
        let workers = if role.runs_workers() {
            self.worker.concurrency.get() as u64
        } else {
            0
        };
        let reserved = RESERVED_FDS + workers + listeners * 2 * CONNECTION_SPARE as u64;
        // An unlimited limit still yields a cap that fits in memory.
        let budget = fd_limit.saturating_sub(reserved).min(1 << 24) as usize;
        let admin = admin.then(|| {
            self.admin.max_connections.map_or(
                (budget / 8).clamp(MIN_CONNECTIONS, ADMIN_CONNECTIONS),
                NonZeroUsize::get,
            )
        });
        let http = webhook.then(|| {
            self.http.max_connections.map_or(
                budget
                    .saturating_sub(admin.unwrap_or(0))
                    .max(MIN_CONNECTIONS),
                NonZeroUsize::get,
            )
        });
        ConnectionCaps {
            http,
            admin,
            budget,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{MINIMAL, env};
    use super::*;

    #[test]
    fn connection_caps_are_derived_from_the_open_file_limit_unless_set() {
        let s = Settings::from_toml_str(MINIMAL, env(&[])).unwrap();
        s.validate(Role::Serve).unwrap();
        // 1,024 − 64 reserved − 16 workers − 2 × 32 spare for each of two listeners = 816.
        let caps = s.connection_caps(Role::Serve, 1024);
        assert_eq!(
            caps,
            ConnectionCaps {
                http: Some(752),
                admin: Some(64),
                budget: 816
            }
        );
        assert!(!caps.overcommitted());
        // Ingest delivers nothing, so keeps no OpenApp connections; work has no webhook listener.
        assert_eq!(s.connection_caps(Role::Ingest, 1024).http, Some(768));
        let work = s.connection_caps(Role::Work, 1024);
        assert_eq!((work.http, work.admin), (None, Some(64)));
        // A small limit shrinks the admin share too, but never below the floor.
        let small = s.connection_caps(Role::Serve, 256);
        assert_eq!((small.http, small.admin), (Some(40), Some(8)));
        let tiny = s.connection_caps(Role::Serve, 16);
        assert_eq!(
            (tiny.http, tiny.admin),
            (Some(MIN_CONNECTIONS), Some(MIN_CONNECTIONS))
        );
        assert!(tiny.overcommitted());
        // An unlimited limit stays a usable number.
        assert!(s.connection_caps(Role::Serve, u64::MAX).http.unwrap() > 1_000_000);
        // Without the admin API its share goes to the webhook listener.
        let mut off = s;
        off.admin.enabled = false;
        assert_eq!(off.connection_caps(Role::Serve, 1024).http, Some(880));

        let set = Settings::from_toml_str(
            MINIMAL,
            env(&[
                ("LEASE_SYNC__HTTP__MAX_CONNECTIONS", "5000"),
                ("LEASE_SYNC__ADMIN__MAX_CONNECTIONS", "10"),
            ]),
        )
        .unwrap();
        set.validate(Role::Serve).unwrap();
        let caps = set.connection_caps(Role::Serve, 1024);
        assert_eq!((caps.http, caps.admin), (Some(5000), Some(10)));
        assert!(caps.overcommitted());
    }
}
