//! The process's open-file limit (`RLIMIT_NOFILE`). Every connection holds a file
//! descriptor, and the soft limit (1,024 in many containers) is usually far below the hard
//! one, which an unprivileged process may raise it to. Serving commands raise it at startup
//! ([`raise_soft_to_hard`], called from the command line, never from library code) and size
//! their listeners' connection caps from what is then in force ([`current`]).

use std::io;

/// A soft and a hard `RLIMIT_NOFILE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdLimit {
    /// The limit in force.
    pub soft: u64,
    /// The ceiling the soft limit may be raised to without privileges.
    pub hard: u64,
}

/// Linux refuses a soft limit above `fs.nr_open` (1,048,576 unless tuned), even under an
/// unlimited hard limit: the fallback when raising to the hard limit itself is refused.
const NR_OPEN_DEFAULT: u64 = 1 << 20;

/// The limit in force.
#[cfg(unix)]
pub fn current() -> io::Result<FdLimit> {
    let (soft, hard) = rlimit::getrlimit(rlimit::Resource::NOFILE)?;
    Ok(FdLimit { soft, hard })
}

/// The limit in force.
#[cfg(not(unix))]
pub fn current() -> io::Result<FdLimit> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "RLIMIT_NOFILE exists on Unix only",
    ))
}

/// Raises the soft limit to the hard one; returns the limits before and after.
#[cfg(unix)]
pub fn raise_soft_to_hard() -> io::Result<(FdLimit, FdLimit)> {
    let before = current()?;
    if before.soft < before.hard
        && rlimit::setrlimit(rlimit::Resource::NOFILE, before.hard, before.hard).is_err()
    {
        let soft = NR_OPEN_DEFAULT.clamp(before.soft, before.hard);
        rlimit::setrlimit(rlimit::Resource::NOFILE, soft, before.hard)?;
    }
    Ok((before, current()?))
}

/// Raises the soft limit to the hard one; returns the limits before and after.
#[cfg(not(unix))]
pub fn raise_soft_to_hard() -> io::Result<(FdLimit, FdLimit)> {
    current().map(|limit| (limit, limit))
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn the_limit_in_force_is_readable_and_within_the_hard_one() {
        let limit = current().expect("getrlimit");
        assert!(limit.soft <= limit.hard, "{limit:?}");
        assert!(limit.soft > 0, "{limit:?}");
    }
}
