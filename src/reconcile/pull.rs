//! Reconciliation against a Buildium source's API instead of a file: the Active and Future
//! leases of the mapped buildings, read page by page, become the rows the plan compares with
//! OpenApp and lease-sync's state.
//!
//! Buildium pages by offset, so a lease created or deleted during a long pull shifts the rest
//! and one can be missed. A missed lease must not take anyone's door away: every lease behind
//! a planned removal is read again on its own, and the plan is made again with what it says.
//! The plan's time is when the pull *started*: anything Buildium changed after that carries a
//! later `LastUpdatedDateTime` and wins over the plan's synthetic events.

use time::OffsetDateTime;

use super::plan::Plan;
use super::{ReconcileError, Reconciler};
use crate::config::SourceSettings;
use crate::event::EventType;
use crate::refresh::{Pulled, RefreshError, Refresher};
use crate::sources::buildium::client::ListProgress;

/// Why a pull could not be planned.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// Reading Buildium (or resolving tenants) failed; nothing was applied.
    #[error("cannot read the leases from Buildium: {0}")]
    Read(#[from] RefreshError),
    /// OpenApp or Redis failed while planning; nothing was applied.
    #[error(transparent)]
    Plan(#[from] ReconcileError),
    /// Buildium listed no lease granting access: more likely a wrong configuration than a
    /// source without residents, and taken as the truth it would remove everyone.
    #[error(
        "Buildium lists no Active or Future lease with a resolvable tenant for the buildings source `{0}` maps; refusing to reconcile against nothing (it would remove every resident lease-sync manages)"
    )]
    Empty(String),
}

/// Pulls `source`'s leases and plans against them, confirming every planned removal by
/// reading its lease again. `progress` sees the paged read.
pub async fn plan_from_buildium(
    refresher: &Refresher,
    reconciler: &Reconciler,
    source: &SourceSettings,
    prune_unmanaged: bool,
    progress: impl FnMut(&ListProgress),
) -> Result<(Plan, Pulled), PullError> {
    let started = OffsetDateTime::now_utc();
    let mut pulled = refresher.pull_rows(&source.name, progress).await?;
    if pulled.rows.is_empty() {
        return Err(PullError::Empty(source.name.clone()));
    }
    let plan = reconciler
        .plan(source, &pulled.rows, started, prune_unmanaged)
        .await?;
    // The Buildium leases behind planned removals (numeric ids; `reconcile:<user>` is none).
    let mut to_confirm: Vec<i64> = plan
        .buildings
        .iter()
        .flat_map(|b| &b.remove)
        .flat_map(|change| &change.leases)
        .filter(|lease| lease.event_type == EventType::LeaseEnded)
        .filter_map(|lease| lease.lease_id.parse::<i64>().ok())
        .collect();
    to_confirm.sort_unstable();
    to_confirm.dedup();
    if to_confirm.is_empty() {
        return Ok((plan, pulled));
    }
    let rows_before = {
        let mut pairs: Vec<(&str, &str)> = pulled
            .rows
            .iter()
            .map(|r| (r.user_id.as_str(), r.lease_id.as_str()))
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        pairs.len()
    };
    for lease_id in to_confirm {
        refresher
            .confirm_lease(&source.name, lease_id, &mut pulled)
            .await?;
    }
    // Re-reading a lease adds all its tenants again; only new (user, lease) pairs count.
    pulled
        .rows
        .sort_by(|a, b| (&a.user_id, &a.lease_id).cmp(&(&b.user_id, &b.lease_id)));
    pulled
        .rows
        .dedup_by(|a, b| a.user_id == b.user_id && a.lease_id == b.lease_id);
    if pulled.rows.len() == rows_before {
        return Ok((plan, pulled));
    }
    // The paged list missed a lease that still grants access: plan again with it.
    let plan = reconciler
        .plan(source, &pulled.rows, started, prune_unmanaged)
        .await?;
    Ok((plan, pulled))
}
